package shm_test

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/capnshm/capnshm/internal/peertest"
	"github.com/capnshm/capnshm/shm"
)

func init() {
	peertest.Register("shm-scribble", scribblePeer)
}

// scribbleRoutes are the ways a peer holding a region's descriptor might
// write into it, each writing 0xEE at its own offset (route i at i*4096).
var scribbleRoutes = []struct {
	name string
	try  func(fd, size, off int) error
}{
	{"mmap(PROT_WRITE) of the descriptor", func(fd, size, off int) error {
		m, err := unix.Mmap(fd, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
		if err != nil {
			return err
		}
		defer unix.Munmap(m)
		m[off] = 0xEE
		return nil
	}},
	{"mprotect(PROT_WRITE) of a read-only mapping", func(fd, size, off int) error {
		m, err := unix.Mmap(fd, 0, size, unix.PROT_READ, unix.MAP_SHARED)
		if err != nil {
			return fmt.Errorf("mapping read-only (which must work): %w", err)
		}
		defer unix.Munmap(m)
		if err := unix.Mprotect(m, unix.PROT_READ|unix.PROT_WRITE); err != nil {
			return err
		}
		m[off] = 0xEE
		return nil
	}},
	{"open(/proc/self/fd/N, O_RDWR) and pwrite", func(fd, size, off int) error {
		f, err := os.OpenFile(fmt.Sprintf("/proc/self/fd/%d", fd), os.O_RDWR, 0)
		if err != nil {
			return err
		}
		defer f.Close()
		_, err = f.WriteAt([]byte{0xEE}, int64(off))
		return err
	}},
	{"pwrite on the descriptor itself", func(fd, size, off int) error {
		_, err := unix.Pwrite(fd, []byte{0xEE}, int64(off))
		return err
	}},
	{"fallocate(PUNCH_HOLE), which zeroes", func(fd, size, off int) error {
		return unix.Fallocate(fd, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, int64(off), 4096)
	}},
}

// scribblePeer tries every route on the region it was given and reports,
// for each, "ok" or the error.
func scribblePeer(args []string) int {
	fd := int(peertest.Handles()[0])
	size, _ := strconv.Atoi(args[0])
	for i, r := range scribbleRoutes {
		if err := r.try(fd, size, i*4096); err != nil {
			peertest.Say("%d %v", i, errnoName(err))
		} else {
			peertest.Say("%d ok", i)
		}
	}
	// Through the package, too: a read-write Open is refused by name.
	if _, err := shm.Open(shm.Handle(fd), int64(size), shm.ReadWrite, nil); err != nil {
		peertest.Say("open %v", errors.Is(err, shm.ErrWriteSealed))
	} else {
		peertest.Say("open ok")
	}
	return 0
}

func errnoName(err error) string {
	for _, e := range []unix.Errno{unix.EPERM, unix.EACCES} {
		if errors.Is(err, e) {
			return unix.ErrnoName(e)
		}
	}
	return err.Error()
}

// TestPeerCannotWrite: a peer given the descriptor of a PeerReadOnly region
// cannot write it by any route (new writable mapping, mprotect of a
// read-only one, a read-write reopen through /proc, pwrite, hole punching),
// and the owner's memory is unchanged; the owner's own mapping still
// writes. Without PeerReadOnly (a ring, shared read-write by design) every
// route works, which is what the seal is for.
func TestPeerCannotWrite(t *testing.T) {
	size := 4096 * len(scribbleRoutes)
	for _, tt := range []struct {
		readOnly bool
		want     []string // per route
	}{
		{true, []string{"EPERM", "EACCES", "EPERM", "EPERM", "EPERM"}},
		{false, []string{"ok", "ok", "ok", "ok", "ok"}},
	} {
		t.Run(fmt.Sprint("PeerReadOnly=", tt.readOnly), func(t *testing.T) {
			r, err := shm.Create(int64(size), &shm.Options{PeerReadOnly: tt.readOnly, Prefault: true})
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			b := r.Bytes()
			for i := range b {
				b[i] = 0x11
			}
			p := peertest.Start(t, "shm-scribble", []uintptr{uintptr(r.Handle())}, fmt.Sprint(size))
			for i, route := range scribbleRoutes {
				line, err := p.Line(t.Context())
				if err != nil {
					t.Fatal(err)
				}
				got := strings.TrimPrefix(line, fmt.Sprintf("%d ", i))
				if got != tt.want[i] {
					t.Errorf("%s: %s, want %s", route.name, got, tt.want[i])
				}
				off := i * 4096
				want := byte(0x11)
				if !tt.readOnly {
					want = 0xEE
					if i == 4 {
						want = 0 // a punched hole reads as zeros
					}
				}
				if b[off] != want {
					t.Errorf("%s: our byte is %#x, want %#x", route.name, b[off], want)
				}
			}
			wantOpen := "open true"
			if !tt.readOnly {
				wantOpen = "open ok"
			}
			p.Expect(wantOpen)
			p.WaitOK()
			if tt.readOnly {
				if !bytes.Equal(b, bytes.Repeat([]byte{0x11}, size)) {
					t.Fatal("the peer changed our memory")
				}
			}
			b[size-1] = 0x22 // our own mapping still writes
			seals, err := unix.FcntlInt(uintptr(r.Handle()), unix.F_GET_SEALS, 0)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("seals %#x", seals)
		})
	}
}

// TestOpenWriteSealed: Open(ReadWrite) of a region whose owner made it
// read-only for its peers fails with ErrWriteSealed and closes the
// descriptor; Open(ReadOnly) works.
func TestOpenWriteSealed(t *testing.T) {
	r, err := shm.Create(8192, &shm.Options{PeerReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	before := peertest.CountFDs(t)
	if _, err := shm.Open(dupHandle(t, r.Handle()), 8192, shm.ReadWrite, nil); !errors.Is(err, shm.ErrWriteSealed) {
		t.Fatalf("Open(ReadWrite) = %v, want ErrWriteSealed", err)
	}
	if after := peertest.CountFDs(t); after != before {
		t.Fatalf("%d descriptors before, %d after", before, after)
	}
	ro, err := shm.Open(dupHandle(t, r.Handle()), 8192, shm.ReadOnly, nil)
	if err != nil {
		t.Fatal(err)
	}
	r.Bytes()[5] = 9
	if ro.Bytes()[5] != 9 {
		t.Fatal("the read-only mapping does not see the owner's write")
	}
	ro.Close()
}
