package loop

import (
	"fmt"
	"log/slog"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
)

// Defaults of Options.
const (
	DefaultMaxPumpDelay = time.Second
	DefaultBatch        = 64
	DefaultMaxQueued    = 10000
	DefaultSlowTask     = 100 * time.Millisecond
	DefaultSpin         = 200 * time.Microsecond
)

// Options configure a loop. The zero value is usable.
type Options struct {
	// Clock is the loop's time source (timers, the pump's deadline, task
	// durations). nil: SystemClock.
	Clock Clock
	// Pump drains the window system's pending events on the loop's thread
	// (glfw.PollEvents, an X11 event loop that does not block). It runs at
	// least once every MaxPumpDelay, even while high-priority work keeps
	// coming, and otherwise only when the loop has nothing else to do and
	// the pump has work (see WakePump). nil: on Windows, the loop drains
	// the thread's message queue (PeekMessage, TranslateMessage,
	// DispatchMessage, at most 256 messages a run; a WM_QUIT closes the
	// loop); elsewhere there is no pump. A pump should take what it has:
	// on Windows the loop finds the pump work to do whenever the thread's
	// message queue holds anything, so a pump that leaves messages there
	// keeps an idle loop from blocking.
	Pump func()
	// MaxPumpDelay bounds how long the pump waits for its turn. 0:
	// DefaultMaxPumpDelay (1 s: Windows marks a window "not responding"
	// after 5 s without a message pump, mutter pings after 5 s).
	MaxPumpDelay time.Duration
	// HighBatch and NormalBatch bound the tasks of each priority run in one
	// turn. 0: DefaultBatch.
	HighBatch, NormalBatch int
	// MaxQueued bounds each priority's queue: Post and Do fail with
	// ErrOverloaded beyond it. 0: DefaultMaxQueued.
	MaxQueued int
	// SlowTask: a task, timer, watch callback or pump run that takes longer
	// is logged at WARN with its duration. 0: DefaultSlowTask; negative:
	// never.
	SlowTask time.Duration
	// Spin: while work keeps arriving less than Spin apart, the loop spins
	// up to Spin before it blocks, yielding its processor to other ready
	// threads as it spins: a thread woken from a block takes tens of
	// microseconds to run on a virtual machine. 0: DefaultSpin; negative:
	// never spin (the least CPU, the slowest hand-offs).
	Spin time.Duration
	// Logger receives the slow-task warnings and the loop's faults. nil:
	// slog.Default().
	Logger *slog.Logger
	// Sys holds the options of one operating system.
	Sys SysOptions
}

type config struct {
	pump         func()
	maxPumpDelay time.Duration
	highBatch    int
	normalBatch  int
	maxQueued    int
	slowTask     time.Duration
	spin         time.Duration
}

// Loop is an event loop that owns one locked OS thread. Its methods may be
// called from any goroutine unless they say otherwise.
type Loop struct {
	cfg   config
	clock Clock
	log   *slog.Logger
	tid   uint64 // the loop thread's ID; set before the loop is shared

	// mu guards what follows, up to the atomics. Lock order: mu is a leaf;
	// no user code and no blocking call runs under it (the wake-up
	// syscall does).
	mu       sync.Mutex
	queues   [2]ring[item] // by Priority
	timers   timerHeap
	timerSeq uint64
	ready    []*Watch // watches marked ready, not yet run
	closing  bool     // no new work is accepted
	sysDown  bool     // the poller's resources are released: never wake it

	closingFlag atomic.Bool   // closing, for the loop's checks between tasks
	waiting     atomic.Bool   // the loop is about to block: a poster must wake it
	running     atomic.Uint64 // seq of the task running now; 0 between tasks
	pumpPending atomic.Bool   // the window system has events for the pump
	work        atomic.Int32  // queued items plus ready watches (noteWork)

	// Loop thread only.
	seq       uint64
	depth     int // user code running now: tasks, timers, callbacks, the pump (nested on Windows)
	batch     []item
	watchBuf  []*Watch
	watches   map[*Watch]struct{}
	hasPump   bool
	inPump    bool
	nextPump  time.Time
	lastPump  time.Time
	stopClock func()
	p         poller
	done      chan struct{}
	closeOnce sync.Once
	fault     error // what stopped the loop, if not Close; set before done closes
	stats     counters
	pumpDepth int  // depth when the pump started
	spin      bool // spin before the next block (see wait)
}

// New starts a loop on a new OS thread, locked to the loop for its whole
// life (the thread ends with the loop, taking any per-thread state, a
// window or a GL context, with it).
func New(opts Options) (*Loop, error) {
	l := newLoop(opts)
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread exits with the loop
		if err := l.start(); err != nil {
			errc <- err
			return
		}
		errc <- nil
		l.run()
	}()
	if err := <-errc; err != nil {
		return nil, err
	}
	return l, nil
}

// Run runs a loop on the calling goroutine's OS thread until the loop is
// closed, for toolkits that must run on the program's first thread (call
// it from main, with runtime.LockOSThread in an init function). ready, if
// not nil, runs on the loop as its first task: it gets the loop, to hand to
// other goroutines. Run returns nil after Close, or the fault that stopped
// the loop.
func Run(opts Options, ready func(*Loop)) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	l := newLoop(opts)
	if err := l.start(); err != nil {
		return err
	}
	if ready != nil {
		_ = l.Post(High, func() { ready(l) })
	}
	l.run()
	return l.fault
}

func newLoop(opts Options) *Loop {
	l := &Loop{
		clock:   opts.Clock,
		log:     opts.Logger,
		done:    make(chan struct{}),
		watches: map[*Watch]struct{}{},
		cfg: config{
			pump:         opts.Pump,
			maxPumpDelay: opts.MaxPumpDelay,
			highBatch:    opts.HighBatch,
			normalBatch:  opts.NormalBatch,
			maxQueued:    opts.MaxQueued,
			slowTask:     opts.SlowTask,
			spin:         opts.Spin,
		},
	}
	if l.clock == nil {
		l.clock = SystemClock{}
	}
	if l.log == nil {
		l.log = slog.Default()
	}
	if l.cfg.maxPumpDelay <= 0 {
		l.cfg.maxPumpDelay = DefaultMaxPumpDelay
	}
	if l.cfg.highBatch <= 0 {
		l.cfg.highBatch = DefaultBatch
	}
	if l.cfg.normalBatch <= 0 {
		l.cfg.normalBatch = DefaultBatch
	}
	if l.cfg.maxQueued <= 0 {
		l.cfg.maxQueued = DefaultMaxQueued
	}
	if l.cfg.slowTask == 0 {
		l.cfg.slowTask = DefaultSlowTask
	}
	if l.cfg.spin == 0 {
		l.cfg.spin = DefaultSpin
	}
	l.p.sys = opts.Sys
	return l
}

// start sets the loop up on its thread.
func (l *Loop) start() error {
	l.tid = threadID()
	if err := l.p.init(l); err != nil {
		return fmt.Errorf("loop: starting: %w", err)
	}
	if l.cfg.pump == nil {
		l.cfg.pump = l.p.defaultPump()
	}
	l.hasPump = l.cfg.pump != nil
	now := l.clock.Now()
	l.lastPump = now
	l.nextPump = now.Add(l.cfg.maxPumpDelay)
	l.stopClock = l.clock.OnJump(l.clockJumped)
	return nil
}

// clockJumped wakes the loop to re-read its clock.
func (l *Loop) clockJumped() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.wakeLocked()
}

// wakeLocked wakes the loop if it is blocked or about to block. l.mu is
// held; the flag makes wake-ups coalesce: one per sleep of the loop.
func (l *Loop) wakeLocked() {
	if l.sysDown || !l.waiting.CompareAndSwap(true, false) {
		return
	}
	l.stats.wakeups.Add(1)
	if err := l.p.wake(); err != nil {
		l.log.Error("loop: waking the loop thread failed", "err", err)
	}
}

// OnLoop reports whether the caller runs on the loop's thread.
func (l *Loop) OnLoop() bool {
	// Only the loop's goroutine runs on its locked thread, and any code of
	// it that can call this runs inside a task (running != 0): the thread
	// ID lookup is needed only then.
	return l.running.Load() != 0 && threadID() == l.tid
}

// CurrentThreadID returns the operating system's ID of the calling thread
// (gettid on Linux, GetCurrentThreadId on Windows): compare it with
// ThreadID.
func CurrentThreadID() uint64 { return threadID() }

// ThreadID returns the operating system's ID of the loop's thread (gettid on
// Linux, GetCurrentThreadId on Windows).
func (l *Loop) ThreadID() uint64 { return l.tid }

// Done is closed once the loop has stopped: after Close, a WM_QUIT taken by
// the default Windows pump, or a fault of the operating system's wait.
func (l *Loop) Done() <-chan struct{} { return l.done }

// Err returns what stopped the loop if it was a fault, nil while it runs
// and after a Close.
func (l *Loop) Err() error {
	select {
	case <-l.done:
		return l.fault
	default:
		return nil
	}
}

// WakePump tells the loop that the window system has events: the pump runs
// as soon as the loop has nothing else to do (and in any case within
// MaxPumpDelay). For a window system whose readiness the loop cannot watch
// itself.
func (l *Loop) WakePump() {
	l.pumpPending.Store(true)
	l.mu.Lock()
	defer l.mu.Unlock()
	l.wakeLocked()
}

// Close stops the loop: the task running now finishes, queued Do calls
// fail with ErrClosed, queued posts and timers are dropped, watches stop,
// and the loop's thread releases what it created. Called off the loop it
// waits for all that; called from a task on the loop it returns at once and
// the loop stops when the task returns. A second Close returns ErrClosed.
func (l *Loop) Close() error {
	first := false
	l.closeOnce.Do(func() {
		first = true
		l.mu.Lock()
		l.closing = true
		l.closingFlag.Store(true)
		l.waiting.Store(true) // make sure the wake below reaches the thread
		l.wakeLocked()
		l.mu.Unlock()
	})
	if !first {
		if !l.OnLoop() {
			<-l.done
		}
		return closedError("close")
	}
	if !l.OnLoop() {
		<-l.done
	}
	return nil
}

// closeFromLoop closes the loop from its own thread, recording fault.
func (l *Loop) closeFromLoop(fault error) {
	if fault != nil && l.fault == nil {
		l.fault = fault
	}
	l.closeOnce.Do(func() {
		l.mu.Lock()
		l.closing = true
		l.closingFlag.Store(true)
		l.mu.Unlock()
	})
}

func (l *Loop) closingNow() bool { return l.closingFlag.Load() }

// run is the loop: turns until closing, then shutdown.
func (l *Loop) run() {
	defer l.shutdown()
	for !l.closingNow() {
		l.turn()
	}
}

// turn is one turn of the loop (see the package documentation).
func (l *Loop) turn() {
	l.stats.turns.Add(1)
	now := l.clock.Now()
	l.runWork(now)
	if l.hasPump && !l.closingNow() {
		l.p.checkPending()
		now = l.clock.Now()
		due := !now.Before(l.nextPump)
		if due {
			// High-priority work queued before the pump runs before it,
			// up to one batch more.
			l.runWatches(High)
			l.runBatch(High, l.cfg.highBatch)
		}
		if due || (l.pumpPending.Load() && l.idle(now)) {
			l.runPump()
		}
	}
	if l.closingNow() {
		return
	}
	l.wait()
}

// runWork runs one turn's work: high-priority watches and tasks, due
// timers, normal watches and tasks (high-priority work that comes meanwhile
// first, within the turn's high budget).
func (l *Loop) runWork(now time.Time) {
	budget := l.cfg.highBatch - l.runWatches(High)
	budget -= l.runBatch(High, max(budget, 0))
	l.runTimers(now)
	l.runWatches(Normal)
	l.runNormal(&budget)
}

// idle reports whether nothing is queued, ready or due.
func (l *Loop) idle(now time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.queues[High].len() == 0 && l.queues[Normal].len() == 0 && len(l.ready) == 0 &&
		(len(l.timers) == 0 || l.timers[0].when.After(now))
}

// wait blocks in the operating system until woken, until the next timer or
// the pump's deadline, or not at all if work is waiting; then collects what
// the system reported.
//
// Before blocking, the loop spins (up to Options.Spin, giving its
// processor to any other ready thread at each turn, and polling the system
// without blocking) if the previous block ended within Options.Spin: work
// is arriving that fast, and waking a thread from a block costs more than
// the spin (see the package documentation). A spin that finds nothing turns
// spinning off until a block ends that quickly again, so an idle loop does
// not spin.
func (l *Loop) wait() {
	timeout := l.timeout()
	if timeout != 0 && l.spin {
		if l.spinFor(l.cfg.spin, timeout) {
			return
		}
		l.spin = false
	}
	l.waiting.Store(true)
	if timeout != 0 {
		timeout = l.timeout() // again, now that posters see waiting
	}
	if timeout == 0 {
		l.waiting.Store(false)
	}
	start := time.Now()
	err := l.p.poll(timeout)
	l.waiting.Store(false)
	if timeout != 0 && l.cfg.spin > 0 && time.Since(start) < l.cfg.spin {
		l.spin = true
	}
	if err != nil {
		l.log.Error("loop: waiting in the operating system failed; the loop stops", "err", err)
		l.closeFromLoop(fmt.Errorf("loop: wait: %w", err))
	}
}

// spinFor spins for d at most, and not past timeout (if not negative),
// until work is queued or ready; it reports whether work came.
func (l *Loop) spinFor(d, timeout time.Duration) bool {
	if timeout > 0 {
		d = min(d, timeout)
	}
	deadline := time.Now().Add(d)
	for i := 0; ; i++ {
		if l.work.Load() > 0 || l.closingNow() || (l.hasPump && l.pumpPending.Load()) {
			return true
		}
		if i%16 == 15 && l.p.spinPoll() {
			return true
		}
		osYield()
		if !time.Now().Before(deadline) {
			return false
		}
	}
}

// timeout returns how long the loop may block: 0 if anything is queued,
// ready, due or closing, otherwise until the next timer or pump deadline
// (negative: no deadline).
func (l *Loop) timeout() time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closing || l.queues[High].len() > 0 || l.queues[Normal].len() > 0 || len(l.ready) > 0 ||
		(l.hasPump && l.pumpPending.Load()) {
		return 0
	}
	var deadline time.Time
	if len(l.timers) > 0 {
		deadline = l.timers[0].when
	}
	if l.hasPump && (deadline.IsZero() || l.nextPump.Before(deadline)) {
		deadline = l.nextPump
	}
	if deadline.IsZero() {
		return -1
	}
	d := l.clock.Until(deadline)
	if d == 0 {
		return 0
	}
	return d
}

// runPump runs the pump once.
func (l *Loop) runPump() {
	l.pumpPending.Store(false)
	tok := l.begin()
	start := tok.start
	if gap := start.Sub(l.lastPump); l.stats.pumps.Load() > 0 && gap > time.Duration(l.stats.maxPumpGap.Load()) {
		l.stats.maxPumpGap.Store(int64(gap))
	}
	l.lastPump = start
	l.nextPump = start.Add(l.cfg.maxPumpDelay)
	l.stats.pumps.Add(1)
	l.inPump, l.pumpDepth = true, l.depth
	l.p.pumpEnter()
	l.cfg.pump()
	l.p.pumpLeave()
	l.inPump = false
	l.end(tok, kindPump, Normal, "")
}

// Kinds of loop work, for the slow-task log.
const (
	kindTask  = "task"
	kindTimer = "timer"
	kindWatch = "watch callback"
	kindPump  = "pump"
)

// token is what begin hands to end.
type token struct {
	seq   uint64
	prev  uint64
	start time.Time
}

// begin marks the start of user code on the loop.
func (l *Loop) begin() token {
	l.seq++
	t := token{seq: l.seq, prev: l.running.Load(), start: l.clock.Now()}
	l.running.Store(t.seq)
	l.depth++
	return t
}

// end marks its end and logs it if it was slow.
func (l *Loop) end(t token, kind string, p Priority, label string) {
	l.depth--
	l.running.Store(t.prev)
	if l.cfg.slowTask < 0 {
		return
	}
	if d := l.clock.Now().Sub(t.start); d > l.cfg.slowTask {
		l.stats.slow.Add(1)
		args := []any{"kind", kind, "duration", d, "threshold", l.cfg.slowTask}
		if kind == kindTask {
			args = append(args, "priority", p.String())
		}
		if label != "" {
			args = append(args, "name", label)
		}
		l.log.Warn("loop: slow "+kind+" held the loop thread", args...)
	}
}

// shutdown runs on the loop thread once closing is set.
func (l *Loop) shutdown() {
	l.failQueued()
	l.mu.Lock()
	for _, t := range l.timers {
		t.index = -1
	}
	l.timers = nil
	ready := l.ready
	l.ready = nil
	l.noteWork()
	l.mu.Unlock()
	for _, w := range ready {
		w.ready.Store(false)
	}
	for w := range l.watches {
		l.stopWatch(w)
	}
	l.stopClock()
	l.mu.Lock()
	l.sysDown = true
	l.mu.Unlock()
	if err := l.p.close(); err != nil {
		l.log.Error("loop: releasing the loop's resources failed", "err", err)
	}
	close(l.done)
}

// Stats are a loop's counters since it started.
type Stats struct {
	HighTasks   uint64        // high-priority tasks run
	NormalTasks uint64        // normal-priority tasks run
	Timers      uint64        // timer functions run
	Watches     uint64        // watch callbacks run
	Pumps       uint64        // pump runs
	Turns       uint64        // turns of the loop
	Wakeups     uint64        // wake-ups sent to a blocked loop (coalesced)
	Overloaded  uint64        // Post and Do calls refused with ErrOverloaded
	SlowTasks   uint64        // runs longer than Options.SlowTask
	MaxPumpGap  time.Duration // longest time between two pump runs, on the loop's clock
	PumpLateMax time.Duration // MaxPumpGap beyond MaxPumpDelay (0 if never late)
}

type counters struct {
	tasks                                        [2]atomic.Uint64
	timers, watches, pumps, turns, wakeups, slow atomic.Uint64
	overloaded                                   atomic.Uint64
	maxPumpGap                                   atomic.Int64
}

// Stats returns the loop's counters.
func (l *Loop) Stats() Stats {
	s := Stats{
		HighTasks:   l.stats.tasks[High].Load(),
		NormalTasks: l.stats.tasks[Normal].Load(),
		Timers:      l.stats.timers.Load(),
		Watches:     l.stats.watches.Load(),
		Pumps:       l.stats.pumps.Load(),
		Turns:       l.stats.turns.Load(),
		Wakeups:     l.stats.wakeups.Load(),
		Overloaded:  l.stats.overloaded.Load(),
		SlowTasks:   l.stats.slow.Load(),
		MaxPumpGap:  time.Duration(l.stats.maxPumpGap.Load()),
	}
	s.PumpLateMax = max(s.MaxPumpGap-l.cfg.maxPumpDelay, 0)
	return s
}
