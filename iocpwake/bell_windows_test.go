package iocpwake_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/capnshm/capnshm/internal/peertest"
	"github.com/capnshm/capnshm/iocpwake"
	"golang.org/x/sys/windows"
)

func init() {
	peertest.Register("win-bell-ringer", winRingerPeer)
}

// noSpurious makes Wait return only for a real wake-up (ring, cancellation,
// Close) for the rest of the test.
func noSpurious(t *testing.T) {
	t.Cleanup(iocpwake.SetWaitSlice(time.Hour))
}

// bridges runs f once per event bridge this system has: the
// RegisterWaitForSingleObject fallback always, wait completion packets where
// ntdll has them (not under Wine 8).
func bridges(t *testing.T, f func(t *testing.T)) {
	t.Run("RegisterWait", func(t *testing.T) {
		t.Cleanup(iocpwake.ForceRegisterWait(true))
		f(t)
	})
	t.Run("WaitPacket", func(t *testing.T) {
		if !iocpwake.HaveWaitPackets() {
			t.Skip("ntdll has no NtAssociateWaitCompletionPacket (Wine)")
		}
		t.Cleanup(iocpwake.ForceRegisterWait(false))
		f(t)
	})
}

func dupEvent(t *testing.T, h iocpwake.Handle) iocpwake.Handle {
	t.Helper()
	p := windows.CurrentProcess()
	var out windows.Handle
	if err := windows.DuplicateHandle(p, windows.Handle(h), p, &out, 0, false, windows.DUPLICATE_SAME_ACCESS); err != nil {
		t.Fatal(err)
	}
	return iocpwake.Handle(out)
}

func waitOK(t *testing.T, b *iocpwake.Bell, what string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), bound)
	defer cancel()
	if err := b.Wait(ctx); err != nil {
		t.Fatalf("%s: Wait = %v", what, err)
	}
}

// expectQuiet checks that Wait does not return nil within d.
func expectQuiet(t *testing.T, b *iocpwake.Bell, d time.Duration, what string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	if err := b.Wait(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("%s: Wait = %v, want DeadlineExceeded", what, err)
	}
}

// TestWinBridgeKind: New bridges the event the way it is asked to, and by
// default with wait completion packets wherever ntdll has them.
func TestWinBridgeKind(t *testing.T) {
	const packet, register = "NtAssociateWaitCompletionPacket", "RegisterWaitForSingleObject"
	def := register
	if iocpwake.HaveWaitPackets() {
		def = packet
	}
	for _, tc := range []struct {
		name  string
		force bool
		want  string
	}{
		{"default", false, def},
		{"forced RegisterWait", true, register},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Cleanup(iocpwake.ForceRegisterWait(tc.force))
			b := newBell(t)
			if got := iocpwake.BridgeKind(b); got != tc.want {
				t.Fatalf("bridge = %s, want %s", got, tc.want)
			}
			// The bridge carries a ring set on the event itself.
			if err := windows.SetEvent(windows.Handle(b.Handle())); err != nil {
				t.Fatal(err)
			}
			waitOK(t, b, "after SetEvent")
		})
	}
	if o, err := iocpwake.Open(dupEvent(t, newBell(t).Handle())); err != nil {
		t.Fatal(err)
	} else {
		defer o.Close()
		if got := iocpwake.BridgeKind(o); got != "none" {
			t.Errorf("an opened (ring-only) bell has bridge %s, want none", got)
		}
	}
}

func TestWinLocalRing(t *testing.T) {
	noSpurious(t)
	bridges(t, func(t *testing.T) {
		b := newBell(t)
		// Ring before Wait; rings coalesce into one wake-up.
		for i := 0; i < 5; i++ {
			if err := b.Ring(); err != nil {
				t.Fatal(err)
			}
		}
		waitOK(t, b, "after 5 rings")
		expectQuiet(t, b, 200*time.Millisecond, "after the coalesced ring was taken")
		// Ring while a goroutine waits.
		waits := iocpwake.NotifyWaits(b)
		for i := 0; i < 20; i++ {
			done := make(chan error, 1)
			go func() {
				ctx, cancel := context.WithTimeout(context.Background(), bound)
				defer cancel()
				done <- b.Wait(ctx)
			}()
			<-waits
			if err := b.Ring(); err != nil {
				t.Fatal(err)
			}
			if err := <-done; err != nil {
				t.Fatalf("round %d: Wait = %v", i, err)
			}
		}
	})
}

// TestWinEventRingInProcess: SetEvent through a bell opened from a duplicate
// of the handle crosses the bridge.
func TestWinEventRingInProcess(t *testing.T) {
	noSpurious(t)
	bridges(t, func(t *testing.T) {
		b := newBell(t)
		r, err := iocpwake.Open(dupEvent(t, b.Handle()))
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		if err := r.Wait(context.Background()); !errors.Is(err, iocpwake.ErrRingOnly) {
			t.Fatalf("Wait on an opened bell = %v, want ErrRingOnly", err)
		}
		for i := 0; i < 3; i++ {
			if err := r.Ring(); err != nil {
				t.Fatal(err)
			}
		}
		waitOK(t, b, "after 3 event rings")
		for i := 0; i < 50; i++ {
			done := make(chan error, 1)
			go func() {
				ctx, cancel := context.WithTimeout(context.Background(), bound)
				defer cancel()
				done <- b.Wait(ctx)
			}()
			if err := r.Ring(); err != nil {
				t.Fatal(err)
			}
			if err := <-done; err != nil {
				t.Fatalf("round %d: Wait = %v", i, err)
			}
		}
		if err := r.Close(); err != nil {
			t.Fatal(err)
		}
		if err := r.Close(); !errors.Is(err, iocpwake.ErrClosed) {
			t.Fatalf("second Close of an opened bell = %v", err)
		}
		if err := r.Ring(); !errors.Is(err, iocpwake.ErrClosed) {
			t.Fatalf("Ring after Close = %v", err)
		}
	})
}

// winRingerPeer opens the bell handed over as handle 0 and rings it once for
// every line it reads, answering "rang".
func winRingerPeer(args []string) int {
	b, err := iocpwake.Open(iocpwake.Handle(peertest.Handles()[0]))
	if err != nil {
		return peertest.Fail("open: %v", err)
	}
	if err := b.Wait(context.Background()); !errors.Is(err, iocpwake.ErrRingOnly) {
		return peertest.Fail("Wait on an opened bell = %v, want ErrRingOnly", err)
	}
	in := peertest.Stdin()
	for in.Scan() {
		if err := b.Ring(); err != nil {
			return peertest.Fail("ring: %v", err)
		}
		peertest.Say("rang")
	}
	if err := b.Close(); err != nil {
		return peertest.Fail("close: %v", err)
	}
	return 0
}

// TestWinPeerRing: a child process rings our bell through the event it
// inherited; each ring wakes our Wait (with spurious returns disabled).
func TestWinPeerRing(t *testing.T) {
	noSpurious(t)
	bridges(t, func(t *testing.T) {
		b := newBell(t)
		h := dupEvent(t, b.Handle())
		t.Cleanup(func() { windows.CloseHandle(windows.Handle(h)) })
		p := peertest.Start(t, "win-bell-ringer", []uintptr{uintptr(h)})
		for i := 0; i < 100; i++ {
			done := make(chan error, 1)
			go func() {
				ctx, cancel := context.WithTimeout(context.Background(), bound)
				defer cancel()
				done <- b.Wait(ctx)
			}()
			p.Send("ring")
			if err := <-done; err != nil {
				t.Fatalf("round %d: Wait = %v; peer: %s", i, err, p.Stderr())
			}
			p.Expect("rang")
		}
		// A ring that lands while nobody waits is kept for the next Wait.
		p.Send("ring")
		p.Expect("rang")
		waitOK(t, b, "ring before wait")
		p.CloseStdin()
		p.WaitOK()
	})
}

// TestWinCancelEachWaiter: several goroutines wait, each with its own
// context; cancelling one wakes that one promptly and no other.
func TestWinCancelEachWaiter(t *testing.T) {
	noSpurious(t)
	b := newBell(t)
	waits := iocpwake.NotifyWaits(b)
	const n = 4
	var wg sync.WaitGroup
	cancels := make([]context.CancelFunc, n)
	results := make([]chan error, n)
	for i := range n {
		ctx, cancel := context.WithCancel(context.Background())
		cancels[i] = cancel
		results[i] = make(chan error, 1)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				err := b.Wait(ctx)
				if err != nil {
					results[i] <- err
					return
				}
			}
		}()
	}
	for range n {
		<-waits // every waiter is in Wait before the first cancel
	}
	for i := range n {
		start := time.Now()
		cancels[i]()
		select {
		case err := <-results[i]:
			if !errors.Is(err, context.Canceled) {
				t.Fatalf("waiter %d: %v, want Canceled", i, err)
			}
			t.Logf("waiter %d left %v after its cancel", i, time.Since(start))
		case <-time.After(bound):
			t.Fatalf("waiter %d did not return after its cancel", i)
		}
		for j := i + 1; j < n; j++ {
			select {
			case err := <-results[j]:
				t.Fatalf("waiter %d returned %v when waiter %d was cancelled", j, err, i)
			default:
			}
		}
	}
	wg.Wait()
	// The bell still works.
	if err := b.Ring(); err != nil {
		t.Fatal(err)
	}
	waitOK(t, b, "after the cancellations")
}

// TestWinCloseWakesWaiters: with spurious returns disabled, Close must wake
// the waiter inside the port (quit packet) and the queued ones.
func TestWinCloseWakesWaiters(t *testing.T) {
	noSpurious(t)
	bridges(t, func(t *testing.T) {
		b, err := iocpwake.New()
		if err != nil {
			t.Fatal(err)
		}
		waits := iocpwake.NotifyWaits(b)
		const n = 5
		errs := make(chan error, n)
		for range n {
			go func() {
				ctx, cancel := context.WithTimeout(context.Background(), bound)
				defer cancel()
				for {
					if err := b.Wait(ctx); err != nil {
						errs <- err
						return
					}
				}
			}()
		}
		for range n {
			<-waits
		}
		ev := dupEvent(t, b.Handle())
		defer windows.CloseHandle(windows.Handle(ev))
		start := time.Now()
		if err := b.Close(); err != nil {
			t.Fatalf("Close: %v", err)
		}
		for range n {
			if err := <-errs; !errors.Is(err, iocpwake.ErrClosed) {
				t.Errorf("waiter woke with %v, want ErrClosed", err)
			}
		}
		t.Logf("all waiters left %v after Close began", time.Since(start))
		if err := b.Close(); !errors.Is(err, iocpwake.ErrClosed) {
			t.Errorf("second Close = %v", err)
		}
		// The event still exists through our duplicate, and setting it
		// after Close must not reach the torn-down bridge.
		if err := windows.SetEvent(windows.Handle(ev)); err != nil {
			t.Fatal(err)
		}
		// Nothing takes that ring any more: the auto-reset event stays
		// set (a bridge still registered would reset it).
		if r, err := windows.WaitForSingleObject(windows.Handle(ev), 0); r != windows.WAIT_OBJECT_0 {
			t.Errorf("the event after Close: WaitForSingleObject = %#x, %v; want it still set", r, err)
		}
	})
}

func TestWinOpenNotEvent(t *testing.T) {
	sec, err := windows.CreateFileMapping(windows.InvalidHandle, nil, windows.PAGE_READWRITE, 0, 4096, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := iocpwake.Open(iocpwake.Handle(sec)); !errors.Is(err, iocpwake.ErrNotDoorbell) {
		t.Errorf("Open(section) = %v, want ErrNotDoorbell", err)
	}
	if err := windows.CloseHandle(sec); err == nil {
		t.Error("Open did not close the handle it refused")
	}
	port, err := windows.CreateIoCompletionPort(windows.InvalidHandle, 0, 0, 1)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := iocpwake.Open(iocpwake.Handle(port)); !errors.Is(err, iocpwake.ErrNotDoorbell) {
		t.Errorf("Open(port) = %v, want ErrNotDoorbell", err)
	}
	if _, err := iocpwake.Open(iocpwake.Handle(0x7ff0)); !errors.Is(err, iocpwake.ErrNotDoorbell) {
		t.Errorf("Open(bogus handle) = %v, want ErrNotDoorbell", err)
	}
	if _, err := iocpwake.Open(iocpwake.Handle(0)); !errors.Is(err, iocpwake.ErrNotDoorbell) {
		t.Errorf("Open(0) = %v, want ErrNotDoorbell", err)
	}
}

// TestWinSpuriousBound: with the default slice, an unrung Wait returns nil
// (spuriously) within a bounded time rather than sleeping until the context
// ends, which is what protects against a lost completion.
func TestWinSpuriousBound(t *testing.T) {
	b := newBell(t)
	ctx, cancel := context.WithTimeout(context.Background(), bound)
	defer cancel()
	start := time.Now()
	if err := b.Wait(ctx); err != nil {
		t.Fatalf("Wait = %v", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Fatalf("unrung Wait took %v", d)
	}
}

// TestWinManyBells: more bells than the process has callback slots (about
// 2000) over its life, and a few hundred alive at once, each rung through its
// event. The RegisterWait bridge shares one callback among all bells.
func TestWinManyBells(t *testing.T) {
	noSpurious(t)
	bridges(t, func(t *testing.T) {
		n := 2100
		if testing.Short() {
			n = 200
		}
		for i := range n {
			b, err := iocpwake.New()
			if err != nil {
				t.Fatalf("bell %d: %v", i, err)
			}
			if err := b.Close(); err != nil {
				t.Fatalf("bell %d: Close: %v", i, err)
			}
		}
		bells := make([]*iocpwake.Bell, 200)
		for i := range bells {
			bells[i] = newBell(t)
		}
		for i, b := range bells {
			if err := windows.SetEvent(windows.Handle(b.Handle())); err != nil {
				t.Fatalf("bell %d: SetEvent: %v", i, err)
			}
		}
		for i, b := range bells {
			waitOK(t, b, fmt.Sprintf("bell %d", i))
		}
	})
}
