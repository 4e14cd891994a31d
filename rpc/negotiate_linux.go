package rpc

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/capnshm/capnshm/rpc/internal/wire"
)

// checkPlatform rejects addresses and policies this system cannot serve:
// named pipes are Windows'.
func checkPlatform(a Addr, _ Fallback) error {
	if a.Scheme == SchemePipe {
		return fmt.Errorf("%w: %s: named pipes exist only on Windows; use unix:/path", ErrUnsupported, a)
	}
	return nil
}

// dialPipe: named pipes are Windows' (checkPlatform refuses pipe:
// addresses before anything dials one).
func dialPipe(_ context.Context, a Addr) (net.Conn, error) {
	return nil, fmt.Errorf("%w: %s: named pipes exist only on Windows", ErrUnsupported, a)
}

// shmRendezvous returns the rendezvous on raw if it can carry the
// shared-memory handshake: a unix socket.
func shmRendezvous(raw net.Conn) (rendezvous, bool) {
	uc, ok := raw.(*net.UnixConn)
	if !ok {
		return nil, false
	}
	return newUnixRendezvous(uc), true
}

// notSpeaking reports whether a handshake error says that the peer is
// not a capnshm listener: it hung up, or its bytes are not a frame.
func notSpeaking(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) ||
		errors.Is(err, wire.ErrMalformed)
}

// peekHello waits for the first two bytes of conn, without consuming
// them, and reports whether they start a frame. It never polls: it sleeps
// in the netpoller until the socket's next readiness edge (more bytes, or
// the peer hanging up), so a client that sends one byte and stops costs
// nothing until ctx (the handshake deadline) ends. A client that hangs up
// before sending two bytes ends the connection.
func peekHello(ctx context.Context, raw net.Conn) (bool, error) {
	conn := raw.(*net.UnixConn) // shmRendezvous took it
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
