package rpc

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	capnp "capnproto.org/go/capnp/v3"
	"capnproto.org/go/capnp/v3/flowcontrol"
	"capnproto.org/go/capnp/v3/rpc/transport"
)

// Conn is one Cap'n Proto RPC connection, run by capnshm's engine: the
// two-party protocol of rpc.capnp at Level 1 (bootstrap, calls, every kind
// of return, tail calls, promise pipelining to any depth, resolve, release,
// embargoes, abort) over a go-capnp transport.Transport: capnshm's shared
// memory Transport, its StreamTransport (what C++ EZ-RPC speaks), an end of
// its in-process Pipe, or any other. Get one from Dial, from a Server (handlers find theirs with
// PeerFromContext), or from NewConn.
//
// Capabilities received from the peer are capnp.Clients; local objects
// (go-capnp's server.Server, what generated X_ServerToClient returns) are
// exported as they are passed. Params and results are built in the
// transport's messages, so over shared memory they are written and read in
// place.
type Conn struct {
	t       transport.Transport
	peerMax uint64           // the largest message the peer accepts; 0: unknown
	shm     *Transport       // t, when it is the shared-memory transport
	stream  *StreamTransport // t, when it is the stream transport
	addr    Addr             // the address dialled, or listened on
	peer    Peer
	log     *slog.Logger
	boot    capnp.Client // what the peer's Bootstrap gets; owned
	key     *connKey     // this connection in capnp.Metadata

	flowWindow int64 // WithFlowWindow
	flowOnce   sync.Once
	flow       flowcontrol.FlowLimiter

	// ctx is the base of every handler's context: it carries the peer and
	// ends when the connection does.
	ctx    context.Context
	cancel context.CancelCauseFunc

	// mu guards the tables and the state below. Lock order: a client's
	// capnp.Metadata, then mu, then out.mu. Nothing is called with mu held
	// that could call back into the Conn or block: user code, capnp's
	// Promise.Resolve and Client.Release, transport sends.
	mu        sync.Mutex
	closing   bool  // shutdown has begun: tables are empty, nothing new starts
	err       error // why the connection ended (with closing)
	questions idTable[*question]
	answers   map[uint32]*answer
	exports   idTable[*export]
	imports   map[uint32]*importEntry
	embargoes idTable[*embargo]
	// bootResults are the Returns of this side's bootstraps, kept until
	// the connection ends (see finishBootstrap).
	bootResults []transport.IncomingMessage
	// watch is the most recent context watch (conn_ctxwatch.go).
	watch *ctxWatch

	out sender

	liveness   time.Duration // WithLiveness; 0: off
	lastRecv   atomicTime    // when the last message arrived
	readerDone chan struct{}
	done       chan struct{}
}

// connKey identifies a Conn in the capnp.Metadata of the clients it
// exports: the metadata maps it to the export ID.
type connKey struct{ c *Conn }

// NewConn runs capnshm's engine over t, a transport whose peer runs a
// Cap'n Proto RPC connection on the other end (capnshm's, go-capnp's or
// C++'s), and returns the connection; it owns t from now on and closes it
// when the connection ends. bootstrap is what the peer's Bootstrap gets
// (the zero Client: none); NewConn takes over the reference, and releases
// it if it fails. Options that apply: WithLogger, WithFlowWindow,
// WithLiveness, WithMaxMessage (on a stream transport made here).
func NewConn(t transport.Transport, bootstrap capnp.Client, opts ...Option) (*Conn, error) {
	cfg, err := newConfig(nil, opts)
	if err != nil {
		bootstrap.Release()
		t.Close()
		return nil, err
	}
	return newConn(t, cfg, bootstrap, Peer{}), nil
}

// newConn makes a Conn over t and starts it.
func newConn(t transport.Transport, cfg *config, boot capnp.Client, peer Peer) *Conn {
	if o, ok := t.(engineOwned); ok {
		o.ownedByEngine() // before the first message either way
	}
	c := &Conn{
		t:          t,
		peer:       peer,
		boot:       boot,
		flowWindow: cfg.flowWindow,
		liveness:   cfg.liveness,
		answers:    make(map[uint32]*answer),
		imports:    make(map[uint32]*importEntry),
		readerDone: make(chan struct{}),
		done:       make(chan struct{}),
	}
	c.key = &connKey{c}
	c.log = cfg.logger
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	switch tt := t.(type) {
	case *Transport:
		c.shm = tt
	case *StreamTransport:
		c.stream = tt
	}
	if pm, ok := t.(interface{ PeerMaxMessage() uint64 }); ok {
		c.peerMax = pm.PeerMaxMessage()
	}
	c.ctx, c.cancel = context.WithCancelCause(context.WithValue(context.Background(), peerKey{}, &c.peer))
	c.out.init(c)
	c.lastRecv.store(time.Now())
	go c.receive()
	if c.liveness > 0 {
		go c.watchLiveness()
	}
	return c
}

// Bootstrap returns the peer's bootstrap capability. It returns at once:
// calls on it are pipelined until the peer answers, and fail if the peer
// has none or the connection ends. ctx bounds the wait for that answer: if
// it ends first, the capability fails with ctx's error and the connection
// goes on. The caller releases it.
func (c *Conn) Bootstrap(ctx context.Context) capnp.Client {
	if err := ctx.Err(); err != nil {
		return capnp.ErrorClient(failed(fmt.Errorf("capnshm: bootstrap: %w", err)))
	}
	return c.bootstrap(ctx)
}

// Done is closed when the connection has ended (closed here, by the peer,
// or because the peer died) and everything it ran has stopped.
func (c *Conn) Done() <-chan struct{} { return c.done }

// Err returns why the connection ended: nil while it runs, an error
// wrapping ErrClosed after Close, ErrPeerGone when the peer left or died,
// ErrProtocol when it broke the protocol, or the peer's Abort.
func (c *Conn) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.closing {
		return nil
	}
	return c.err
}

// Close ends the connection: outstanding calls, in both directions, fail
// with a disconnected error (ErrClosed), the handlers' contexts end, and
// the peer sees the connection end. It waits until everything the
// connection ran has stopped, within a bound whatever the peer does. Later
// calls return nil.
func (c *Conn) Close() error {
	c.end(ErrClosed, false)
	<-c.done
	return nil
}

// SharedMemory reports whether the connection runs on shared memory (as
// opposed to a stream transport).
func (c *Conn) SharedMemory() bool { return c.shm != nil }

// RemoteAddr returns the address that was dialled (a Conn from Dial) or the
// listener's address (a Server's Conn); the zero Addr for NewConn.
func (c *Conn) RemoteAddr() Addr { return c.addr }

// Peer returns who is at the other end, as far as the transport knows.
func (c *Conn) Peer() Peer { return c.peer }

// Transport returns the transport the connection runs on.
func (c *Conn) Transport() transport.Transport { return c.t }

// end shuts the connection down with err (the first cause wins): it
// empties the tables, sends the peer an Abort if abort is set (a protocol
// violation found here), closes the transport, and fails everything that
// was outstanding. It does not wait; done closes once the reader and the
// sender have stopped.
func (c *Conn) end(err error, abort bool) {
	c.mu.Lock()
	if c.closing {
		c.mu.Unlock()
		return
	}
	c.closing = true
	c.err = err
	qs, as, es, is, ebs := c.questions, c.answers, c.exports, c.imports, c.embargoes
	boots := c.bootResults
	c.bootResults = nil
	c.questions, c.exports, c.embargoes = idTable[*question]{}, idTable[*export]{}, idTable[*embargo]{}
	c.answers, c.imports = nil, nil
	c.stopWatchLocked()
	c.mu.Unlock()

	c.endLog(err)
	// Nothing more leaves, but the Abort: a handler woken by its context's
	// end below must not answer the peer with that as an exception.
	if abort {
		c.out.abort(err)
	}
	c.out.stop()
	c.cancel(err)
	go c.finishEnd(err, qs, as, es, is, ebs, boots)
}

// endLog logs why the connection ended: a normal end (closed here, the
// peer left) at DEBUG, a fault at WARN.
func (c *Conn) endLog(err error) {
	switch {
	case errors.Is(err, ErrClosed), errors.Is(err, ErrPeerGone):
		c.log.Debug("capnshm: connection ended", "reason", err)
	default:
		c.log.Warn("capnshm: connection failed", "err", err)
	}
}

// finishEnd is end's second half, on a goroutine of its own: it may wait
// for the transport and calls into user code (releasing clients).
func (c *Conn) finishEnd(err error, qs idTable[*question], as map[uint32]*answer, es idTable[*export], is map[uint32]*importEntry, ebs idTable[*embargo], boots []transport.IncomingMessage) {
	c.t.Close()
	for _, in := range boots {
		in.Release()
	}
	dErr := disconnected(err)
	qs.each(func(_ uint32, q *question) { q.fail(dErr) })
	for _, a := range as {
		a.abandon()
	}
	ebs.each(func(_ uint32, e *embargo) { e.fail(dErr) })
	for _, ent := range is {
		ent.fail()
	}
	es.each(func(_ uint32, e *export) { e.drop(c) })
	c.boot.Release()
	<-c.readerDone
	c.out.wait()
	close(c.done)
}

// abortf ends the connection because the peer broke the protocol: it
// tells the peer why (an Abort) and fails everything with the error.
func (c *Conn) abortf(format string, args ...any) {
	c.end(fmt.Errorf("%w: "+format, append([]any{ErrProtocol}, args...)...), true)
}

// abortErr is abortf for an error that already says what was wrong.
func (c *Conn) abortErr(err error) {
	if !errors.Is(err, ErrProtocol) {
		err = fmt.Errorf("%w: %w", ErrProtocol, err)
	}
	c.end(err, true)
}

// closedErr returns the error of a call made after the connection ended.
// Called with mu held.
func (c *Conn) closedErrLocked() error {
	return disconnected(c.err)
}
