package shm

import (
	"fmt"

	"golang.org/x/sys/windows"
)

// DuplicateTo duplicates h into another process and returns the handle value
// that is valid in that process (not in ours); send it to the peer, which
// passes it to Open. The duplicate has the same access as h and is not
// inheritable. h stays open and owned by the caller.
//
// process is a handle to the peer process opened with PROCESS_DUP_HANDLE
// (windows.OpenProcess(windows.PROCESS_DUP_HANDLE, false, pid)); the caller
// owns and closes it.
//
// If the peer never receives the value, the duplicate leaks in the peer until
// it exits (or until DuplicateFrom is called with DUPLICATE_CLOSE_SOURCE,
// which this package does not do).
func DuplicateTo(process windows.Handle, h Handle) (Handle, error) {
	var out windows.Handle
	if err := windows.DuplicateHandle(windows.CurrentProcess(), windows.Handle(h), process, &out,
		0, false, windows.DUPLICATE_SAME_ACCESS); err != nil {
		return 0, fmt.Errorf("shm: DuplicateHandle of %#x into process %#x: %w", uintptr(h), uintptr(process), err)
	}
	return Handle(out), nil
}

// DuplicateFrom takes the handle value h, valid in another process, and
// returns a duplicate valid in ours, with the same access and not
// inheritable; pass it to Open. The peer's handle stays open in the peer.
//
// process is a handle to the peer process opened with PROCESS_DUP_HANDLE
// (windows.OpenProcess(windows.PROCESS_DUP_HANDLE, false, pid)); the caller
// owns and closes it. The value h comes from the peer and is untrusted: it
// may name any object the peer has open, so Open still checks what it is.
func DuplicateFrom(process windows.Handle, h Handle) (Handle, error) {
	var out windows.Handle
	if err := windows.DuplicateHandle(process, windows.Handle(h), windows.CurrentProcess(), &out,
		0, false, windows.DUPLICATE_SAME_ACCESS); err != nil {
		return 0, fmt.Errorf("shm: DuplicateHandle of %#x from process %#x: %w", uintptr(h), uintptr(process), err)
	}
	return Handle(out), nil
}
