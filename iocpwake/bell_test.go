package iocpwake_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"github.com/capnshm/capnshm/internal/peertest"
	"github.com/capnshm/capnshm/iocpwake"
	"github.com/capnshm/capnshm/shm"
)

func init() {
	peertest.Register("bell-pingpong", pingPongPeer)
}

// bound is a generous limit for things that should happen at once; it only
// turns a hang into a failure.
const bound = 30 * time.Second

func newBell(t *testing.T) *iocpwake.Bell {
	t.Helper()
	b, err := iocpwake.New()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

func TestRingThenWait(t *testing.T) {
	b := newBell(t)
	for i := 0; i < 3; i++ { // rings coalesce: several rings, then one wait
		if err := b.Ring(); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(t.Context(), bound)
	defer cancel()
	if err := b.Wait(ctx); err != nil {
		t.Fatalf("Wait after Ring: %v", err)
	}
}

func TestRingWakesWaiter(t *testing.T) {
	b := newBell(t)
	var woken atomic.Bool
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), bound)
		defer cancel()
		for !woken.Load() {
			if err := b.Wait(ctx); err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	woken.Store(true)
	if err := b.Ring(); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("waiter: %v", err)
	}
}

func TestWaitCancelled(t *testing.T) {
	b := newBell(t)
	tests := []struct {
		name string
		ctx  func() (context.Context, context.CancelFunc)
		want error
	}{
		{"deadline", func() (context.Context, context.CancelFunc) {
			return context.WithTimeout(context.Background(), 20*time.Millisecond)
		}, context.DeadlineExceeded},
		{"cancel", func() (context.Context, context.CancelFunc) {
			ctx, cancel := context.WithCancel(context.Background())
			time.AfterFunc(20*time.Millisecond, cancel)
			return ctx, cancel
		}, context.Canceled},
		{"already cancelled", func() (context.Context, context.CancelFunc) {
			ctx, cancel := context.WithCancel(context.Background())
			cancel()
			return ctx, cancel
		}, context.Canceled},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := tt.ctx()
			defer cancel()
			var err error
			for err == nil {
				// nil is a spurious wake-up, allowed by the contract; keep
				// waiting until the context ends.
				err = b.Wait(ctx)
			}
			if !errors.Is(err, tt.want) {
				t.Fatalf("Wait = %v, want %v", err, tt.want)
			}
			// The bell still works after a cancelled wait.
			if err := b.Ring(); err != nil {
				t.Fatal(err)
			}
			ctx2, cancel2 := context.WithTimeout(context.Background(), bound)
			defer cancel2()
			if err := b.Wait(ctx2); err != nil {
				t.Fatalf("Wait after a cancelled Wait: %v", err)
			}
		})
	}
}

func TestCloseWakesAllWaiters(t *testing.T) {
	b, err := iocpwake.New()
	if err != nil {
		t.Fatal(err)
	}
	const waiters = 4
	var started, wg sync.WaitGroup
	errs := make(chan error, waiters)
	for i := 0; i < waiters; i++ {
		started.Add(1)
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), bound)
			defer cancel()
			started.Done()
			for {
				if err := b.Wait(ctx); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	started.Wait()
	if err := b.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if !errors.Is(err, iocpwake.ErrClosed) {
			t.Errorf("waiter woke with %v, want ErrClosed", err)
		}
	}
	if err := b.Wait(context.Background()); !errors.Is(err, iocpwake.ErrClosed) {
		t.Errorf("Wait after Close = %v", err)
	}
	if err := b.Ring(); !errors.Is(err, iocpwake.ErrClosed) {
		t.Errorf("Ring after Close = %v", err)
	}
	if err := b.Close(); !errors.Is(err, iocpwake.ErrClosed) {
		t.Errorf("second Close = %v", err)
	}
}

// counter is a shared-memory word the ping-pong test waits on: a doorbell
// says "look", the counter says what changed.
func counter(r *shm.Region) *atomic.Uint64 {
	return (*atomic.Uint64)(unsafe.Pointer(&r.Bytes()[0]))
}

// pingPongPeer: handle 0 is a region holding the counter, handle 1 the
// parent's bell. It makes its own bell, reports its handle, then answers
// every odd counter value with the next even one, ringing the parent.
func pingPongPeer(args []string) int {
	rounds, _ := strconv.Atoi(args[0])
	hs := peertest.Handles()
	r, err := shm.Open(shm.Handle(hs[0]), 4096, shm.ReadWrite, nil)
	if err != nil {
		return peertest.Fail("open region: %v", err)
	}
	parent, err := iocpwake.Open(iocpwake.Handle(hs[1]))
	if err != nil {
		return peertest.Fail("open bell: %v", err)
	}
	mine, err := iocpwake.New()
	if err != nil {
		return peertest.Fail("new bell: %v", err)
	}
	peertest.SayHandle(uintptr(mine.Handle()))
	c := counter(r)
	ctx, cancel := context.WithTimeout(context.Background(), bound)
	defer cancel()
	for i := uint64(0); i < uint64(rounds); i++ {
		for c.Load() != 2*i+1 {
			if err := mine.Wait(ctx); err != nil {
				return peertest.Fail("round %d: wait: %v (counter %d)", i, err, c.Load())
			}
		}
		c.Store(2*i + 2)
		if err := parent.Ring(); err != nil {
			return peertest.Fail("ring: %v", err)
		}
	}
	return 0
}

func TestCrossProcessPingPong(t *testing.T) {
	const rounds = 1000
	r, err := shm.Create(4096, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	mine := newBell(t)
	p := peertest.Start(t, "bell-pingpong", []uintptr{uintptr(r.Handle()), uintptr(mine.Handle())}, fmt.Sprint(rounds))
	ctx, cancel := context.WithTimeout(t.Context(), bound)
	defer cancel()
	peer, err := iocpwake.Open(iocpwake.Handle(p.ReceiveHandle(ctx)))
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close()
	if err := peer.Wait(ctx); !errors.Is(err, iocpwake.ErrRingOnly) {
		t.Fatalf("Wait on an opened bell = %v, want ErrRingOnly", err)
	}
	c := counter(r)
	for i := uint64(0); i < rounds; i++ {
		c.Store(2*i + 1)
		if err := peer.Ring(); err != nil {
			t.Fatal(err)
		}
		for c.Load() != 2*i+2 {
			if err := mine.Wait(ctx); err != nil {
				t.Fatalf("round %d: %v (counter %d); peer: %s", i, err, c.Load(), p.Stderr())
			}
		}
	}
	p.WaitOK()
}

// BenchmarkCrossProcessPingPong: a doorbell round trip between two
// processes, each side re-checking a shared counter after every wake-up.
func BenchmarkCrossProcessPingPong(b *testing.B) {
	r, err := shm.Create(4096, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer r.Close()
	mine, err := iocpwake.New()
	if err != nil {
		b.Fatal(err)
	}
	defer mine.Close()
	p := peertest.Start(b, "bell-pingpong", []uintptr{uintptr(r.Handle()), uintptr(mine.Handle())}, fmt.Sprint(b.N))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	peer, err := iocpwake.Open(iocpwake.Handle(p.ReceiveHandle(ctx)))
	if err != nil {
		b.Fatal(err)
	}
	defer peer.Close()
	c := counter(r)
	b.ResetTimer()
	for i := uint64(0); i < uint64(b.N); i++ {
		c.Store(2*i + 1)
		if err := peer.Ring(); err != nil {
			b.Fatal(err)
		}
		for c.Load() != 2*i+2 {
			if err := mine.Wait(ctx); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.StopTimer()
	p.WaitOK()
}
