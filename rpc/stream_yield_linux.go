package rpc

import (
	"io"
	"net"
	"os"
	"runtime"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// yieldingReader returns a reader of c that, when the socket has nothing
// to read, polls it for up to d (yielding the P between polls, as the shm
// transport's Adaptive wait does) before it blocks in c's Read: an answer
// within d wakes no thread (see the package doc's Latency). c itself, if
// it is not a socket this process can poll, d is not positive, or c is a
// unix socket whose peer is this process (both ends would yield against
// each other, as newEndpoint says of shared memory).
func yieldingReader(c io.Reader, d time.Duration) io.Reader {
	if d <= 0 {
		return c
	}
	sc, ok := c.(syscall.Conn)
	if !ok {
		return c
	}
	rc, err := sc.SyscallConn()
	if err != nil || peerIsSelf(c, rc) {
		return c
	}
	return newPollReader(c, rc, d)
}

// newPollReader returns yieldingReader's reader of c, whose RawConn is rc.
func newPollReader(c io.Reader, rc syscall.RawConn, d time.Duration) *pollReader {
	r := &pollReader{c: c, rc: rc, d: d}
	r.fn = func(fd uintptr) bool {
		r.n, r.err = unix.Read(int(fd), r.buf)
		return true // never wait in the poller here
	}
	return r
}

// pollReader is yieldingReader's reader. Read is called by one goroutine
// at a time (the transport's receiver, under bufio.Reader).
type pollReader struct {
	c  io.Reader
	rc syscall.RawConn
	d  time.Duration
	fn func(fd uintptr) bool

	// fn's arguments and results.
	buf []byte
	n   int
	err error

	polls atomic.Int64 // non-blocking reads made, for tests
}

// pollsPerClock is how many polls pollReader makes between looks at the
// clock.
const pollsPerClock = 8

func (r *pollReader) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return r.c.Read(p)
	}
	var start time.Time
	for i := 0; ; i++ {
		r.buf = p
		r.polls.Add(1)
		err := r.rc.Read(r.fn)
		r.buf = nil
		switch {
		case err != nil:
			// Closed, or a deadline: c's Read says so in its own words.
			return r.c.Read(p)
		case r.err == nil && r.n > 0:
			return r.n, nil
		case r.err == nil:
			// End of stream, which stays: c's Read reports it.
			return r.c.Read(p)
		case r.err != unix.EAGAIN && r.err != unix.EINTR:
			// A failure (a reset) is reported once: the read that got
			// it says so, as c's Read would have.
			return 0, r.readError(r.err)
		}
		if i%pollsPerClock == 0 {
			if i == 0 {
				start = time.Now()
			} else if time.Since(start) >= r.d {
				return r.c.Read(p)
			}
		}
		runtime.Gosched()
	}
}

// readError is err from a read of the socket, in the form net.Conn's Read
// gives it.
func (r *pollReader) readError(err error) error {
	err = os.NewSyscallError("read", err)
	nc, ok := r.c.(net.Conn)
	if !ok {
		return err
	}
	return &net.OpError{Op: "read", Net: nc.LocalAddr().Network(), Source: nc.LocalAddr(), Addr: nc.RemoteAddr(), Err: err}
}

// peerIsSelf reports whether c (whose RawConn is rc) is a unix socket
// whose peer is this process. Only a socket that has a name at either end
// (made by connect and accept) is asked: the peer credentials of a socket
// pair are its creator's, whoever holds the other end now (a child it was
// handed to).
func peerIsSelf(c io.Reader, rc syscall.RawConn) bool {
	uc, ok := c.(*net.UnixConn)
	if !ok || (unnamed(uc.LocalAddr()) && unnamed(uc.RemoteAddr())) {
		return false
	}
	self := false
	_ = rc.Control(func(fd uintptr) {
		cred, err := unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
		self = err == nil && int(cred.Pid) == os.Getpid()
	})
	return self
}

// unnamed reports an unnamed socket's address (net shows it as "@").
func unnamed(a net.Addr) bool {
	if a == nil {
		return true
	}
	s := a.String()
	return s == "" || s == "@"
}
