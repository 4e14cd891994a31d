package rpc

import (
	"fmt"

	capnp "capnproto.org/go/capnp/v3"
	rpccp "capnproto.org/go/capnp/v3/std/capnp/rpc"
)

// readRoot reads the root of a message the peer wrote and checks it with
// checkIncoming. Its errors name what was wrong; callers wrap them in
// ErrProtocol. A message needs at least its root pointer in its first
// segment: go-capnp v3.0.1-alpha.2 panics on an empty first segment
// instead of returning an error, so that is checked here, and any other
// panic from reading the root becomes an error too.
func readRoot(msg *capnp.Message) (rm rpccp.Message, err error) {
	first, err := msg.Segment(0)
	if err != nil {
		return rm, fmt.Errorf("unreadable message: %w", err)
	}
	if len(first.Data()) < 8 {
		return rm, fmt.Errorf("unreadable message: the first segment is %d bytes, too short for a root pointer", len(first.Data()))
	}
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("unreadable message: reading the root: %v", r)
		}
	}()
	rm, err = rpccp.ReadRootMessage(msg)
	if err != nil {
		return rm, fmt.Errorf("unreadable message: %w", err)
	}
	return rm, checkIncoming(rm)
}

// checkIncoming refuses the messages that crash a go-capnp
// v3.0.1-alpha.2 connection instead of failing it: the peer's error
// becomes the transport's, which go-capnp turns into an abort of this
// connection alone.
//
// One is known: a Call pipelined on a promised answer whose question ID
// is the call's own. go-capnp enters the call in its answer table before
// it looks up the target, finds the half-built entry, and dereferences
// its nil pipeline (rpc.go:950, a nil-pointer panic that ends the
// process). A go-capnp v3.0.1-alpha.2 client sends exactly that when a
// call on a pipelined capability races the Return of the call that made
// it: go-capnp finishes and frees the question on Return, and the late
// call takes the freed ID for itself (go-capnp #626, fixed on its main
// branch only). Anything else that is malformed is left to go-capnp,
// which reports it.
func checkIncoming(rm rpccp.Message) error {
	if rm.Which() != rpccp.Message_Which_call {
		return nil
	}
	call, err := rm.Call()
	if err != nil {
		return nil
	}
	tgt, err := call.Target()
	if err != nil || tgt.Which() != rpccp.MessageTarget_Which_promisedAnswer {
		return nil
	}
	pa, err := tgt.PromisedAnswer()
	if err != nil {
		return nil
	}
	if q := call.QuestionId(); pa.QuestionId() == q {
		return refusedError{fmt.Sprintf("call (question %d) is pipelined on question %d, its own: the peer reused the ID of a question it had finished while calls on its results were still being made (go-capnp #626)", q, q)}
	}
	return nil
}

// refusedError is a readable message that checkIncoming refused. Nothing
// about the transport is broken, so it stays up: go-capnp ends the
// connection on the error and can still send its Abort, which tells the
// peer why.
type refusedError struct{ reason string }

func (e refusedError) Error() string { return e.reason }
