package rpc

import (
	"errors"
	"fmt"

	"capnproto.org/go/capnp/v3/exc"
	"capnproto.org/go/capnp/v3/rpc/transport"
	rpccp "capnproto.org/go/capnp/v3/std/capnp/rpc"
)

// Errors. Match them with errors.Is; each error capnshm returns wraps one
// and says what happened once.
//
// Every error a caller gets because the peer or the connection is gone, on
// every transport (the peer closed or died, the connection was closed here,
// a socket error), satisfies both errors.Is(err, ErrDisconnected) and
// capnp.IsDisconnected(err): ErrPeerGone and ErrClosed are kinds of
// ErrDisconnected.
var (
	// ErrDisconnected: the connection is gone: the peer closed it, died or
	// aborted it, or it was closed here.
	ErrDisconnected = errors.New("capnshm: disconnected")
	// ErrPeerGone: the peer closed the connection or died. It is an
	// ErrDisconnected.
	ErrPeerGone error = &kindOf{"capnshm: peer disconnected", ErrDisconnected}
	// ErrClosed: the connection or transport was closed here. It is an
	// ErrDisconnected.
	ErrClosed error = &kindOf{"capnshm: connection closed", ErrDisconnected}

	// ErrRefused: the peer refused the handshake (the error carries its
	// reason), or this side refused the peer's.
	ErrRefused = errors.New("capnshm: handshake refused")
	// ErrProtocol: the peer broke the protocol (a corrupt ring, record,
	// frame or RPC message). The connection is aborted; the error names
	// what was wrong.
	ErrProtocol = errors.New("capnshm: protocol violation by the peer")
	// ErrTooLarge: a message is larger than its receiver accepts (see
	// WithMaxMessage). A call that large fails alone; so does a call whose
	// results are that large (its caller gets an exception instead).
	ErrTooLarge = errors.New("capnshm: message too large")
	// ErrLateCall: go-capnp v3.0.1-alpha.2 (its rpc.Conn, run over a
	// capnshm transport) tried to send a call pipelined on a question it
	// had already finished: a call on a pipelined capability that raced the
	// Return resolving it (go-capnp #626). The transport does not send it,
	// since the peer would abort the connection (or, if it is go-capnp and
	// the call took the finished question's ID, crash); that call fails
	// with this error, the connection goes on, and the same call made again
	// goes to the resolved capability. capnshm's own Conn never sends such
	// calls.
	ErrLateCall = errors.New("capnshm: call pipelined on a finished question")
	// ErrLimit: the peer reached one of this side's limits on what one
	// peer may make it spend (WithMaxConns, WithMaxPeerMappings,
	// WithMaxSocketBytes, WithMaxPeerPool and the others): that connection
	// is refused or ended, and the error names the limit.
	ErrLimit = errors.New("capnshm: limit reached")
	// ErrUnsupported: the feature is not available on this system (a named
	// pipe on Linux, an abstract unix socket on Windows), or a rendezvous
	// connection of the wrong kind was given to NewTransport.
	ErrUnsupported = errors.New("capnshm: not supported on this system")
)

// kindOf is a sentinel error that is also a kind of a more general one.
type kindOf struct {
	msg  string
	kind error
}

func (k *kindOf) Error() string        { return k.msg }
func (k *kindOf) Is(target error) bool { return target == k.kind }

// disconnected returns err as a Cap'n Proto disconnected exception, which
// capnp.IsDisconnected recognises, wrapping ErrDisconnected (err already
// does, or is made to).
func disconnected(err error) *exc.Exception {
	var e *exc.Exception
	if errors.As(err, &e) && e.Type == exc.Disconnected && errors.Is(err, ErrDisconnected) {
		return e
	}
	if !errors.Is(err, ErrDisconnected) {
		err = fmt.Errorf("%w: %w", ErrDisconnected, err)
	}
	return &exc.Exception{Type: exc.Disconnected, Cause: err}
}

// failed returns err as a Cap'n Proto exception of type failed, unless it
// is an exception already.
func failed(err error) *exc.Exception {
	var e *exc.Exception
	if errors.As(err, &e) {
		return e
	}
	return &exc.Exception{Type: exc.Failed, Cause: err}
}

// fromException makes the error of an exception received from the peer:
// an *exc.Exception of its type (failed for an unknown one) whose text is
// the peer's reason.
func fromException(e rpccp.Exception) *exc.Exception {
	reason, _ := e.Reason()
	t := exc.Failed
	switch e.Type() {
	case rpccp.Exception_Type_overloaded:
		t = exc.Overloaded
	case rpccp.Exception_Type_disconnected:
		t = exc.Disconnected
	case rpccp.Exception_Type_unimplemented:
		t = exc.Unimplemented
	}
	return &exc.Exception{Type: t, Cause: remoteError(reason)}
}

// remoteError is the text of an exception from the peer.
type remoteError string

func (r remoteError) Error() string { return string(r) }

// toException writes err into e: its Cap'n Proto type (failed unless err
// is an exception of another type) and its text.
func toException(e rpccp.Exception, err error) error {
	var t rpccp.Exception_Type
	switch exc.TypeOf(exceptionOf(err)) {
	case exc.Overloaded:
		t = rpccp.Exception_Type_overloaded
	case exc.Disconnected:
		t = rpccp.Exception_Type_disconnected
	case exc.Unimplemented:
		t = rpccp.Exception_Type_unimplemented
	default:
		t = rpccp.Exception_Type_failed
	}
	e.SetType(t)
	return e.SetReason(err.Error())
}

// exceptionOf returns the first *exc.Exception in err's chain, or err.
func exceptionOf(err error) error {
	var e *exc.Exception
	if errors.As(err, &e) {
		return e
	}
	return err
}

// allocCause adds the allocator's own error to err, an error met while
// building om: go-capnp reports a failed allocation as text only, and with
// the cause attached callers can test errors.Is(err, segalloc.ErrExhausted).
func allocCause(om transport.OutgoingMessage, err error) error {
	a, ok := om.(interface{ allocErr() error })
	if !ok {
		return err
	}
	cause := a.allocErr()
	if cause == nil || errors.Is(err, cause) {
		return err
	}
	return &withCause{err: err, cause: cause}
}

// withCause is err, which says it all, with a cause that its chain lost.
type withCause struct{ err, cause error }

func (e *withCause) Error() string   { return e.err.Error() }
func (e *withCause) Unwrap() []error { return []error{e.err, e.cause} }
