package ringbuf

import (
	"context"
	"errors"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/capnshm/capnshm/shm"
)

// lostWakeUpBound is how long a parked side may sleep with something to
// do before the test calls its wake-up lost: far beyond any scheduling
// delay, so that only a lost ring reaches it.
const lostWakeUpBound = 10 * time.Second

// TestNoLostWakeUpOutsideHeap: a consumer that parks as soon as it has
// drained the ring (Block) and a producer that commits the next record
// once the consumer has taken the last one, after a pause of 0 to a few
// microseconds, so that the consumer's "wanted, then re-check" and the
// producer's "publish, then look at wanted" keep overlapping. The ring is
// in shared memory, outside the Go heap, where the production rings are.
// Every parked wait is bounded: one that reaches the bound with a record
// published is a lost wake-up, and fails the test.
//
// This is the protocol end to end, and a weak detector of the race-mode
// ordering bug that order.go describes: with plain Stores it lost a
// wake-up in about 1 run in 10, and in none of 72 runs once it shared
// ring_test.go's doorbell. TestFencedStoreThenLoad is the check that
// fails reliably.
func TestNoLostWakeUpOutsideHeap(t *testing.T) {
	if runtime.GOMAXPROCS(0) < 2 {
		t.Skip("needs two Ps: the race is between two running sides")
	}
	const capacity = 64 << 10
	region, err := shm.Create(int64(HeaderSize+capacity), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer region.Close()
	r, err := Init(region.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	n := 200_000
	if testing.Short() {
		n = 20_000
	}
	data, space := newBell(), newBell()
	p := r.Producer(Options{Strategy: Block, Ringer: data, Waiter: space})
	c := r.Consumer(Options{Strategy: Block, Ringer: space, Waiter: data})

	var stop atomic.Bool
	var taken atomic.Int64 // records the consumer has taken and released
	produced := make(chan error, 1)
	go func() {
		var rec [8]byte
		x := uint32(1)
		for i := 0; i < n && !stop.Load(); i++ {
			for taken.Load() < int64(i) && !stop.Load() {
			}
			// A pause of 0 to a few µs (xorshift), spun, not slept: the
			// consumer is parking, or about to, when the commit lands.
			x ^= x << 13
			x ^= x >> 17
			x ^= x << 5
			spin(int(x % 512))
			rec[0] = byte(i)
			if err := p.Write(rec[:]); err != nil {
				if !errors.Is(err, ErrFull) {
					produced <- err
					return
				}
				ctx, cancel := context.WithTimeout(context.Background(), lostWakeUpBound)
				err = p.WaitSpace(ctx, len(rec))
				cancel()
				if err != nil {
					produced <- errors.New("the producer waited for space that the consumer had released (lost wake-up): " + err.Error())
					return
				}
				i--
				continue
			}
		}
		produced <- nil
	}()

	got := 0
	for got < n {
		for {
			_, err := c.Poll()
			if errors.Is(err, ErrEmpty) {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			got++
		}
		if err := c.Release(); err != nil {
			t.Fatal(err)
		}
		taken.Store(int64(got))
		if got == n {
			break
		}
		ctx, cancel := context.WithTimeout(context.Background(), lostWakeUpBound)
		err := c.Wait(ctx)
		cancel()
		if err != nil {
			stop.Store(true)
			if _, perr := c.Poll(); perr == nil {
				t.Fatalf("lost wake-up after %d of %d records: the consumer slept %v with a record published (data_wanted was set before it looked): %v", got, n, lostWakeUpBound, err)
			}
			if perr := <-produced; perr != nil {
				t.Fatal(perr)
			}
			t.Fatalf("the consumer's wait failed after %d of %d records with nothing published: %v", got, n, err)
		}
	}
	if err := <-produced; err != nil {
		t.Fatal(err)
	}
	st := c.Stats()
	t.Logf("%d records, %d parks of the consumer", got, st.Parks)
}

// spinSink keeps spin's loop from being optimized away.
var spinSink atomic.Uint32

// spin busy-waits for about n short steps.
func spin(n int) {
	v := uint32(0)
	for i := 0; i < n; i++ {
		v = v*1664525 + 1013904223
	}
	spinSink.Store(v)
}
