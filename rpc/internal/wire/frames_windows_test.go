package wire

import (
	"bytes"
	"errors"
	"io"
	"net"
	"testing"

	"golang.org/x/sys/windows"

	"github.com/capnshm/capnshm/internal/handles"
	"github.com/capnshm/capnshm/iocpwake"
	"github.com/capnshm/capnshm/shm"
)

// These tests run both ends in one process: the duplicating side's "peer
// process" is this process (windows.CurrentProcess()), so its duplicates
// are new handles here, as they would be in the peer.

// frameHeader returns a frame header's bytes as given, valid or not.
func frameHeader(typ FrameType, nfds uint8, length uint32, seq uint64) []byte {
	b := make([]byte, FrameHeaderSize)
	le.PutUint16(b, FrameMagic)
	b[2], b[3] = byte(typ), nfds
	le.PutUint32(b[4:], length)
	le.PutUint64(b[8:], seq)
	return b
}

// handleCount counts the handles a FrameConn's duplicates are: sections
// and events this process may only set. (The total is no use: Go's
// runtime adds handles with every thread it starts.)
func handleCount(t *testing.T) int {
	t.Helper()
	c, err := handles.Census()
	if err != nil {
		t.Fatal(err)
	}
	return c["Section"] + c[handles.RingEvents]
}

// helloHandles makes a pool, a ring and two bells, as a HELLO carries.
func helloHandles(t *testing.T) []FD {
	t.Helper()
	var fds []FD
	for range 2 {
		r, err := shm.Create(64<<10, nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { r.Close() })
		fds = append(fds, FD(r.Handle()))
	}
	for range 2 {
		b, err := iocpwake.New()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { b.Close() })
		fds = append(fds, FD(b.Handle()))
	}
	return fds
}

// TestFrameConnDuplicates: the server end pushes a HELLO's handles with
// the least access each needs (the pool read-only, the ring read-write,
// the bells to ring); the client end's MAP handle is pulled read-only.
// Every handle received is a new one, of the right type; nothing leaks.
func TestFrameConnDuplicates(t *testing.T) {
	fds := helloHandles(t)
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	server := NewFrameConn(a, true, windows.CurrentProcess())
	client := NewFrameConn(b, false, 0)
	before := handleCount(t)

	payload := make([]byte, HelloSize)
	PutHello(payload, validHello())
	errc := make(chan error, 1)
	go func() { errc <- server.WriteFrame(FrameHello, 0, payload, fds) }()
	h, got, hs, err := client.ReadFrame(0)
	if err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if h.Type != FrameHello || !bytes.Equal(got, payload) || len(hs) != 4 {
		t.Fatalf("got %+v, %d bytes, %d handles", h, len(got), len(hs))
	}
	for i, want := range []string{"Section", "Section", "Event", "Event"} {
		if hs[i] == fds[i] {
			t.Errorf("handle %d is the sender's own, not a duplicate", i)
		}
		if typ, err := handles.TypeName(hs[i]); err != nil || typ != want {
			t.Errorf("handle %d (%s): %q, %v; want %q", i, HandleRole(FrameHello, i), typ, err, want)
		}
	}
	// The pool was given read-only: mapping it read-write is refused.
	if r, err := shm.Open(shm.Handle(hs[0]), 64<<10, shm.ReadWrite, nil); !errors.Is(err, shm.ErrWriteSealed) {
		if err == nil {
			r.Close()
		}
		t.Errorf("the pool's duplicate opened read-write: %v", err)
	}
	ring, err := shm.Open(shm.Handle(hs[1]), 64<<10, shm.ReadWrite, nil)
	if err != nil {
		t.Errorf("the ring's duplicate: %v", err)
	} else {
		ring.Close()
	}
	bell, err := iocpwake.Open(iocpwake.Handle(hs[2]))
	if err != nil {
		t.Fatalf("the bell's duplicate: %v", err)
	}
	if err := bell.Ring(); err != nil {
		t.Errorf("ringing the bell's duplicate: %v", err)
	}
	bell.Close()
	CloseFDs(hs[3:])

	// The client's MAP: its own value, pulled by the server read-only.
	var mp [MappingSize]byte
	PutMapping(mp[:], Mapping{ID: 1, Size: 64 << 10})
	go func() { errc <- client.WriteFrame(FrameMap, 0, mp[:], fds[:1]) }()
	h, _, hs, err = server.ReadFrame(0)
	if err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if h.Type != FrameMap || len(hs) != 1 || hs[0] == fds[0] {
		t.Fatalf("MAP: %+v, handles %v (sent %v)", h, hs, fds[:1])
	}
	m, err := shm.Open(shm.Handle(hs[0]), 64<<10, shm.ReadOnly, nil)
	if err != nil {
		t.Fatalf("the pulled mapping: %v", err)
	}
	m.Close()
	if after := handleCount(t); after != before {
		t.Errorf("%d handles before, %d after", before, after)
	}
	if server.BytesRead() != FrameHeaderSize+HandleValueSize+MappingSize {
		t.Errorf("the server read %d bytes", server.BytesRead())
	}
}

// TestFrameConnBadValues: values from the peer that name no handle, or
// that the server cannot take out of the peer, are refused with an error
// that names the handle; the handles taken before are closed.
func TestFrameConnBadValues(t *testing.T) {
	fds := helloHandles(t)
	good := func(i int) []byte {
		var b [8]byte
		le.PutUint64(b[:], uint64(fds[i]))
		return b[:]
	}
	value := func(v uint64) []byte {
		var b [8]byte
		le.PutUint64(b[:], v)
		return b[:]
	}
	hello := make([]byte, HelloSize)
	PutHello(hello, validHello())
	for _, tt := range []struct {
		name   string
		stream [][]byte
		phrase string
		eof    bool
	}{
		{"zero", [][]byte{frameHeader(FrameHello, 4, HelloSize, 0), good(0), value(0), good(2), good(3)}, "HELLO handle 1 (ring) value 0x0 names no handle", false},
		{"pseudo-handle", [][]byte{frameHeader(FrameHello, 4, HelloSize, 0), value(1<<64 - 1), good(1), good(2), good(3)}, "HELLO handle 0 (pool) value 0xffffffffffffffff is beyond", false},
		{"odd", [][]byte{frameHeader(FrameMap, 1, MappingSize, 0), value(0x1c6)}, "MAP handle 0 (mapping) value 0x1c6 is not a multiple of 4", false},
		{"not open", [][]byte{frameHeader(FrameHello, 4, HelloSize, 0), good(0), good(1), value(0x3fffff0), good(3)}, "HELLO handle 2 (data doorbell): DuplicateHandle of the peer's handle 0x3fffff0", false},
		{"cut in the values", [][]byte{frameHeader(FrameHello, 4, HelloSize, 0), good(0), good(1)[:5]}, "connection closed after 13 of 32 HELLO handle value bytes", true},
		{"cut in the header", [][]byte{frameHeader(FrameHello, 4, HelloSize, 0)[:9]}, "connection closed after 9 of 16 frame header bytes", true},
		{"handles on a MSG", [][]byte{frameHeader(FrameMsg, 1, 8, 1), good(0)}, "MSG frame with 1 descriptors, want 0", false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			a, b := net.Pipe()
			defer b.Close()
			server := NewFrameConn(b, true, windows.CurrentProcess())
			before := handleCount(t)
			go func() {
				for _, p := range tt.stream {
					if _, err := a.Write(p); err != nil {
						return
					}
				}
				a.Close()
			}()
			_, _, hs, err := server.ReadFrame(1 << 16)
			if err == nil {
				t.Fatalf("no error; got %d handles", len(hs))
			}
			if tt.eof {
				if !errors.Is(err, io.ErrUnexpectedEOF) || !bytes.Contains([]byte(err.Error()), []byte(tt.phrase)) {
					t.Fatalf("error %q, want ErrUnexpectedEOF with %q", err, tt.phrase)
				}
			} else {
				mustMalformed(t, err, tt.phrase)
			}
			t.Logf("%v", err)
			b.Close()
			if after := handleCount(t); after != before {
				t.Errorf("%d handles before, %d after", before, after)
			}
		})
	}
}

// TestFrameConnUnknownPeer: a server end that does not know the peer
// process (it could not open it, and refuses the handshake) takes none of
// the peer's handles and sends none of its own.
func TestFrameConnUnknownPeer(t *testing.T) {
	fds := helloHandles(t)
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	server := NewFrameConn(b, true, 0)
	client := NewFrameConn(a, false, 0)
	hello := make([]byte, HelloSize)
	PutHello(hello, validHello())
	errc := make(chan error, 1)
	go func() { errc <- client.WriteFrame(FrameHello, 0, hello, fds) }()
	h, _, hs, err := server.ReadFrame(0)
	if err != nil || <-errc != nil {
		t.Fatalf("ReadFrame: %v", err)
	}
	if h.NFDs != 4 || hs != nil {
		t.Fatalf("header says %d handles; took %v, want none", h.NFDs, hs)
	}
	if err := server.WriteFrame(FrameMap, 0, make([]byte, MappingSize), fds[:1]); err == nil {
		t.Fatal("sent a handle without knowing the peer process")
	}
	// A frame without handles still goes out.
	go func() { errc <- server.WriteFrame(FrameBye, 0, nil, nil) }()
	if h, _, _, err := client.ReadFrame(0); err != nil || h.Type != FrameBye || <-errc != nil {
		t.Fatalf("BYE: %+v, %v", h, err)
	}
}

// TestFrameConnEOF: the stream's end between frames is io.EOF itself.
func TestFrameConnEOF(t *testing.T) {
	a, b := net.Pipe()
	r := NewFrameConn(b, false, 0)
	go func() {
		NewFrameConn(a, true, windows.CurrentProcess()).WriteFrame(FrameBye, 0, nil, nil)
		a.Close()
	}()
	if h, _, _, err := r.ReadFrame(0); err != nil || h.Type != FrameBye {
		t.Fatalf("BYE: %+v, %v", h, err)
	}
	if _, _, _, err := r.ReadFrame(0); err != io.EOF {
		t.Fatalf("after the last frame: %v, want io.EOF", err)
	}
}

// FuzzFrameConnPipe feeds a byte stream, as a client writes it on the
// pipe, to the server end's reader, which takes handle values out of the
// "peer" (this process): every frame it returns has the payload its header
// announced and as many handles, every failure is an error, nothing
// panics, and the handles it took are closed again.
func FuzzFrameConnPipe(f *testing.F) {
	frame := func(typ FrameType, nfds uint8, seq uint64, values []uint64, payload []byte) []byte {
		b := frameHeader(typ, nfds, uint32(len(payload)), seq)
		for _, v := range values {
			b = le.AppendUint64(b, v)
		}
		return append(b, payload...)
	}
	mp := make([]byte, MappingSize)
	PutMapping(mp, Mapping{ID: 3, Size: 4096})
	f.Add(frame(FrameMsg, 0, 1, nil, make([]byte, 16)))
	f.Add(frame(FrameMap, 1, 0, []uint64{0x7ff0}, mp))
	f.Add(frame(FrameMap, 1, 0, []uint64{3}, mp))
	f.Add(frame(FrameHello, 4, 0, []uint64{4, 8, 12, 16}, make([]byte, HelloSize)))
	f.Add(append(frame(FrameBye, 0, 0, nil, nil), 0x5E, 0xCA, 3, 1))
	f.Fuzz(func(t *testing.T, stream []byte) {
		a, b := net.Pipe()
		defer b.Close()
		go func() {
			a.Write(stream)
			a.Close()
		}()
		r := NewFrameConn(b, true, windows.CurrentProcess())
		for {
			h, payload, hs, err := r.ReadFrame(1 << 20)
			if err != nil {
				if err != io.EOF && !errors.Is(err, ErrMalformed) && !errors.Is(err, io.ErrUnexpectedEOF) {
					t.Fatalf("ReadFrame: %v, want EOF, ErrMalformed or ErrUnexpectedEOF", err)
				}
				return
			}
			if len(hs) != int(h.NFDs) || len(payload) != int(h.Length) {
				t.Fatalf("%v frame: %d handles, %d payload bytes; header says %d, %d", h.Type, len(hs), len(payload), h.NFDs, h.Length)
			}
			CloseFDs(hs)
		}
	})
}
