package handles

import (
	"fmt"
	"sync"
	"unsafe"

	"golang.org/x/sys/windows"
)

// Functions x/sys/windows v0.49.0 does not wrap.
var (
	procRegisterWaitForSingleObject = modkernel32.NewProc("RegisterWaitForSingleObject")
	procUnregisterWaitEx            = modkernel32.NewProc("UnregisterWaitEx")
)

const (
	wtExecuteInWaitThread = 0x00000004
	wtExecuteOnlyOnce     = 0x00000008
)

// One callback for every watch (callback slots are a limited resource:
// never make one per watch), which finds its watch by id.
var (
	watchMu     sync.Mutex
	watches     = map[uintptr]func(){}
	nextWatchID uintptr

	watchCallback = sync.OnceValue(func() uintptr { return windows.NewCallback(watchFired) })
)

// watchFired is a WAITORTIMERCALLBACK, run on the system's wait thread.
func watchFired(id uintptr, timedOut uintptr) uintptr {
	watchMu.Lock()
	fn := watches[id]
	delete(watches, id)
	watchMu.Unlock()
	if fn != nil {
		fn()
	}
	return 0
}

// OnSignal calls fn once, on a system thread, when h is signalled (a
// process handle: when the process ends), through
// RegisterWaitForSingleObject: no goroutine or thread of ours waits. fn
// must return quickly and must not call stop. stop cancels the watch and
// returns once fn is not running; after it, fn is never called. h must
// stay open until stop returns.
func OnSignal(h windows.Handle, fn func()) (stop func() error, err error) {
	watchMu.Lock()
	nextWatchID++
	id := nextWatchID
	watches[id] = fn
	watchMu.Unlock()
	forget := func() {
		watchMu.Lock()
		delete(watches, id)
		watchMu.Unlock()
	}
	var w windows.Handle
	r, _, e := procRegisterWaitForSingleObject.Call(uintptr(unsafe.Pointer(&w)), uintptr(h),
		watchCallback(), id, uintptr(windows.INFINITE), wtExecuteInWaitThread|wtExecuteOnlyOnce)
	if r == 0 {
		forget()
		return nil, fmt.Errorf("RegisterWaitForSingleObject: %w", e)
	}
	var once sync.Once
	var stopErr error
	return func() error {
		once.Do(func() {
			forget()
			// INVALID_HANDLE_VALUE: return only once no callback runs.
			if r, _, e := procUnregisterWaitEx.Call(uintptr(w), uintptr(windows.InvalidHandle)); r == 0 {
				stopErr = fmt.Errorf("UnregisterWaitEx: %w", e)
			}
		})
		return stopErr
	}, nil
}
