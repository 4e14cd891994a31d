package ringbuf

import (
	"context"
	"fmt"
	"runtime"
	"sync/atomic"
	"time"
)

// A Ringer wakes a peer that may be parked on the matching Waiter.
// iocpwake.Bell implements it.
type Ringer interface {
	// Ring wakes the waiter, or makes its next Wait return at once.
	// Rings may coalesce.
	Ring() error
}

// A Waiter parks the calling goroutine until the matching Ringer rings or
// ctx is done. iocpwake.Bell implements it.
type Waiter interface {
	// Wait returns nil after a ring, possibly spuriously (without one),
	// and an error if ctx is done or the doorbell failed.
	Wait(ctx context.Context) error
}

// A WaitStrategy says how Consumer.Wait and Producer.WaitSpace wait. The
// zero value is Adaptive.
type WaitStrategy int

const (
	// Adaptive polls the ring for Options.SpinTime, then calls
	// runtime.Gosched between polls Options.Yields times (and on until
	// Options.YieldTime has passed), then parks.
	// It is the zero value. The spin outlasts a parked peer's wake-up, so
	// that one side's parking does not make the other park in turn: under
	// steady traffic both sides stay in the spin phase, and an idle side
	// parks after SpinTime and then costs nothing.
	Adaptive WaitStrategy = iota
	// BusySpin polls the ring until it is ready or ctx is done (checked
	// every few hundred polls). It never parks, so the peer never needs to
	// ring it, and it burns a core: for latency measurements and
	// dedicated cores.
	BusySpin
	// Block parks at once.
	Block
)

// String returns the strategy's name.
func (s WaitStrategy) String() string {
	switch s {
	case Adaptive:
		return "Adaptive"
	case BusySpin:
		return "BusySpin"
	case Block:
		return "Block"
	}
	return fmt.Sprintf("WaitStrategy(%d)", int(s))
}

// Defaults for the zero fields of Options.
const (
	// DefaultSpinTime is how long Adaptive polls before yielding: longer
	// than a doorbell wake-up (about 10-30 µs through Go's netpoller), so
	// that a reply from a peer that had parked still finds us spinning.
	DefaultSpinTime = 50 * time.Microsecond
	// DefaultYields is the number of runtime.Gosched calls Adaptive makes
	// before parking.
	DefaultYields = 20
	// DefaultMaxSleep bounds one sleep when parking without a Waiter.
	DefaultMaxSleep = time.Millisecond

	// ctxCheckEvery is how many polls a spin makes between ctx checks.
	ctxCheckEvery = 256
	// yieldCheckEvery is how many yielding polls Adaptive makes between
	// checks of ctx and of YieldTime.
	yieldCheckEvery = 16
	minSleep        = time.Microsecond
)

// Options configure a Producer or Consumer. The zero value is usable: an
// Adaptive strategy with default counts, no doorbell in either direction
// (parking then sleep-polls, and the peer is never rung).
type Options struct {
	// Strategy is how to wait; the zero value is Adaptive.
	Strategy WaitStrategy
	// Ringer is the peer's doorbell, rung (at most once per parking of
	// the peer) when this side publishes what the peer waits for: new
	// records for a Producer, free space for a Consumer. Nil: never ring;
	// then the peer must not park on a Waiter (it would sleep until its
	// ctx is done).
	Ringer Ringer
	// Waiter is this side's own doorbell, the one the peer's Ringer
	// rings. Nil: parking sleep-polls instead, with exponential backoff
	// from 1µs up to MaxSleep, and the peer is not asked to ring.
	Waiter Waiter
	// SpinTime is how long Adaptive polls before yielding. 0 means
	// DefaultSpinTime; negative means no spinning.
	SpinTime time.Duration
	// Yields is the number of runtime.Gosched calls Adaptive makes before
	// parking. 0 means DefaultYields; negative means none.
	Yields int
	// YieldTime, if positive, makes Adaptive go on polling with
	// runtime.Gosched between polls until that long has passed since it
	// began yielding (and at least Yields times). Unlike the spin, the
	// yielding poll leaves the P to this process's other goroutines (the
	// handler a call waits for, its caller), and unlike parking it keeps
	// the thread awake: where waking a thread costs more than the round
	// trip (a small virtual machine), a peer's answer within YieldTime
	// needs no doorbell and no wake-up on either side.
	YieldTime time.Duration
	// MaxSleep bounds one sleep when parking without a Waiter. 0 means
	// DefaultMaxSleep.
	MaxSleep time.Duration
}

func (o Options) resolve() Options {
	if o.SpinTime == 0 {
		o.SpinTime = DefaultSpinTime
	}
	if o.Yields == 0 {
		o.Yields = DefaultYields
	}
	if o.MaxSleep <= 0 {
		o.MaxSleep = DefaultMaxSleep
	}
	return o
}

// wait waits per o.Strategy until ready reports true or an error. wanted is
// this side's "wake me" flag in the ring; parks counts parkings.
func (o *Options) wait(ctx context.Context, wanted *uint32, ready func() (bool, error), parks *uint64) error {
	if ok, err := ready(); ok || err != nil {
		return err
	}
	switch o.Strategy {
	case BusySpin:
		for i := 1; ; i++ {
			if ok, err := ready(); ok || err != nil {
				return err
			}
			if i%ctxCheckEvery == 0 {
				if err := ctx.Err(); err != nil {
					return ctxError(err)
				}
			}
		}
	case Adaptive:
		if o.SpinTime > 0 {
			if done, err := pollFor(ctx, ready, o.SpinTime, ctxCheckEvery, false); done {
				return err
			}
		}
		for i := 0; i < o.Yields; i++ {
			runtime.Gosched()
			if ok, err := ready(); ok || err != nil {
				return err
			}
		}
		if o.YieldTime > 0 {
			if done, err := pollFor(ctx, ready, o.YieldTime, yieldCheckEvery, true); done {
				return err
			}
		}
	}
	if err := ctx.Err(); err != nil {
		return ctxError(err)
	}
	if o.Waiter == nil {
		return o.sleepPoll(ctx, ready, parks)
	}
	return o.park(ctx, wanted, ready, parks)
}

// pollFor polls ready for d, calling runtime.Gosched before each poll if
// yield is set, and looking at ctx and the clock every every polls. done
// reports that the wait is over (ready, its error, or ctx's); otherwise d
// has passed.
func pollFor(ctx context.Context, ready func() (bool, error), d time.Duration, every int, yield bool) (done bool, err error) {
	start := time.Now()
	for i := 1; ; i++ {
		if yield {
			runtime.Gosched()
		}
		if ok, err := ready(); ok || err != nil {
			return true, err
		}
		if i%every == 0 {
			if err := ctx.Err(); err != nil {
				return true, ctxError(err)
			}
			if time.Since(start) >= d {
				return false, nil
			}
		}
	}
}

// park sleeps on o.Waiter behind the wanted flag.
func (o *Options) park(ctx context.Context, wanted *uint32, ready func() (bool, error), parks *uint64) error {
	defer atomic.StoreUint32(wanted, 0)
	for {
		// Announce "ring me", then re-check. Ordering argument (Dekker):
		// we store wanted=1 then load the peer's publication word; the
		// peer stores that word then loads wanted. For a waiting consumer
		// the word is the record header at its position (the producer's
		// Commit stores the first header of a batch atomically); for a
		// waiting producer it is head (stored by Release). Both stores
		// are fenced (storeFenced: an exchange), so in their total
		// order one of the two comes first and the other side's load
		// sees it: either this ready() sees the peer's
		// publication (we do not park), or the peer sees wanted=1 and
		// rings (our Wait returns). A wake-up cannot be lost between the
		// check and the park.
		storeFenced32(wanted, 1)
		if ok, err := ready(); ok || err != nil {
			return err
		}
		*parks++
		if err := o.Waiter.Wait(ctx); err != nil {
			if cerr := ctx.Err(); cerr != nil {
				return ctxError(cerr)
			}
			return fmt.Errorf("ringbuf: waiting on doorbell: %w", err)
		}
		// Woken, perhaps spuriously: the loop re-checks.
	}
}

// sleepPoll waits without a doorbell: poll, sleep with exponential backoff.
func (o *Options) sleepPoll(ctx context.Context, ready func() (bool, error), parks *uint64) error {
	d := minSleep
	t := time.NewTimer(d)
	defer t.Stop()
	for {
		*parks++
		select {
		case <-ctx.Done():
			return ctxError(ctx.Err())
		case <-t.C:
		}
		if ok, err := ready(); ok || err != nil {
			return err
		}
		d = min(2*d, o.MaxSleep)
		t.Reset(d)
	}
}

func ctxError(err error) error { return fmt.Errorf("ringbuf: wait: %w", err) }
