package rpc

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
)

// The shared-memory transport is a portable link over an endpoint that a
// rendezvous built, one per system:
//
//	rendezvous (per system)                 link (portable, this file and link_*.go)
//	rendezvous_linux.go   unix socket,      link.go         Transport, lifetime
//	                      SCM_RIGHTS,       link_send.go    NewMessage, Send: inline,
//	                      SO_PEERCRED                       by reference, on the socket
//	rendezvous_windows.go named pipe,       link_pending.go FREE and UNMAP records owed
//	                      DuplicateHandle,  link_recv.go    RecvMessage, the records
//	                      the token's SID   link_held.go    this side's messages the peer holds
//	handshake.go   HELLO / REFUSE over      link_peer.go    the socket reader: the peer's
//	               either: an endpoint                      mappings, socket messages
//	endpoint.go    pools, rings, bells,     link_mapper.go  this side's dedicated mappings
//	               peer identity, frames    link_close.go   Close, unmapping at the end
//
// The handshake returns a complete endpoint or an error, never half of
// one; newLink cannot fail. Each part below owns its fields and its lock;
// nothing else touches them except through the part's methods.
//
// Lock order (a lock may be taken while holding those before it, never
// the reverse):
//
//	send.mu  (Send, pending flushes, Close)
//	  recv.mu  (RecvMessage, Close)
//	    segalloc's locks (arena releases, Map)
//	      held.mu, peer.mu, pend.mu, mapper.mu, rooms.mu, the frame
//	      connection's write lock: leaves, never held while another lock
//	      is taken (rooms.mu is also taken under the engine's Conn.mu)
//
// Code that holds recv.mu or a leaf and wants send.mu (a FREE owed from
// RecvMessage, an UNMAP from an arena's release) only ever tries it
// (TryLock) and otherwise hands the work to the flush goroutine.

// Transport carries go-capnp's rpc.Conn (or capnshm's Conn) over shared
// memory: it implements capnproto.org/go/capnp/v3/rpc/transport.Transport.
// Get one from NewTransport on each end of a rendezvous connection, or let
// Dial and a Server make one.
type Transport struct {
	opts transportConfig
	side Side
	log  *slog.Logger
	ep   *endpoint // what the handshake built; its fields never change

	life  lifetime  // link.go, link_close.go
	send  sendState // link_send.go
	pend  pendState // link_pending.go
	recv  recvState // link_recv.go
	rooms roomTable // link_rooms.go
	held  heldState // link_held.go
	peer  peerState // link_peer.go
	stats counters  // link_stats.go
}

// lifetime is the transport's life: running, failed (the first cause
// wins), closed, finalized. Its fields are atomics, a context and a
// sync.Once, safe without a lock.
type lifetime struct {
	ctx        context.Context
	cancel     context.CancelCauseFunc
	closed     atomic.Bool
	closeOnce  sync.Once
	closeErr   error // set inside closeOnce
	wg         sync.WaitGroup
	finalLocal atomic.Bool
	// liveLocal and liveIn count messages built here and received, not
	// yet released: this side's memory is unmapped once both are zero
	// after Close.
	liveLocal, liveIn atomic.Int64
}

// NewTransport runs the handshake on conn, a rendezvous connection (Linux:
// a connected *net.UnixConn; Windows: a named-pipe connection from
// DialPipe, or from Accept of ListenPipe's listener), as side, and returns
// a transport that carries messages through shared memory. conn stays
// open for the transport's life (it detects the peer's death, carries
// handles and fallback messages); the transport closes it. On error
// (including an invalid option, ErrBadOption, and a conn of another kind,
// ErrUnsupported) conn is closed and everything made so far is released.
// The options that apply are listed under Option.
//
// On Windows the pipe's server end duplicates the handles both ways (it
// opens the client's process with PROCESS_DUP_HANDLE), whichever side it
// is in the handshake: the client must trust the server's process, which
// it checks (the pipe's server process and its user) before it speaks.
func NewTransport(ctx context.Context, conn net.Conn, side Side, opts ...Option) (*Transport, error) {
	cfg, err := newConfig(nil, opts)
	if err != nil {
		conn.Close()
		return nil, err
	}
	rv, err := newRendezvous(conn, side)
	if err != nil {
		conn.Close()
		return nil, err
	}
	t, _, err := newTransport(ctx, rv, side, &cfg.opts)
	if err != nil {
		conn.Close()
		return nil, err
	}
	return t, nil
}

// newTransport is NewTransport on a rendezvous, except that a handshake
// that ended cleanly without shared memory leaves the connection open:
// fallbackOK is true when this side refused the peer (and said so with
// REFUSE), the peer refused (REFUSE received), or the dialer could not set
// up shared memory before sending anything. The connection is then
// positioned after the handshake's frames, ready for a stream transport.
// On any other error it is closed.
func newTransport(ctx context.Context, rv rendezvous, side Side, opts *transportConfig) (t *Transport, fallbackOK bool, err error) {
	o := opts.withDefaults()
	log := o.Logger.With("side", side.String())
	ep, fallbackOK, err := handshake(ctx, rv, side, &o)
	if err != nil {
		if fallbackOK {
			rv.detach()
		} else {
			rv.Close()
		}
		return nil, fallbackOK, err
	}
	log.Debug("capnshm: connected", "peer_pid", ep.peer.pid, "peer_user", ep.peer.user, "peer_pool", ep.theirs.pool.r.Len(), "peer_ring", ep.theirs.ring.Len())
	return newLink(ep, side, o, log), false, nil
}

// newLink starts the link over ep, which it owns from now on.
func newLink(ep *endpoint, side Side, o transportConfig, log *slog.Logger) *Transport {
	t := &Transport{opts: o, side: side, log: log, ep: ep}
	t.life.ctx, t.life.cancel = context.WithCancelCause(context.Background())
	t.pend.init()
	t.held.init()
	t.peer.init()
	ep.mine.mapper.t = t
	t.recv.in, t.send.out = ep.in, ep.out
	t.life.wg.Add(2)
	go t.readSocket()
	go t.flushLoop()
	ep.rv.watchPeer(func(err error) { t.fail(fmt.Errorf("%w: %w", ErrPeerGone, err)) })
	return t
}

// PeerPID returns the process id of the peer, as the system reported it
// (SO_PEERCRED; GetNamedPipeClientProcessId or ...ServerProcessId).
func (t *Transport) PeerPID() int { return t.ep.peer.pid }

// PeerMaxMessage returns the largest message the peer accepts (its HELLO).
func (t *Transport) PeerMaxMessage() uint64 { return t.ep.peerMax }

// ownedByEngine drops the guards only go-capnp's Conn needs: capnshm's
// engine runs on this transport (see engineOwned). Called before the first
// message.
func (t *Transport) ownedByEngine() { t.send.noGuards.Store(true) }

// Err returns why the transport stopped: nil while it runs, ErrClosed after
// Close, or the error that ended it (ErrPeerGone, ErrProtocol, ...).
func (t *Transport) Err() error {
	if t.life.ctx.Err() == nil {
		return nil
	}
	return context.Cause(t.life.ctx)
}

// errPeerBye: the peer closed the connection in order (a BYE frame).
var errPeerBye = errors.New("the peer closed the connection")

// fail ends the connection with err (the first cause wins).
func (t *Transport) fail(err error) {
	if t.life.ctx.Err() == nil {
		if errors.Is(err, errPeerBye) {
			t.log.Info("capnshm: connection closed by the peer")
		} else {
			t.log.Warn("capnshm: connection failed", "err", err)
		}
	}
	t.life.cancel(err)
}

// cause returns why the transport stopped.
func (t *Transport) cause() error {
	if err := context.Cause(t.life.ctx); err != nil {
		return err
	}
	return ErrClosed
}

// stopped reports whether the transport was closed or has failed.
func (t *Transport) stopped() bool { return t.life.closed.Load() || t.life.ctx.Err() != nil }

// peerGone reports whether the connection ended because the peer closed it
// or died, rather than by Close or a fault found here.
func (t *Transport) peerGone() bool {
	return t.life.ctx.Err() != nil && errors.Is(context.Cause(t.life.ctx), ErrPeerGone)
}
