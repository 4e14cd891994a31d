package shm_test

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"runtime/debug"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/windows"

	"github.com/capnshm/capnshm/internal/handles"
	"github.com/capnshm/capnshm/internal/peertest"
	"github.com/capnshm/capnshm/shm"
)

// sectionRW is the access a peer that maps a section read-write needs.
const sectionRW = windows.FILE_MAP_READ | windows.FILE_MAP_WRITE | shm.SectionQuery

func init() {
	peertest.Register("win-shm-dupto", winDupToPeer)
	peertest.Register("win-shm-dupfrom", winDupFromPeer)
}

// dupHandle returns a second handle to the same section, with the same access.
func dupHandle(t *testing.T, h shm.Handle) shm.Handle {
	t.Helper()
	return dupAccess(t, h, 0, windows.DUPLICATE_SAME_ACCESS)
}

func dupAccess(t *testing.T, h shm.Handle, access, options uint32) shm.Handle {
	t.Helper()
	p := windows.CurrentProcess()
	var out windows.Handle
	if err := windows.DuplicateHandle(p, windows.Handle(h), p, &out, access, false, options); err != nil {
		t.Fatalf("DuplicateHandle: %v", err)
	}
	return shm.Handle(out)
}

func mustCreate(t *testing.T, size int64) *shm.Region {
	t.Helper()
	r, err := shm.Create(size, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

// writeFaults writes to b[i] and reports whether the write faulted.
func writeFaults(b []byte, i int) (faulted bool) {
	old := debug.SetPanicOnFault(true)
	defer debug.SetPanicOnFault(old)
	defer func() {
		if recover() != nil {
			faulted = true
		}
	}()
	b[i] = 0x5a
	return false
}

func TestWinOpenNotSection(t *testing.T) {
	ev, err := windows.CreateEvent(nil, 0, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := shm.Open(shm.Handle(ev), 4096, shm.ReadWrite, nil); !errors.Is(err, shm.ErrNotShared) {
		t.Errorf("Open(event) = %v, want ErrNotShared", err)
	}
	// Open took ownership of the event, and closed it on error.
	if _, err := windows.WaitForSingleObject(ev, 0); err == nil {
		t.Errorf("the event handle is still open after a failed Open")
	}

	f, err := os.CreateTemp("", "capnshm-shm-*")
	if err != nil {
		t.Fatal(err)
	}
	defer os.Remove(f.Name())
	defer f.Close()
	fh := dupAccess(t, shm.Handle(f.Fd()), 0, windows.DUPLICATE_SAME_ACCESS)
	if _, err := shm.Open(fh, 4096, shm.ReadOnly, nil); !errors.Is(err, shm.ErrNotShared) {
		t.Errorf("Open(file) = %v, want ErrNotShared", err)
	}

	if _, err := shm.Open(shm.Handle(0x7ff0), 4096, shm.ReadOnly, nil); !errors.Is(err, shm.ErrNotShared) {
		t.Errorf("Open(bogus handle) = %v, want ErrNotShared", err)
	}
}

func TestWinOpenSizeMismatch(t *testing.T) {
	r := mustCreate(t, 3*4096)
	tests := []struct {
		size int64
		ok   bool
	}{
		{3 * 4096, true},
		{2*4096 + 1, true}, // same number of pages
		{2 * 4096, false},  // section is larger than asked
		{4 * 4096, false},  // section is smaller than asked
		{1, false},
	}
	for _, tt := range tests {
		ro, err := shm.Open(dupHandle(t, r.Handle()), tt.size, shm.ReadOnly, nil)
		if tt.ok {
			if err != nil {
				t.Errorf("Open(size %d): %v", tt.size, err)
				continue
			}
			if int64(ro.Len()) != tt.size {
				t.Errorf("Open(size %d).Len() = %d", tt.size, ro.Len())
			}
			ro.Close()
			continue
		}
		if !errors.Is(err, shm.ErrInvalidSize) {
			t.Errorf("Open(size %d) = %v, want ErrInvalidSize", tt.size, err)
		}
	}
}

// TestWinReadAccessHandle: a handle duplicated with FILE_MAP_READ only (no
// SECTION_QUERY, so the size is measured from a mapped view) opens read-only
// and refuses read-write.
func TestWinReadAccessHandle(t *testing.T) {
	const size = 5 * 4096
	r := mustCreate(t, size)
	copy(r.Bytes(), pattern(size, 3))
	h := dupAccess(t, r.Handle(), windows.FILE_MAP_READ, 0)
	ro, err := shm.Open(h, size, shm.ReadOnly, nil)
	if err != nil {
		t.Fatalf("Open(read-access handle, ReadOnly): %v", err)
	}
	defer ro.Close()
	if !bytes.Equal(ro.Bytes(), pattern(size, 3)) {
		t.Fatal("read-only view does not show the region's contents")
	}
	if _, err := shm.Open(dupAccess(t, r.Handle(), windows.FILE_MAP_READ, 0), size-4096, shm.ReadOnly, nil); !errors.Is(err, shm.ErrInvalidSize) {
		t.Errorf("Open(read-access handle, wrong size) = %v, want ErrInvalidSize", err)
	}
	if _, err := shm.Open(dupAccess(t, r.Handle(), windows.FILE_MAP_READ, 0), size, shm.ReadWrite, nil); err == nil {
		t.Error("Open(read-access handle, ReadWrite) succeeded")
	}
}

// TestWinReadOnlyFaultsInProcess: a write through a ReadOnly mapping faults
// (recovered here with SetPanicOnFault) and does not reach the memory.
func TestWinReadOnlyFaultsInProcess(t *testing.T) {
	const size = 8192
	r := mustCreate(t, size)
	ro, err := shm.Open(dupHandle(t, r.Handle()), size, shm.ReadOnly, &shm.Options{Prefault: true})
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	if !writeFaults(ro.Bytes(), 100) {
		t.Fatal("write through a read-only mapping did not fault")
	}
	if r.Bytes()[100] != 0 {
		t.Fatal("write through a read-only mapping reached the memory")
	}
	if writeFaults(r.Bytes(), 100) {
		t.Fatal("write through the read-write mapping faulted")
	}
	if ro.Bytes()[100] != 0x5a {
		t.Fatal("read-only mapping does not see the write")
	}
}

// TestWinReadOnlyFaultsInChild: the child writes through a ReadOnly mapping
// and dies of an access violation; the parent sees a failed exit.
func TestWinReadOnlyFaultsInChild(t *testing.T) {
	const size = 3 * 4096
	r := mustCreate(t, size)
	copy(r.Bytes(), pattern(size/2, 1))
	h := dupHandle(t, r.Handle())
	t.Cleanup(func() { windows.CloseHandle(windows.Handle(h)) })
	p := peertest.Start(t, "shm-peer", []uintptr{uintptr(h)}, fmt.Sprint(size), "ro")
	p.Expect("read ok")
	err := p.Wait(t.Context())
	var ee interface{ ExitCode() int }
	if !errors.As(err, &ee) || ee.ExitCode() == 0 {
		t.Fatalf("peer exit = %v, want a non-zero exit", err)
	}
	if !strings.Contains(p.Stderr(), "0xc0000005") && !strings.Contains(p.Stderr(), "fault") {
		t.Errorf("peer's stderr does not mention an access violation: %.300q", p.Stderr())
	}
	if !bytes.Equal(r.Bytes()[size/2:], make([]byte, size-size/2)) {
		t.Fatal("the peer's write through a read-only mapping reached our memory")
	}
}

// winDupToPeer reads a handle value that the parent duplicated into this
// process, opens it and checks the parent's pattern, then writes its own.
func winDupToPeer(args []string) int {
	size, _ := strconv.ParseInt(args[0], 10, 64)
	in := peertest.Stdin()
	if !in.Scan() {
		return peertest.Fail("no handle on stdin")
	}
	v, err := strconv.ParseUint(in.Text(), 10, 64)
	if err != nil {
		return peertest.Fail("bad handle %q", in.Text())
	}
	r, err := shm.Open(shm.Handle(v), size, shm.ReadWrite, nil)
	if err != nil {
		return peertest.Fail("open: %v", err)
	}
	b := r.Bytes()
	if !bytes.Equal(b[:size/2], pattern(int(size/2), 4)) {
		return peertest.Fail("peer does not see the parent's writes")
	}
	copy(b[size/2:], pattern(int(size-size/2), 5))
	if err := r.Close(); err != nil {
		return peertest.Fail("close: %v", err)
	}
	peertest.Say("done")
	return 0
}

func TestWinDuplicateTo(t *testing.T) {
	const size = 1 << 20
	r := mustCreate(t, size)
	copy(r.Bytes(), pattern(size/2, 4))
	p := peertest.Start(t, "win-shm-dupto", nil, fmt.Sprint(size))
	proc, err := windows.OpenProcess(windows.PROCESS_DUP_HANDLE, false, uint32(p.Pid()))
	if err != nil {
		t.Fatalf("OpenProcess: %v", err)
	}
	defer windows.CloseHandle(proc)
	hh, err := handles.DuplicateTo(proc, windows.Handle(r.Handle()), sectionRW)
	h := shm.Handle(hh)
	if err != nil {
		t.Fatal(err)
	}
	p.Send(strconv.FormatUint(uint64(h), 10))
	p.Expect("done")
	p.WaitOK()
	if !bytes.Equal(r.Bytes()[size/2:], pattern(size-size/2, 5)) {
		t.Fatal("parent does not see the peer's writes")
	}
}

// winDupFromPeer creates a region, fills it, prints its handle value and
// waits for the parent to say it is done before exiting.
func winDupFromPeer(args []string) int {
	size, _ := strconv.ParseInt(args[0], 10, 64)
	r, err := shm.Create(size, nil)
	if err != nil {
		return peertest.Fail("create: %v", err)
	}
	copy(r.Bytes(), pattern(int(size), 6))
	peertest.Say("%d", uint64(r.Handle()))
	in := peertest.Stdin()
	in.Scan() // "done" or EOF
	b := r.Bytes()
	if !bytes.Equal(b[:size/2], pattern(int(size/2), 7)) {
		return peertest.Fail("peer does not see the parent's writes")
	}
	return 0
}

func TestWinDuplicateFrom(t *testing.T) {
	const size = 64 << 10
	p := peertest.Start(t, "win-shm-dupfrom", nil, fmt.Sprint(size))
	line, err := p.Line(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	v, err := strconv.ParseUint(line, 10, 64)
	if err != nil {
		t.Fatalf("peer said %q", line)
	}
	proc, err := windows.OpenProcess(windows.PROCESS_DUP_HANDLE, false, uint32(p.Pid()))
	if err != nil {
		t.Fatalf("OpenProcess: %v", err)
	}
	defer windows.CloseHandle(proc)
	hh, err := handles.DuplicateFrom(proc, windows.Handle(v), sectionRW)
	h := shm.Handle(hh)
	if err != nil {
		t.Fatal(err)
	}
	r, err := shm.Open(h, size, shm.ReadWrite, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if !bytes.Equal(r.Bytes(), pattern(size, 6)) {
		t.Fatal("parent does not see the peer's region")
	}
	copy(r.Bytes(), pattern(size/2, 7))
	p.Send("done")
	p.WaitOK()
}

func TestWinDuplicateBadProcess(t *testing.T) {
	r := mustCreate(t, 4096)
	if _, err := handles.DuplicateTo(windows.Handle(0), windows.Handle(r.Handle()), sectionRW); err == nil {
		t.Error("DuplicateTo(process 0) succeeded")
	}
	if _, err := handles.DuplicateFrom(windows.CurrentProcess(), windows.Handle(0x7ff0), sectionRW); err == nil {
		t.Error("DuplicateFrom(bogus handle) succeeded")
	}
}

// TestWinPeerReadOnly: a PeerReadOnly section stays writable through the
// creator's mapping; a duplicate with PeerAccess(ReadOnly), what a peer is
// given, maps read-only, and Open(ReadWrite) of it is ErrWriteSealed.
func TestWinPeerReadOnly(t *testing.T) {
	const size = 64 << 10
	r, err := shm.Create(size, &shm.Options{PeerReadOnly: true, Prefault: true})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if writeFaults(r.Bytes(), 7) {
		t.Fatal("the creator's own mapping of a PeerReadOnly section is not writable")
	}
	ro, err := shm.Open(dupAccess(t, r.Handle(), shm.PeerAccess(shm.ReadOnly), 0), size, shm.ReadOnly, nil)
	if err != nil {
		t.Fatalf("opening a PeerAccess(ReadOnly) duplicate read-only: %v", err)
	}
	defer ro.Close()
	if ro.Bytes()[7] != 0x5a {
		t.Fatal("the peer's view does not see the creator's write")
	}
	if !writeFaults(ro.Bytes(), 8) {
		t.Fatal("a write through the peer's view did not fault")
	}
	_, err = shm.Open(dupAccess(t, r.Handle(), shm.PeerAccess(shm.ReadOnly), 0), size, shm.ReadWrite, nil)
	if !errors.Is(err, shm.ErrWriteSealed) {
		t.Fatalf("Open(ReadWrite) of a read-only duplicate: %v, want ErrWriteSealed", err)
	}
	t.Logf("%v", err)
}

// TestWinPeerReadOnlyDACL: the holder of a read-only duplicate of a
// PeerReadOnly section cannot duplicate it again with write access: the
// section's DACL grants its owner read access only. Wine does not enforce
// DACLs on duplication, so this runs on Windows only.
func TestWinPeerReadOnlyDACL(t *testing.T) {
	if handles.IsWine() {
		t.Skip("Wine does not check a section's DACL when a handle is duplicated with more access: needs real Windows")
	}
	r, err := shm.Create(4096, &shm.Options{PeerReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	ro := dupAccess(t, r.Handle(), shm.PeerAccess(shm.ReadOnly), 0)
	defer windows.CloseHandle(windows.Handle(ro))
	p := windows.CurrentProcess()
	var rw windows.Handle
	err = windows.DuplicateHandle(p, windows.Handle(ro), p, &rw, shm.PeerAccess(shm.ReadWrite), false, 0)
	if err == nil {
		windows.CloseHandle(rw)
		t.Fatal("a read-only duplicate of a PeerReadOnly section was raised to write access")
	}
	// Without PeerReadOnly the default DACL lets its owner do it: the
	// check above tests the DACL, not duplication in general.
	plain := mustCreate(t, 4096)
	ro2 := dupAccess(t, plain.Handle(), shm.PeerAccess(shm.ReadOnly), 0)
	defer windows.CloseHandle(windows.Handle(ro2))
	if err := windows.DuplicateHandle(p, windows.Handle(ro2), p, &rw, shm.PeerAccess(shm.ReadWrite), false, 0); err != nil {
		t.Logf("raising a plain section's read-only duplicate failed too (%v): this system checks more than the DACL", err)
	} else {
		windows.CloseHandle(rw)
	}
}
