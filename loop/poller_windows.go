package loop

import (
	"errors"
	"fmt"
	"sync"
	"time"
	"unsafe"

	"golang.org/x/sys/windows"
)

// SysOptions are the Windows options of a loop.
type SysOptions struct {
	// Interactive selects the interactive mode: the loop waits in
	// MsgWaitForMultipleObjectsEx, so window messages wake it at once
	// (they are still pumped only when the pump is due or the loop is
	// idle), and a coalesced message to the loop's message-only window
	// wakes it for new work. The default, scheduled mode waits in
	// GetQueuedCompletionStatusEx on a completion port of the loop's own,
	// is woken by a coalesced PostQueuedCompletionStatus, and looks at the
	// message queue only when the pump is due or the loop is idle: the
	// seed's program, which does not care about its window's events.
	Interactive bool
}

// Message and timer of the loop's message-only window.
const (
	wmWake       = wmUser + 1 // interactive mode: there is work
	nestedTimer  = 1          // SetTimer ID while the pump runs
	nestedPeriod = 10         // ms (USER_TIMER_MINIMUM)
	keyWake      = 1          // completion key of a wake packet
	maxDrain     = 256        // messages one default pump run dispatches at most
)

// poller is the Windows backend (see SysOptions and the package
// documentation).
type poller struct {
	sys      SysOptions
	l        *Loop
	port     windows.Handle // scheduled mode
	hwnd     uintptr        // the loop's message-only window, both modes
	inNested bool
	entries  [64]overlappedEntry
}

var (
	classOnce sync.Once
	classErr  error
	className = windows.StringToUTF16Ptr("capnshm.loop")

	// hwnds maps the loops' message-only windows to their loops, for the
	// window procedure.
	hwndsMu sync.Mutex
	hwnds   = map[uintptr]*Loop{}
)

func registerClass() error {
	classOnce.Do(func() {
		wc := wndClassEx{
			wndProc:   windows.NewCallback(loopWndProc),
			instance:  moduleHandle(),
			className: className,
		}
		wc.size = uint32(unsafe.Sizeof(wc))
		if r, _, err := procRegisterClassExW.Call(uintptr(unsafe.Pointer(&wc))); r == 0 {
			classErr = fmt.Errorf("RegisterClassExW: %w", err)
		}
	})
	return classErr
}

func (p *poller) init(l *Loop) error {
	p.l = l
	if err := registerClass(); err != nil {
		return err
	}
	h, _, err := procCreateWindowExW.Call(0, uintptr(unsafe.Pointer(className)), 0, 0, 0, 0, 0, 0,
		hwndMessage, 0, uintptr(moduleHandle()), 0)
	if h == 0 {
		return fmt.Errorf("CreateWindowExW (message-only window): %w", err)
	}
	p.hwnd = h
	hwndsMu.Lock()
	hwnds[h] = l
	hwndsMu.Unlock()
	if !p.sys.Interactive {
		port, err := windows.CreateIoCompletionPort(windows.InvalidHandle, 0, 0, 1)
		if err != nil {
			p.destroyWindow()
			return fmt.Errorf("CreateIoCompletionPort: %w", err)
		}
		p.port = port
	}
	return nil
}

func (p *poller) destroyWindow() {
	if p.hwnd == 0 {
		return
	}
	procDestroyWindow.Call(p.hwnd)
	hwndsMu.Lock()
	delete(hwnds, p.hwnd)
	hwndsMu.Unlock()
	p.hwnd = 0
}

// loopWndProc is the window procedure of the loops' message-only windows.
func loopWndProc(hwnd, m, wp, lp uintptr) uintptr {
	if m == wmWake || (m == wmTimer && wp == nestedTimer) {
		hwndsMu.Lock()
		l := hwnds[hwnd]
		hwndsMu.Unlock()
		if l != nil {
			l.p.nested()
			return 0
		}
	}
	r, _, _ := procDefWindowProcW.Call(hwnd, m, wp, lp)
	return r
}

// wake posts the coalesced wake-up. Called with l.mu held.
func (p *poller) wake() error {
	if p.sys.Interactive {
		if r, _, err := procPostMessageW.Call(p.hwnd, wmWake, 0, 0); r == 0 {
			return fmt.Errorf("PostMessageW: %w", err)
		}
		return nil
	}
	if err := windows.PostQueuedCompletionStatus(p.port, 0, keyWake, nil); err != nil {
		return fmt.Errorf("PostQueuedCompletionStatus: %w", err)
	}
	return nil
}

func msec(timeout time.Duration) uintptr {
	if timeout < 0 {
		return uintptr(windows.INFINITE)
	}
	return uintptr(min((timeout+time.Millisecond-1)/time.Millisecond, 1<<30))
}

// poll waits up to timeout (negative: no limit).
func (p *poller) poll(timeout time.Duration) error {
	if p.sys.Interactive {
		r, _, err := procMsgWaitForMultipleObjectsEx.Call(0, 0, msec(timeout), qsAllInput, mwmoInputAvailable)
		switch uint32(r) {
		case waitFailed:
			return fmt.Errorf("MsgWaitForMultipleObjectsEx: %w", err)
		case 0: // WAIT_OBJECT_0 + nCount: input
			var m msg
			for peekMessage(&m, p.hwnd, wmWake, wmWake, pmRemove) {
			}
			p.checkPending()
		}
		return nil
	}
	var n uint32
	r, _, err := procGetQueuedCompletionStatusEx.Call(uintptr(p.port), uintptr(unsafe.Pointer(&p.entries[0])),
		uintptr(len(p.entries)), uintptr(unsafe.Pointer(&n)), msec(timeout), 0)
	if r == 0 {
		if err == windows.WAIT_TIMEOUT {
			return nil
		}
		return fmt.Errorf("GetQueuedCompletionStatusEx: %w", err)
	}
	// Every packet is a wake-up (keyWake): the work it announced is queued.
	return nil
}

// spinPoll does nothing on Windows: watches and doorbells mark themselves
// ready (the spin sees that), and every system call costs a round trip to
// wineserver under Wine.
func (p *poller) spinPoll() bool { return false }

// checkPending marks the pump pending if the thread's message queue holds
// anything (sent, posted, input, paint or timer messages).
func (p *poller) checkPending() {
	r, _, _ := procGetQueueStatus.Call(qsAllInput)
	if r>>16 != 0 {
		p.l.pumpPending.Store(true)
	}
}

// pumpEnter arms what keeps the loop's work running if the pump enters a
// modal loop (a window being moved or resized, a menu): a 10 ms WM_TIMER on
// the loop's window and, in interactive mode, the wake message; both reach
// loopWndProc through the modal loop's DispatchMessage.
func (p *poller) pumpEnter() {
	procSetTimer.Call(p.hwnd, nestedTimer, nestedPeriod, 0)
	if p.sys.Interactive {
		p.l.waiting.Store(true)
	}
}

func (p *poller) pumpLeave() {
	if p.sys.Interactive {
		p.l.waiting.Store(false)
	}
	procKillTimer.Call(p.hwnd, nestedTimer)
}

// nested runs the loop's work from inside the pump: a modal loop (or the
// pump itself) dispatched the wake message or the nested timer. Work does
// not nest inside tasks: a task that enters a modal loop holds the loop like
// any long task, and the wake-up it let through leads to the work once the
// task returns (the queue is looked at before the loop blocks).
func (p *poller) nested() {
	l := p.l
	if !l.inPump || l.depth != l.pumpDepth || p.inNested || l.closingNow() {
		return
	}
	p.inNested = true
	defer func() { p.inNested = false }()
	if p.sys.Interactive {
		l.waiting.Store(false)
	}
	l.runWork(l.clock.Now())
	if p.sys.Interactive {
		l.waiting.Store(true)
		if !l.idle(l.clock.Now()) {
			// More work: come back after the modal loop's next message.
			procPostMessageW.Call(p.hwnd, wmWake, 0, 0)
		}
	}
}

// defaultPump drains the thread's message queue, at most maxDrain messages a
// run; a WM_QUIT closes the loop.
func (p *poller) defaultPump() func() {
	return func() {
		var m msg
		for range maxDrain {
			if !peekMessage(&m, 0, 0, 0, pmRemove) {
				return
			}
			if m.Message == wmQuit {
				p.l.closeFromLoop(nil)
				return
			}
			procTranslateMessage.Call(uintptr(unsafe.Pointer(&m)))
			procDispatchMessageW.Call(uintptr(unsafe.Pointer(&m)))
		}
		p.l.pumpPending.Store(true) // the rest when the loop is idle, or at the next deadline
	}
}

func (p *poller) close() error {
	var errs []error
	p.destroyWindow()
	if p.port != 0 {
		if err := windows.CloseHandle(p.port); err != nil {
			errs = append(errs, fmt.Errorf("closing the completion port: %w", err))
		}
		p.port = 0
	}
	return errors.Join(errs...)
}
