package loop

import (
	"sync"
	"time"
)

// Clock is the loop's source of time: timers, the pump's deadline and the
// slow-task threshold are all measured on it. The system clock is the
// default; ManualClock lets tests move time by hand, so that no test sleeps.
type Clock interface {
	// Now returns the current time.
	Now() time.Time
	// Until returns how long the loop may block in the operating system
	// before deadline comes on this clock: deadline minus now for a clock
	// that follows real time, 0 if the deadline has passed, and a negative
	// duration (block until woken) for a clock whose time moves only when
	// it says so.
	Until(deadline time.Time) time.Duration
	// OnJump registers wake, to be called (from any goroutine) whenever
	// the clock's time moves other than with the passing of real time, so
	// that a loop blocked on the old time re-reads it. It returns a
	// function that unregisters wake.
	OnJump(wake func()) (cancel func())
}

// SystemClock is the operating system's clock (time.Now, monotonic).
type SystemClock struct{}

// Now returns time.Now().
func (SystemClock) Now() time.Time { return time.Now() }

// Until returns time.Until(deadline), or 0 if it has passed.
func (SystemClock) Until(deadline time.Time) time.Duration { return max(time.Until(deadline), 0) }

// OnJump does nothing: the system clock moves only with real time.
func (SystemClock) OnJump(func()) func() { return func() {} }

// ManualClock is a Clock whose time moves only by Advance and Set: a loop
// using it never wakes up for a deadline by itself; moving the clock wakes
// it to look again. Its zero value is not usable: get one from
// NewManualClock. Its methods may be called from any goroutine.
type ManualClock struct {
	mu    sync.Mutex
	now   time.Time
	next  int
	wakes map[int]func()
}

// NewManualClock returns a ManualClock that reads start.
func NewManualClock(start time.Time) *ManualClock {
	return &ManualClock{now: start, wakes: map[int]func(){}}
}

// Now returns the clock's time.
func (c *ManualClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// Until returns 0 if deadline has come, otherwise -1: wait until the clock
// is moved.
func (c *ManualClock) Until(deadline time.Time) time.Duration {
	if c.Now().Before(deadline) {
		return -1
	}
	return 0
}

// OnJump registers wake, called after each Advance and Set.
func (c *ManualClock) OnJump(wake func()) func() {
	c.mu.Lock()
	defer c.mu.Unlock()
	id := c.next
	c.next++
	c.wakes[id] = wake
	return func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		delete(c.wakes, id)
	}
}

// Advance moves the clock forward by d and wakes the loops that use it.
func (c *ManualClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	wakes := c.snapshot()
	c.mu.Unlock()
	for _, w := range wakes {
		w()
	}
}

// Set sets the clock to t and wakes the loops that use it.
func (c *ManualClock) Set(t time.Time) {
	c.mu.Lock()
	c.now = t
	wakes := c.snapshot()
	c.mu.Unlock()
	for _, w := range wakes {
		w()
	}
}

func (c *ManualClock) snapshot() []func() {
	ws := make([]func(), 0, len(c.wakes))
	for _, w := range c.wakes {
		ws = append(ws, w)
	}
	return ws
}
