package rpc

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"syscall"
	"time"

	rpccp "capnproto.org/go/capnp/v3/std/capnp/rpc"
	"golang.org/x/sys/unix"

	"github.com/capnshm/capnshm/rpc/internal/wire"
)

// checkPlatform rejects addresses and policies this system cannot serve:
// none on Linux.
func checkPlatform(Addr, Fallback) error { return nil }

// transportOptions returns the shared-memory transport's options.
func (c *config) transportOptions() *transportConfig {
	o := c.opts
	return &o
}

// wantShm reports whether connections on a should try shared memory.
func (c *config) wantShm(a Addr) bool { return a.SharedMemory() && c.fallback != FallbackNever }

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
	log := cfg.transportOptions().withDefaults().Logger
	t, fallbackOK, err := newTransport(ctx, raw.(*net.UnixConn), Dialer, cfg.transportOptions())
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

// notSpeaking reports whether a handshake error says that the peer is
// not a capnshm listener: it hung up, or its bytes are not a frame.
func notSpeaking(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) ||
		errors.Is(err, wire.ErrMalformed)
}

// acceptEstablish negotiates the transport of a connection accepted on a.
//
// On a unix socket it peeks (MSG_PEEK: nothing is consumed, descriptors
// stay queued) at the first two bytes, which tell a HELLO frame
// (wire.FrameMagic) from a Cap'n Proto stream, whose first word is a
// segment count no implementation accepts that high:
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
	uc, ok := raw.(*net.UnixConn)
	if !ok {
		return streamOver(raw, cfg, 0), nil
	}
	hello, err := peekHello(ctx, uc)
	if err != nil {
		return established{}, err
	}
	if !hello {
		if a.SharedMemory() && cfg.fallback == FallbackRequire {
			reason := fmt.Sprintf("%s requires shared memory and the client speaks plain Cap'n Proto", a)
			abort(ctx, uc, cfg, reason)
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
		peerMax, err := refuseHello(ctx, uc, cfg, reason)
		if err != nil {
			return established{}, err
		}
		log.Debug("capnshm: refused shared memory", "reason", reason)
		return streamOver(raw, cfg, peerMax), nil
	}
	opts := cfg.transportOptions()
	opts.NoFallback = cfg.fallback == FallbackRequire
	t, fallbackOK, err := newTransport(ctx, uc, Listener, opts)
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

// peekHello waits for the first two bytes of conn, without consuming
// them, and reports whether they start a frame. It never polls: it sleeps
// in the netpoller until the socket's next readiness edge (more bytes, or
// the peer hanging up), so a client that sends one byte and stops costs
// nothing until ctx (the handshake deadline) ends. A client that hangs up
// before sending two bytes ends the connection.
func peekHello(ctx context.Context, conn *net.UnixConn) (bool, error) {
	rc, err := conn.SyscallConn()
	if err != nil {
		return false, err
	}
	stop := context.AfterFunc(ctx, func() { conn.SetReadDeadline(time.Unix(1, 0)) })
	defer func() {
		if !stop() {
			conn.SetReadDeadline(time.Time{})
		}
	}()
	var b [2]byte
	var n int
	var rerr error
	var hup bool
	peek := func(fd int) {
		for {
			n, _, rerr = unix.Recvfrom(fd, b[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
			if rerr != unix.EINTR {
				return
			}
		}
	}
	err = rc.Read(func(fd uintptr) bool {
		peek(int(fd))
		switch {
		case rerr == unix.EAGAIN:
			return false // nothing yet: wait for data
		case rerr != nil, n == 0, n >= 2, b[0] != byte(wire.FrameMagic&0xff):
			return true
		}
		// One byte, which may start a frame. If the peer has hung up,
		// what is queued is all there is (peek again: more may have come
		// with the hang-up); else wait for the next edge.
		if hup = hungUp(int(fd)); hup {
			peek(int(fd))
		}
		return hup
	})
	if ctx.Err() != nil {
		return false, context.Cause(ctx)
	}
	switch {
	case err != nil:
		return false, fmt.Errorf("capnshm: reading the first bytes: %w", err)
	case rerr != nil:
		return false, fmt.Errorf("capnshm: reading the first bytes: %w", os.NewSyscallError("recvfrom", rerr))
	case n == 0:
		return false, fmt.Errorf("capnshm: the client hung up before sending anything: %w", io.EOF)
	case n >= 2:
		return binary.LittleEndian.Uint16(b[:]) == wire.FrameMagic, nil
	case hup:
		return false, fmt.Errorf("capnshm: the client hung up after 1 byte, inside the first frame's magic: %w", io.ErrUnexpectedEOF)
	}
	return false, nil // one byte that does not start a frame
}

// hungUp reports whether the peer of the socket fd has shut down its
// writing side (or gone).
func hungUp(fd int) bool {
	pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLRDHUP}}
	for {
		n, err := unix.Poll(pfd, 0)
		if err == unix.EINTR {
			continue
		}
		return err == nil && n > 0 && pfd[0].Revents&(unix.POLLRDHUP|unix.POLLHUP|unix.POLLERR) != 0
	}
}

// peerUID returns the user id of the process at the other end of c, for
// the per-user connection limit; ok is false when c is not a unix socket.
func peerUID(c net.Conn) (uid int, ok bool) {
	uc, isUnix := c.(*net.UnixConn)
	if !isUnix {
		return 0, false
	}
	u, _, _, err := wire.PeerCred(uc)
	if err != nil {
		return 0, false
	}
	return int(u), true
}

// refuseAtAccept tells a client refused before its handshake (a connection
// limit) why, where it can understand: a REFUSE frame on a shm: address,
// which a capnshm dialer reads as the answer to its HELLO. Other clients
// just see the connection close. It never blocks: the socket was just
// accepted, its buffer is empty, and a deadline bounds the write anyway.
func refuseAtAccept(raw net.Conn, a Addr, reason string) {
	uc, ok := raw.(*net.UnixConn)
	if !ok || !a.SharedMemory() {
		return
	}
	_ = uc.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
	_ = sendRefuse(wire.NewFrameConn(uc), wire.Refuse{Reason: reason, Flags: wire.RefuseNoFallback})
}

// refuseHello reads the dialer's HELLO (closing its descriptors) and
// answers REFUSE with reason and this side's largest message, leaving conn
// ready for the stream transport. It returns the dialer's largest message
// (0 if its HELLO did not say).
func refuseHello(ctx context.Context, conn *net.UnixConn, cfg *config, reason string) (peerMax uint64, err error) {
	o := cfg.transportOptions().withDefaults()
	deadline := time.Now().Add(o.HandshakeTimeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	conn.SetDeadline(deadline)
	defer conn.SetDeadline(time.Time{})
	fc := wire.NewFrameConn(conn)
	hdr, payload, fds, err := fc.ReadFrame(0)
	closeFDs(fds)
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

// abort tells a plain Cap'n Proto client why it is being disconnected: a
// Cap'n Proto Abort message on the stream transport, best effort. Then it
// reads (and drops) what the client sends until it hangs up, for at most a
// second: closing a socket with unread bytes would reset it, and the client
// might miss the Abort.
func abort(ctx context.Context, conn *net.UnixConn, cfg *config, reason string) {
	conn.SetDeadline(time.Now().Add(time.Second))
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	tr := newStreamTransport(conn, cfg.opts.MaxMessage, 0)
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
	conn.CloseWrite()
	_, _ = io.Copy(io.Discard, conn)
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
