package handles

import (
	"fmt"
	"sync"
	"unsafe"

	"golang.org/x/sys/windows"
)

var (
	modntdll              = windows.NewLazySystemDLL("ntdll.dll")
	procNtQueryObject     = modntdll.NewProc("NtQueryObject")
	procWineGetVersion    = modntdll.NewProc("wine_get_version")
	modkernel32           = windows.NewLazySystemDLL("kernel32.dll")
	procGetProcessHandles = modkernel32.NewProc("GetProcessHandleCount")
)

const objectTypeInformation = 2 // OBJECT_INFORMATION_CLASS

// TypeName returns the kernel object type of h ("Section", "Event", "File",
// ...) through NtQueryObject(ObjectTypeInformation), which needs no
// particular access right on h. A value that is not an open handle is an
// error.
func TypeName(h windows.Handle) (string, error) {
	var buf [128]uint64 // 1 KiB, pointer-aligned
	var ret uint32
	st, _, _ := procNtQueryObject.Call(uintptr(h), objectTypeInformation,
		uintptr(unsafe.Pointer(&buf[0])), unsafe.Sizeof(buf), uintptr(unsafe.Pointer(&ret)))
	if st != 0 {
		return "", fmt.Errorf("NtQueryObject: %w", windows.NTStatus(uint32(st)))
	}
	// The buffer starts with the type name as a UNICODE_STRING whose
	// characters follow inside the buffer.
	us := (*windows.NTUnicodeString)(unsafe.Pointer(&buf[0]))
	start := uintptr(unsafe.Pointer(&buf[0]))
	end := start + unsafe.Sizeof(buf)
	p := uintptr(unsafe.Pointer(us.Buffer))
	if us.Buffer == nil || p < start || p+uintptr(us.Length) > end {
		return "", fmt.Errorf("NtQueryObject: malformed type name")
	}
	return us.String(), nil
}

// CloseAll closes every handle of hs, ignoring errors and zero values.
func CloseAll(hs []windows.Handle) {
	for _, h := range hs {
		if h != 0 {
			windows.CloseHandle(h)
		}
	}
}

// DuplicateTo duplicates h, a handle of this process, into process (opened
// with PROCESS_DUP_HANDLE) with exactly the access rights access, not
// inheritable, and returns the value that is valid in that process, not in
// this one. h stays open here. A duplicate cannot have more access than h.
func DuplicateTo(process, h windows.Handle, access uint32) (windows.Handle, error) {
	var out windows.Handle
	if err := windows.DuplicateHandle(windows.CurrentProcess(), h, process, &out, access, false, 0); err != nil {
		return 0, fmt.Errorf("DuplicateHandle of %#x into the peer (access %#x): %w", uintptr(h), access, err)
	}
	return out, nil
}

// DuplicateFrom duplicates h, a handle value of process (opened with
// PROCESS_DUP_HANDLE), into this process with exactly the access rights
// access, not inheritable; the caller owns the result. The value comes from
// the peer and is untrusted: it may name any object the peer has open (or
// none), so the caller checks what the result is (TypeName) before use.
func DuplicateFrom(process, h windows.Handle, access uint32) (windows.Handle, error) {
	var out windows.Handle
	if err := windows.DuplicateHandle(process, h, windows.CurrentProcess(), &out, access, false, 0); err != nil {
		return 0, fmt.Errorf("DuplicateHandle of the peer's handle %#x (access %#x): %w", uintptr(h), access, err)
	}
	return out, nil
}

// CloseIn closes h, a handle value valid in process (opened with
// PROCESS_DUP_HANDLE), there: for a duplicate made with DuplicateTo that
// the process never learned about, so that it does not leak.
func CloseIn(process, h windows.Handle) error {
	// Moved here and closed: a NULL target process, which Windows allows
	// with DUPLICATE_CLOSE_SOURCE, is refused by Wine.
	var moved windows.Handle
	if err := windows.DuplicateHandle(process, h, windows.CurrentProcess(), &moved, 0, false,
		windows.DUPLICATE_CLOSE_SOURCE|windows.DUPLICATE_SAME_ACCESS); err != nil {
		return fmt.Errorf("closing handle %#x in the peer: %w", uintptr(h), err)
	}
	return windows.CloseHandle(moved)
}

// Count returns how many handles this process has open
// (GetProcessHandleCount), for tests that check that nothing leaks. Wine
// answers 0 whatever the process holds: then the handles are counted one
// by one (Census).
func Count() (int, error) {
	var n uint32
	r, _, err := procGetProcessHandles.Call(uintptr(windows.CurrentProcess()), uintptr(unsafe.Pointer(&n)))
	if r == 0 {
		return 0, fmt.Errorf("GetProcessHandleCount: %w", err)
	}
	if n > 0 {
		return int(n), nil
	}
	c, err := Census()
	if err != nil {
		return 0, err
	}
	total := 0
	for _, k := range c {
		total += k
	}
	return total, nil
}

// IsWine reports whether this process runs under Wine (ntdll exports
// wine_get_version), for tests of behaviour that Wine does not emulate.
var IsWine = sync.OnceValue(func() bool { return procWineGetVersion.Find() == nil })

// Census counts this process's handles by object type, for tests that
// check that nothing of a kind leaks. It asks NtQueryObject about every
// handle value from 4 up, until censusGap values in a row name no handle:
// a system call per value, for tests only. Key RingEvents counts the
// events this process may only set (EVENT_MODIFY_STATE): doorbells of
// peers, as duplicated for ringing. (Events in general are no use to a
// leak check: Go's runtime makes two for every thread it starts, when it
// likes.)
func Census() (map[string]int, error) {
	c := make(map[string]int)
	for v, miss := uintptr(4), 0; miss < censusGap && v < MaxHandleValue; v += 4 {
		typ, err := TypeName(windows.Handle(v))
		if err != nil {
			miss++
			continue
		}
		miss = 0
		c[typ]++
		if typ == "Event" {
			if acc, err := GrantedAccess(windows.Handle(v)); err == nil && acc == windows.EVENT_MODIFY_STATE {
				c[RingEvents]++
			}
		}
	}
	return c, nil
}

// RingEvents is Census's key for events this process may only set.
const RingEvents = "Event (EVENT_MODIFY_STATE only)"

const objectBasicInformation = 0 // OBJECT_INFORMATION_CLASS

// objectBasicInfo is PUBLIC_OBJECT_BASIC_INFORMATION.
type objectBasicInfo struct {
	Attributes    uint32
	GrantedAccess uint32
	HandleCount   uint32
	PointerCount  uint32
	Reserved      [10]uint32
}

// GrantedAccess returns the access rights h grants
// (NtQueryObject(ObjectBasicInformation)).
func GrantedAccess(h windows.Handle) (uint32, error) {
	var info objectBasicInfo
	var ret uint32
	st, _, _ := procNtQueryObject.Call(uintptr(h), objectBasicInformation,
		uintptr(unsafe.Pointer(&info)), unsafe.Sizeof(info), uintptr(unsafe.Pointer(&ret)))
	if st != 0 {
		return 0, fmt.Errorf("NtQueryObject: %w", windows.NTStatus(uint32(st)))
	}
	return info.GrantedAccess, nil
}

// censusGap is how many unused handle values in a row end Census: more
// than any hole a handle table keeps below its highest handle in a test.
const censusGap = 1024

// MaxHandleValue bounds the values of a process's handles: at most 2^24
// handles, numbered by 4.
const MaxHandleValue = 1 << 26
