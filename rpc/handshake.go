package rpc

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/capnshm/capnshm/ringbuf"
	"github.com/capnshm/capnshm/rpc/internal/wire"
)

// rendezvous is one system's rendezvous connection, as the handshake and
// the link use it: a byte stream carrying frames whose handles travel the
// system's way (Linux: SCM_RIGHTS; Windows: DuplicateHandle), with the
// peer's identity as the system vouches for it.
type rendezvous interface {
	// frames returns the frame connection over the rendezvous.
	frames() *wire.FrameConn
	// setDeadline bounds every read and write (the zero time: none);
	// setWriteDeadline only the writes.
	setDeadline(time.Time) error
	setWriteDeadline(time.Time) error
	// identify learns who the peer is from the system (not from anything
	// the peer says), before the first frame is read; checkUser then
	// applies the same-user policy to it.
	identify() (peerID, error)
	checkUser(id peerID, allowOthers bool) error
	// watchPeer calls gone, once, if the system says the peer process
	// ended while the connection runs (Windows: its process handle is
	// signalled), besides the end of the stream that says it everywhere.
	watchPeer(gone func(error))
	// shutdown starts the end of the connection at Close, after BYE: it
	// stops what watchPeer started, and makes the link's reader stop
	// within byeTimeout. Close then releases everything, once nothing
	// reads or writes any more.
	shutdown() error
	// Close closes the connection and everything the rendezvous holds;
	// detach releases what it holds besides the connection itself (a
	// handshake that ended in a fallback: the stream transport goes on
	// with the connection).
	Close() error
	detach()
}

// peerID is the peer's identity as the system reported it.
type peerID struct {
	pid int
	//lint:ignore U1000 the Linux rendezvous reads it; the Windows one will (userKey)
	uid  int    // Linux: the uid; Windows: a number for user (userKey)
	user string // Linux: the uid in decimal; Windows: the token's user SID
}

// handshake runs the handshake on rv as side and returns the endpoint.
// On error, fallbackOK says whether it ended cleanly, the connection left
// usable for a stream transport (see newTransport); the caller closes rv
// otherwise. Nothing it made is left behind.
//
// The dialer speaks first: HELLO with its four handles (pool, ring, data
// and space doorbells). The listener checks who the dialer is before it
// makes anything, then answers HELLO with its own, or REFUSE with the
// reason (another user, a limit, another version, no shared memory here).
func handshake(ctx context.Context, rv rendezvous, side Side, o *transportConfig) (ep *endpoint, fallbackOK bool, err error) {
	deadline := time.Now().Add(o.HandshakeTimeout)
	ctxDeadline := false // the context's deadline comes first
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline, ctxDeadline = d, true
	}
	rv.setDeadline(deadline)
	defer rv.setDeadline(time.Time{})
	stop := context.AfterFunc(ctx, func() { rv.setDeadline(time.Unix(1, 0)) })
	defer stop()
	defer func() {
		// A read or write cut short by the deadline: say which one ran out.
		if err == nil || !errors.Is(err, os.ErrDeadlineExceeded) {
			return
		}
		cerr := context.Cause(ctx)
		if cerr == nil && ctxDeadline {
			// The connection's deadline, which is the context's, can
			// pass a moment before the context's own timer fires.
			cerr = context.DeadlineExceeded
		}
		if cerr != nil {
			err = fmt.Errorf("capnshm: the handshake did not finish before the context ended: %w: %w", cerr, err)
		} else {
			err = fmt.Errorf("capnshm: the handshake did not finish within %v (WithHandshakeTimeout): %w", o.HandshakeTimeout, err)
		}
	}()
	id, idErr := rv.identify()
	hs := &handshaker{rv: rv, fc: rv.frames(), o: o}

	if side == Listener {
		peer, fds, err := hs.readHello()
		if errors.Is(err, wire.ErrVersion) {
			// A whole HELLO of another version: say so, so that the
			// dialer can fall back.
			return hs.refuse(0, err.Error(), err)
		}
		if err != nil {
			return nil, false, err
		}
		if err := hs.checkPeer(id, idErr, peer); err != nil {
			wire.CloseFDs(fds)
			return hs.refuse(peer.MaxMessage, err.Error(), err)
		}
		m, err := makeMine(o)
		if err != nil {
			wire.CloseFDs(fds)
			return hs.refuse(peer.MaxMessage, "listener could not set up shared memory", err)
		}
		th, err := adoptTheirs(peer, fds, o)
		if err != nil {
			m.close()
			return hs.refuse(peer.MaxMessage, err.Error(), err)
		}
		ep := newEndpoint(rv, hs.fc, m, th, id, peer, o)
		if err := hs.sendHello(m); err != nil {
			ep.close()
			return nil, false, err
		}
		return ep, false, nil
	}
	m, err := makeMine(o)
	if err != nil {
		return nil, true, err // nothing sent yet
	}
	if err := hs.sendHello(m); err != nil {
		m.close()
		return nil, false, err
	}
	peer, fds, err := hs.readHello()
	if err != nil {
		m.close()
		// A REFUSE frame was read whole: the stream is at a frame
		// boundary, and the stream transport follows unless the listener
		// said it closes.
		var rf *refusal
		return nil, errors.As(err, &rf) && !rf.noFallback, err
	}
	if err := hs.checkPeer(id, idErr, peer); err != nil {
		wire.CloseFDs(fds)
		m.close()
		return nil, false, err
	}
	th, err := adoptTheirs(peer, fds, o)
	if err != nil {
		m.close()
		return nil, false, err
	}
	return newEndpoint(rv, hs.fc, m, th, id, peer, o), false, nil
}

// handshaker holds a handshake's connection and options.
type handshaker struct {
	rv rendezvous
	fc *wire.FrameConn
	o  *transportConfig
}

func (hs *handshaker) sendHello(m *mine) error {
	var b [wire.HelloSize]byte
	features := wire.FeatureDedicated
	if hs.o.Engine {
		features |= wire.FeatureTailCalls
	}
	n, err := wire.PutHello(b[:], wire.Hello{
		Version:    wire.Version,
		Features:   features,
		PoolSize:   uint64(m.pool.Len()),
		RingSize:   uint64(m.ring.Len()),
		MaxMessage: uint64(hs.o.MaxMessage),
		PID:        uint32(os.Getpid()),
	})
	if err != nil {
		return fmt.Errorf("capnshm: encoding hello: %w", err)
	}
	if err := hs.fc.WriteFrame(wire.FrameHello, 0, b[:n], m.handles()); err != nil {
		return fmt.Errorf("capnshm: sending hello: %w", err)
	}
	return nil
}

func (hs *handshaker) readHello() (wire.Hello, []wire.FD, error) {
	hdr, payload, fds, err := hs.fc.ReadFrame(0) // no MSG frame before the handshake ends
	if errors.Is(err, wire.ErrMalformed) {
		return wire.Hello{}, nil, fmt.Errorf("%w: the peer's hello: %w", ErrProtocol, err)
	}
	if err != nil {
		return wire.Hello{}, nil, fmt.Errorf("capnshm: reading the peer's hello: %w", err)
	}
	switch hdr.Type {
	case wire.FrameRefuse:
		wire.CloseFDs(fds)
		r, err := wire.ParseRefuse(payload)
		if err != nil {
			return wire.Hello{}, nil, &refusal{err: fmt.Errorf("%w: %v", ErrRefused, err)}
		}
		return wire.Hello{}, nil, &refusal{
			err:        fmt.Errorf("%w by the peer: %s", ErrRefused, r.Reason),
			peerMax:    r.MaxMessage,
			noFallback: r.Flags&wire.RefuseNoFallback != 0,
		}
	case wire.FrameHello:
	default:
		wire.CloseFDs(fds)
		return wire.Hello{}, nil, fmt.Errorf("%w: expected a hello, got frame type %d", ErrProtocol, hdr.Type)
	}
	h, err := wire.ParseHello(payload)
	if err != nil {
		wire.CloseFDs(fds)
		return wire.Hello{}, nil, fmt.Errorf("%w: %w", ErrProtocol, err)
	}
	return h, fds, nil
}

// refuse answers REFUSE with reason, for err: it returns no endpoint,
// whether the stream transport may follow (the REFUSE was sent and offers
// it) and err as a refusal that knows the peer's limit (peerMax, from its
// HELLO).
func (hs *handshaker) refuse(peerMax uint64, reason string, err error) (*endpoint, bool, error) {
	sent := sendRefuse(hs.fc, wire.Refuse{Reason: reason, Flags: hs.o.refuseFlags(), MaxMessage: uint64(hs.o.withDefaults().MaxMessage)}) == nil
	return nil, sent && !hs.o.NoFallback, &refusal{err: err, peerMax: peerMax, noFallback: hs.o.NoFallback}
}

// checkPeer applies the credential and size policy to the peer's hello.
func (hs *handshaker) checkPeer(id peerID, idErr error, h wire.Hello) error {
	if idErr != nil {
		return fmt.Errorf("capnshm: reading the peer's credentials: %w", idErr)
	}
	if err := hs.rv.checkUser(id, hs.o.AllowOtherUsers); err != nil {
		return err
	}
	if h.PoolSize > uint64(hs.o.MaxPeerPool) {
		return fmt.Errorf("%w: %w: the peer's pool of %d bytes is over this side's limit of %d (WithMaxPeerPool)", ErrRefused, ErrLimit, h.PoolSize, hs.o.MaxPeerPool)
	}
	if maxRing := uint64(ringbuf.SizeFor(min(hs.o.MaxPeerRing, ringbuf.MaxCapacity))); h.RingSize > maxRing {
		return fmt.Errorf("%w: %w: the peer's ring of %d bytes is over this side's limit of %d (WithMaxPeerRing, a capacity of %d)", ErrRefused, ErrLimit, h.RingSize, maxRing, min(hs.o.MaxPeerRing, ringbuf.MaxCapacity))
	}
	return nil
}

// sendRefuse writes a REFUSE frame carrying rf, its reason without any
// leading "handshake refused: " and cut to wire.MaxRefuseReason bytes.
func sendRefuse(fc *wire.FrameConn, rf wire.Refuse) error {
	reason := strings.TrimPrefix(rf.Reason, ErrRefused.Error()+": ")
	if len(reason) > wire.MaxRefuseReason {
		reason = strings.ToValidUTF8(reason[:wire.MaxRefuseReason], "")
	}
	rf.Reason, rf.Version = reason, wire.Version
	b := make([]byte, wire.RefuseSize(rf))
	n, err := wire.PutRefuse(b, rf)
	if err != nil {
		return err
	}
	return fc.WriteFrame(wire.FrameRefuse, 0, b[:n], nil)
}

// refuseFlags are the flags of this side's REFUSE frames.
func (o *transportConfig) refuseFlags() uint32 {
	if o.NoFallback {
		return wire.RefuseNoFallback
	}
	return 0
}

// refusal is the error of a handshake that ended with a REFUSE, sent or
// received: the socket is at a frame boundary, and the stream transport
// may run on it unless noFallback.
type refusal struct {
	err        error
	peerMax    uint64 // the largest message the peer accepts; 0: unknown
	noFallback bool   // the refusing side closes the connection
}

func (r *refusal) Error() string { return r.err.Error() }
func (r *refusal) Unwrap() error { return r.err }
