package rpc

import (
	"context"
	"sync"

	"capnproto.org/go/capnp/v3/flowcontrol"
	"golang.org/x/sync/semaphore"
)

// Flow control for streaming calls.
//
// Where the bytes of a call in flight live: the caller builds a call's
// parameters in its own pool (go-capnp writes them straight into the
// message the transport handed out), and the peer reads them there, mapped
// read-only, until go-capnp on the peer releases the parameters (right
// after the handler returns) and the peer sends FREE. So the calls this
// side has in flight occupy this side's pool, not the peer's: the peer has
// no receive buffer at all, only the ring of descriptors. A sender that
// outruns its peer fills its own pool, then overflow mappings, then the heap
// (copied onto the socket), and finally its calls fail with an allocation
// error. The window that matters is therefore the free space of the
// caller's own pool, and Conn.FlowLimiter sizes its window from it.
//
// The peer sends FREE before the Return of the same call (it releases the
// parameters before it returns, and pending FREE records go out ahead of
// the next message), so by the time go-capnp resolves the answer, and the
// limiter's gotResponse runs, the call's memory is back in the pool.

// DefaultStreamFlowWindow is the window of Conn.FlowLimiter on a connection
// that runs the stream transport: the bytes of calls in flight, queued in
// go-capnp's send queue (heap) and in the socket, before the next call
// waits.
const DefaultStreamFlowWindow = 8 << 20

// WithFlowWindow sets the window of Conn.FlowLimiter: how many bytes of
// calls may be in flight (sent and not yet answered) before the next call
// through the limiter waits. By default it is half of this side's pool on
// shared memory (the other half absorbs the allocator's rounding to powers
// of two, the Returns this side builds for the peer's calls, and the one
// message go-capnp builds before it asks the limiter), and
// DefaultStreamFlowWindow on the stream transport.
func WithFlowWindow(n int64) Option {
	return func(c *config) {
		if n <= 0 {
			c.bad("WithFlowWindow(%d): want a positive number of bytes", n)
			return
		}
		c.flowWindow = n
	}
}

// FlowLimiter returns the connection's flow limiter, for the capabilities
// that stream large calls over it:
//
//	stream := capability.AddRef() // a reference of its own, for streaming only
//	defer stream.Release()
//	stream.SetFlowLimiter(conn.FlowLimiter())
//	for ... { call a "-> stream" method of stream } // waits while the window is full
//	err := stream.WaitStreaming()
//
// On shared memory it is a window over this side's pool (see WithFlowWindow):
// each call takes its message size from the window, and gives it back when
// its answer arrives, when the peer has freed the call's memory. A message
// larger than the window takes the whole window, so it waits until nothing
// else is in flight and never deadlocks. On the stream transport it is
// go-capnp's flowcontrol.NewFixedLimiter with DefaultStreamFlowWindow (or
// WithFlowWindow), with the same clamping.
//
// Every call returns the same limiter, because every capability of the
// connection shares the one pool: its Release does nothing, so releasing
// a client that uses it (go-capnp releases the limiter with the client)
// leaves it working for the others.
//
// Install it on the capabilities that stream, not on every client: go-capnp
// applies a client's limiter to all of its calls, and the window is FIFO, so
// a small call made through a client that shares the limiter waits behind
// the queued large ones. Use a separate reference (AddRef) for the stream,
// as above: AddRef returns a client with no limiter, and the other calls on
// the connection go through unthrottled. go-capnp never limits Returns,
// Finish, Release or calls forwarded from elsewhere; the transport still
// handles exhaustion for those (overflow mappings, then the heap).
func (c *Conn) FlowLimiter() flowcontrol.FlowLimiter {
	c.flowOnce.Do(func() {
		if c.shm != nil {
			if pool := c.shm.Stats().Pool.PoolSize; pool > 0 {
				w := c.flowWindow
				if w <= 0 {
					w = pool / 2
				}
				c.flow = NewFlowLimiter(w)
				return
			}
		}
		w := c.flowWindow
		if w <= 0 {
			w = DefaultStreamFlowWindow
		}
		c.flow = &clampLimiter{inner: flowcontrol.NewFixedLimiter(w), max: uint64(w)}
	})
	return c.flow
}

// NewFlowLimiter returns a flow limiter with a window of window bytes (at
// least 1): a weighted semaphore where each call takes its message size,
// clamped to the window, until its answer arrives. It can be shared by many
// clients: its Release does nothing. Conn.FlowLimiter returns one sized to
// the connection's pool; this is for the other cases, such as a server
// streaming to a capability its client passed in.
func NewFlowLimiter(window int64) flowcontrol.FlowLimiter {
	window = max(window, 1)
	return &windowLimiter{window: uint64(window), sem: semaphore.NewWeighted(window)}
}

// windowLimiter is NewFlowLimiter's limiter.
type windowLimiter struct {
	window uint64
	sem    *semaphore.Weighted
}

func (l *windowLimiter) StartMessage(ctx context.Context, size uint64) (func(), error) {
	n := int64(min(size, l.window))
	if err := l.sem.Acquire(ctx, n); err != nil {
		return nil, err
	}
	var once sync.Once
	return func() { once.Do(func() { l.sem.Release(n) }) }, nil
}

// Release does nothing: the limiter is shared by the clients that use it.
func (l *windowLimiter) Release() {}

// clampLimiter clamps message sizes to what inner accepts:
// flowcontrol.NewFixedLimiter panics on a message larger than its limit.
type clampLimiter struct {
	inner flowcontrol.FlowLimiter
	max   uint64
}

func (l *clampLimiter) StartMessage(ctx context.Context, size uint64) (func(), error) {
	return l.inner.StartMessage(ctx, min(size, l.max))
}

// Release does nothing: the limiter is shared by the connection's clients.
func (l *clampLimiter) Release() {}
