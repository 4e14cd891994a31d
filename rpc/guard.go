package rpc

import (
	"errors"
	"fmt"
	"sync"

	capnp "capnproto.org/go/capnp/v3"
	rpccp "capnproto.org/go/capnp/v3/std/capnp/rpc"
)

// readRoot reads the root of a message the peer wrote and checks it with
// checkIncoming. Its errors name what was wrong; callers wrap them in
// ErrProtocol. A message needs at least its root pointer in its first
// segment: go-capnp v3.0.1-alpha.2 panics on an empty first segment
// instead of returning an error, so that is checked here, and any other
// panic from reading the root becomes an error too.
func readRoot(msg *capnp.Message) (rpccp.Message, error) { return readRootGuarded(msg, true) }

// readRootGuarded is readRoot, with checkIncoming only if guard is set.
func readRootGuarded(msg *capnp.Message, guard bool) (rm rpccp.Message, err error) {
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
	if !guard {
		return rm, nil
	}
	return rm, checkIncoming(rm)
}

// engineOwned is implemented by capnshm's transports: NewConn calls it when
// capnshm's engine, not go-capnp's Conn, runs on the transport, which then
// drops the guards that only a go-capnp Conn needs (checkIncoming and the
// questionGuard): the engine never pipelines on a finished question, and
// answers a call pipelined on its own question ID with an exception.
type engineOwned interface{ ownedByEngine() }

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

// refused reports whether err is (or wraps) a refusedError.
func refused(err error) bool {
	var r refusedError
	return errors.As(err, &r)
}

// questionGuard follows the questions this side has finished, so that a
// call pipelined on one is refused before it is sent, with ErrLateCall.
//
// go-capnp v3.0.1-alpha.2 sends Finish and frees a question's ID as soon
// as its Return arrives, while a call on one of its pipelined capabilities
// can already be on its way into the connection: that call still targets
// the finished question (the peer aborts the connection: unknown or
// finished answer), and often takes the freed ID for itself (a go-capnp
// peer crashes). Outgoing messages pass through check in the order they
// go on the wire: a Finish marks its question finished, a Call or
// Bootstrap that reuses the ID makes it live again, and a Call whose
// promised-answer target is finished, or is the call itself, is refused.
// The set holds only finished IDs not yet reused; go-capnp reuses the
// lowest free ID first, so it stays about as large as the number of
// questions in flight.
type questionGuard struct {
	mu       sync.Mutex
	finished map[uint32]struct{}
}

// check records rm, a message about to be sent, or refuses it.
func (g *questionGuard) check(rm rpccp.Message) error {
	switch rm.Which() {
	case rpccp.Message_Which_finish:
		fin, err := rm.Finish()
		if err != nil {
			return nil
		}
		g.mu.Lock()
		if g.finished == nil {
			g.finished = make(map[uint32]struct{})
		}
		g.finished[fin.QuestionId()] = struct{}{}
		g.mu.Unlock()
	case rpccp.Message_Which_bootstrap:
		b, err := rm.Bootstrap()
		if err != nil {
			return nil
		}
		g.mu.Lock()
		delete(g.finished, b.QuestionId())
		g.mu.Unlock()
	case rpccp.Message_Which_call:
		call, err := rm.Call()
		if err != nil {
			return nil
		}
		q := call.QuestionId()
		g.mu.Lock()
		defer g.mu.Unlock()
		if tgt, err := call.Target(); err == nil && tgt.Which() == rpccp.MessageTarget_Which_promisedAnswer {
			if pa, err := tgt.PromisedAnswer(); err == nil {
				on := pa.QuestionId()
				if on == q {
					return fmt.Errorf("%w: call (question %d) pipelined on its own question ID, which go-capnp had finished and reused (go-capnp #626); it was not sent: make it again, on the resolved capability", ErrLateCall, q)
				}
				if _, done := g.finished[on]; done {
					return fmt.Errorf("%w: call (question %d) pipelined on question %d, which go-capnp had already finished (go-capnp #626); it was not sent: make it again, on the resolved capability", ErrLateCall, q, on)
				}
			}
		}
		delete(g.finished, q)
	}
	return nil
}
