package loop

import "sync/atomic"

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
	if err := w.sys.stop(l); err != nil {
		l.log.Error("loop: removing a watch failed", "err", err)
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
