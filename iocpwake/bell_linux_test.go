package iocpwake_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/capnshm/capnshm/internal/peertest"

	"github.com/capnshm/capnshm/iocpwake"
	"golang.org/x/sys/unix"
)

// On Linux a Wait never returns without a ring.
func TestNoSpuriousWakeup(t *testing.T) {
	b := newBell(t)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Millisecond)
	defer cancel()
	if err := b.Wait(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Wait without a ring = %v, want DeadlineExceeded", err)
	}
}

func TestOpenRejects(t *testing.T) {
	tests := []struct {
		name string
		fd   func(t *testing.T) int
	}{
		{"pipe's read end", func(t *testing.T) int {
			var p [2]int
			if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
				t.Fatal(err)
			}
			unix.Close(p[1])
			return p[0]
		}},
		{"eventfd", func(t *testing.T) int {
			fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC)
			if err != nil {
				t.Fatal(err)
			}
			return fd
		}},
		{"stream socket", func(t *testing.T) int {
			s, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				t.Fatal(err)
			}
			unix.Close(s[1])
			return s[0]
		}},
		{"udp socket", func(t *testing.T) int {
			fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				t.Fatal(err)
			}
			return fd
		}},
		{"memfd", func(t *testing.T) int {
			fd, err := unix.MemfdCreate("x", unix.MFD_CLOEXEC)
			if err != nil {
				t.Fatal(err)
			}
			return fd
		}},
		{"closed descriptor", func(t *testing.T) int { return 1 << 20 }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := peertest.CountFDs(t)
			b, err := iocpwake.Open(iocpwake.Handle(tt.fd(t)))
			if !errors.Is(err, iocpwake.ErrNotDoorbell) {
				if b != nil {
					b.Close()
				}
				t.Fatalf("Open = %v, want ErrNotDoorbell", err)
			}
			if after := peertest.CountFDs(t); after != before {
				t.Fatalf("%d descriptors before, %d after a refused Open", before, after)
			}
		})
	}
}

func TestNoLeaks(t *testing.T) {
	before := peertest.CountFDs(t)
	for i := 0; i < 100; i++ {
		b, err := iocpwake.New()
		if err != nil {
			t.Fatal(err)
		}
		fd, err := unix.FcntlInt(uintptr(b.Handle()), unix.F_DUPFD_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		o, err := iocpwake.Open(iocpwake.Handle(fd))
		if err != nil {
			t.Fatal(err)
		}
		if err := o.Ring(); err != nil {
			t.Fatal(err)
		}
		if err := b.Wait(t.Context()); err != nil {
			t.Fatal(err)
		}
		o.Close()
		b.Close()
	}
	if after := peertest.CountFDs(t); after != before {
		t.Fatalf("%d descriptors before, %d after", before, after)
	}
}

// TestSocketKind runs the tests of every system with socket-pair doorbells,
// which New makes on kernels that cannot write a pipe without blocking.
func TestSocketKind(t *testing.T) {
	iocpwake.UseSocketBells(true)
	defer iocpwake.UseSocketBells(false)
	for _, tt := range []struct {
		name string
		f    func(*testing.T)
	}{
		{"RingThenWait", TestRingThenWait},
		{"RingWakesWaiter", TestRingWakesWaiter},
		{"WaitCancelled", TestWaitCancelled},
		{"CloseWakesAllWaiters", TestCloseWakesAllWaiters},
		{"CrossProcessPingPong", TestCrossProcessPingPong},
		{"NoSpuriousWakeup", TestNoSpuriousWakeup},
		{"NoLeaks", TestNoLeaks},
		{"NoAllocs", TestNoAllocs},
	} {
		t.Run(tt.name, func(t *testing.T) {
			b, err := iocpwake.New()
			if err != nil {
				t.Fatal(err)
			}
			kind := iocpwake.Kind(b)
			b.Close()
			if kind != "socket" {
				t.Fatalf("New made a %s", kind)
			}
			tt.f(t)
		})
	}
}

// TestNoAllocs: a ring and a wait allocate nothing (the transport rings
// and waits for every message when the peer parks).
func TestNoAllocs(t *testing.T) {
	b := newBell(t)
	ctx := t.Context()
	if n := testing.AllocsPerRun(1000, func() {
		if err := b.Ring(); err != nil {
			t.Fatal(err)
		}
		if err := b.Wait(ctx); err != nil {
			t.Fatal(err)
		}
	}); n != 0 {
		t.Fatalf("Ring and Wait: %v allocations, want 0", n)
	}
}
