package rpc

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	"golang.org/x/sys/windows"

	"github.com/capnshm/capnshm/rpc/internal/wire"
)

// checkPlatform rejects addresses and policies Windows cannot serve:
// abstract unix sockets are Linux-only.
func checkPlatform(a Addr, _ Fallback) error {
	if a.Abstract() {
		return fmt.Errorf("%w: %s: abstract unix sockets exist only on Linux; use a named pipe (%s:name)", ErrUnsupported, a, shmOrPipe(a))
	}
	return nil
}

// shmOrPipe is the Windows scheme for what an abstract address means.
func shmOrPipe(a Addr) Scheme {
	if a.SharedMemory() {
		return SchemeShm
	}
	return SchemePipe
}

// shmRendezvous returns the rendezvous on raw if it can carry the
// shared-memory handshake: a named pipe.
func shmRendezvous(raw net.Conn) (rendezvous, bool) {
	pc, ok := raw.(*pipeConn)
	if !ok {
		return nil, false
	}
	return newPipeRendezvous(pc), true
}

// notSpeaking reports whether a handshake error says that the peer is
// not a capnshm listener: it hung up, or its bytes are not a frame.
func notSpeaking(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, io.ErrClosedPipe) || errors.Is(err, windows.ERROR_BROKEN_PIPE) ||
		errors.Is(err, windows.ERROR_NO_DATA) || errors.Is(err, wire.ErrMalformed)
}

// peekHello reads the first bytes of raw, a named pipe, and puts them
// back (a pipe cannot be peeked at without polling): it reports whether
// they start a frame. One byte that cannot start the magic is a plain
// Cap'n Proto client at once. It waits until ctx (the handshake deadline)
// ends; a client that hangs up before two bytes ends the connection.
func peekHello(ctx context.Context, raw net.Conn) (bool, error) {
	c := raw.(*pipeConn) // shmRendezvous took it
	stop := context.AfterFunc(ctx, func() { c.SetReadDeadline(time.Unix(1, 0)) })
	defer func() {
		if !stop() {
			c.SetReadDeadline(time.Time{})
		}
	}()
	var b [2]byte
	n, err := io.ReadFull(c, b[:1])
	if n == 1 && b[0] == byte(wire.FrameMagic&0xff) {
		var m int
		m, err = io.ReadFull(c, b[1:])
		n += m
	}
	c.unreadBytes(b[:n])
	if ctx.Err() != nil {
		return false, context.Cause(ctx)
	}
	switch {
	case n == 0 && err != nil:
		if errors.Is(err, io.EOF) {
			return false, fmt.Errorf("capnshm: the client hung up before sending anything: %w", io.EOF)
		}
		return false, fmt.Errorf("capnshm: reading the first bytes: %w", err)
	case n == 1 && b[0] == byte(wire.FrameMagic&0xff):
		return false, fmt.Errorf("capnshm: the client hung up after 1 byte, inside the first frame's magic: %w", io.ErrUnexpectedEOF)
	case n == 1:
		return false, nil // one byte that does not start a frame
	}
	return uint16(b[0])|uint16(b[1])<<8 == wire.FrameMagic, nil
}

// peerUID returns a number for the user of the process at the other end
// of c (the same number for the same user), for the per-user connection
// limit; ok is false when c is not a named pipe.
func peerUID(c net.Conn) (uid int, ok bool) {
	pc, isPipe := c.(*pipeConn)
	if !isPipe {
		return 0, false
	}
	_, sid, err := pipePeerUser(pc)
	if err != nil {
		return 0, false
	}
	return userKey(sid), true
}

// pipePeerUser returns the process id and the user of the pipe's peer.
func pipePeerUser(c *pipeConn) (pid int, sid string, err error) {
	pid, err = c.peerPID()
	if err != nil {
		return 0, "", err
	}
	proc, err := windows.OpenProcess(windows.PROCESS_QUERY_LIMITED_INFORMATION, false, uint32(pid))
	if err != nil {
		return pid, "", fmt.Errorf("opening the peer process %d: %w", pid, err)
	}
	defer windows.CloseHandle(proc)
	sid, err = processUserSID(proc)
	return pid, sid, err
}

// dialPipe connects to the named pipe of a (pipe:, or shm: on Windows).
func dialPipe(ctx context.Context, a Addr) (net.Conn, error) {
	c, err := dialPipeName(ctx, a.Endpoint)
	if err != nil {
		return nil, fmt.Errorf("capnshm: dialing %s: %w", a, err)
	}
	return c, nil
}
