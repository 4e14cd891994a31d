package loop

import (
	"container/heap"
	"time"
)

// Timer is a function scheduled to run on the loop once its time (on the
// loop's Clock) has come. Its methods may be called from any goroutine.
type Timer struct {
	l     *Loop
	f     func()
	when  time.Time
	seq   uint64 // order among timers due at the same time; set at each arming
	index int    // in l.timers; -1 when not armed. Guarded by l.mu.
}

// AfterFunc arranges for f to run on the loop once d has passed on the
// loop's clock, in the timers' part of a turn. Timers due at the same time
// run in the order they were armed. A timer armed once the loop is closing
// never fires.
func (l *Loop) AfterFunc(d time.Duration, f func()) *Timer {
	t := &Timer{l: l, f: f, index: -1}
	t.Reset(d)
	return t
}

// Stop disarms the timer. It returns true if that stopped it from firing,
// false if it had already fired or been stopped. When Stop returns, the
// timer's function may still be running, if it had started.
func (t *Timer) Stop() bool {
	l := t.l
	l.mu.Lock()
	defer l.mu.Unlock()
	if t.index < 0 {
		return false
	}
	heap.Remove(&l.timers, t.index)
	return true
}

// Reset rearms the timer to fire after d from now, on the loop's clock. It
// returns true if the timer was armed, false if it had fired or been
// stopped.
func (t *Timer) Reset(d time.Duration) bool {
	l := t.l
	when := l.clock.Now().Add(d)
	l.mu.Lock()
	defer l.mu.Unlock()
	wasArmed := t.index >= 0
	if wasArmed {
		heap.Remove(&l.timers, t.index)
	}
	if l.closing {
		return wasArmed
	}
	l.timerSeq++
	t.when, t.seq = when, l.timerSeq
	heap.Push(&l.timers, t)
	if t.index == 0 {
		l.wakeLocked() // a new earliest deadline
	}
	return wasArmed
}

// timerHeap orders armed timers by deadline, then by arming order.
type timerHeap []*Timer

func (h timerHeap) Len() int { return len(h) }
func (h timerHeap) Less(i, j int) bool {
	if !h[i].when.Equal(h[j].when) {
		return h[i].when.Before(h[j].when)
	}
	return h[i].seq < h[j].seq
}
func (h timerHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].index = i
	h[j].index = j
}
func (h *timerHeap) Push(x any) {
	t := x.(*Timer)
	t.index = len(*h)
	*h = append(*h, t)
}
func (h *timerHeap) Pop() any {
	old := *h
	t := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	t.index = -1
	return t
}

// runTimers runs the timers due at now that were armed before this call:
// one rearmed from its own function for a time already past waits for the
// next turn, so a turn always ends.
func (l *Loop) runTimers(now time.Time) {
	l.mu.Lock()
	limit := l.timerSeq
	l.mu.Unlock()
	for !l.closingNow() {
		l.mu.Lock()
		if len(l.timers) == 0 || l.timers[0].when.After(now) || l.timers[0].seq > limit {
			l.mu.Unlock()
			return
		}
		t := heap.Pop(&l.timers).(*Timer)
		l.mu.Unlock()
		l.stats.timers.Add(1)
		tok := l.begin()
		t.f()
		l.end(tok, kindTimer, Normal, "")
	}
}
