package shm_test

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"unsafe"

	"github.com/capnshm/capnshm/internal/peertest"
	"github.com/capnshm/capnshm/shm"
	"golang.org/x/sys/unix"
)

func init() {
	peertest.Register("shm-truncate", truncatePeer)
}

func dupHandle(t *testing.T, h shm.Handle) shm.Handle {
	t.Helper()
	fd, err := unix.FcntlInt(uintptr(h), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	return shm.Handle(fd)
}

// truncatePeer tries to shrink and to grow the region it was given; both must
// fail because of the seals.
func truncatePeer(args []string) int {
	fd := int(peertest.Handles()[0])
	size, _ := strconv.ParseInt(args[0], 10, 64)
	for _, n := range []int64{0, size / 2, size * 2} {
		if err := unix.Ftruncate(fd, n); !errors.Is(err, unix.EPERM) {
			return peertest.Fail("ftruncate(%d) = %v, want EPERM", n, err)
		}
	}
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, unix.F_SEAL_WRITE); !errors.Is(err, unix.EPERM) {
		return peertest.Fail("adding a seal = %v, want EPERM", err)
	}
	peertest.Say("sealed")
	return 0
}

func TestPeerCannotResize(t *testing.T) {
	const size = 1 << 16
	r, err := shm.Create(size, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	p := peertest.Start(t, "shm-truncate", []uintptr{uintptr(r.Handle())}, fmt.Sprint(size))
	p.Expect("sealed")
	p.WaitOK()
	r.Bytes()[size-1] = 1 // still mapped, no SIGBUS
}

// TestOpenRejects hands Open descriptors that are not what they claim.
func TestOpenRejects(t *testing.T) {
	unsealed := func(t *testing.T) int {
		fd, err := unix.MemfdCreate("unsealed", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
		if err != nil {
			t.Fatal(err)
		}
		if err := unix.Ftruncate(fd, 4096); err != nil {
			t.Fatal(err)
		}
		return fd
	}
	tests := []struct {
		name string
		fd   func(t *testing.T) int
		size int64
		want error
		text string
	}{
		{"pipe", func(t *testing.T) int {
			var p [2]int
			if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
				t.Fatal(err)
			}
			unix.Close(p[1])
			return p[0]
		}, 4096, shm.ErrNotShared, "not a memory file"},
		{"eventfd", func(t *testing.T) int {
			fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC)
			if err != nil {
				t.Fatal(err)
			}
			return fd
		}, 4096, shm.ErrNotShared, "not a memory file"},
		{"regular file", func(t *testing.T) int {
			f, err := os.CreateTemp("", "shm-test")
			if err != nil {
				t.Fatal(err)
			}
			defer os.Remove(f.Name())
			defer f.Close()
			if err := f.Truncate(4096); err != nil {
				t.Fatal(err)
			}
			fd, err := unix.FcntlInt(f.Fd(), unix.F_DUPFD_CLOEXEC, 0)
			if err != nil {
				t.Fatal(err)
			}
			return fd
		}, 4096, nil, ""},
		{"unsealed memfd", unsealed, 4096, shm.ErrNotSealed, "seals"},
		{"memfd sealed against shrinking only", func(t *testing.T) int {
			fd := unsealed(t)
			if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, unix.F_SEAL_SHRINK); err != nil {
				t.Fatal(err)
			}
			return fd
		}, 4096, shm.ErrNotSealed, "seals"},
		{"closed descriptor", func(t *testing.T) int { return 1 << 20 }, 4096, shm.ErrNotShared, "fstat"},
		{"size smaller than announced", func(t *testing.T) int {
			r, err := shm.Create(4096, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			return int(dupHandle(t, r.Handle()))
		}, 8192, shm.ErrInvalidSize, "4096 bytes, peer announced 8192"},
		{"size larger than announced", func(t *testing.T) int {
			r, err := shm.Create(8192, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			return int(dupHandle(t, r.Handle()))
		}, 4096, shm.ErrInvalidSize, "8192 bytes, peer announced 4096"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := peertest.CountFDs(t)
			fd := tt.fd(t)
			r, err := shm.Open(shm.Handle(fd), tt.size, shm.ReadOnly, nil)
			if err == nil {
				r.Close()
				t.Fatal("Open accepted it")
			}
			if tt.want != nil && !errors.Is(err, tt.want) {
				t.Fatalf("error %v, want %v", err, tt.want)
			}
			if tt.want == nil && !errors.Is(err, shm.ErrNotShared) && !errors.Is(err, shm.ErrNotSealed) {
				t.Fatalf("error %v, want ErrNotShared or ErrNotSealed", err)
			}
			if !strings.Contains(err.Error(), tt.text) {
				t.Fatalf("error %q does not mention %q", err, tt.text)
			}
			if after := peertest.CountFDs(t); after != before {
				t.Fatalf("%d descriptors before, %d after: Open leaked or over-closed", before, after)
			}
		})
	}
}

// TestPrefault checks with mincore that a prefaulted region is resident.
func TestPrefault(t *testing.T) {
	const size = 4 << 20
	r, err := shm.Create(size, &shm.Options{Prefault: true})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	vec := make([]byte, size/os.Getpagesize())
	b := r.Bytes()
	if _, _, e := unix.Syscall(unix.SYS_MINCORE, uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)), uintptr(unsafe.Pointer(&vec[0]))); e != 0 {
		t.Fatal(e)
	}
	for i, v := range vec {
		if v&1 == 0 {
			t.Fatalf("page %d of %d not resident after prefault", i, len(vec))
		}
	}
}

// TestNoLeaks creates, maps and closes regions and checks that descriptors
// and mappings return to where they were.
func TestNoLeaks(t *testing.T) {
	maps := func() int {
		b, err := os.ReadFile("/proc/self/maps")
		if err != nil {
			t.Fatal(err)
		}
		return strings.Count(string(b), "memfd:leakcheck")
	}
	fds := peertest.CountFDs(t)
	for i := 0; i < 50; i++ {
		r, err := shm.Create(1<<16, &shm.Options{Name: "leakcheck"})
		if err != nil {
			t.Fatal(err)
		}
		ro, err := shm.Open(dupHandle(t, r.Handle()), 1<<16, shm.ReadOnly, nil)
		if err != nil {
			t.Fatal(err)
		}
		if maps() != 2 {
			t.Fatalf("%d mappings of the region, want 2", maps())
		}
		ro.Close()
		r.Close()
	}
	if maps() != 0 || peertest.CountFDs(t) != fds {
		t.Fatalf("after closing: %d mappings left, descriptors %d -> %d", maps(), fds, peertest.CountFDs(t))
	}
}
