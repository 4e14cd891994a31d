package shm

import (
	"fmt"
	"os"
	"runtime"
	"unsafe"

	"golang.org/x/sys/windows"

	"github.com/capnshm/capnshm/internal/handles"
)

// Handle is a Windows handle to a section object (a file mapping). A handle
// from Create is not inheritable.
type Handle windows.Handle

var (
	modntdll           = windows.NewLazySystemDLL("ntdll.dll")
	procNtQuerySection = modntdll.NewProc("NtQuerySection")
)

// SectionQuery is the SECTION_QUERY access right (x/sys/windows has no
// name for it): NtQuerySection, which Open uses to learn a section's size,
// needs it.
const SectionQuery = 0x0001

// PeerAccess returns the access rights a section handle needs for Open in
// mode, and no more: what a duplicate handed to a peer that opens it so
// should carry (FILE_MAP_READ, plus FILE_MAP_WRITE for ReadWrite, plus
// SectionQuery).
func PeerAccess(mode Mode) uint32 {
	if mode == ReadWrite {
		return windows.FILE_MAP_READ | windows.FILE_MAP_WRITE | SectionQuery
	}
	return windows.FILE_MAP_READ | SectionQuery
}

// peerReadOnlySDDL is the security descriptor of a PeerReadOnly section:
// its owner (OWNER RIGHTS, S-1-3-4, which also takes away the owner's
// implicit right to change the DACL) may query and map it for reading,
// nobody else anything. The handle Create returns keeps full access (a
// creator's handle is not checked against the new object's DACL); a
// duplicate asked for with more than read access is checked against it and
// refused.
const peerReadOnlySDDL = "D:P(A;;0x5;;;S-1-3-4)"

const (
	sectionBasicInformation   = 0 // SECTION_INFORMATION_CLASS
	secReserve                = 0x04000000
	secImage                  = 0x01000000
	statusAccessDenied        = 0xC0000022
	pageReadWriteProtectFlags = windows.PAGE_READWRITE
)

// sectionBasicInfo is SECTION_BASIC_INFORMATION.
type sectionBasicInfo struct {
	BaseAddress uintptr
	Attributes  uint32
	_           uint32
	MaximumSize int64
}

var pageSize = int64(os.Getpagesize())

func roundPage(n int64) int64 { return (n + pageSize - 1) &^ (pageSize - 1) }

// Create makes a pagefile-backed section of size bytes (rounded up to whole
// pages by the system; Bytes is exactly size long) and maps it read-write.
// opts.Name is not used on Windows: the section is unnamed and is shared by
// handle only. With opts.PeerReadOnly the section's DACL grants read access
// only (peerReadOnlySDDL), so that a read-only duplicate given to a peer
// cannot be duplicated again with write access.
func Create(size int64, opts *Options) (*Region, error) {
	if err := checkSize(size, opts); err != nil {
		return nil, err
	}
	var sa *windows.SecurityAttributes
	if opts.peerReadOnly() {
		sd, err := windows.SecurityDescriptorFromString(peerReadOnlySDDL)
		if err != nil {
			return nil, fmt.Errorf("shm: the read-only security descriptor: %w", err)
		}
		sa = &windows.SecurityAttributes{Length: uint32(unsafe.Sizeof(windows.SecurityAttributes{})), SecurityDescriptor: sd}
	}
	h, err := windows.CreateFileMapping(windows.InvalidHandle, sa, pageReadWriteProtectFlags,
		uint32(uint64(size)>>32), uint32(size), nil)
	if err != nil {
		return nil, fmt.Errorf("shm: CreateFileMapping of %d bytes: %w", size, err)
	}
	r, err := mapSection(h, size, size, ReadWrite, opts)
	if err != nil {
		windows.CloseHandle(h)
		return nil, err
	}
	return r, nil
}

// Open maps the section h, which a peer created with Create and handed over.
// It takes ownership of h: the Region closes it, and Open closes it on error.
//
// h must be a section whose size, rounded up to whole pages, equals size
// rounded up to whole pages (sections are page-granular); otherwise Open
// returns ErrInvalidSize. A handle that is not a section returns
// ErrNotShared. ReadOnly maps the view with FILE_MAP_READ only, so a write
// through Bytes faults; ReadWrite needs a handle with FILE_MAP_WRITE access.
func Open(h Handle, size int64, mode Mode, opts *Options) (*Region, error) {
	wh := windows.Handle(h)
	r, err := open(wh, size, mode, opts)
	if err != nil {
		windows.CloseHandle(wh)
		return nil, err
	}
	return r, nil
}

func open(h windows.Handle, size int64, mode Mode, opts *Options) (*Region, error) {
	if mode != ReadWrite && mode != ReadOnly {
		return nil, fmt.Errorf("shm: Open: invalid mode %v", mode)
	}
	if err := checkSize(size, opts); err != nil {
		return nil, err
	}
	typ, err := handles.TypeName(h)
	if err != nil {
		return nil, fmt.Errorf("%w: handle %#x: %v", ErrNotShared, uintptr(h), err)
	}
	if typ != "Section" {
		return nil, fmt.Errorf("%w: handle %#x is a %q object, not a Section", ErrNotShared, uintptr(h), typ)
	}
	// Learn the section's size without mapping it, if the handle grants
	// SECTION_QUERY (handles from Create do, and duplicates given PeerAccess). A handle
	// duplicated with only FILE_MAP_READ does not: then map the whole section
	// and measure the view instead.
	var sbi sectionBasicInfo
	var ret uintptr
	st, _, _ := procNtQuerySection.Call(uintptr(h), sectionBasicInformation,
		uintptr(unsafe.Pointer(&sbi)), unsafe.Sizeof(sbi), uintptr(unsafe.Pointer(&ret)))
	switch uint32(st) {
	case 0:
		if sbi.Attributes&(secReserve|secImage) != 0 {
			return nil, fmt.Errorf("%w: section attributes %#x (reserve-only or image section)", ErrNotShared, sbi.Attributes)
		}
		if err := sameSize(sbi.MaximumSize, size); err != nil {
			return nil, err
		}
		return mapSection(h, size, size, mode, opts)
	case statusAccessDenied:
		// Fall through to measuring a whole-section view.
	default:
		return nil, fmt.Errorf("%w: NtQuerySection: %v", ErrNotShared, windows.NTStatus(uint32(st)))
	}
	r, err := mapSection(h, 0, size, mode, opts)
	if err != nil {
		return nil, err
	}
	var mbi windows.MemoryBasicInformation
	addr := uintptr(unsafe.Pointer(unsafe.SliceData(r.data)))
	if err := windows.VirtualQuery(addr, &mbi, unsafe.Sizeof(mbi)); err != nil {
		r.unmap()
		return nil, fmt.Errorf("shm: VirtualQuery of the mapped section: %w", err)
	}
	if mbi.State != windows.MEM_COMMIT {
		r.unmap()
		return nil, fmt.Errorf("%w: section pages are not committed (state %#x)", ErrNotShared, mbi.State)
	}
	if err := sameSize(int64(mbi.RegionSize), size); err != nil {
		r.unmap()
		return nil, err
	}
	return r, nil
}

// sameSize checks a section's size against the requested size, both rounded
// up to whole pages.
func sameSize(have, want int64) error {
	if have <= 0 || roundPage(have) != roundPage(want) {
		return fmt.Errorf("%w: section holds %d bytes, want %d (page-rounded %d)",
			ErrInvalidSize, have, want, roundPage(want))
	}
	return nil
}

// mapSection maps viewSize bytes of h (0: the whole section) and returns a
// Region of size bytes that owns h. On error h is left open.
func mapSection(h windows.Handle, viewSize, size int64, mode Mode, opts *Options) (*Region, error) {
	access := uint32(windows.FILE_MAP_READ | windows.FILE_MAP_WRITE)
	if mode == ReadOnly {
		access = windows.FILE_MAP_READ
	}
	addr, err := windows.MapViewOfFile(h, access, 0, 0, uintptr(viewSize))
	if err != nil {
		if mode == ReadWrite && err == windows.ERROR_ACCESS_DENIED {
			return nil, fmt.Errorf("%w: the section handle does not grant FILE_MAP_WRITE (MapViewOfFile %v: %v)", ErrWriteSealed, mode, err)
		}
		return nil, fmt.Errorf("shm: MapViewOfFile (%v, %d bytes): %w", mode, viewSize, err)
	}
	// unsafe.Add from nil: addr is memory the system mapped for us, outside
	// the Go heap, so the uintptr-to-pointer conversion is sound.
	data := unsafe.Slice((*byte)(unsafe.Add(unsafe.Pointer(nil), addr)), int(size))
	if opts.prefault() {
		prefault(data, mode)
	}
	return &Region{
		data: data,
		h:    Handle(h),
		mode: mode,
		unmap: func() error {
			if err := windows.UnmapViewOfFile(addr); err != nil {
				return fmt.Errorf("UnmapViewOfFile: %w", err)
			}
			return nil
		},
	}, nil
}

// prefault reads one byte of every page, which maps it. Reading is enough for
// a section (its pages are shared, not copy-on-write) and works read-only,
// whatever the mode.
func prefault(data []byte, _ Mode) {
	var s byte
	for i := 0; i < len(data); i += int(pageSize) {
		s += data[i]
	}
	runtime.KeepAlive(s) // keeps the reads
}

func closeHandle(h Handle) error {
	if err := windows.CloseHandle(windows.Handle(h)); err != nil {
		return fmt.Errorf("CloseHandle: %w", err)
	}
	return nil
}
