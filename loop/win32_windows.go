package loop

import (
	"unsafe"

	"golang.org/x/sys/windows"
)

// Functions x/sys/windows v0.49.0 does not wrap.
var (
	modkernel32                     = windows.NewLazySystemDLL("kernel32.dll")
	procGetQueuedCompletionStatusEx = modkernel32.NewProc("GetQueuedCompletionStatusEx")
	procRegisterWaitForSingleObject = modkernel32.NewProc("RegisterWaitForSingleObject")
	procUnregisterWaitEx            = modkernel32.NewProc("UnregisterWaitEx")
	procGetModuleHandleW            = modkernel32.NewProc("GetModuleHandleW")

	moduser32                       = windows.NewLazySystemDLL("user32.dll")
	procRegisterClassExW            = moduser32.NewProc("RegisterClassExW")
	procCreateWindowExW             = moduser32.NewProc("CreateWindowExW")
	procDestroyWindow               = moduser32.NewProc("DestroyWindow")
	procDefWindowProcW              = moduser32.NewProc("DefWindowProcW")
	procPostMessageW                = moduser32.NewProc("PostMessageW")
	procPeekMessageW                = moduser32.NewProc("PeekMessageW")
	procTranslateMessage            = moduser32.NewProc("TranslateMessage")
	procDispatchMessageW            = moduser32.NewProc("DispatchMessageW")
	procMsgWaitForMultipleObjectsEx = moduser32.NewProc("MsgWaitForMultipleObjectsEx")
	procGetQueueStatus              = moduser32.NewProc("GetQueueStatus")
	procSetTimer                    = moduser32.NewProc("SetTimer")
	procKillTimer                   = moduser32.NewProc("KillTimer")
)

// Win32 constants.
const (
	wmQuit              = 0x0012
	wmTimer             = 0x0113
	wmUser              = 0x0400
	pmRemove            = 0x0001
	qsAllInput          = 0x04FF
	mwmoInputAvailable  = 0x0004
	waitFailed          = 0xFFFFFFFF
	wtExecuteInWaitThrd = 0x00000004
	wtExecuteOnlyOnce   = 0x00000008
)

// hwndMessage is HWND_MESSAGE, the parent of message-only windows.
const hwndMessage = ^uintptr(2) // (HWND)-3

// msg is the Win32 MSG structure.
type msg struct {
	Hwnd    uintptr
	Message uint32
	WParam  uintptr
	LParam  uintptr
	Time    uint32
	Pt      struct{ X, Y int32 }
	Private uint32
}

// wndClassEx is WNDCLASSEXW.
type wndClassEx struct {
	size       uint32
	style      uint32
	wndProc    uintptr
	clsExtra   int32
	wndExtra   int32
	instance   windows.Handle
	icon       windows.Handle
	cursor     windows.Handle
	background windows.Handle
	menuName   *uint16
	className  *uint16
	iconSm     windows.Handle
}

// overlappedEntry is OVERLAPPED_ENTRY.
type overlappedEntry struct {
	key      uintptr
	ov       *windows.Overlapped
	internal uintptr
	n        uint32
}

func peekMessage(m *msg, hwnd uintptr, first, last uint32, flags uint32) bool {
	r, _, _ := procPeekMessageW.Call(uintptr(unsafe.Pointer(m)), hwnd, uintptr(first), uintptr(last), uintptr(flags))
	return r != 0
}

func moduleHandle() windows.Handle {
	r, _, _ := procGetModuleHandleW.Call(0)
	return windows.Handle(r)
}
