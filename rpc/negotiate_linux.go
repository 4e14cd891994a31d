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
func (c *config) transportOptions() *Options {
	o := c.opts
	if o.Logger == nil {
		o.Logger = c.logger
	}
	return &o
}

// wantShm reports whether connections on a should try shared memory.
func (c *config) wantShm(a Addr) bool { return a.SharedMemory() && c.fallback != FallbackNever }

// dialEstablish connects to a and negotiates the transport.
//
// On a shm: address (unless FallbackNever) the dialer sends HELLO. A HELLO
// back means shared memory. A REFUSE means the stream transport on the same
// socket (FallbackAuto) or an error wrapping ErrRefused with the peer's
// reason (FallbackRequire). A peer that does not speak the handshake at all
// (it hangs up, or answers with something that is not a frame: a plain
// Cap'n Proto server) is dialled again without HELLO under FallbackAuto.
func dialEstablish(ctx context.Context, a Addr, cfg *config) (established, error) {
	raw, err := dial(ctx, a)
	if err != nil {
		return established{}, err
	}
	if !cfg.wantShm(a) {
		return streamOver(raw, cfg), nil
	}
	log := cfg.transportOptions().Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	t, refused, err := newTransport(ctx, raw.(*net.UnixConn), Dialer, cfg.transportOptions())
	switch {
	case err == nil:
		return established{tr: t, shm: t}, nil
	case refused && cfg.fallback == FallbackAuto:
		log.Info("capnshm: shared memory refused; using the stream transport", "addr", a.String(), "reason", err)
		return streamOver(raw, cfg), nil
	case cfg.fallback == FallbackAuto && !refused && notSpeaking(err) && ctx.Err() == nil:
		log.Info("capnshm: the server does not speak the shared-memory handshake; dialling again for the stream transport", "addr", a.String(), "err", err)
		raw, err := dial(ctx, a)
		if err != nil {
			return established{}, err
		}
		return streamOver(raw, cfg), nil
	}
	if refused {
		raw.Close()
	}
	if cfg.fallback == FallbackRequire {
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
//     transport (FallbackAuto) or the connection ends (FallbackRequire).
//   - HELLO on a unix: address, or with FallbackNever: REFUSE with the
//     reason, then the stream transport.
//   - anything else: a plain Cap'n Proto client, served on the stream
//     transport, unless FallbackRequire (then an Abort message says why,
//     and the connection ends).
//
// A TCP connection always runs the stream transport.
func acceptEstablish(ctx context.Context, raw net.Conn, a Addr, cfg *config, log *slog.Logger) (established, error) {
	uc, ok := raw.(*net.UnixConn)
	if !ok {
		return streamOver(raw, cfg), nil
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
		return streamOver(raw, cfg), nil
	}
	if !cfg.wantShm(a) {
		reason := fmt.Sprintf("the listener on %s does not offer shared memory", a)
		if a.SharedMemory() {
			reason = fmt.Sprintf("the listener on %s does not use shared memory (FallbackNever)", a)
		}
		if err := refuseHello(ctx, uc, cfg, reason); err != nil {
			return established{}, err
		}
		log.Debug("capnshm: refused shared memory", "reason", reason)
		return streamOver(raw, cfg), nil
	}
	t, refused, err := newTransport(ctx, uc, Listener, cfg.transportOptions())
	switch {
	case err == nil:
		return established{tr: t, shm: t}, nil
	case refused && cfg.fallback == FallbackAuto:
		log.Info("capnshm: shared memory refused; using the stream transport", "reason", err)
		return streamOver(raw, cfg), nil
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
	_ = sendRefuse(wire.NewFrameConn(uc), reason)
}

// refuseHello reads the dialer's HELLO (closing its descriptors) and
// answers REFUSE with reason, leaving conn ready for the stream
// transport.
func refuseHello(ctx context.Context, conn *net.UnixConn, cfg *config, reason string) error {
	o := cfg.transportOptions().withDefaults()
	deadline := time.Now().Add(o.HandshakeTimeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	conn.SetDeadline(deadline)
	defer conn.SetDeadline(time.Time{})
	fc := wire.NewFrameConn(conn)
	hdr, _, fds, err := fc.ReadFrame(0)
	closeFDs(fds)
	if err != nil {
		return fmt.Errorf("%w: the peer's hello: %w", ErrProtocol, err)
	}
	if hdr.Type != wire.FrameHello {
		return fmt.Errorf("%w: expected a hello, got frame type %d", ErrProtocol, hdr.Type)
	}
	if err := sendRefuse(fc, reason); err != nil {
		return fmt.Errorf("capnshm: refusing shared memory: %w", err)
	}
	return nil
}

// sendRefuse writes a REFUSE frame carrying reason (without any leading
// "handshake refused: ", cut to wire.MaxRefuseReason bytes).
func sendRefuse(fc *wire.FrameConn, reason string) error {
	reason = strings.TrimPrefix(reason, ErrRefused.Error()+": ")
	if len(reason) > wire.MaxRefuseReason {
		reason = strings.ToValidUTF8(reason[:wire.MaxRefuseReason], "")
	}
	b := make([]byte, wire.RefuseSize(wire.Refuse{Reason: reason}))
	n, err := wire.PutRefuse(b, wire.Refuse{Version: wire.Version, Reason: reason})
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
	tr, _ := newStreamTransport(conn, cfg.opts.MaxMessage)
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
