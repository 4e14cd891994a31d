package loop

import (
	"errors"
	"fmt"

	"capnproto.org/go/capnp/v3/exc"
)

// Errors of the loop. Post, Do and the watches return them wrapped in a
// *exc.Exception (capnproto.org/go/capnp/v3/exc), so that a handler bound
// with BindServer hands them to RPC callers as Cap'n Proto exceptions of the
// right type; match them with errors.Is.
var (
	// ErrClosed: the loop was closed before the work could run. An RPC
	// caller sees a disconnected exception.
	ErrClosed = errors.New("loop: closed")
	// ErrOverloaded: the priority's queue already holds Options.MaxQueued
	// tasks. An RPC caller sees an overloaded exception.
	ErrOverloaded = errors.New("loop: overloaded: too many queued tasks")
	// ErrWouldDeadlock: work for this loop was requested, with the context
	// of a task that is still running on this loop (directly, or through
	// other loops), from another goroutine. The task would wait for work
	// that can only run once it returns, so the request fails instead of
	// hanging. An RPC caller sees a failed exception.
	ErrWouldDeadlock = errors.New("loop: would deadlock: waiting on the loop from a task of the same loop")
)

// closedError is ErrClosed for operation op.
func closedError(op string) error {
	return &exc.Exception{Type: exc.Disconnected, Cause: fmt.Errorf("%w (%s)", ErrClosed, op)}
}

// overloadedError is ErrOverloaded for a queue of priority p holding n tasks.
func overloadedError(p Priority, n int) error {
	return &exc.Exception{Type: exc.Overloaded,
		Cause: fmt.Errorf("%w: %d %s-priority tasks queued, the limit (Options.MaxQueued)", ErrOverloaded, n, p)}
}

// deadlockError is ErrWouldDeadlock; depth counts the other loops between
// the request and the task of this loop that waits for it.
func deadlockError(depth int) error {
	how := "a task that is still running on this loop"
	if depth > 0 {
		how += fmt.Sprintf(", through tasks of %d other loop(s)", depth)
	}
	return &exc.Exception{Type: exc.Failed,
		Cause: fmt.Errorf("%w (the request carries the context of %s)", ErrWouldDeadlock, how)}
}

func errInvalidPriority(p Priority) error { return fmt.Errorf("loop: invalid priority %d", p) }
