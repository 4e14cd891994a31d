package rpc

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"time"

	rpccp "capnproto.org/go/capnp/v3/std/capnp/rpc"

	"github.com/capnshm/capnshm/rpc/internal/wire"
)

// Negotiation on every system: what Dial and a Server's connections run,
// shared memory or the stream transport. What differs by system
// (negotiate_linux.go, negotiate_windows.go): which connections can carry
// the handshake (shmRendezvous), how a listener looks at the first bytes
// without consuming them (peekHello), and which errors say that the peer
// does not speak the handshake (notSpeaking).

// transportOptions returns the shared-memory transport's options for a
// connection of capnshm's engine (Dial, Listen).
func (c *config) transportOptions() *transportConfig {
	o := c.opts
	o.Engine = true
	return &o
}

// wantShm reports whether connections on a should try shared memory.
func (c *config) wantShm(a Addr) bool { return a.SharedMemory() && c.fallback != FallbackNever }

// refuseHelloOn reads the dialer's HELLO (closing its handles) on rv and
// answers REFUSE with reason and this side's largest message, leaving the
// connection ready for the stream transport. It returns the dialer's
// largest message (0 if its HELLO did not say).
func refuseHelloOn(ctx context.Context, rv rendezvous, cfg *config, reason string) (peerMax uint64, err error) {
	o := cfg.transportOptions().withDefaults()
	deadline := time.Now().Add(o.HandshakeTimeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	rv.setDeadline(deadline)
	defer rv.setDeadline(time.Time{})
	fc := rv.frames()
	hdr, payload, fds, err := fc.ReadFrame(0)
	wire.CloseFDs(fds)
	if err != nil {
		return 0, fmt.Errorf("%w: the peer's hello: %w", ErrProtocol, err)
	}
	if hdr.Type != wire.FrameHello {
		return 0, fmt.Errorf("%w: expected a hello, got frame type %d", ErrProtocol, hdr.Type)
	}
	if h, err := wire.ParseHello(payload); err == nil {
		peerMax = h.MaxMessage // another version's hello says nothing here
	}
	if err := sendRefuse(fc, wire.Refuse{Reason: reason, MaxMessage: uint64(o.MaxMessage)}); err != nil {
		return 0, fmt.Errorf("capnshm: refusing shared memory: %w", err)
	}
	return peerMax, nil
}

// dialEstablish connects to a and negotiates the transport.
//
// On a shm: address (unless FallbackNever) the dialer sends HELLO. A HELLO
// back means shared memory. A REFUSE means the stream transport on the same
// socket (FallbackAuto), or an error wrapping ErrRefused with the peer's
// reason (FallbackRequire, or a listener that requires shared memory and
// says it closes). A peer that does not speak the handshake at all (it
// hangs up, or answers with something that is not a frame: a plain Cap'n
// Proto server) is dialled again without HELLO under FallbackAuto.
func dialEstablish(ctx context.Context, a Addr, cfg *config) (established, error) {
	raw, err := dial(ctx, a)
	if err != nil {
		return established{}, err
	}
	if !cfg.wantShm(a) {
		return streamOver(raw, cfg, 0), nil
	}
	rv, ok := shmRendezvous(raw)
	if !ok {
		return streamOver(raw, cfg, 0), nil
	}
	log := cfg.transportOptions().withDefaults().Logger
	t, fallbackOK, err := newTransport(ctx, rv, Dialer, cfg.transportOptions())
	var rf *refusal
	refused := errors.As(err, &rf)
	switch {
	case err == nil:
		return established{tr: t, shm: t, raw: raw}, nil
	case fallbackOK && cfg.fallback == FallbackAuto:
		log.Info("capnshm: shared memory refused; using the stream transport", "addr", a.String(), "reason", err)
		return streamOver(raw, cfg, rf.peerMax), nil
	case !refused && cfg.fallback == FallbackAuto && notSpeaking(err) && ctx.Err() == nil:
		log.Info("capnshm: the server does not speak the shared-memory handshake; dialling again for the stream transport", "addr", a.String(), "err", err)
		raw, err := dial(ctx, a)
		if err != nil {
			return established{}, err
		}
		return streamOver(raw, cfg, 0), nil
	}
	if refused {
		raw.Close()
	}
	switch {
	case refused && rf.noFallback:
		return established{}, fmt.Errorf("capnshm: %s refused the connection, and closes it: %w", a, err)
	case cfg.fallback == FallbackRequire:
		return established{}, fmt.Errorf("capnshm: %s with FallbackRequire: no shared memory: %w", a, err)
	}
	return established{}, fmt.Errorf("capnshm: %s: %w", a, err)
}

// acceptEstablish negotiates the transport of a connection accepted on a.
//
// On a rendezvous connection (a unix socket; a named pipe on Windows) it
// looks at the first two bytes without consuming them (peekHello), which
// tell a HELLO frame (wire.FrameMagic) from a Cap'n Proto stream, whose
// first word is a segment count no implementation accepts that high:
//
//   - HELLO, and a shm: address without FallbackNever: the handshake. If
//     this side refuses (another user, limits, no shared memory here),
//     the REFUSE tells the dialer why, and both sides run the stream
//     transport (FallbackAuto), or the REFUSE says that this side closes
//     and the connection ends (FallbackRequire).
//   - HELLO on a unix: address, or with FallbackNever: REFUSE with the
//     reason, then the stream transport.
//   - anything else: a plain Cap'n Proto client, served on the stream
//     transport, unless FallbackRequire (then an Abort message says why,
//     and the connection ends).
//
// A REFUSE carries this side's largest message and a HELLO the dialer's,
// so that two capnshm sides on the stream transport agree on the limit.
// A TCP connection always runs the stream transport.
func acceptEstablish(ctx context.Context, raw net.Conn, a Addr, cfg *config, log *slog.Logger) (established, error) {
	rv, ok := shmRendezvous(raw)
	if !ok {
		return streamOver(raw, cfg, 0), nil
	}
	hello, err := peekHello(ctx, raw)
	if err != nil {
		return established{}, err
	}
	if !hello {
		if a.SharedMemory() && cfg.fallback == FallbackRequire {
			reason := fmt.Sprintf("%s requires shared memory and the client speaks plain Cap'n Proto", a)
			abort(ctx, raw, cfg, reason)
			return established{}, fmt.Errorf("%w: %s", ErrRefused, reason)
		}
		log.Debug("capnshm: plain Cap'n Proto client")
		return streamOver(raw, cfg, 0), nil
	}
	if !cfg.wantShm(a) {
		reason := fmt.Sprintf("the listener on %s does not offer shared memory", a)
		if a.SharedMemory() {
			reason = fmt.Sprintf("the listener on %s does not use shared memory (FallbackNever)", a)
		}
		peerMax, err := refuseHelloOn(ctx, rv, cfg, reason)
		if err != nil {
			return established{}, err
		}
		log.Debug("capnshm: refused shared memory", "reason", reason)
		return streamOver(raw, cfg, peerMax), nil
	}
	opts := cfg.transportOptions()
	opts.NoFallback = cfg.fallback == FallbackRequire
	t, fallbackOK, err := newTransport(ctx, rv, Listener, opts)
	switch {
	case err == nil:
		return established{tr: t, shm: t, raw: raw}, nil
	case fallbackOK && cfg.fallback == FallbackAuto:
		var rf *refusal
		errors.As(err, &rf)
		log.Info("capnshm: shared memory refused; using the stream transport", "reason", err)
		return streamOver(raw, cfg, rf.peerMax), nil
	}
	return established{}, err
}

// refuseAtAccept tells a client refused before its handshake (a connection
// limit) why, where it can understand: a REFUSE frame on a shm: address,
// which a capnshm dialer reads as the answer to its HELLO. Other clients
// just see the connection close. It never blocks: the socket was just
// accepted, its buffer is empty, and a deadline bounds the write anyway.
func refuseAtAccept(raw net.Conn, a Addr, reason string) {
	rv, ok := shmRendezvous(raw)
	if !ok || !a.SharedMemory() {
		return
	}
	_ = rv.setWriteDeadline(time.Now().Add(100 * time.Millisecond))
	_ = sendRefuse(rv.frames(), wire.Refuse{Reason: reason, Flags: wire.RefuseNoFallback})
	rv.detach()
}

// abort tells a plain Cap'n Proto client why it is being disconnected: a
// Cap'n Proto Abort message on the stream transport, best effort. Then it
// shuts down its writing side (a socket) and reads (and drops) what the
// client sends until it hangs up, for at most a second: closing a socket
// with unread bytes would reset it, and the client might miss the Abort.
func abort(ctx context.Context, conn net.Conn, cfg *config, reason string) {
	conn.SetDeadline(time.Now().Add(time.Second))
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	tr := newStreamTransport(conn, &cfg.opts, 0)
	defer tr.Close()
	om, err := tr.NewMessage()
	if err != nil {
		return
	}
	defer om.Release()
	exc, err := om.Message().NewAbort()
	if err != nil {
		return
	}
	exc.SetType(rpccp.Exception_Type_failed)
	if exc.SetReason("capnshm: "+reason) != nil {
		return
	}
	if om.Send() != nil {
		return
	}
	if cw, ok := conn.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite() // a pipe has no half-close: the client hangs up itself
	}
	_, _ = io.Copy(io.Discard, conn)
}
