package iocpwake_test

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/capnshm/capnshm/internal/peertest"
	"github.com/capnshm/capnshm/iocpwake"
)

func init() {
	peertest.Register("bell-hostile", hostileBellPeer)
}

// handleKind names what a doorbell handle is, as /proc shows it:
// "eventfd", "pipe" or "socket".
func handleKind(fd int) string {
	link, _ := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", fd))
	switch {
	case strings.Contains(link, "eventfd"):
		return "eventfd"
	case strings.HasPrefix(link, "pipe:"):
		return "pipe"
	case strings.HasPrefix(link, "socket:"):
		return "socket"
	}
	return link
}

// clearNonblock clears O_NONBLOCK on fd, as a peer sharing its open file
// description can.
func clearNonblock(fd int) {
	if fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0); err == nil {
		unix.FcntlInt(uintptr(fd), unix.F_SETFL, fl&^unix.O_NONBLOCK)
	}
}

// fill makes the doorbell handle fd as full as it gets: an eventfd's
// counter at its maximum, a pipe or a socket buffer full. It leaves fd
// blocking.
func fill(fd int) error {
	if err := unix.SetNonblock(fd, true); err != nil {
		return err
	}
	defer clearNonblock(fd)
	switch handleKind(fd) {
	case "eventfd":
		_, err := unix.Write(fd, binary.NativeEndian.AppendUint64(nil, 0xfffffffffffffffe))
		return err
	default:
		b := make([]byte, 4096)
		for {
			n, err := unix.Write(fd, b)
			if errors.Is(err, unix.EAGAIN) {
				if len(b) == 1 {
					return nil
				}
				b = b[:len(b)/2]
				continue
			}
			if err != nil {
				return err
			}
			if n == 0 {
				return nil
			}
		}
	}
}

// makeLike returns a doorbell of the same kind as fd, made by hand: the
// descriptor the peer keeps (to wait on, which this peer never does) and the
// one it hands over.
func makeLike(fd int) (keep, give int, err error) {
	switch handleKind(fd) {
	case "eventfd":
		e, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
		return e, e, err
	case "pipe":
		var p [2]int
		err := unix.Pipe2(p[:], unix.O_CLOEXEC|unix.O_NONBLOCK)
		return p[0], p[1], err
	case "socket":
		s, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
		if err != nil {
			return 0, 0, err
		}
		return s[0], s[1], nil
	}
	return 0, 0, fmt.Errorf("unknown doorbell kind %q", handleKind(fd))
}

// hostileBellPeer holds the parent's doorbell handle (handle 0) and attacks
// it: it clears O_NONBLOCK on it in a loop, forever. With "ring" it also
// hands the parent a doorbell of its own, filled to the brim and blocking,
// that it keeps clearing O_NONBLOCK on; with "flood" it rings the parent's
// bell as fast as it can.
func hostileBellPeer(args []string) int {
	theirs := int(peertest.Handles()[0])
	fds := []int{theirs}
	if args[0] == "ring" {
		_, give, err := makeLike(theirs)
		if err != nil {
			return peertest.Fail("%v", err)
		}
		if err := fill(give); err != nil {
			return peertest.Fail("filling my bell: %v", err)
		}
		fds = append(fds, give)
		peertest.SayHandle(uintptr(give))
	}
	if args[0] == "flood" {
		go func() {
			b := binary.NativeEndian.AppendUint64(nil, 1)
			for {
				unix.Write(theirs, b[:1+7*boolInt(handleKind(theirs) == "eventfd")])
			}
		}()
	}
	go func() {
		for {
			for _, fd := range fds {
				clearNonblock(fd)
			}
		}
	}()
	peertest.Say("attacking")
	in := peertest.Stdin()
	for in.Scan() {
	}
	return 0
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// within runs f and fails the test if it has not returned after a bound
// that only turns a hang into a failure.
func within(t *testing.T, what string, f func()) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		f()
	}()
	select {
	case <-done:
	case <-time.After(bound):
		t.Fatalf("%s blocked for %v", what, bound)
	}
}

// bellKinds runs f once for each kind of Linux doorbell New can make.
func bellKinds(t *testing.T, f func(t *testing.T)) {
	for _, socket := range []bool{false, true} {
		name := "default"
		if socket {
			name = "socket"
		}
		t.Run(name, func(t *testing.T) {
			iocpwake.UseSocketBells(socket)
			t.Cleanup(func() { iocpwake.UseSocketBells(false) })
			f(t)
		})
	}
}

// TestHostilePeerCannotBlockWait: a peer that keeps clearing O_NONBLOCK on
// the handle of our doorbell cannot make Wait block in read(2): Wait still
// ends with its context, Ring and Close return at once.
func TestHostilePeerCannotBlockWait(t *testing.T) {
	bellKinds(t, func(t *testing.T) {
		b, err := iocpwake.New()
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("doorbell: %s", handleKind(int(b.Handle())))
		p := peertest.Start(t, "bell-hostile", []uintptr{uintptr(b.Handle())}, "wait")
		p.Expect("attacking")
		within(t, "Wait with a 100 ms context", func() {
			for range 3 {
				ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
				err := b.Wait(ctx)
				cancel()
				if !errors.Is(err, context.DeadlineExceeded) {
					t.Errorf("Wait = %v, want DeadlineExceeded", err)
				}
			}
		})
		within(t, "Ring and Wait", func() {
			if err := b.Ring(); err != nil {
				t.Error(err)
			}
			if err := b.Wait(t.Context()); err != nil {
				t.Error(err)
			}
		})
		waiting := make(chan error, 1)
		go func() { waiting <- b.Wait(context.Background()) }()
		within(t, "Close with a waiter", func() {
			if err := b.Close(); err != nil {
				t.Error(err)
			}
			if err := <-waiting; !errors.Is(err, iocpwake.ErrClosed) {
				t.Errorf("the waiter got %v, want ErrClosed", err)
			}
		})
	})
}

// TestHostilePeerCannotBlockRing: ringing a peer's doorbell that the peer
// filled to the brim and keeps blocking (O_NONBLOCK cleared in a loop)
// returns at once: a full bell is a rung bell. Close too.
func TestHostilePeerCannotBlockRing(t *testing.T) {
	bellKinds(t, func(t *testing.T) {
		mine := newBell(t)
		p := peertest.Start(t, "bell-hostile", []uintptr{uintptr(mine.Handle())}, "ring")
		ctx, cancel := context.WithTimeout(t.Context(), bound)
		defer cancel()
		h := p.ReceiveHandle(ctx)
		p.Expect("attacking")
		kind := handleKind(int(h))
		peer, err := iocpwake.Open(iocpwake.Handle(h))
		if err != nil {
			t.Fatalf("Open of the peer's %s: %v", kind, err)
		}
		within(t, "Ring of a full "+kind, func() {
			for range 1000 {
				if err := peer.Ring(); err != nil {
					t.Fatalf("Ring: %v", err)
				}
			}
		})
		within(t, "Close", func() {
			if err := peer.Close(); err != nil {
				t.Error(err)
			}
		})
	})
}

// TestHostilePeerFlood: a peer ringing as fast as it can makes waits return
// (a ring, or a spurious wake-up), never an error, and Close still ends it.
func TestHostilePeerFlood(t *testing.T) {
	bellKinds(t, func(t *testing.T) {
		b, err := iocpwake.New()
		if err != nil {
			t.Fatal(err)
		}
		p := peertest.Start(t, "bell-hostile", []uintptr{uintptr(b.Handle())}, "flood")
		p.Expect("attacking")
		within(t, "1000 Waits under a flood", func() {
			for range 1000 {
				if err := b.Wait(t.Context()); err != nil {
					t.Fatalf("Wait: %v", err)
				}
			}
		})
		within(t, "Close", func() { b.Close() })
	})
}
