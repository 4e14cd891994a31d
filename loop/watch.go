package loop

import (
	"context"
	"errors"
	"sync/atomic"

	"github.com/capnshm/capnshm/iocpwake"
)

// Watch is a source of events whose callback runs on the loop: a doorbell
// (WatchBell), a file descriptor (WatchFD, Linux) or a waitable handle
// (WatchHandle, Windows). Callbacks of one priority run at the start of
// that priority's part of the turn, before its tasks, each once. A callback
// returns more = true to be called again without a new event (a receive
// loop that stopped at its budget with messages left): a normal-priority
// one in the next turn, a high-priority one as soon as the turn's other
// high work allows, within the turn's HighBatch budget, so that it cannot
// starve normal work.
type Watch struct {
	l       *Loop
	pri     Priority
	run     func() bool // the callback, with the system's part (draining a doorbell, re-arming)
	ready   atomic.Bool // queued in l.ready (or about to be)
	stopped atomic.Bool
	sys     watchSys
	bridge  *bellBridge // doorbell watches
}

// addWatch registers w on the loop: register runs on the loop's thread.
func (l *Loop) addWatch(w *Watch, register func() error) (*Watch, error) {
	if !w.pri.valid() {
		return nil, errInvalidPriority(w.pri)
	}
	var err error
	if cerr := l.control("watch", func() {
		if l.closingNow() {
			err = closedError("watch")
			return
		}
		if err = register(); err == nil {
			l.watches[w] = struct{}{}
		}
	}); cerr != nil {
		return nil, cerr
	}
	if err != nil {
		return nil, err
	}
	return w, nil
}

// Stop removes the watch. When it returns, the callback does not run any
// more and, unless Stop was called from the callback itself, is not
// running. Stopping a stopped watch, or one of a closed loop, does nothing.
func (w *Watch) Stop() error {
	if w.stopped.Load() {
		return nil
	}
	l := w.l
	err := l.control("stop watch", func() {
		if _, ok := l.watches[w]; ok {
			l.stopWatch(w)
		}
	})
	if err != nil && l.closingNow() {
		<-l.done // shutdown stops every watch
		return nil
	}
	return err
}

// stopWatch removes w. Loop thread.
func (l *Loop) stopWatch(w *Watch) {
	w.stopped.Store(true)
	delete(l.watches, w)
	if w.bridge != nil {
		w.bridge.cancel()
		<-w.bridge.exited // Wait returns at once on cancellation
	}
	if err := w.sys.stop(l); err != nil {
		l.log.Error("loop: removing a watch failed", "err", err)
	}
}

// WatchBell calls f on the loop, at priority p, after b rings. Rings
// coalesce: several before the callback runs call it once. f may also run
// without a ring, when b's Wait returns without one (a Windows bell's Wait
// does at least every 100 ms, so that a completion Wine loses costs latency,
// not a hang): f re-checks the state it is about, as any bell waiter does.
//
// A goroutine waits on b (Bell.Wait: in Go's netpoller on Linux, in the
// bell's completion port on Windows) and marks the watch ready, one hand-off
// per ring, not per message: a receive loop behind a bell drains what the
// ring announced in one callback. The bell's own wait is what reads and
// clears it (a pipe or socket whose read end iocpwake keeps to itself on
// Linux; a completion port of its own on Windows, which no documented call
// waits on together with the loop's port or message queue), so the loop
// cannot put it in its own wait set.
//
// Nobody else may Wait on b while it is watched; Stop the watch before
// closing b (a bell closed under the watch calls f once more, then the watch
// goes quiet). A bell opened from a peer's handle (it only rings) or closed
// is refused with iocpwake.ErrRingOnly or iocpwake.ErrClosed.
func (l *Loop) WatchBell(b *iocpwake.Bell, p Priority, f func() (more bool)) (*Watch, error) {
	rang, err := probeBell(b)
	if err != nil {
		return nil, err
	}
	w := &Watch{l: l, pri: p, run: f}
	return l.addWatch(w, func() error {
		ctx, cancel := context.WithCancel(context.Background())
		w.bridge = &bellBridge{cancel: cancel, exited: make(chan struct{})}
		go w.bridge.run(ctx, l, w, b)
		if rang {
			l.markReady(w)
		}
		return nil
	})
}

// bellBridge is the goroutine that waits on a watched bell.
type bellBridge struct {
	cancel context.CancelFunc
	exited chan struct{}
}

// run waits on b until ctx ends, marking w ready after each wake-up.
func (br *bellBridge) run(ctx context.Context, l *Loop, w *Watch, b *iocpwake.Bell) {
	defer close(br.exited)
	for {
		err := b.Wait(ctx)
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			if !errors.Is(err, iocpwake.ErrClosed) {
				l.log.Error("loop: waiting on a watched bell failed; the watch goes quiet", "err", err)
			}
			l.markReady(w) // one last callback, so that its owner looks
			return
		}
		l.markReady(w)
	}
}

// markReady queues w's callback for the next turn. Any goroutine.
func (l *Loop) markReady(w *Watch) {
	if w.stopped.Load() || !w.ready.CompareAndSwap(false, true) {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closing {
		return
	}
	l.ready = append(l.ready, w)
	l.noteWork()
	l.wakeLocked()
}

// runWatches runs the ready callbacks of priority p, each once, and
// returns how many ran.
func (l *Loop) runWatches(p Priority) int {
	l.mu.Lock()
	if len(l.ready) == 0 {
		l.mu.Unlock()
		return 0
	}
	run := l.watchBuf[:0]
	keep := l.ready[:0]
	for _, w := range l.ready {
		if w.pri == p {
			run = append(run, w)
		} else {
			keep = append(keep, w)
		}
	}
	clear(l.ready[len(keep):])
	l.ready = keep
	l.noteWork()
	l.mu.Unlock()
	ran := 0
	for i, w := range run {
		run[i] = nil
		if l.closingNow() {
			w.ready.Store(false)
			continue
		}
		w.ready.Store(false) // an event from now on queues it again
		if w.stopped.Load() {
			continue
		}
		l.stats.watches.Add(1)
		ran++
		tok := l.begin()
		more := w.run()
		l.end(tok, kindWatch, p, "")
		if more {
			l.markReady(w)
		}
	}
	l.watchBuf = run[:0]
	return ran
}
