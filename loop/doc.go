// Package loop is an event loop that owns one locked OS thread: for
// programs whose work must run on one thread (OpenGL contexts, GUI
// toolkits, the Win32 message queue), and that must serve Cap'n Proto RPC
// on that thread before anything else while still pumping the window
// system's events often enough that it never calls them hung.
//
//	l, err := loop.New(loop.Options{Pump: glfw.PollEvents}) // or loop.Run on main's thread
//	client := foo.Foo(loop.BindServer(l, foo.Foo_Methods(nil, impl), impl))
//	err = l.Do(ctx, loop.Normal, func(ctx context.Context) error { return draw(ctx) })
//	t := l.AfterFunc(time.Second, tick)
//	w, err := l.WatchBell(bell, loop.High, func() bool { return drain() })
//
// # A turn
//
//	+------------------------------------------------------------------+
//	| 1. high-priority watch callbacks, then high tasks  (HighBatch)   |
//	| 2. timers due at the turn's start (on Options.Clock)             |
//	| 3. normal watch callbacks, then normal tasks       (NormalBatch) |
//	|    before each normal task: high work that came meanwhile,       |
//	|    within what is left of the turn's HighBatch budget            |
//	| 4. the pump, if due (MaxPumpDelay since its last run: first the  |
//	|    high work queued by now, one more batch), or if the window    |
//	|    system has events and nothing else is queued, ready or due    |
//	| 5. wait: spin if work has been arriving fast (Options.Spin),     |
//	|    then block in the system until woken, the next timer or the   |
//	|    pump's deadline; not at all if work is waiting                |
//	+------------------------------------------------------------------+
//
// So RPC (High) is served first, a high task waits behind one normal task
// at most, normal work still progresses under a flood of high work, and the
// pump runs at least once per MaxPumpDelay however much work comes, late
// by at most the batches of one turn. A timer rearmed from its own
// function for a time already past fires in the next turn, so a turn always
// ends.
//
// # Waiting and waking
//
//	Linux     epoll_wait on the loop's epoll set: an eventfd (wake-ups),
//	          watched descriptors (WatchFD, level-triggered), the window
//	          system's descriptor (WatchPumpFD, edge-triggered).
//	Windows   scheduled mode (default): GetQueuedCompletionStatusEx on a
//	          completion port of the loop's own, woken by
//	          PostQueuedCompletionStatus; the message queue is looked at
//	          (GetQueueStatus) only when the pump is due or the loop idle.
//	          interactive mode (SysOptions.Interactive):
//	          MsgWaitForMultipleObjectsEx(QS_ALLINPUT, MWMO_INPUTAVAILABLE),
//	          woken by a message to a message-only window of the loop's own.
//	          Handles are waited on by the thread pool
//	          (RegisterWaitForSingleObject), which marks their watch ready
//	          and wakes the loop.
//	Both      a doorbell (iocpwake.Bell) is waited on by a goroutine of its
//	          watch, in the bell's own Wait (the netpoller on Linux; on
//	          Windows the bell's completion port, which no documented call
//	          waits on together with the loop's port or message queue);
//	          the goroutine marks the watch ready and wakes the loop.
//
// Wake-ups coalesce: the loop sets a flag before it blocks and re-checks its
// queues; a poster that queues work and finds the flag set clears it and
// sends the one wake-up. A wake-up the loop consumed always leads to the work
// it announced: the loop looks at its queues before it blocks again. On
// Windows a wake-up message can be consumed by a modal loop (a window being
// moved or resized, which DefWindowProc runs inside the pump's
// DispatchMessage); the loop's window procedure then runs the loop's work
// there, as does the WM_TIMER the loop sets on its window while the pump
// runs, so that high-priority work keeps running inside modal loops. Work
// never nests inside a task: a task that enters a modal loop itself holds
// the loop like any long task. Wine without a display cannot show real
// modal move and size loops; the tests run a GetMessage loop inside the pump
// instead, as those loops do.
//
// # Handing work to the loop's thread
//
// A Go program pays for a hand-off to a locked thread mostly in the
// scheduler and in waking idle processors: a goroutine readied by the loop
// thread is queued on the loop's own Go processor, and a thread woken from
// a block takes tens of microseconds to run on a virtual machine. So the
// loop spins for a while before it blocks when work has been arriving
// faster than Options.Spin, and a Do caller spins before it sleeps; both
// give their processor to any other ready thread as they spin. An idle
// loop does not spin. BenchmarkPing measures the cost against an ordinary
// go-capnp handler, and rpc's BenchmarkLoopBoundPing through capnshm's
// engine over shared memory: a bound ping took 1.2x an ordinary one with
// the default spin, 3.5x with none (2 vCPUs, one run).
//
// A connection whose receiving and dispatch both run on the loop, with no
// hand-off per call, is not built. Its receiving could run as a watch
// callback (WatchFD, or WatchBell, whose goroutine costs one hand-off per
// ring, and rings coalesce) at High priority, taking many messages per
// turn; but dispatch goes through go-capnp's server.Server, which queues
// every call to a goroutine of its own, and a server.Call with its
// arguments and results cannot be built outside go-capnp's server
// package, so a bound call costs the engine's receive goroutine, the
// server's goroutine, then BindMethods' hand-off to the loop.
//
// # Hazards
//
//   - A task that waits for work that can only run on its own loop would
//     wait forever. Do runs f inline when called on the loop's thread. A
//     request made from another goroutine, with the context of a task that
//     is still running on the same loop (directly, or through tasks of
//     other loops that it waits for), fails with ErrWouldDeadlock: Do gives
//     f a context that records its task, and BindServer's handlers pass it
//     on, so a bound handler that calls a capability bound to its own loop
//     and waits for it gets an error instead of a hang. We chose the error
//     over a loop that keeps serving while a task waits: that would run
//     other handlers in the middle of one (re-entrancy, the classic bug of
//     nested event loops), and only for waits that go through the loop.
//     What the loop cannot see: a context that does not travel (a call that
//     leaves through an RPC connection and comes back on another, or a task
//     that drops its context). Such a wait lasts until its deadline, and the
//     slow-task warning names it afterwards. A request that carries a
//     running task's context but is not waited for fails as well: post it
//     without that context.
//   - Each priority's queue holds at most Options.MaxQueued tasks: past it,
//     Post and Do fail with ErrOverloaded, an exc.Overloaded exception for
//     RPC callers. The loop's own control work (stopping a watch, a bound
//     server's Shutdown) is exempt.
//   - A task, timer, callback or pump run longer than Options.SlowTask is
//     logged at WARN with its duration (slog), and counted in Stats.
//   - Close always finishes: the running task completes, queued Do calls fail
//     with ErrClosed, posts and timers are dropped, watches stop (a Windows
//     bell's goroutine is cancelled and waited for), the loop's thread
//     releases what it created.
//
// # Locks
//
// Lock rules, written before the code: Loop.mu guards the queues, the timer
// heap, the ready-watch list and the closing flags. It is a leaf: no user
// code runs under it and nothing blocks under it except the wake-up system
// call (an eventfd write, PostQueuedCompletionStatus or PostMessage), which
// is made under it so that the loop cannot release the handle meanwhile.
// Everything else the loop owns (the watch table, the epoll set, the
// message-only window, the pump's state) is touched only on the loop's
// thread, without a lock; other goroutines reach it through a control task.
// The flags the loop reads between tasks (closing, waiting, running,
// pumpPending, work) are atomics. Callbacks of the system (the thread
// pool's wait callbacks, a bell's goroutine) take only Loop.mu, through
// markReady. The Windows window table (hwnds) and wait registry have their
// own leaf mutexes.
//
// # Files
//
//	loop.go       Loop, Options, New, Run, the turn, wait and spin, Close, Stats
//	queue.go      priorities, Post, Do and its hand-off, batches
//	context.go    the task marker in contexts; ErrWouldDeadlock's check
//	timer.go      AfterFunc, Timer.Stop, Timer.Reset
//	clock.go      Clock, SystemClock, ManualClock
//	watch.go      Watch, readiness, Stop
//	bind.go       BindMethods, BindServer
//	poller_*.go   the system's wait and wake-up; watch_*.go the system's watches
package loop
