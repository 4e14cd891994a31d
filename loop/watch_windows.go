package loop

import (
	"fmt"
	"sync"
	"unsafe"

	"golang.org/x/sys/windows"
)

// watchSys is the Windows part of a Watch: a registered wait on a handle.
type watchSys struct {
	handle windows.Handle
	wait   windows.Handle // registered wait; 0 when not armed
	regID  uintptr
}

func (s *watchSys) stop(*Loop) error {
	var err error
	if s.wait != 0 {
		// INVALID_HANDLE_VALUE: return only once no callback runs.
		if r, _, e := procUnregisterWaitEx.Call(uintptr(s.wait), uintptr(windows.InvalidHandle)); r == 0 {
			err = fmt.Errorf("UnregisterWaitEx: %w", e)
		}
		s.wait = 0
	}
	if s.regID != 0 {
		waitRegistryMu.Lock()
		delete(waitRegistry, s.regID)
		waitRegistryMu.Unlock()
		s.regID = 0
	}
	return err
}

// Registered waits call one package-level callback (callback slots are
// limited: never one per watch) with the watch's registry ID.
var (
	waitRegistryMu sync.Mutex
	waitRegistry   = map[uintptr]*Watch{}
	nextRegID      uintptr
	waitCallback   = sync.OnceValue(func() uintptr { return windows.NewCallback(handleSignalled) })
)

// handleSignalled is a WAITORTIMERCALLBACK, run on a thread-pool thread.
func handleSignalled(id uintptr, timedOut uintptr) uintptr {
	waitRegistryMu.Lock()
	w := waitRegistry[id]
	waitRegistryMu.Unlock()
	if w != nil {
		w.l.markReady(w)
	}
	return 0
}

// arm registers a one-shot wait on the handle.
func (s *watchSys) arm() error {
	var wh windows.Handle
	r, _, err := procRegisterWaitForSingleObject.Call(uintptr(unsafe.Pointer(&wh)), uintptr(s.handle),
		waitCallback(), s.regID, uintptr(windows.INFINITE), wtExecuteInWaitThrd|wtExecuteOnlyOnce)
	if r == 0 {
		return fmt.Errorf("RegisterWaitForSingleObject: %w", err)
	}
	s.wait = wh
	return nil
}

// rearm replaces the spent one-shot wait with a new one. Loop thread.
func (s *watchSys) rearm() error {
	if s.wait != 0 {
		// NULL: do not wait; the spent wait's callback has already run
		// (that is what queued the watch) or only marks it ready again.
		procUnregisterWaitEx.Call(uintptr(s.wait), 0)
		s.wait = 0
	}
	return s.arm()
}

// WatchHandle calls f on the loop, at priority p, when h (an event, a
// process, a semaphore, any waitable object) is signalled. The wait is
// re-armed after each callback, so a handle that stays signalled (a
// manual-reset event, an exited process) calls f in every turn until it is
// reset or the watch stopped. The wait runs on the system's thread pool
// (RegisterWaitForSingleObject), whatever the loop's mode, and wakes the
// loop through its ordinary wake-up. The loop does not own h: Stop the
// watch before closing it.
func (l *Loop) WatchHandle(h windows.Handle, p Priority, f func() (more bool)) (*Watch, error) {
	w := &Watch{l: l, pri: p, sys: watchSys{handle: h}}
	w.run = func() bool {
		more := f()
		if w.stopped.Load() {
			return false
		}
		if err := w.sys.rearm(); err != nil {
			l.log.Error("loop: re-arming a handle watch failed; the watch stops", "handle", uintptr(h), "err", err)
			l.stopWatch(w)
			return false
		}
		return more
	}
	return l.addWatch(w, func() error {
		waitRegistryMu.Lock()
		nextRegID++
		w.sys.regID = nextRegID
		waitRegistry[w.sys.regID] = w
		waitRegistryMu.Unlock()
		if err := w.sys.arm(); err != nil {
			waitRegistryMu.Lock()
			delete(waitRegistry, w.sys.regID)
			waitRegistryMu.Unlock()
			return fmt.Errorf("loop: watch handle %#x: %w", uintptr(h), err)
		}
		return nil
	})
}
