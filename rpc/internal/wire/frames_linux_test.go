package wire

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"strings"
	"sync"
	"testing"

	"github.com/capnshm/capnshm/internal/peertest"

	"golang.org/x/sys/unix"
)

// socketpair returns the two ends of a connected SOCK_STREAM unix socket.
func socketpair(t *testing.T) (*net.UnixConn, *net.UnixConn) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	conn := func(fd int) *net.UnixConn {
		f := os.NewFile(uintptr(fd), "socketpair")
		c, err := net.FileConn(f)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c.(*net.UnixConn)
	}
	return conn(fds[0]), conn(fds[1])
}

// countFDs returns the number of open descriptors of this process.

// checkFDs fails t if the number of open descriptors is not before.
func checkFDs(t *testing.T, before int) {
	t.Helper()
	if after := peertest.CountFDs(t); after != before {
		t.Fatalf("%d descriptors open, %d before: leaked %d", after, before, after-before)
	}
}

// pipes returns n descriptors (pipe ends) to send, closed at cleanup.
func pipes(t *testing.T, n int) []int {
	t.Helper()
	var fds []int
	for len(fds) < n {
		var p [2]int
		if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
			t.Fatal(err)
		}
		fds = append(fds, p[0], p[1])
	}
	t.Cleanup(func() { closeFDs(fds) })
	return fds[:n]
}

// sameFile fails t unless a and b refer to the same open file.
func sameFile(t *testing.T, a, b int) {
	t.Helper()
	var sa, sb unix.Stat_t
	if err := unix.Fstat(a, &sa); err != nil {
		t.Fatal(err)
	}
	if err := unix.Fstat(b, &sb); err != nil {
		t.Fatal(err)
	}
	if sa.Dev != sb.Dev || sa.Ino != sb.Ino {
		t.Fatalf("descriptor %d is not the file of descriptor %d", b, a)
	}
}

// rawHeader encodes a header without PutFrameHeader's checks.
func rawHeader(typ FrameType, nfds uint8, length uint32, seq uint64) []byte {
	b := make([]byte, FrameHeaderSize)
	le.PutUint16(b, FrameMagic)
	b[2], b[3] = byte(typ), nfds
	le.PutUint32(b[4:], length)
	le.PutUint64(b[8:], seq)
	return b
}

// sendRaw writes b with fds attached (SCM_RIGHTS) on c.
func sendRaw(t *testing.T, c *net.UnixConn, b []byte, fds ...int) {
	t.Helper()
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	if _, _, err := c.WriteMsgUnix(b, oob, nil); err != nil {
		t.Fatal(err)
	}
}

func TestFrameConnSequence(t *testing.T) {
	a, b := socketpair(t)
	w, r := NewFrameConn(a), NewFrameConn(b)
	send := pipes(t, 5)
	before := peertest.CountFDs(t)

	hello := make([]byte, HelloSize)
	PutHello(hello, validHello())
	mp := make([]byte, MappingSize)
	PutMapping(mp, Mapping{ID: 1, Size: 1 << 20})
	msg := bytes.Repeat([]byte{0xab}, 4096)
	rf := make([]byte, 64)
	n, _ := PutRefuse(rf, Refuse{Version: 1, Reason: "nope"})
	rf = rf[:n]
	frames := []struct {
		typ     FrameType
		seq     uint64
		payload []byte
		fds     []int
	}{
		{FrameHello, 0, hello, send[:4]},
		{FrameMsg, 1, msg, nil},
		{FrameMap, 0, mp, send[4:5]},
		{FrameMsg, 2, msg[:8], nil},
		{FrameRefuse, 0, rf, nil},
		{FrameBye, 0, nil, nil},
	}
	go func() {
		for _, f := range frames {
			if err := w.WriteFrame(f.typ, f.seq, f.payload, f.fds); err != nil {
				t.Error(err)
				return
			}
		}
		a.CloseWrite()
	}()
	for i, f := range frames {
		h, payload, fds, err := r.ReadFrame(1 << 16)
		if err != nil {
			t.Fatalf("frame %d: %v", i, err)
		}
		want := FrameHeader{Type: f.typ, NFDs: uint8(len(f.fds)), Length: uint32(len(f.payload)), Seq: f.seq}
		if h != want || !bytes.Equal(payload, f.payload) || len(fds) != len(f.fds) {
			t.Fatalf("frame %d: %+v, %d payload bytes, %d fds; want %+v", i, h, len(payload), len(fds), want)
		}
		for j := range fds {
			sameFile(t, f.fds[j], fds[j])
		}
		closeFDs(fds)
	}
	if _, _, _, err := r.ReadFrame(1 << 16); err != io.EOF {
		t.Fatalf("after the last frame: %v, want io.EOF", err)
	}
	checkFDs(t, before)
}

func TestFrameConnHeaderInPieces(t *testing.T) {
	a, b := socketpair(t)
	r := NewFrameConn(b)
	send := pipes(t, 2)
	before := peertest.CountFDs(t)

	mp := make([]byte, MappingSize)
	PutMapping(mp, Mapping{ID: 9, Size: 4096})
	hdr := rawHeader(FrameMap, 1, MappingSize, 0)
	sendRaw(t, a, hdr[:5], send[0]) // the descriptor with the first piece
	sendRaw(t, a, hdr[5:])
	sendRaw(t, a, mp[:3])
	sendRaw(t, a, mp[3:])
	h, payload, fds, err := r.ReadFrame(1024)
	if err != nil {
		t.Fatal(err)
	}
	if h.Type != FrameMap || !bytes.Equal(payload, mp) || len(fds) != 1 {
		t.Fatalf("got %+v %v %v", h, payload, fds)
	}
	sameFile(t, send[0], fds[0])
	closeFDs(fds)
	checkFDs(t, before)

	// One descriptor on each piece: two received, the header says one.
	sendRaw(t, a, hdr[:8], send[0])
	sendRaw(t, a, hdr[8:], send[1])
	sendRaw(t, a, mp)
	_, _, _, err = r.ReadFrame(1024)
	mustMalformed(t, err, "MAP frame with 2 descriptors received, header says 1")
	checkFDs(t, before)
}

func TestFrameConnBadDescriptors(t *testing.T) {
	mp := make([]byte, MappingSize)
	PutMapping(mp, Mapping{ID: 9, Size: 4096})
	for _, tc := range []struct {
		name   string
		send   func(t *testing.T, c *net.UnixConn, fds []int)
		phrase string
		eof    bool
	}{
		{"2 fds, header says 1", func(t *testing.T, c *net.UnixConn, fds []int) {
			sendRaw(t, c, rawHeader(FrameMap, 1, MappingSize, 0), fds[:2]...)
			sendRaw(t, c, mp)
		}, "MAP frame with 2 descriptors received, header says 1", false},
		{"1 fd on a MSG frame", func(t *testing.T, c *net.UnixConn, fds []int) {
			sendRaw(t, c, rawHeader(FrameMsg, 0, 8, 1), fds[0])
			sendRaw(t, c, make([]byte, 8))
		}, "MSG frame with 1 descriptors received, header says 0", false},
		{"header claims 1 for MSG", func(t *testing.T, c *net.UnixConn, fds []int) {
			sendRaw(t, c, rawHeader(FrameMsg, 1, 8, 1), fds[0])
		}, "MSG frame with 1 descriptors, want 0", false},
		{"0 fds, header says 1", func(t *testing.T, c *net.UnixConn, fds []int) {
			sendRaw(t, c, rawHeader(FrameMap, 1, MappingSize, 0))
			sendRaw(t, c, mp)
		}, "MAP frame with 0 descriptors received, header says 1", false},
		{"5 fds", func(t *testing.T, c *net.UnixConn, fds []int) {
			sendRaw(t, c, rawHeader(FrameHello, 4, HelloSize, 0), fds[:5]...)
		}, "5 descriptors received, no frame carries more than 4", false},
		{"too many for the control buffer", func(t *testing.T, c *net.UnixConn, fds []int) {
			sendRaw(t, c, rawHeader(FrameHello, 4, HelloSize, 0), fds...)
		}, "control data truncated", false},
		{"fd on the payload", func(t *testing.T, c *net.UnixConn, fds []int) {
			sendRaw(t, c, rawHeader(FrameMap, 1, MappingSize, 0), fds[0])
			sendRaw(t, c, mp[:8], fds[1], fds[2])
			sendRaw(t, c, mp[8:])
		}, "2 descriptors attached to MAP payload bytes", false},
		{"bad magic with fds", func(t *testing.T, c *net.UnixConn, fds []int) {
			h := rawHeader(FrameMap, 1, MappingSize, 0)
			h[0] = 0
			sendRaw(t, c, h, fds[0])
		}, "magic 0xca00", false},
		{"oversized MSG", func(t *testing.T, c *net.UnixConn, fds []int) {
			sendRaw(t, c, rawHeader(FrameMsg, 0, 1<<20, 1))
		}, "MSG payload length 1048576 exceeds the limit of 65536", false},
		{"truncated header then EOF", func(t *testing.T, c *net.UnixConn, fds []int) {
			sendRaw(t, c, rawHeader(FrameMap, 1, MappingSize, 0)[:5], fds[0])
			c.CloseWrite()
		}, "connection closed after 5 of 16 frame header bytes", true},
		{"truncated payload then EOF", func(t *testing.T, c *net.UnixConn, fds []int) {
			sendRaw(t, c, rawHeader(FrameMap, 1, MappingSize, 0), fds[0])
			sendRaw(t, c, mp[:8])
			c.CloseWrite()
		}, "connection closed after 8 of 16 MAP payload bytes", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, b := socketpair(t)
			r := NewFrameConn(b)
			send := pipes(t, 12)
			before := peertest.CountFDs(t)
			tc.send(t, a, send)
			h, payload, fds, err := r.ReadFrame(1 << 16)
			if err == nil {
				t.Fatalf("no error; got %+v, %d bytes, fds %v", h, len(payload), fds)
			}
			if !strings.Contains(err.Error(), tc.phrase) {
				t.Fatalf("error %q does not contain %q", err, tc.phrase)
			}
			if tc.eof {
				if !errors.Is(err, io.ErrUnexpectedEOF) {
					t.Fatalf("error %q does not wrap io.ErrUnexpectedEOF", err)
				}
			} else if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error %q does not wrap ErrMalformed", err)
			}
			if fds != nil || payload != nil {
				t.Fatalf("returned fds %v and %d payload bytes with an error", fds, len(payload))
			}
			checkFDs(t, before)
		})
	}
}

func TestFrameConnCleanEOF(t *testing.T) {
	a, b := socketpair(t)
	r := NewFrameConn(b)
	a.Close()
	if _, _, _, err := r.ReadFrame(1024); err != io.EOF {
		t.Fatalf("ReadFrame on a closed peer: %v, want io.EOF", err)
	}
}

func TestFrameConnLargePayload(t *testing.T) {
	a, b := socketpair(t)
	w, r := NewFrameConn(a), NewFrameConn(b)
	big := make([]byte, 3*payloadChunk+8)
	for i := range big {
		big[i] = byte(i * 7)
	}
	errc := make(chan error, 1)
	go func() { errc <- w.WriteFrame(FrameMsg, 1, big, nil) }()
	h, payload, _, err := r.ReadFrame(len(big))
	if err != nil {
		t.Fatal(err)
	}
	if h.Length != uint32(len(big)) || !bytes.Equal(payload, big) {
		t.Fatal("large payload damaged")
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}

	// A peer announcing a large payload and dying: an error, no hang.
	sendRaw(t, a, rawHeader(FrameMsg, 0, 1<<30, 2))
	sendRaw(t, a, make([]byte, payloadChunk+100))
	a.CloseWrite()
	if _, _, _, err := r.ReadFrame(1 << 30); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("truncated large payload: %v", err)
	}
}

func TestFrameConnConcurrentWriters(t *testing.T) {
	a, b := socketpair(t)
	w, r := NewFrameConn(a), NewFrameConn(b)
	const writers, each = 4, 200
	var wg sync.WaitGroup
	for g := 0; g < writers; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < each; i++ {
				seq := uint64(g*each + i + 1)
				p := bytes.Repeat([]byte{byte(seq)}, 8*(1+int(seq%64)))
				if err := w.WriteFrame(FrameMsg, seq, p, nil); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	seen := make(map[uint64]bool)
	for len(seen) < writers*each {
		h, p, _, err := r.ReadFrame(1 << 16)
		if err != nil {
			t.Fatal(err)
		}
		want := bytes.Repeat([]byte{byte(h.Seq)}, 8*(1+int(h.Seq%64)))
		if seen[h.Seq] || !bytes.Equal(p, want) {
			t.Fatalf("frame seq %d damaged or repeated", h.Seq)
		}
		seen[h.Seq] = true
	}
	wg.Wait()
}

func TestWriteFrameErrors(t *testing.T) {
	a, b := socketpair(t)
	w, r := NewFrameConn(a), NewFrameConn(b)
	// Invalid frames are refused before any byte is written.
	for _, tc := range []struct {
		typ     FrameType
		seq     uint64
		payload []byte
		fds     []int
	}{
		{FrameMap, 0, make([]byte, MappingSize), nil},
		{FrameMsg, 0, make([]byte, 8), nil},
		{FrameMsg, 1, make([]byte, 12), nil},
		{FrameType(9), 0, nil, nil},
		{FrameBye, 0, nil, []int{0}},
	} {
		if err := w.WriteFrame(tc.typ, tc.seq, tc.payload, tc.fds); !errors.Is(err, ErrInvalid) {
			t.Errorf("WriteFrame(%v, %d, %d bytes, %d fds): %v, want ErrInvalid", tc.typ, tc.seq, len(tc.payload), len(tc.fds), err)
		}
	}
	if err := w.WriteFrame(FrameBye, 0, nil, nil); err != nil {
		t.Fatal(err)
	}
	if h, _, _, err := r.ReadFrame(0); err != nil || h.Type != FrameBye {
		t.Fatalf("after refused frames: %+v, %v", h, err)
	}
	// A failed write poisons the writer.
	b.Close()
	var first error
	for i := 0; i < 10 && first == nil; i++ {
		first = w.WriteFrame(FrameMsg, 1, make([]byte, 1<<16), nil)
	}
	if first == nil {
		t.Fatal("writing to a closed peer succeeded")
	}
	if err := w.WriteFrame(FrameBye, 0, nil, nil); err != first {
		t.Fatalf("write after a failure: %v, want the first error %v", err, first)
	}
}

func TestPeerCred(t *testing.T) {
	a, _ := socketpair(t)
	uid, gid, pid, err := PeerCred(a)
	if err != nil {
		t.Fatal(err)
	}
	if int(uid) != os.Getuid() || int(gid) != os.Getgid() || int(pid) != os.Getpid() {
		t.Fatalf("PeerCred = %d %d %d, want %d %d %d", uid, gid, pid, os.Getuid(), os.Getgid(), os.Getpid())
	}
	a.Close()
	if _, _, _, err := PeerCred(a); err == nil {
		t.Fatal("PeerCred on a closed conn succeeded")
	}
}

func ExampleFrameConn() {
	fds, _ := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	conn := func(fd int) *net.UnixConn {
		f := os.NewFile(uintptr(fd), "")
		defer f.Close()
		c, _ := net.FileConn(f)
		return c.(*net.UnixConn)
	}
	a, b := conn(fds[0]), conn(fds[1])
	defer a.Close()
	defer b.Close()

	w, r := NewFrameConn(a), NewFrameConn(b)
	go w.WriteFrame(FrameMsg, 1, make([]byte, 16), nil)
	h, payload, _, err := r.ReadFrame(1 << 20)
	fmt.Println(h.Type, h.Seq, len(payload), err)
	// Output: MSG 1 16 <nil>
}

// TestFrameConnGrowsAsBytesArrive: a frame that announces 1 GiB and brings
// 100 bytes costs about the first chunk, not the announced size; the split
// reads (ReadHeader, then ReadPayload) see the same frame, and BytesRead
// counts what arrived.
func TestFrameConnGrowsAsBytesArrive(t *testing.T) {
	a, b := socketpair(t)
	r := NewFrameConn(b)
	sendRaw(t, a, rawHeader(FrameMsg, 0, 1<<30, 1))
	sendRaw(t, a, make([]byte, 100))
	a.CloseWrite()
	h, fds, err := r.ReadHeader(1 << 30)
	if err != nil || fds != nil || h.Length != 1<<30 {
		t.Fatalf("ReadHeader = %+v, %v, %v", h, fds, err)
	}
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	_, err = r.ReadPayload(h)
	runtime.ReadMemStats(&after)
	if !errors.Is(err, io.ErrUnexpectedEOF) || !strings.Contains(err.Error(), "after 100 of 1073741824") {
		t.Fatalf("ReadPayload = %v, want unexpected EOF after 100 bytes", err)
	}
	if n := after.TotalAlloc - before.TotalAlloc; n > 2*payloadChunk {
		t.Fatalf("reading 100 bytes of an announced 1 GiB allocated %d bytes", n)
	}
	if got := r.BytesRead(); got != FrameHeaderSize+100 {
		t.Fatalf("BytesRead = %d, want %d", got, FrameHeaderSize+100)
	}
}
