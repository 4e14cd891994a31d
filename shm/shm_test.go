package shm_test

import (
	"bytes"
	"errors"
	"fmt"
	"strconv"
	"testing"

	"github.com/capnshm/capnshm/internal/peertest"
	"github.com/capnshm/capnshm/shm"
)

func init() {
	peertest.Register("shm-peer", shmPeer)
}

// shmPeer opens the region handed over as handle 0 with the size and mode in
// args, checks the parent's pattern in the first half, then either writes its
// own pattern in the second half (read-write) or tries to (read-only, which
// must fault and kill this process).
func shmPeer(args []string) int {
	size, _ := strconv.ParseInt(args[0], 10, 64)
	mode := shm.ReadWrite
	if args[1] == "ro" {
		mode = shm.ReadOnly
	}
	r, err := shm.Open(shm.Handle(peertest.Handles()[0]), size, mode, nil)
	if err != nil {
		return peertest.Fail("open: %v", err)
	}
	b := r.Bytes()
	half := len(b) / 2
	if !bytes.Equal(b[:half], pattern(half, 1)) {
		return peertest.Fail("peer does not see the parent's writes")
	}
	peertest.Say("read ok")
	copy(b[half:], pattern(len(b)-half, 2)) // faults when read-only
	peertest.Say("wrote")
	if err := r.Close(); err != nil {
		return peertest.Fail("close: %v", err)
	}
	return 0
}

func pattern(n int, seed byte) []byte {
	p := make([]byte, n)
	for i := range p {
		p[i] = byte(i*7) + seed
	}
	return p
}

func TestCreateSizes(t *testing.T) {
	tests := []struct {
		name string
		size int64
		opts *shm.Options
		want error
	}{
		{"zero", 0, nil, shm.ErrInvalidSize},
		{"negative", -4096, nil, shm.ErrInvalidSize},
		{"over the default limit", shm.DefaultMaxSize + 1, nil, shm.ErrTooLarge},
		{"over a set limit", 1<<20 + 1, &shm.Options{MaxSize: 1 << 20}, shm.ErrTooLarge},
		{"one byte", 1, nil, nil},
		{"one page", 4096, nil, nil},
		{"at a set limit", 1 << 20, &shm.Options{MaxSize: 1 << 20}, nil},
		{"odd size, prefaulted", 3*4096 + 5, &shm.Options{Prefault: true, Name: "test"}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := shm.Create(tt.size, tt.opts)
			if tt.want != nil {
				if !errors.Is(err, tt.want) {
					t.Fatalf("Create(%d) error = %v, want %v", tt.size, err, tt.want)
				}
				if r != nil {
					t.Fatalf("Create(%d) returned a region with an error", tt.size)
				}
				return
			}
			if err != nil {
				t.Fatalf("Create(%d): %v", tt.size, err)
			}
			defer r.Close()
			b := r.Bytes()
			if int64(len(b)) != tt.size || int64(r.Len()) != tt.size {
				t.Fatalf("len = %d/%d, want %d", len(b), r.Len(), tt.size)
			}
			if r.Mode() != shm.ReadWrite {
				t.Fatalf("mode = %v", r.Mode())
			}
			for i, c := range b {
				if c != 0 {
					t.Fatalf("byte %d of a new region is %d, want 0", i, c)
				}
			}
			b[0], b[len(b)-1] = 1, 2
		})
	}
}

func TestCloseTwice(t *testing.T) {
	r, err := shm.Create(4096, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Close(); err != nil {
		t.Fatalf("first Close: %v", err)
	}
	if err := r.Close(); !errors.Is(err, shm.ErrClosed) {
		t.Fatalf("second Close = %v, want ErrClosed", err)
	}
}

func TestOpenBadSize(t *testing.T) {
	for _, size := range []int64{0, -1, shm.DefaultMaxSize + 1} {
		r, err := shm.Create(4096, nil)
		if err != nil {
			t.Fatal(err)
		}
		h := dupHandle(t, r.Handle())
		if _, err := shm.Open(h, size, shm.ReadOnly, nil); !errors.Is(err, shm.ErrInvalidSize) && !errors.Is(err, shm.ErrTooLarge) {
			t.Errorf("Open(size %d) = %v, want ErrInvalidSize or ErrTooLarge", size, err)
		}
		r.Close()
	}
}

// TestOpenInProcess maps one region twice in one process: writes through the
// read-write mapping show through the read-only one.
func TestOpenInProcess(t *testing.T) {
	const size = 64 << 10
	r, err := shm.Create(size, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	ro, err := shm.Open(dupHandle(t, r.Handle()), size, shm.ReadOnly, &shm.Options{Prefault: true})
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	copy(r.Bytes(), pattern(size, 9))
	if !bytes.Equal(ro.Bytes(), pattern(size, 9)) {
		t.Fatal("read-only mapping does not see writes")
	}
	if ro.Mode() != shm.ReadOnly {
		t.Fatalf("mode = %v", ro.Mode())
	}
}

func TestCrossProcess(t *testing.T) {
	for _, size := range []int64{4096, 1 << 20} {
		t.Run(fmt.Sprint(size), func(t *testing.T) {
			r, err := shm.Create(size, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			b := r.Bytes()
			half := len(b) / 2
			copy(b, pattern(half, 1))
			p := peertest.Start(t, "shm-peer", []uintptr{uintptr(r.Handle())}, fmt.Sprint(size), "rw")
			p.Expect("read ok")
			p.Expect("wrote")
			p.WaitOK()
			if !bytes.Equal(b[half:], pattern(len(b)-half, 2)) {
				t.Fatal("parent does not see the peer's writes")
			}
		})
	}
}

// TestReadOnlyWriteFaults: a peer that maps our region read-only and writes
// to it dies of a memory fault, and our memory is unchanged.
func TestReadOnlyWriteFaults(t *testing.T) {
	const size = 8192
	r, err := shm.Create(size, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	b := r.Bytes()
	copy(b, pattern(size/2, 1))
	p := peertest.Start(t, "shm-peer", []uintptr{uintptr(r.Handle())}, fmt.Sprint(size), "ro")
	p.Expect("read ok")
	if err := p.Wait(t.Context()); err == nil {
		t.Fatal("peer wrote through a read-only mapping and exited 0")
	}
	if !bytes.Equal(b[size/2:], make([]byte, size/2)) {
		t.Fatal("a write through the peer's read-only mapping reached our memory")
	}
	t.Logf("peer died as expected; stderr starts: %.120q", p.Stderr())
}
