package rpc

import (
	"errors"
	"io"
	"net"
	"os"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// unixPair returns the two ends of a connected unix stream socket pair.
func unixPair(t *testing.T) (net.Conn, net.Conn) {
	t.Helper()
	l, err := net.Listen("unix", t.TempDir()+"/s")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	acc := make(chan net.Conn, 1)
	go func() {
		c, _ := l.Accept()
		acc <- c
	}()
	a, err := net.Dial("unix", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	b := <-acc
	if b == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}

// TestYieldingReader checks that the polling reader reads what a socket
// reads, reports its end, its closing and its deadline as the socket's own
// Read does, and polls (rather than blocks) while its yield time lasts.
func TestYieldingReader(t *testing.T) {
	for _, c := range []struct {
		name  string
		yield time.Duration
		act   func(t *testing.T, mine, peer net.Conn, r *pollReader)
	}{
		{"data waiting", time.Hour, func(t *testing.T, mine, peer net.Conn, r *pollReader) {
			peer.Write([]byte("abc"))
			expectRead(t, r, "abc", nil)
			if n := r.polls.Load(); n != 1 {
				t.Errorf("%d polls, want 1", n)
			}
		}},
		{"data while polling", time.Hour, func(t *testing.T, mine, peer net.Conn, r *pollReader) {
			go func() {
				for r.polls.Load() < 100 {
				}
				peer.Write([]byte("late"))
			}()
			expectRead(t, r, "late", nil)
		}},
		{"data after the yield time", time.Nanosecond, func(t *testing.T, mine, peer net.Conn, r *pollReader) {
			go func() {
				// Blocked in the socket's Read by now, or soon: either way
				// the bytes arrive.
				peer.Write([]byte("blocked"))
			}()
			expectRead(t, r, "blocked", nil)
			if n := r.polls.Load(); n > pollsPerClock+1 {
				t.Errorf("%d polls after a yield time of 1ns, want at most %d", n, pollsPerClock+1)
			}
		}},
		{"end of stream", time.Hour, func(t *testing.T, mine, peer net.Conn, r *pollReader) {
			peer.Close()
			expectRead(t, r, "", io.EOF)
		}},
		{"closed here", time.Hour, func(t *testing.T, mine, peer net.Conn, r *pollReader) {
			mine.Close()
			expectRead(t, r, "", net.ErrClosed)
		}},
		{"deadline", time.Hour, func(t *testing.T, mine, peer net.Conn, r *pollReader) {
			mine.SetReadDeadline(time.Unix(1, 0))
			expectRead(t, r, "", os.ErrDeadlineExceeded)
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			mine, peer := unixPair(t)
			// Both ends are this process's, which yieldingReader declines:
			// the reader is made directly.
			rc, err := mine.(*net.UnixConn).SyscallConn()
			if err != nil {
				t.Fatal(err)
			}
			c.act(t, mine, peer, newPollReader(mine, rc, c.yield))
		})
	}
	if r := yieldingReader(io.MultiReader(), time.Hour); r == nil {
		t.Fatal("nil reader")
	} else if _, ok := r.(*pollReader); ok {
		t.Error("a reader that is not a socket got a polling reader")
	}
	mine, _ := unixPair(t)
	if _, ok := yieldingReader(mine, -1).(*pollReader); ok {
		t.Error("a negative yield time got a polling reader")
	}
	if _, ok := yieldingReader(mine, time.Hour).(*pollReader); ok {
		t.Error("a unix socket whose peer is this process got a polling reader")
	}
}

func expectRead(t *testing.T, r io.Reader, want string, wantErr error) {
	t.Helper()
	buf := make([]byte, 64)
	n, err := r.Read(buf)
	if got := string(buf[:n]); got != want || !errors.Is(err, wantErr) {
		t.Fatalf("Read: %q, %v; want %q, %v", got, err, want, wantErr)
	}
}

// TestYieldingReaderSocketPair: a socket pair's peer credentials are its
// creator's whoever holds the other end, so an unnamed socket polls.
func TestYieldingReaderSocketPair(t *testing.T) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	var conns [2]net.Conn
	for i, fd := range fds {
		f := os.NewFile(uintptr(fd), "pair")
		c, err := net.FileConn(f)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		conns[i] = c
	}
	r, ok := yieldingReader(conns[0], time.Hour).(*pollReader)
	if !ok {
		t.Fatal("a socket pair got no polling reader")
	}
	conns[1].Write([]byte("pair"))
	expectRead(t, r, "pair", nil)
}

// TestYieldingReaderReset: a TCP peer that resets the connection (closes
// with SO_LINGER 0) fails the read with ECONNRESET, as the socket's own
// Read reports it.
func TestYieldingReaderReset(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	acc := make(chan net.Conn, 1)
	go func() {
		c, _ := l.Accept()
		acc <- c
	}()
	mine, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer mine.Close()
	peer := <-acc
	if peer == nil {
		t.Fatal("accept failed")
	}
	r, ok := yieldingReader(mine, time.Hour).(*pollReader)
	if !ok {
		t.Fatal("a TCP socket got no polling reader")
	}
	peer.(*net.TCPConn).SetLinger(0)
	peer.Close()
	buf := make([]byte, 8)
	_, err = r.Read(buf)
	var op *net.OpError
	if !errors.Is(err, syscall.ECONNRESET) || !errors.As(err, &op) || op.Op != "read" || op.Net != "tcp" {
		t.Fatalf("Read after a reset: %#v, want a read *net.OpError wrapping ECONNRESET", err)
	}
	// Once reported, the reset is gone: the stream has ended.
	expectRead(t, r, "", io.EOF)
}
