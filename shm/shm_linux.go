package shm

import (
	"errors"
	"fmt"
	"os"
	"runtime"

	"github.com/edsrzf/mmap-go"
	"golang.org/x/sys/unix"
)

// Handle is a memfd file descriptor.
type Handle int

// requiredSeals make a memfd's size fixed for good: nobody, not even its
// creator, can shrink or grow it or remove the seals.
const requiredSeals = unix.F_SEAL_SHRINK | unix.F_SEAL_GROW | unix.F_SEAL_SEAL

// Create makes a new sealed memfd of size bytes and maps it read-write. The
// mapping is made before the seals, so that with opts.PeerReadOnly
// (F_SEAL_FUTURE_WRITE) it is the only writable one there will ever be.
func Create(size int64, opts *Options) (*Region, error) {
	if err := checkSize(size, opts); err != nil {
		return nil, err
	}
	fd, err := unix.MemfdCreate(opts.name(), unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		return nil, fmt.Errorf("shm: memfd_create: %w", err)
	}
	if err := unix.Ftruncate(fd, size); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("shm: sizing memfd to %d bytes: %w", size, err)
	}
	r, err := mapFD(fd, int(size), ReadWrite, opts)
	if err != nil {
		unix.Close(fd)
		return nil, err
	}
	seals := requiredSeals
	if opts.peerReadOnly() {
		seals |= unix.F_SEAL_FUTURE_WRITE
	}
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, seals); err != nil {
		r.Close()
		if opts.peerReadOnly() && errors.Is(err, unix.EINVAL) {
			// Kernels before 5.1 do not know F_SEAL_FUTURE_WRITE.
			return nil, fmt.Errorf("%w: this kernel cannot seal a memfd against future writes (F_SEAL_FUTURE_WRITE, Linux 5.1): %v", ErrWriteSealed, err)
		}
		return nil, fmt.Errorf("shm: sealing memfd: %w", err)
	}
	return r, nil
}

// Open maps the memfd h, received from a peer, after checking that it is a
// sealed memfd of exactly size bytes. Open takes ownership of h: the Region
// closes it, and Open closes it when it fails.
func Open(h Handle, size int64, mode Mode, opts *Options) (*Region, error) {
	fd := int(h)
	r, err := openFD(fd, size, mode, opts)
	if err != nil {
		unix.Close(fd)
		return nil, err
	}
	return r, nil
}

func openFD(fd int, size int64, mode Mode, opts *Options) (*Region, error) {
	if err := checkSize(size, opts); err != nil {
		return nil, err
	}
	if mode != ReadWrite && mode != ReadOnly {
		return nil, fmt.Errorf("shm: open: unknown mode %v", mode)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, fmt.Errorf("%w: fstat of descriptor %d: %v", ErrNotShared, fd, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return nil, fmt.Errorf("%w: descriptor %d is not a memory file (mode %#o)", ErrNotShared, fd, st.Mode&unix.S_IFMT)
	}
	seals, err := unix.FcntlInt(uintptr(fd), unix.F_GET_SEALS, 0)
	if err != nil {
		// EINVAL: a regular file on a filesystem without sealing, not a memfd.
		return nil, fmt.Errorf("%w: descriptor %d does not support seals (not a memfd): %v", ErrNotShared, fd, err)
	}
	if seals&requiredSeals != requiredSeals {
		return nil, fmt.Errorf("%w: descriptor %d has seals %#x, want %#x (shrink, grow, seal)", ErrNotSealed, fd, seals, requiredSeals)
	}
	if st.Size != size {
		return nil, fmt.Errorf("%w: memfd is %d bytes, peer announced %d", ErrInvalidSize, st.Size, size)
	}
	if mode == ReadWrite && seals&(unix.F_SEAL_WRITE|unix.F_SEAL_FUTURE_WRITE) != 0 {
		return nil, fmt.Errorf("%w: descriptor %d has seals %#x, which forbid mapping it %v", ErrWriteSealed, fd, seals, mode)
	}
	return mapFD(fd, int(size), mode, opts)
}

func mapFD(fd int, size int, mode Mode, opts *Options) (*Region, error) {
	prot := mmap.RDWR
	if mode == ReadOnly {
		prot = mmap.RDONLY
	}
	// mmap-go maps through an *os.File, which closes its descriptor when
	// closed or finalized. Give it a duplicate and close that once mapped: a
	// mapping outlives the descriptor it was made from.
	dup, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("shm: duplicating descriptor %d: %w", fd, err)
	}
	f := os.NewFile(uintptr(dup), "shm")
	m, err := mmap.MapRegion(f, size, prot, 0, 0)
	f.Close()
	if err != nil {
		return nil, fmt.Errorf("shm: mapping %d bytes %v: %w", size, mode, err)
	}
	r := &Region{data: []byte(m), h: Handle(fd), mode: mode, unmap: m.Unmap}
	if opts.prefault() {
		prefault(r.data, mode)
	}
	return r, nil
}

// prefault maps every page of b now. MADV_POPULATE_WRITE/READ (Linux 5.14)
// does it in one call; on older kernels each page is touched.
func prefault(b []byte, mode Mode) {
	advice := unix.MADV_POPULATE_WRITE
	if mode == ReadOnly {
		advice = unix.MADV_POPULATE_READ
	}
	if err := unix.Madvise(b, advice); err == nil {
		return
	}
	page := os.Getpagesize()
	var sum byte
	for i := 0; i < len(b); i += page {
		sum += b[i]
	}
	runtime.KeepAlive(sum) // keeps the reads

}

func (o *Options) name() string {
	if o == nil || o.Name == "" {
		return "capnshm"
	}
	return o.Name
}

func closeHandle(h Handle) error {
	if err := unix.Close(int(h)); err != nil && !errors.Is(err, unix.EBADF) {
		return err
	}
	return nil
}
