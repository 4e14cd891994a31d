// Package shm creates, maps, hands over and opens shared-memory regions.
//
// A Region is one contiguous mapping of a memory object that two processes
// map at once. The owner creates it read-write and hands its Handle to the
// peer; the peer opens that handle, read-write or read-only:
//
//	owner process                          peer process
//	+--------------------------+           +--------------------------+
//	| Region (ReadWrite)       |           | Region (ReadOnly)        |
//	| Bytes() [0 ........ n)   |           | Bytes() [0 ........ n)   |
//	+------------+-------------+           +------------+-------------+
//	             |    one memory object, n bytes        |
//	             +----------->  memfd (Linux)  <--------+
//	                            pagefile section (Windows)
//
// Linux: memfd_create(MFD_CLOEXEC|MFD_ALLOW_SEALING), ftruncate to n, mapped
// read-write here, then sealed with F_SEAL_SHRINK|F_SEAL_GROW|F_SEAL_SEAL.
// Open refuses a descriptor that is not sealed that way or whose size is not
// n, so a peer can never shrink a region under us and turn our reads into
// SIGBUS. This package does not move handles between processes: the
// rendezvous that hands a Region's Handle to the peer (capnshm's rpc: a unix
// socket with SCM_RIGHTS on Linux, DuplicateHandle on Windows) does.
//
// A descriptor handed to a peer is the same open file description as ours,
// opened read-write, and its holder can reopen it read-write through
// /proc/self/fd: handing over a read-only descriptor would not stop a peer
// from writing. Options.PeerReadOnly does: Create then also adds
// F_SEAL_FUTURE_WRITE (Linux 5.1) after this process has mapped the region,
// and from then on write(2), pwrite(2), new writable shared mappings and
// mprotect(PROT_WRITE) of a read-only one fail for everybody (EPERM or
// EACCES), while the mapping Create made keeps working:
//
//	memfd_create -> ftruncate(n) -> mmap(PROT_READ|PROT_WRITE)  (ours)
//	             -> F_ADD_SEALS(SHRINK|GROW|FUTURE_WRITE|SEAL)
//	             -> hand the descriptor over: the peer can map it read-only
//
// A region both sides write (a ring) is created without PeerReadOnly and
// opened ReadWrite: its owner and its peer share it read-write by design, and
// whoever reads it treats every byte as untrusted. Open does not require
// F_SEAL_FUTURE_WRITE on a peer's region: the owner writes its own memory
// anyway (the seal protects the owner from its peer, not the reverse), so a
// region opened ReadOnly is read as memory its owner may change at any time;
// Open(ReadWrite) of a region sealed that way fails with ErrWriteSealed.
//
// The seals protect against what a peer can do with the descriptor. A peer
// that may ptrace this process (the same user where kernel.yama.ptrace_scope
// is 0 or absent, unless this process made itself non-dumpable with
// prctl(PR_SET_DUMPABLE, 0)) can write its memory directly (process_vm_writev,
// /proc/PID/mem) and is outside what any seal can stop.
//
// Windows: a pagefile-backed section (CreateFileMapping on
// INVALID_HANDLE_VALUE) of n bytes; a section cannot shrink, and a view
// larger than the section is refused. A peer gets it as a duplicate of the
// Handle made with the least access it needs, PeerAccess(mode): FILE_MAP_READ
// (and FILE_MAP_WRITE for ReadWrite) and SectionQuery, which Open's size
// check needs. Options.PeerReadOnly gives the section a DACL that grants read
// access only, so that a read-only duplicate cannot be duplicated again with
// write access; the handle and the mapping Create made keep full access:
//
//	CreateFileMapping(DACL: owner may query and read) -> MapViewOfFile(RW) (ours)
//	DuplicateHandle(FILE_MAP_READ|SECTION_QUERY) -> the peer maps it read-only
//
// A region opened ReadOnly is mapped without write permission: a write
// through it faults. With Options.PeerReadOnly (below) the peer cannot get
// write access any other way either, so it cannot scribble on memory it does
// not own.
// Options.Prefault maps every page before Create or Open returns, so the
// first message does not pay page faults.
//
// Everything about a handle received from a peer is untrusted: Open checks
// what the handle is and how large it is, and every failure is an error that
// names what was wrong.
package shm

import (
	"errors"
	"fmt"
	"sync"
)

// DefaultMaxSize is the largest region Create and Open accept when
// Options.MaxSize is zero: 64 GiB.
const DefaultMaxSize = 64 << 30

// Mode says how a region is mapped.
type Mode int

const (
	// ReadWrite maps the region readable and writable.
	ReadWrite Mode = iota
	// ReadOnly maps the region readable only; writes through it fault.
	ReadOnly
)

func (m Mode) String() string {
	switch m {
	case ReadWrite:
		return "read-write"
	case ReadOnly:
		return "read-only"
	}
	return fmt.Sprintf("Mode(%d)", int(m))
}

// Options tune Create and Open. The zero value (and a nil *Options) means:
// no name, no prefaulting, DefaultMaxSize.
type Options struct {
	// Name labels the memory object for debugging (/proc/PID/fd on Linux).
	// It is not a rendezvous name: regions are shared by handle only.
	Name string
	// Prefault maps every page before returning, so first use does not
	// page-fault.
	Prefault bool
	// MaxSize caps the size Create and Open accept; zero means
	// DefaultMaxSize.
	MaxSize int64
	// PeerReadOnly (Create only) makes the region writable through this
	// process's own mapping only: Linux seals it with F_SEAL_FUTURE_WRITE
	// once mapped, so that nobody who gets the handle can write it or map
	// it writable; Windows gives the section a DACL that grants read access
	// only, so that a duplicate handed over read-only (PeerAccess(ReadOnly))
	// cannot be raised to write. Create fails, wrapping ErrWriteSealed, on
	// a system that cannot do it (Linux before 5.1).
	PeerReadOnly bool
}

func (o *Options) maxSize() int64 {
	if o == nil || o.MaxSize <= 0 {
		return DefaultMaxSize
	}
	return o.MaxSize
}

func (o *Options) prefault() bool { return o != nil && o.Prefault }

func (o *Options) peerReadOnly() bool { return o != nil && o.PeerReadOnly }

// Errors that Create, Open and Close return, wrapped with details. Match them
// with errors.Is.
var (
	// ErrInvalidSize: the size is zero or negative, or (on Open) does not
	// match the memory object's.
	ErrInvalidSize = errors.New("shm: invalid region size")
	// ErrTooLarge: the size exceeds Options.MaxSize.
	ErrTooLarge = errors.New("shm: region size over the limit")
	// ErrNotShared: the handle is not a shared-memory object of the kind
	// this package creates.
	ErrNotShared = errors.New("shm: handle is not a shared-memory region")
	// ErrNotSealed: (Linux) the memfd lacks the seals that make its size
	// fixed, so its owner could shrink it under us.
	ErrNotSealed = errors.New("shm: memfd is not sealed against resizing")
	// ErrWriteSealed: Open(ReadWrite) of a region its owner made read-only
	// for its peers (Linux: Options.PeerReadOnly, F_SEAL_FUTURE_WRITE;
	// Windows: a handle without FILE_MAP_WRITE), or Create with
	// PeerReadOnly on a system that cannot seal writes.
	ErrWriteSealed = errors.New("shm: region is sealed against writes by its peers")
	// ErrClosed: the region was already closed.
	ErrClosed = errors.New("shm: region closed")
)

// Region is a shared-memory region mapped into this process. Its zero value
// is not usable; get one from Create or Open. A Region's methods may be called
// from several goroutines.
type Region struct {
	data   []byte
	h      Handle
	mode   Mode
	unmap  func() error
	mu     sync.Mutex
	closed bool
}

// Bytes returns the mapped memory. It stays valid until Close; touching it
// after Close faults.
func (r *Region) Bytes() []byte { return r.data }

// Len returns the region's size in bytes.
func (r *Region) Len() int { return len(r.data) }

// Mode returns how the region is mapped in this process.
func (r *Region) Mode() Mode { return r.mode }

// Handle returns the operating-system handle of the memory object. The Region
// still owns it: hand it to a peer (SCM_RIGHTS, or a duplicate with
// PeerAccess on Windows), don't close it.
func (r *Region) Handle() Handle { return r.h }

// prefaultChunk is how much PrefaultInBackground maps at a time: Close
// waits for one chunk at most.
const prefaultChunk = 2 << 20

// PrefaultInBackground maps the region's pages on a goroutine of its own, a
// chunk at a time, and returns at once, so that the caller goes on while
// first use finds more and more pages mapped. Options.Prefault maps every
// page before Create or Open returns instead, which for a 32 MiB region
// takes tens of milliseconds. Close stops it after the chunk in progress.
func (r *Region) PrefaultInBackground() {
	go func() {
		for off := 0; ; off += prefaultChunk {
			r.mu.Lock()
			if r.closed || off >= len(r.data) {
				r.mu.Unlock()
				return
			}
			prefault(r.data[off:min(off+prefaultChunk, len(r.data))], r.mode)
			r.mu.Unlock()
		}
	}()
}

// Close unmaps the region and closes its handle. The memory object lives on
// while a peer still maps it or holds a handle to it. A second Close returns
// ErrClosed.
func (r *Region) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return ErrClosed
	}
	r.closed = true
	var errs []error
	if r.unmap != nil {
		if err := r.unmap(); err != nil {
			errs = append(errs, fmt.Errorf("shm: unmapping region: %w", err))
		}
	}
	if err := closeHandle(r.h); err != nil {
		errs = append(errs, fmt.Errorf("shm: closing region handle: %w", err))
	}
	r.data = nil
	return errors.Join(errs...)
}

// checkSize validates a requested size against the options.
func checkSize(size int64, opts *Options) error {
	if size <= 0 {
		return fmt.Errorf("%w: %d bytes (want at least 1)", ErrInvalidSize, size)
	}
	if max := opts.maxSize(); size > max {
		return fmt.Errorf("%w: %d bytes, limit %d", ErrTooLarge, size, max)
	}
	if int64(int(size)) != size {
		return fmt.Errorf("%w: %d bytes does not fit this platform's int", ErrTooLarge, size)
	}
	return nil
}
