package wire

import (
	"errors"
	"testing"
)

// TestHandleValues: values round-trip; those that cannot name a handle,
// and a block of the wrong length, are refused with the handle named.
func TestHandleValues(t *testing.T) {
	hello := FrameHeader{Type: FrameHello, NFDs: 4, Length: HelloSize}
	b := make([]byte, 4*HandleValueSize)
	in := []uint64{4, 0x1c8, 0x3ffc, MaxHandleValue - 4}
	n, err := PutHandleValues(b, FrameHello, in)
	if err != nil || n != len(b) {
		t.Fatalf("PutHandleValues = %d, %v", n, err)
	}
	got, err := ParseHandleValues(b, hello, nil)
	if err != nil || len(got) != 4 {
		t.Fatalf("ParseHandleValues = %v, %v", got, err)
	}
	for i := range in {
		if got[i] != in[i] {
			t.Fatalf("value %d: %#x, want %#x", i, got[i], in[i])
		}
	}
	for _, tt := range []struct {
		name   string
		i      int
		v      uint64
		phrase string
	}{
		{"zero", 0, 0, "HELLO handle 0 (pool) value 0x0 names no handle"},
		{"pseudo-handle", 1, 1<<64 - 1, "HELLO handle 1 (ring) value 0xffffffffffffffff is beyond any process's handle table"},
		{"too large", 2, MaxHandleValue, "(data doorbell) value 0x4000000 is beyond"},
		{"not a multiple of 4", 3, 0x1c5, "HELLO handle 3 (space doorbell) value 0x1c5 is not a multiple of 4"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			bad := append([]byte(nil), b...)
			le.PutUint64(bad[tt.i*HandleValueSize:], tt.v)
			_, err := ParseHandleValues(bad, hello, nil)
			mustMalformed(t, err, tt.phrase)
			vs := append([]uint64(nil), in...)
			vs[tt.i] = tt.v
			if _, err := PutHandleValues(make([]byte, 32), FrameHello, vs); !errors.Is(err, ErrInvalid) {
				t.Errorf("PutHandleValues of %#x: %v, want ErrInvalid", tt.v, err)
			}
		})
	}
	_, err = ParseHandleValues(b[:24], hello, nil)
	mustMalformed(t, err, "HELLO frame with 24 bytes of handle values, want 32 for 4 handles")
	_, err = ParseHandleValues(b[:8], FrameHeader{Type: FrameMap, NFDs: 1, Length: MappingSize}, nil)
	if err != nil {
		t.Fatalf("one MAP value: %v", err)
	}
	if _, err := PutHandleValues(make([]byte, 8), FrameHello, in); !errors.Is(err, ErrShortBuffer) {
		t.Errorf("PutHandleValues into 8 bytes: %v, want ErrShortBuffer", err)
	}
}

// FuzzParseHandleValues: any bytes, as the values of any frame header,
// parse into values that each could name a handle, or give ErrMalformed.
func FuzzParseHandleValues(f *testing.F) {
	b := make([]byte, 4*HandleValueSize)
	PutHandleValues(b, FrameHello, []uint64{4, 8, 12, 16})
	f.Add(b, byte(FrameHello), byte(4))
	f.Add(b[:8], byte(FrameMap), byte(1))
	f.Add([]byte{}, byte(FrameMsg), byte(0))
	f.Add(b[:7], byte(FrameMap), byte(1))
	f.Fuzz(func(t *testing.T, b []byte, typ, n byte) {
		h := FrameHeader{Type: FrameType(typ), NFDs: n}
		vs, err := ParseHandleValues(b, h, nil)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error %v does not wrap ErrMalformed", err)
			}
			return
		}
		if len(vs) != int(n) || len(b) != int(n)*HandleValueSize {
			t.Fatalf("%d values from %d bytes for %d handles", len(vs), len(b), n)
		}
		for _, v := range vs {
			if v == 0 || v%4 != 0 || v >= MaxHandleValue {
				t.Fatalf("value %#x accepted", v)
			}
		}
	})
}
