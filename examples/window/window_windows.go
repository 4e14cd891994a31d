package main

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/windows"

	"github.com/capnshm/capnshm/loop"
)

// errNoDisplay is never returned on Windows: every session has a desktop.
var errNoDisplay = errors.New("no display")

var (
	user32                  = windows.NewLazySystemDLL("user32.dll")
	gdi32                   = windows.NewLazySystemDLL("gdi32.dll")
	kernel32                = windows.NewLazySystemDLL("kernel32.dll")
	procRegisterClassExW    = user32.NewProc("RegisterClassExW")
	procCreateWindowExW     = user32.NewProc("CreateWindowExW")
	procDestroyWindow       = user32.NewProc("DestroyWindow")
	procDefWindowProcW      = user32.NewProc("DefWindowProcW")
	procShowWindow          = user32.NewProc("ShowWindow")
	procGetDC               = user32.NewProc("GetDC")
	procReleaseDC           = user32.NewProc("ReleaseDC")
	procGetClientRect       = user32.NewProc("GetClientRect")
	procFillRect            = user32.NewProc("FillRect")
	procBeginPaint          = user32.NewProc("BeginPaint")
	procEndPaint            = user32.NewProc("EndPaint")
	procSendMessageTimeoutW = user32.NewProc("SendMessageTimeoutW")
	procPostMessageW        = user32.NewProc("PostMessageW")
	procIsWindowVisible     = user32.NewProc("IsWindowVisible")
	procCreateSolidBrush    = gdi32.NewProc("CreateSolidBrush")
	procDeleteObject        = gdi32.NewProc("DeleteObject")
	procGetModuleHandleW    = kernel32.NewProc("GetModuleHandleW")
)

const (
	wmDestroy         = 0x0002
	wmPaint           = 0x000F
	wmClose           = 0x0010
	wmApp             = 0x8000
	wmCheck           = wmApp + 1 // the liveness check the tests and -demo send
	wmPosted          = wmApp + 2 // posted with each check: only the pump's DispatchMessage delivers it
	checkAnswer       = 0x5a5a
	wsOverlappedWin   = 0x00CF0000
	cwUseDefault      = ^uintptr(0x7FFFFFFF) // CW_USEDEFAULT, (int)0x80000000
	swShowNoActivate  = 4
	smtoAbortIfHung   = 0x0002
	winWidth          = 320
	winHeight         = 240
	windowClassName   = "capnshm.examples.window"
	paintStructLength = 72
)

type rect struct{ left, top, right, bottom int32 }

type wndClassEx struct {
	size, style                uint32
	wndProc                    uintptr
	clsExtra, wndExtra         int32
	instance, icon, cursor, bg windows.Handle
	menuName, className        *uint16
	iconSm                     windows.Handle
}

// gdiWindow is a Win32 top-level window painted with GDI. OpenGL is what
// the seed's program draws with; Wine without a display has no OpenGL, and
// the loop's part does not depend on what draws, so this draws with GDI.
type gdiWindow struct {
	hwnd          uintptr
	color         uint32 // 0xRRGGBB
	events, pings atomic.Uint64
	closed        chan struct{}
	closeOnce     sync.Once
}

var (
	classOnce sync.Once
	classErr  error
	windowsMu sync.Mutex
	byHWND    = map[uintptr]*gdiWindow{}
	creating  *gdiWindow // the window CreateWindowExW is creating (loop thread)
)

func registerClass() error {
	classOnce.Do(func() {
		inst, _, _ := procGetModuleHandleW.Call(0)
		wc := wndClassEx{
			wndProc:   windows.NewCallback(wndProc),
			instance:  windows.Handle(inst),
			className: windows.StringToUTF16Ptr(windowClassName),
		}
		wc.size = uint32(unsafe.Sizeof(wc))
		if r, _, err := procRegisterClassExW.Call(uintptr(unsafe.Pointer(&wc))); r == 0 {
			classErr = fmt.Errorf("RegisterClassExW: %w", err)
		}
	})
	return classErr
}

// openWindow opens a window; display is ignored. Loop thread: the window
// belongs to the thread that creates it.
func openWindow(_ string, title string) (window, error) {
	if err := registerClass(); err != nil {
		return nil, err
	}
	w := &gdiWindow{color: 0xffffff, closed: make(chan struct{})}
	windowsMu.Lock()
	creating = w
	windowsMu.Unlock()
	inst, _, _ := procGetModuleHandleW.Call(0)
	h, _, err := procCreateWindowExW.Call(0,
		uintptr(unsafe.Pointer(windows.StringToUTF16Ptr(windowClassName))),
		uintptr(unsafe.Pointer(windows.StringToUTF16Ptr(title))),
		wsOverlappedWin, cwUseDefault, cwUseDefault, winWidth, winHeight, 0, 0, inst, 0)
	windowsMu.Lock()
	creating = nil
	if h != 0 {
		w.hwnd = h
		byHWND[h] = w
	}
	windowsMu.Unlock()
	if h == 0 {
		return nil, fmt.Errorf("CreateWindowExW: %w", err)
	}
	procShowWindow.Call(h, swShowNoActivate)
	return w, nil
}

func lookup(hwnd uintptr) *gdiWindow {
	windowsMu.Lock()
	defer windowsMu.Unlock()
	if w := byHWND[hwnd]; w != nil {
		return w
	}
	return creating
}

// wndProc is the window procedure: it runs on the loop's thread, when the
// pump dispatches a message or a peek delivers a sent one.
func wndProc(hwnd, msg, wp, lp uintptr) uintptr {
	w := lookup(hwnd)
	if w != nil {
		w.events.Add(1)
		switch msg {
		case wmPaint:
			var ps [paintStructLength]byte
			hdc, _, _ := procBeginPaint.Call(hwnd, uintptr(unsafe.Pointer(&ps[0])))
			if hdc != 0 {
				w.fillDC(hdc)
			}
			procEndPaint.Call(hwnd, uintptr(unsafe.Pointer(&ps[0])))
			return 0
		case wmCheck:
			w.pings.Add(1)
			return checkAnswer
		case wmPosted:
			return 0
		case wmClose:
			w.closeOnce.Do(func() { close(w.closed) })
			return 0
		case wmDestroy:
			windowsMu.Lock()
			delete(byHWND, hwnd)
			windowsMu.Unlock()
			return 0
		}
	}
	r, _, _ := procDefWindowProcW.Call(hwnd, msg, wp, lp)
	return r
}

// fill paints the client area with rgb.
func (w *gdiWindow) fill(rgb uint32) error {
	w.color = rgb
	hdc, _, err := procGetDC.Call(w.hwnd)
	if hdc == 0 {
		return fmt.Errorf("GetDC: %w", err)
	}
	defer procReleaseDC.Call(w.hwnd, hdc)
	return w.fillDC(hdc)
}

func (w *gdiWindow) fillDC(hdc uintptr) error {
	bgr := (w.color&0xff)<<16 | w.color&0xff00 | (w.color>>16)&0xff // COLORREF
	brush, _, err := procCreateSolidBrush.Call(uintptr(bgr))
	if brush == 0 {
		return fmt.Errorf("CreateSolidBrush: %w", err)
	}
	defer procDeleteObject.Call(brush)
	var rc rect
	procGetClientRect.Call(w.hwnd, uintptr(unsafe.Pointer(&rc)))
	if r, _, err := procFillRect.Call(hdc, uintptr(unsafe.Pointer(&rc)), brush); r == 0 {
		return fmt.Errorf("FillRect: %w", err)
	}
	return nil
}

// pump: the loop's default Windows pump drains the thread's message queue
// and dispatches to wndProc.
func (w *gdiWindow) pump() {}

func (w *gdiWindow) id() uint64                      { return uint64(w.hwnd) }
func (w *gdiWindow) eventCount() uint64              { return w.events.Load() }
func (w *gdiWindow) pingCount() uint64               { return w.pings.Load() }
func (w *gdiWindow) closeRequested() <-chan struct{} { return w.closed }
func (w *gdiWindow) close()                          { procDestroyWindow.Call(w.hwnd) }

// sysOptions selects the loop's interactive mode (MsgWaitForMultipleObjectsEx)
// or its scheduled one (a completion port; the seed's).
func sysOptions(interactive bool) loop.SysOptions { return loop.SysOptions{Interactive: interactive} }

// pumpOf returns nil: the loop's default pump (PeekMessage, TranslateMessage,
// DispatchMessage) is the window's.
func pumpOf(*app) func() { return nil }

// pinger plays the system's liveness check: SendMessageTimeout to the
// window from another thread, as Windows' hung-window detection and tools
// such as Task Manager do; it returns only once the window's thread has
// taken the message from its queue.
type pinger struct{}

func newPinger(string) (*pinger, error) { return &pinger{}, nil }

// windowExists reports whether the window is visible.
func (p *pinger) windowExists(id uint64) error {
	if r, _, _ := procIsWindowVisible.Call(uintptr(id)); r == 0 {
		return fmt.Errorf("window %#x does not exist or is not visible", id)
	}
	return nil
}

// ping posts a message to the window (which only the pump dispatches), then
// sends the check message with SendMessageTimeout (SMTO_ABORTIFHUNG) and
// returns how long the answer took.
func (p *pinger) ping(id uint64, timeout time.Duration) (time.Duration, error) {
	if r, _, err := procPostMessageW.Call(uintptr(id), wmPosted, 0, 0); r == 0 {
		return 0, fmt.Errorf("PostMessage: %w", err)
	}
	var result uintptr
	start := time.Now()
	r, _, err := procSendMessageTimeoutW.Call(uintptr(id), wmCheck, 0, 0, smtoAbortIfHung,
		uintptr(timeout.Milliseconds()), uintptr(unsafe.Pointer(&result)))
	if r == 0 {
		return 0, fmt.Errorf("SendMessageTimeout: no answer within %v (%v): Windows would mark the window not responding", timeout, err)
	}
	if result != checkAnswer {
		return 0, fmt.Errorf("SendMessageTimeout: answer %#x, want %#x", result, checkAnswer)
	}
	return time.Since(start), nil
}

func (p *pinger) close() {}

// quietWindowSystem: nothing to quiet on Windows.
func quietWindowSystem(bool) {}
