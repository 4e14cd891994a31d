package loop_test

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/windows"

	"github.com/capnshm/capnshm/loop"
)

var (
	user32                  = windows.NewLazySystemDLL("user32.dll")
	procGetMessageW         = user32.NewProc("GetMessageW")
	procTranslateMessage    = user32.NewProc("TranslateMessage")
	procDispatchMessageW    = user32.NewProc("DispatchMessageW")
	procPostQuitMessage     = user32.NewProc("PostQuitMessage")
	procRegisterClassExW    = user32.NewProc("RegisterClassExW")
	procCreateWindowExW     = user32.NewProc("CreateWindowExW")
	procDestroyWindow       = user32.NewProc("DestroyWindow")
	procDefWindowProcW      = user32.NewProc("DefWindowProcW")
	procSendMessageTimeoutW = user32.NewProc("SendMessageTimeoutW")
	procPostMessageW        = user32.NewProc("PostMessageW")
)

const (
	wmApp           = 0x8000
	smtoAbortIfHung = 0x0002
)

type testMsg struct {
	hwnd    uintptr
	message uint32
	wParam  uintptr
	lParam  uintptr
	time    uint32
	pt      struct{ x, y int32 }
	private uint32
}

// A modal loop entered from the pump (as DefWindowProc's move and size
// loops are, from DispatchMessage) still runs the loop's work: the wake-up
// message (interactive mode) or the loop's WM_TIMER (both modes) reaches
// the loop's window procedure through the modal loop's DispatchMessage.
// Wine cannot show a real move or size loop without a display: this pump
// runs a GetMessage loop of its own, as they do.
func TestModalLoopKeepsServing(t *testing.T) {
	eachMode(t, func(t *testing.T, sys loop.SysOptions) {
		clk := loop.NewManualClock(epoch)
		var inModal atomic.Bool
		var done atomic.Bool
		entered, exited := make(chan struct{}), make(chan struct{})
		var once sync.Once
		l := start(t, loop.Options{Sys: sys, Clock: clk, Pump: func() {
			first := false
			once.Do(func() { first = true })
			if !first {
				return
			}
			inModal.Store(true)
			close(entered)
			var m testMsg
			for !done.Load() {
				if r, _, _ := procGetMessageW.Call(uintptr(unsafe.Pointer(&m)), 0, 0, 0); int32(r) <= 0 {
					break
				}
				procTranslateMessage.Call(uintptr(unsafe.Pointer(&m)))
				procDispatchMessageW.Call(uintptr(unsafe.Pointer(&m)))
			}
			inModal.Store(false)
			close(exited)
		}})
		clk.Advance(loop.DefaultMaxPumpDelay) // the pump is due
		await(t, entered, "the pump to enter its modal loop")
		const n = 5
		ran := make(chan bool, n)
		for i := range n {
			if err := l.Post(loop.High, func() {
				ran <- inModal.Load() && l.OnLoop()
				if i == n-1 {
					done.Store(true) // the modal loop ends at its next message
				}
			}); err != nil {
				t.Fatal(err)
			}
		}
		for i := range n {
			if ok := await(t, ran, "a task posted during the modal loop"); !ok {
				t.Errorf("task %d did not run inside the modal loop, on the loop's thread", i)
			}
		}
		// It ends on the loop's thread as the last task returns, which
		// the test goroutine cannot see from the task itself: wait for it.
		await(t, exited, "the modal loop to end after its last task")
		barrier(t, l, loop.Normal)
	})
}

// WM_QUIT taken by the default pump closes the loop.
func TestQuitMessageClosesLoop(t *testing.T) {
	eachMode(t, func(t *testing.T, sys loop.SysOptions) {
		clk := loop.NewManualClock(epoch)
		l := start(t, loop.Options{Sys: sys, Clock: clk})
		l.Post(loop.Normal, func() { procPostQuitMessage.Call(3) })
		// The pump takes it when the loop is idle, or at its deadline.
		clk.Advance(loop.DefaultMaxPumpDelay)
		await(t, l.Done(), "the loop to stop on WM_QUIT")
		if err := l.Err(); err != nil {
			t.Errorf("Err after WM_QUIT = %v, want nil", err)
		}
	})
}

// A window on the loop's thread answers SendMessageTimeout from another
// thread within its bound, and receives posted messages, while the loop
// serves a flood of high-priority tasks: the pump runs by its deadline.
func TestWindowAnswersDuringFlood(t *testing.T) {
	eachMode(t, func(t *testing.T, sys loop.SysOptions) {
		l := start(t, loop.Options{Sys: sys, MaxPumpDelay: 100 * time.Millisecond})
		var posted atomic.Int32
		allPosted := make(chan struct{})
		var hwnd uintptr
		err := l.Do(context.Background(), loop.Normal, func(context.Context) error {
			var err error
			hwnd, err = testWindow(func(m uint32) (uintptr, bool) {
				switch m {
				case wmApp:
					return 42, true
				case wmApp + 1:
					if posted.Add(1) == 3 {
						close(allPosted)
					}
					return 0, true
				}
				return 0, false
			})
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			l.Do(context.Background(), loop.Normal, func(context.Context) error {
				procDestroyWindow.Call(hwnd)
				return nil
			})
		})
		stop := make(chan struct{})
		var flooded atomic.Int64
		flooding := make(chan struct{})
		var wg sync.WaitGroup
		wg.Add(1)
		// The flood keeps 100 tasks queued (the poster blocks, not spins:
		// under Wine every window-system call is a round trip to
		// wineserver, which needs a CPU too).
		inFlight := make(chan struct{}, 100)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				case inFlight <- struct{}{}:
				}
				l.Post(loop.High, func() {
					if flooded.Add(1) == 100 {
						close(flooding)
					}
					start := time.Now()
					for time.Since(start) < 20*time.Microsecond {
					}
					<-inFlight
				})
			}
		}()
		defer func() { close(stop); wg.Wait() }()
		await(t, flooding, "the flood to start")
		for i := range 3 {
			procPostMessageW.Call(hwnd, wmApp+1, 0, 0)
			var result uintptr
			r, _, err := procSendMessageTimeoutW.Call(hwnd, wmApp, 0, 0, smtoAbortIfHung, 5000, uintptr(unsafe.Pointer(&result)))
			if r == 0 {
				t.Fatalf("SendMessageTimeout %d failed during the flood (%d tasks run): %v", i, flooded.Load(), err)
			}
			if result != 42 {
				t.Fatalf("SendMessageTimeout %d: result %d, want 42", i, result)
			}
		}
		await(t, allPosted, "the posted messages to be dispatched during the flood")
	})
}

var (
	testClassOnce sync.Once
	testClassErr  error
	testClass     = windows.StringToUTF16Ptr("capnshm.loop.test")
	testHandlers  sync.Map // hwnd -> func(uint32) (uintptr, bool)
)

// testWindow creates a message-only window on the calling thread whose
// procedure asks handle first.
func testWindow(handle func(m uint32) (uintptr, bool)) (uintptr, error) {
	testClassOnce.Do(func() {
		type wndClassEx struct {
			size, style                uint32
			wndProc                    uintptr
			clsExtra, wndExtra         int32
			instance, icon, cursor, bg windows.Handle
			menuName, className        *uint16
			iconSm                     windows.Handle
		}
		wc := wndClassEx{className: testClass, wndProc: windows.NewCallback(func(hwnd, m, wp, lp uintptr) uintptr {
			if h, ok := testHandlers.Load(hwnd); ok {
				if r, ok := h.(func(uint32) (uintptr, bool))(uint32(m)); ok {
					return r
				}
			}
			r, _, _ := procDefWindowProcW.Call(hwnd, m, wp, lp)
			return r
		})}
		wc.size = uint32(unsafe.Sizeof(wc))
		if r, _, err := procRegisterClassExW.Call(uintptr(unsafe.Pointer(&wc))); r == 0 {
			testClassErr = err
		}
	})
	if testClassErr != nil {
		return 0, testClassErr
	}
	const hwndMessage = ^uintptr(2)
	h, _, err := procCreateWindowExW.Call(0, uintptr(unsafe.Pointer(testClass)), 0, 0, 0, 0, 0, 0, hwndMessage, 0, 0, 0)
	if h == 0 {
		return 0, err
	}
	testHandlers.Store(h, handle)
	return h, nil
}
