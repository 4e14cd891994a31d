package wire

import (
	"bytes"
	"errors"
	"math"
	"strings"
	"testing"
)

func TestFrameHeaderRoundTrip(t *testing.T) {
	for _, h := range []FrameHeader{
		{Type: FrameHello, NFDs: 4, Length: HelloSize},
		{Type: FrameRefuse, Length: RefuseHeaderSize},
		{Type: FrameRefuse, Length: RefuseHeaderSize + MaxRefuseReason},
		{Type: FrameMap, NFDs: 1, Length: MappingSize},
		{Type: FrameMsg, Length: MinMsgFrame, Seq: 1},
		{Type: FrameMsg, Length: 1 << 20, Seq: math.MaxUint64},
		{Type: FrameBye},
	} {
		b := make([]byte, FrameHeaderSize)
		n, err := PutFrameHeader(b, h)
		if err != nil || n != FrameHeaderSize {
			t.Fatalf("PutFrameHeader(%+v) = %d, %v", h, n, err)
		}
		got, err := ParseFrameHeader(b, 1<<20)
		if err != nil || got != h {
			t.Fatalf("ParseFrameHeader = %+v, %v; want %+v", got, err, h)
		}
	}
	b := make([]byte, FrameHeaderSize)
	PutFrameHeader(b, FrameHeader{Type: FrameMsg, Length: 0x100, Seq: 0x0102030405060708})
	want := []byte{0x5e, 0xca, 4, 0, 0, 1, 0, 0, 8, 7, 6, 5, 4, 3, 2, 1}
	if !bytes.Equal(b, want) {
		t.Fatalf("header bytes\n got %v\nwant %v", b, want)
	}
	// Read as a Cap'n Proto stream header, a frame header claims an
	// impossible segment count.
	if n := le.Uint32(b) + 1; n <= 0xCA5E {
		t.Fatalf("segment count %d", n)
	}
}

func TestParseFrameHeaderMalformed(t *testing.T) {
	hdr := func(magic uint16, typ FrameType, nfds uint8, length uint32, seq uint64) []byte {
		b := make([]byte, FrameHeaderSize)
		le.PutUint16(b, magic)
		b[2], b[3] = byte(typ), nfds
		le.PutUint32(b[4:], length)
		le.PutUint64(b[8:], seq)
		return b
	}
	M := FrameMagic
	for _, tc := range []struct {
		name   string
		b      []byte
		phrase string
	}{
		{"short", make([]byte, 15), "frame header: 15 bytes, want 16"},
		{"magic", hdr(0x5eca, FrameBye, 0, 0, 0), "magic 0x5eca, want 0xca5e"},
		{"capnp stream", []byte{0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}, "magic 0x0000"},
		{"type 0", hdr(M, 0, 0, 0, 0), "unknown type 0"},
		{"type 6", hdr(M, 6, 0, 0, 0), "unknown type 6"},
		{"hello fds", hdr(M, FrameHello, 2, HelloSize, 0), "HELLO frame with 2 descriptors, want 4"},
		{"map fds", hdr(M, FrameMap, 2, MappingSize, 0), "MAP frame with 2 descriptors, want 1"},
		{"msg fds", hdr(M, FrameMsg, 1, 8, 1), "MSG frame with 1 descriptors, want 0"},
		{"bye fds", hdr(M, FrameBye, 255, 0, 0), "BYE frame with 255 descriptors, want 0"},
		{"hello length", hdr(M, FrameHello, 4, HelloSize+8, 0), "HELLO payload length 48, want 40"},
		{"refuse short", hdr(M, FrameRefuse, 0, 7, 0), "REFUSE payload length 7 is outside [8, 1032]"},
		{"refuse long", hdr(M, FrameRefuse, 0, 1033, 0), "REFUSE payload length 1033 is outside"},
		{"map length", hdr(M, FrameMap, 1, 8, 0), "MAP payload length 8, want 16"},
		{"msg empty", hdr(M, FrameMsg, 0, 0, 1), "MSG payload length 0 is not a Cap'n Proto stream message"},
		{"msg odd", hdr(M, FrameMsg, 0, 20, 1), "MSG payload length 20 is not"},
		{"msg oversized", hdr(M, FrameMsg, 0, 4096+8, 1), "MSG payload length 4104 exceeds the limit of 4096"},
		{"msg huge", hdr(M, FrameMsg, 0, math.MaxUint32&^7, 1), "exceeds the limit of 4096"},
		{"bye length", hdr(M, FrameBye, 0, 8, 0), "BYE payload length 8, want 0"},
		{"msg seq 0", hdr(M, FrameMsg, 0, 8, 0), "MSG frame with sequence number 0"},
		{"map seq", hdr(M, FrameMap, 1, MappingSize, 9), "MAP frame with sequence number 9, want 0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h, err := ParseFrameHeader(tc.b, 4096)
			mustMalformed(t, err, tc.phrase)
			if h != (FrameHeader{}) {
				t.Errorf("header %+v after an error", h)
			}
		})
	}
	if _, err := ParseFrameHeader(hdr(M, FrameMsg, 0, 8, 1), -1); err == nil {
		t.Error("negative limit accepted a MSG frame")
	}
}

func TestPutFrameHeaderInvalid(t *testing.T) {
	b := make([]byte, FrameHeaderSize)
	if _, err := PutFrameHeader(b, FrameHeader{Type: FrameMap, Length: MappingSize}); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "MAP frame with 0 descriptors, want 1") {
		t.Errorf("PutFrameHeader without the MAP descriptor: %v", err)
	}
	if _, err := PutFrameHeader(b[:8], FrameHeader{Type: FrameBye}); !errors.Is(err, ErrShortBuffer) {
		t.Errorf("PutFrameHeader short: %v", err)
	}
}

func TestMapping(t *testing.T) {
	b := make([]byte, MappingSize)
	m := Mapping{ID: 7, Size: 1 << 33}
	if n, err := PutMapping(b, m); err != nil || n != MappingSize {
		t.Fatalf("PutMapping = %d, %v", n, err)
	}
	if !bytes.Equal(b, []byte{7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0}) {
		t.Fatalf("MAP bytes %v", b)
	}
	if got, err := ParseMapping(b); err != nil || got != m {
		t.Fatalf("ParseMapping = %+v, %v", got, err)
	}
	for _, tc := range []struct {
		name   string
		b      []byte
		phrase string
	}{
		{"short", b[:15], "MAP payload: 15 bytes, want 16"},
		{"id 0", edit(b, func(b []byte) []byte { clear(b[:4]); return b }), "mapping id 0"},
		{"pad", edit(b, func(b []byte) []byte { b[4] = 1; return b }), "pad field is 0x1, want zero"},
		{"size 0", edit(b, func(b []byte) []byte { clear(b[8:]); return b }), "mapping 7 has size 0"},
		{"size huge", edit(b, func(b []byte) []byte { le.PutUint64(b[8:], 1<<63); return b }), "mapping 7 size 9223372036854775808 does not fit int64"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseMapping(tc.b)
			mustMalformed(t, err, tc.phrase)
		})
	}
	if _, err := PutMapping(b, Mapping{ID: 0, Size: 8}); !errors.Is(err, ErrInvalid) {
		t.Errorf("PutMapping id 0: %v", err)
	}
	if _, err := PutMapping(b[:4], m); !errors.Is(err, ErrShortBuffer) {
		t.Errorf("PutMapping short: %v", err)
	}
}

func validHello() Hello {
	return Hello{Version: Version, Features: FeatureDedicated | 1<<31, PoolSize: 64 << 20, RingSize: 640 + 1<<20, MaxMessage: 1 << 30, PID: 4242}
}

func TestHelloRoundTrip(t *testing.T) {
	h := validHello()
	b := make([]byte, HelloSize+4)
	n, err := PutHello(b, h)
	if err != nil || n != HelloSize {
		t.Fatalf("PutHello = %d, %v", n, err)
	}
	got, err := ParseHello(b[:n])
	if err != nil || got != h {
		t.Fatalf("ParseHello = %+v, %v; want %+v", got, err, h)
	}
	want := []byte{
		'C', 'S', 'H', 'M', 1, 0, 0, 0,
		1, 0, 0, 0x80, 0x92, 0x10, 0, 0,
		0, 0, 0, 4, 0, 0, 0, 0,
		0x80, 2, 0x10, 0, 0, 0, 0, 0,
		0, 0, 0, 0x40, 0, 0, 0, 0,
	}
	if !bytes.Equal(b[:n], want) {
		t.Fatalf("HELLO bytes\n got %v\nwant %v", b[:n], want)
	}
}

func TestParseHelloMalformed(t *testing.T) {
	valid := make([]byte, HelloSize)
	if _, err := PutHello(valid, validHello()); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		b      []byte
		phrase string
	}{
		{"empty", nil, "HELLO: 0 bytes, too short for magic and version"},
		{"short", valid[:5], "5 bytes, too short"},
		{"magic", edit(valid, func(b []byte) []byte { b[3] = 'X'; return b }), `magic "CSHX", want "CSHM"`},
		{"truncated", valid[:HelloSize-1], "39 bytes, want 40 for version 1"},
		{"long", append(append([]byte(nil), valid...), 0), "41 bytes, want 40"},
		{"pad", edit(valid, func(b []byte) []byte { b[7] = 1; return b }), "pad field is 0x100, want zero"},
		{"pool 0", edit(valid, func(b []byte) []byte { clear(b[16:24]); return b }), "pool size is 0"},
		{"ring 0", edit(valid, func(b []byte) []byte { clear(b[24:32]); return b }), "ring size is 0"},
		{"max message 0", edit(valid, func(b []byte) []byte { clear(b[32:40]); return b }), "max message is 0"},
		{"pool huge", edit(valid, func(b []byte) []byte { le.PutUint64(b[16:], math.MaxUint64); return b }), "pool size 18446744073709551615 does not fit int64"},
		{"ring huge", edit(valid, func(b []byte) []byte { le.PutUint64(b[24:], 1<<63); return b }), "ring size 9223372036854775808 does not fit int64"},
		{"pid 0", edit(valid, func(b []byte) []byte { clear(b[12:16]); return b }), "pid is 0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h, err := ParseHello(tc.b)
			mustMalformed(t, err, tc.phrase)
			if errors.Is(err, ErrVersion) {
				t.Error("malformed HELLO reported as ErrVersion")
			}
			if h != (Hello{}) {
				t.Errorf("Hello %+v after an error", h)
			}
		})
	}
	for _, b := range [][]byte{
		edit(valid, func(b []byte) []byte { b[4] = 2; return b }),
		edit(valid, func(b []byte) []byte { b[4] = 2; return b[:6] }),                 // a version 2 HELLO may be shorter
		edit(valid, func(b []byte) []byte { b[4] = 2; return append(b, 1, 2, 3, 4) }), // or longer
	} {
		_, err := ParseHello(b)
		if !errors.Is(err, ErrVersion) || errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), "peer speaks version 2, this side speaks version 1") {
			t.Errorf("version 2 HELLO of %d bytes: %v", len(b), err)
		}
	}
	if _, err := ParseHello(edit(valid, func(b []byte) []byte { b[4] = 0; return b })); !errors.Is(err, ErrVersion) {
		t.Errorf("version 0 HELLO: %v", err)
	}
}

func TestPutHelloInvalid(t *testing.T) {
	b := make([]byte, HelloSize)
	h := validHello()
	h.Version = 2
	if _, err := PutHello(b, h); !errors.Is(err, ErrInvalid) {
		t.Errorf("PutHello version 2: %v", err)
	}
	h = validHello()
	h.MaxMessage = 0
	if _, err := PutHello(b, h); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "max message is 0") {
		t.Errorf("PutHello max message 0: %v", err)
	}
	if _, err := PutHello(b[:39], validHello()); !errors.Is(err, ErrShortBuffer) {
		t.Errorf("PutHello short: %v", err)
	}
}

func TestRefuse(t *testing.T) {
	for _, r := range []Refuse{
		{Version: Version},
		{Version: 3, Reason: "uid 1001 is not allowed"},
		{Version: Version, Reason: strings.Repeat("é", MaxRefuseReason/2)},
		{Version: Version, Reason: "required", Flags: RefuseNoFallback, MaxMessage: 64 << 20},
		{Version: Version, MaxMessage: 1},
		{Version: Version, Flags: 1 << 7}, // unknown bits are kept
	} {
		b := make([]byte, RefuseSize(r))
		n, err := PutRefuse(b, r)
		if err != nil || n != len(b) {
			t.Fatalf("PutRefuse = %d, %v", n, err)
		}
		got, err := ParseRefuse(b)
		if err != nil || got != r {
			t.Fatalf("ParseRefuse = %+v, %v; want %+v", got, err, r)
		}
	}
	b := make([]byte, 64)
	n, _ := PutRefuse(b, Refuse{Version: 1, Reason: "no"})
	valid := b[:n]
	if !bytes.Equal(valid, []byte{'C', 'S', 'H', 'M', 1, 0, 2, 0, 'n', 'o'}) {
		t.Fatalf("REFUSE bytes %v", valid)
	}
	long := make([]byte, RefuseHeaderSize+MaxRefuseReason+1)
	copy(long, Magic)
	le.PutUint16(long[6:], MaxRefuseReason+1)
	for _, tc := range []struct {
		name   string
		b      []byte
		phrase string
	}{
		{"short", valid[:7], "REFUSE: 7 bytes, shorter than the 8-byte header"},
		{"magic", edit(valid, func(b []byte) []byte { b[0] = 'c'; return b }), `magic "cSHM"`},
		{"truncated", valid[:9], "9 bytes, want 10 or 26 for a 2-byte reason"},
		{"long", append(append([]byte(nil), valid...), 'x'), "11 bytes, want 10 or 26"},
		{"short tail", append(append([]byte(nil), valid...), make([]byte, 15)...), "25 bytes, want 10 or 26"},
		{"tail pad", append(append([]byte(nil), valid...), 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0), "tail pad is 0x1, want 0"},
		{"empty tail", append(append([]byte(nil), valid...), make([]byte, 16)...), "tail with no flags and no max message"},
		{"tail max", append(append([]byte(nil), valid...), 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x80), "max message 9223372036854775808 does not fit int64"},
		{"reason too long", long, "reason length 1025 exceeds 1024"},
		{"utf8", edit(valid, func(b []byte) []byte { b[8] = 0xff; return b }), `reason "\xffo" is not valid UTF-8`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseRefuse(tc.b)
			mustMalformed(t, err, tc.phrase)
		})
	}
	if _, err := PutRefuse(make([]byte, 2048), Refuse{Reason: strings.Repeat("x", MaxRefuseReason+1)}); !errors.Is(err, ErrInvalid) {
		t.Errorf("PutRefuse too long: %v", err)
	}
	if _, err := PutRefuse(make([]byte, 2048), Refuse{Reason: "\xff"}); !errors.Is(err, ErrInvalid) {
		t.Errorf("PutRefuse bad UTF-8: %v", err)
	}
	if _, err := PutRefuse(make([]byte, 9), Refuse{Reason: "no"}); !errors.Is(err, ErrShortBuffer) {
		t.Errorf("PutRefuse short: %v", err)
	}
}
