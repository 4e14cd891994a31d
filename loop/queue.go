package loop

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

// Priority orders the loop's work: each turn runs high-priority tasks first.
type Priority uint8

const (
	// Normal is for the program's own work.
	Normal Priority = iota
	// High is for work that must not wait behind anything else (RPC calls:
	// BindServer queues its handlers at High).
	High
)

func (p Priority) String() string {
	switch p {
	case Normal:
		return "normal"
	case High:
		return "high"
	}
	return fmt.Sprintf("Priority(%d)", p)
}

func (p Priority) valid() bool { return p <= High }

// States of a task queued by Do: a phase, plus taskParked once its caller
// sleeps on done (until then it spins, and the loop need not wake it).
const (
	taskQueued    uint32 = iota
	taskRunning          // taken by the loop
	taskDone             // ran, or failed; err is set
	taskCancelled        // Do gave up (its context ended) before the loop took it
	taskPhase     uint32 = 0xff
	taskParked    uint32 = 0x100
)

// spinWait is how long a Do caller spins before it sleeps, giving its
// processor to any other ready thread at each turn (sched_yield,
// SwitchToThread): a task that ends within it hands its result back
// without the loop's thread waking a goroutine, which would queue that
// goroutine on the loop's own Go processor (see the package documentation).
const spinWait = 50 * time.Microsecond

// task is a Do in flight. It is pooled: Do takes it back once it is done,
// unless it gave up on it.
type task struct {
	f     func(context.Context) error
	ctx   context.Context
	label string
	state atomic.Uint32
	err   error
	done  chan struct{} // capacity 1; the loop sends once done, if the caller parked
}

// take moves a queued task to running; false if its caller gave up.
func (t *task) take() bool {
	for {
		old := t.state.Load()
		if old&taskPhase != taskQueued {
			return false
		}
		if t.state.CompareAndSwap(old, old&taskParked|taskRunning) {
			return true
		}
	}
}

// finish publishes err and wakes the caller if it sleeps.
func (t *task) finish(err error) {
	t.err = err
	if t.state.Swap(taskDone)&taskParked != 0 {
		t.done <- struct{}{}
	}
}

// await waits for the task: it spins for spinWait, then sleeps until done
// or ctx ends. It returns false if it cancelled the task (ctx ended before
// the loop took it); the task then belongs to the loop.
func (t *task) await(ctx context.Context) bool {
	start := time.Now()
	for t.state.Load()&taskPhase != taskDone {
		if time.Since(start) < spinWait {
			osYield()
			continue
		}
		old := t.state.Load()
		if old&taskPhase == taskDone {
			break
		}
		if !t.state.CompareAndSwap(old, old|taskParked) {
			continue
		}
		select {
		case <-t.done:
			return true
		case <-ctx.Done():
			if t.state.CompareAndSwap(taskQueued|taskParked, taskCancelled) {
				return false
			}
			<-t.done // it runs now: f has the context and may stop early
			return true
		}
	}
	return true
}

var taskPool = sync.Pool{New: func() any { return &task{done: make(chan struct{}, 1)} }}

// item is one queued piece of work: a posted function, a Do, or a control
// function of the loop itself (control is not subject to the queue bound).
type item struct {
	f     func()
	t     *task
	label string
}

// ring is a growable FIFO.
type ring[T any] struct {
	buf  []T
	head int
	n    int
}

func (r *ring[T]) len() int { return r.n }

func (r *ring[T]) push(v T) {
	if r.n == len(r.buf) {
		nb := make([]T, max(16, 2*len(r.buf)))
		for i := range r.n {
			nb[i] = r.buf[(r.head+i)%len(r.buf)]
		}
		r.buf, r.head = nb, 0
	}
	r.buf[(r.head+r.n)%len(r.buf)] = v
	r.n++
}

func (r *ring[T]) pop() (T, bool) {
	var zero T
	if r.n == 0 {
		return zero, false
	}
	v := r.buf[r.head]
	r.buf[r.head] = zero
	r.head = (r.head + 1) % len(r.buf)
	r.n--
	return v, true
}

// Post queues f to run on the loop at priority p and returns at once. It
// fails with ErrClosed once the loop is closing (f will not run), and with
// ErrOverloaded when p's queue is full. A posted f still queued when the
// loop closes does not run.
func (l *Loop) Post(p Priority, f func()) error {
	if !p.valid() {
		return fmt.Errorf("loop: post: invalid priority %d", p)
	}
	return l.push(p, item{f: f}, false, "post")
}

// Do runs f on the loop at priority p and waits for it, returning f's error
// or the loop's (ErrClosed, ErrOverloaded, ErrWouldDeadlock, or ctx's error,
// wrapped). Called on the loop's thread it runs f at once, inline. f does
// not run if ctx ends before the loop takes it; once f runs, Do waits for
// it to return.
//
// f receives a context derived from ctx that records which task of which
// loop it runs in: pass it to whatever f waits for, so that a request that
// comes back to this loop, from another goroutine, while f still runs fails
// with ErrWouldDeadlock instead of hanging (see the package documentation).
func (l *Loop) Do(ctx context.Context, p Priority, f func(context.Context) error) error {
	if !p.valid() {
		return fmt.Errorf("loop: do: invalid priority %d", p)
	}
	return l.do(ctx, p, "", f)
}

func (l *Loop) do(ctx context.Context, p Priority, label string, f func(context.Context) error) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("loop: do: %w", err)
	}
	if l.OnLoop() {
		return f(l.taskContext(ctx))
	}
	if err := l.checkDeadlock(ctx); err != nil {
		return err
	}
	t := taskPool.Get().(*task)
	t.f, t.ctx, t.label, t.err = f, ctx, label, nil
	t.state.Store(taskQueued)
	if err := l.push(p, item{t: t}, false, "do"); err != nil {
		t.f, t.ctx = nil, nil
		taskPool.Put(t)
		return err
	}
	if !t.await(ctx) {
		// The loop drops it when it comes to it; it is not pooled again,
		// since the loop still holds it.
		return fmt.Errorf("loop: do: %w", ctx.Err())
	}
	err := t.err
	t.f, t.ctx, t.err = nil, nil, nil
	taskPool.Put(t)
	return err
}

// control runs f on the loop and waits for it: inline on the loop's thread,
// otherwise queued at high priority, exempt from the queue bound. It
// returns ErrClosed (and f does not run) if the loop closes first.
func (l *Loop) control(op string, f func()) error {
	if l.OnLoop() {
		f()
		return nil
	}
	t := taskPool.Get().(*task)
	t.f = func(context.Context) error { f(); return nil }
	t.ctx, t.label, t.err = context.Background(), op, nil
	t.state.Store(taskQueued)
	if err := l.push(High, item{t: t}, true, op); err != nil {
		t.f, t.ctx = nil, nil
		taskPool.Put(t)
		return err
	}
	t.await(context.Background())
	err := t.err
	t.f, t.ctx, t.err = nil, nil, nil
	taskPool.Put(t)
	return err
}

// push queues it, waking the loop if it waits. unbounded exempts it from
// MaxQueued.
func (l *Loop) push(p Priority, it item, unbounded bool, op string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closing {
		return closedError(op)
	}
	q := &l.queues[p]
	if !unbounded && q.len() >= l.cfg.maxQueued {
		l.stats.overloaded.Add(1)
		return overloadedError(p, q.len())
	}
	q.push(it)
	l.noteWork()
	l.wakeLocked()
	return nil
}

// popBatch moves up to n items of priority p into buf. Called by the loop.
func (l *Loop) popBatch(p Priority, buf []item, n int) []item {
	l.mu.Lock()
	defer l.mu.Unlock()
	q := &l.queues[p]
	for range n {
		it, ok := q.pop()
		if !ok {
			break
		}
		buf = append(buf, it)
	}
	l.noteWork()
	return buf
}

// runBatch runs up to n tasks of priority p, taking new ones as they come,
// and stops early when the loop is closing. It returns how many it ran.
func (l *Loop) runBatch(p Priority, n int) int {
	ran := 0
	for ran < n && !l.closingNow() {
		l.batch = l.popBatch(p, l.batch[:0], min(n-ran, 16))
		if len(l.batch) == 0 {
			break
		}
		for i, it := range l.batch {
			if l.closingNow() {
				// The rest go back in front, to be failed by shutdown.
				l.requeue(p, l.batch[i:])
				clear(l.batch)
				return ran
			}
			l.runItem(p, it)
			l.batch[i] = item{}
			ran++
		}
	}
	return ran
}

// runNormal runs up to NormalBatch normal tasks. Before each, high-priority
// work that came meanwhile runs first, within what is left of the turn's
// high budget (*budget): a high task waits behind one normal task at most,
// and normal tasks still progress under a flood of high ones.
func (l *Loop) runNormal(budget *int) {
	for range l.cfg.normalBatch {
		if l.closingNow() {
			return
		}
		l.mu.Lock()
		preempt := *budget > 0 && (l.queues[High].len() > 0 || l.readyAt(High))
		var it item
		ok := false
		if !preempt {
			it, ok = l.queues[Normal].pop()
			l.noteWork()
		}
		l.mu.Unlock()
		if preempt {
			*budget -= l.runWatches(High)
			*budget -= l.runBatch(High, max(*budget, 0))
			continue
		}
		if !ok {
			return
		}
		l.runItem(Normal, it)
	}
}

// noteWork publishes how much work is queued or ready, for the loop's spin
// (see wait). l.mu is held.
func (l *Loop) noteWork() {
	l.work.Store(int32(l.queues[High].len() + l.queues[Normal].len() + len(l.ready)))
}

// readyAt reports whether a watch of priority p is ready. l.mu is held.
func (l *Loop) readyAt(p Priority) bool {
	for _, w := range l.ready {
		if w.pri == p {
			return true
		}
	}
	return false
}

// requeue puts items back at the front of p's queue (when closing only).
func (l *Loop) requeue(p Priority, its []item) {
	l.mu.Lock()
	defer l.mu.Unlock()
	var q ring[item]
	for _, it := range its {
		q.push(it)
	}
	for {
		it, ok := l.queues[p].pop()
		if !ok {
			break
		}
		q.push(it)
	}
	l.queues[p] = q
	l.noteWork()
}

// runItem runs one queued item on the loop.
func (l *Loop) runItem(p Priority, it item) {
	if it.t == nil {
		l.stats.tasks[p].Add(1)
		tok := l.begin()
		it.f()
		l.end(tok, kindTask, p, it.label)
		return
	}
	t := it.t
	if !t.take() {
		return // its Do gave up
	}
	l.stats.tasks[p].Add(1)
	tok := l.begin()
	err := t.f(l.taskContextSeq(t.ctx, tok.seq))
	l.end(tok, kindTask, p, t.label)
	t.finish(err)
}

// failQueued fails every queued Do with ErrClosed and drops posted
// functions. Called by shutdown, after closing is set.
func (l *Loop) failQueued() {
	for p := range l.queues {
		for {
			l.mu.Lock()
			it, ok := l.queues[p].pop()
			l.noteWork()
			l.mu.Unlock()
			if !ok {
				break
			}
			if it.t != nil && it.t.take() {
				it.t.finish(closedError("do: queued when the loop closed"))
			}
		}
	}
}
