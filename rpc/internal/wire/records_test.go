package wire

import (
	"bytes"
	"errors"
	"math"
	"reflect"
	"strings"
	"testing"
)

// mustMalformed fails t unless err wraps ErrMalformed and contains phrase.
func mustMalformed(t *testing.T, err error, phrase string) {
	t.Helper()
	if err == nil {
		t.Fatalf("no error, want one containing %q", phrase)
	}
	if !errors.Is(err, ErrMalformed) {
		t.Fatalf("error %q does not wrap ErrMalformed", err)
	}
	if !strings.Contains(err.Error(), phrase) {
		t.Fatalf("error %q does not contain %q", err, phrase)
	}
}

// edit returns a copy of b changed by f.
func edit(b []byte, f func(b []byte) []byte) []byte {
	return f(append([]byte(nil), b...))
}

func TestPeek(t *testing.T) {
	for k := KindMsg; k <= KindUnmap; k++ {
		b := make([]byte, 8)
		b[0] = byte(k)
		got, err := Peek(b)
		if err != nil || got != k {
			t.Errorf("Peek(kind %d) = %v, %v", k, got, err)
		}
	}
	_, err := Peek([]byte{1, 0, 0, 0, 0, 0, 0})
	mustMalformed(t, err, "7 bytes, shorter than the 8-byte record header")
	_, err = Peek(nil)
	mustMalformed(t, err, "0 bytes")
	_, err = Peek([]byte{9, 0, 0, 0, 0, 0, 0, 0})
	mustMalformed(t, err, "unknown kind 9")
	_, err = Peek([]byte{0, 0, 0, 0, 0, 0, 0, 0})
	mustMalformed(t, err, "unknown kind 0")
}

func TestMsgRoundTrip(t *testing.T) {
	many := make([]SegRef, MaxSegments)
	for i := range many {
		many[i] = SegRef{Loc: uint32(i), Offset: uint64(i) * 4096, Length: 8 * uint64(i+1)}
	}
	for _, tc := range []struct {
		name string
		id   uint64
		segs []SegRef
	}{
		{"one", 7, []SegRef{{0, 0, 8}}},
		{"empty message", 1, []SegRef{{0, 64, 0}}},
		{"dedicated", math.MaxUint64, []SegRef{{0, 8, 1024}, {3, 0, 1 << 40}, {math.MaxUint32, 16, 8}}},
		{"max segments", 42, many},
		{"edge offset", 3, []SegRef{{1, math.MaxUint64 - 15, 8}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := make([]byte, MsgSize(len(tc.segs))+5)
			n, err := PutMsg(b, tc.id, tc.segs)
			if err != nil {
				t.Fatal(err)
			}
			if n != MsgSize(len(tc.segs)) {
				t.Fatalf("PutMsg wrote %d bytes, MsgSize says %d", n, MsgSize(len(tc.segs)))
			}
			if k, err := Peek(b[:n]); err != nil || k != KindMsg {
				t.Fatalf("Peek = %v, %v", k, err)
			}
			var m Msg
			if err := ParseMsg(b[:n], &m); err != nil {
				t.Fatal(err)
			}
			if m.ID != tc.id || !reflect.DeepEqual(m.Segs, tc.segs) {
				t.Fatalf("parsed %d %v, want %d %v", m.ID, m.Segs, tc.id, tc.segs)
			}
		})
	}
}

func TestMsgLayout(t *testing.T) {
	b := make([]byte, MsgSize(2))
	if _, err := PutMsg(b, 0x0102030405060708, []SegRef{{Loc: 0, Offset: 16, Length: 32}, {Loc: 2, Offset: 0, Length: 8}}); err != nil {
		t.Fatal(err)
	}
	want := []byte{
		1, 0, 0, 0, 2, 0, 0, 0,
		8, 7, 6, 5, 4, 3, 2, 1,
		0, 0, 0, 0, 0, 0, 0, 0, 16, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0, 0, 0, 0, 0, 0,
		2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0,
	}
	if !bytes.Equal(b, want) {
		t.Fatalf("MSG bytes\n got %v\nwant %v", b, want)
	}
}

func TestParseMsgMalformed(t *testing.T) {
	valid := make([]byte, MsgSize(3))
	if _, err := PutMsg(valid, 9, []SegRef{{0, 0, 8}, {1, 8, 16}, {0, 4096, 24}}); err != nil {
		t.Fatal(err)
	}
	seg := func(i, field int) int { return msgHeaderSize + msgSegSize*i + field }
	for _, tc := range []struct {
		name   string
		b      []byte
		phrase string
	}{
		{"empty", nil, "MSG record: 0 bytes, shorter than the 16-byte minimum"},
		{"short header", valid[:15], "15 bytes, shorter than the 16-byte minimum"},
		{"wrong kind", edit(valid, func(b []byte) []byte { b[0] = 2; return b }), "kind byte is 2, want 1"},
		{"pad", edit(valid, func(b []byte) []byte { b[2] = 0xff; return b }), "pad bytes 1..3 are 00 ff 00, want zero"},
		{"zero segments", edit(valid, func(b []byte) []byte { le.PutUint32(b[4:], 0); return b[:16] }), "segment count 0 is outside [1, 512]"},
		{"too many segments", edit(valid, func(b []byte) []byte { le.PutUint32(b[4:], 513); return b }), "segment count 513 is outside [1, 512]"},
		{"huge count", edit(valid, func(b []byte) []byte { le.PutUint32(b[4:], math.MaxUint32); return b }), "segment count 4294967295 is outside"},
		{"truncated", valid[:len(valid)-1], "87 bytes, want 88 for 3 segments"},
		{"trailing", append(append([]byte(nil), valid...), 0, 0, 0, 0, 0, 0, 0, 0), "96 bytes, want 88 for 3 segments"},
		{"count beyond record", edit(valid, func(b []byte) []byte { le.PutUint32(b[4:], 4); return b }), "88 bytes, want 112 for 4 segments"},
		{"segment pad", edit(valid, func(b []byte) []byte { b[seg(1, 5)] = 1; return b }), "segment 1 pad field is 0x100, want zero"},
		{"odd offset", edit(valid, func(b []byte) []byte { le.PutUint64(b[seg(2, 8):], 4100); return b }), "segment 2 offset 4100 is not a multiple of 8"},
		{"odd length", edit(valid, func(b []byte) []byte { le.PutUint64(b[seg(1, 16):], 12); return b }), "segment 1 length 12 is not a multiple of 8"},
		{"empty segment", edit(valid, func(b []byte) []byte { le.PutUint64(b[seg(0, 16):], 0); return b }), "segment 0 is empty in a 3-segment message"},
		{"overflow", edit(valid, func(b []byte) []byte {
			le.PutUint64(b[seg(2, 8):], math.MaxUint64-7)
			le.PutUint64(b[seg(2, 16):], 16)
			return b
		}), "segment 2 offset 18446744073709551608 + length 16 overflows 64 bits"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := Msg{ID: 5, Segs: make([]SegRef, 1, 8)}
			err := ParseMsg(tc.b, &m)
			mustMalformed(t, err, tc.phrase)
			if m.ID != 0 || len(m.Segs) != 0 {
				t.Errorf("after an error m = %+v, want empty", m)
			}
		})
	}
	t.Run("example text", func(t *testing.T) {
		b := make([]byte, MsgSize(4))
		PutMsg(b, 1, []SegRef{{0, 0, 8}, {0, 8, 8}, {0, 16, 8}, {0, 24, 8}})
		le.PutUint64(b[seg(3, 16):], 12)
		err := ParseMsg(b, &Msg{})
		if want := "wire: malformed MSG record: segment 3 length 12 is not a multiple of 8"; err == nil || err.Error() != want {
			t.Fatalf("got %v, want %q", err, want)
		}
	})
}

func TestPutMsgInvalid(t *testing.T) {
	big := make([]byte, 1<<15)
	for _, tc := range []struct {
		name   string
		b      []byte
		segs   []SegRef
		target error
		phrase string
	}{
		{"no segments", big, nil, ErrInvalid, "segment count 0"},
		{"too many", big, make([]SegRef, MaxSegments+1), ErrInvalid, "segment count 513"},
		{"odd length", big, []SegRef{{0, 0, 8}, {0, 8, 9}}, ErrInvalid, "segment 1 length 9 is not a multiple of 8"},
		{"odd offset", big, []SegRef{{0, 4, 8}}, ErrInvalid, "segment 0 offset 4"},
		{"empty of two", big, []SegRef{{0, 0, 8}, {0, 8, 0}}, ErrInvalid, "segment 1 is empty"},
		{"overflow", big, []SegRef{{0, math.MaxUint64 - 7, 16}}, ErrInvalid, "overflows"},
		{"short buffer", big[:MsgSize(2)-1], []SegRef{{0, 0, 8}, {0, 8, 8}}, ErrShortBuffer, "63 bytes, need 64"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n, err := PutMsg(tc.b, 1, tc.segs)
			if n != 0 || !errors.Is(err, tc.target) || !strings.Contains(err.Error(), tc.phrase) {
				t.Fatalf("PutMsg = %d, %v; want %v containing %q", n, err, tc.target, tc.phrase)
			}
		})
	}
}

func TestSegRefWithin(t *testing.T) {
	for _, tc := range []struct {
		s    SegRef
		size uint64
		want bool
	}{
		{SegRef{0, 0, 8}, 8, true},
		{SegRef{0, 0, 16}, 8, false},
		{SegRef{0, 8, 0}, 8, true},
		{SegRef{0, 16, 0}, 8, false},
		{SegRef{0, 4096, 4096}, 8192, true},
		{SegRef{0, 4096, 4097}, 8192, false},
		{SegRef{0, math.MaxUint64 - 7, 16}, math.MaxUint64, false}, // would wrap
		{SegRef{0, 8, math.MaxUint64}, math.MaxUint64, false},      // would wrap
		{SegRef{0, 0, math.MaxUint64}, math.MaxUint64, true},
	} {
		if got := tc.s.Within(tc.size); got != tc.want {
			t.Errorf("%+v.Within(%d) = %v, want %v", tc.s, tc.size, got, tc.want)
		}
	}
}

func TestMsgSize(t *testing.T) {
	m := Msg{Segs: []SegRef{{0, 0, 8}, {0, 8, 16}}}
	if got := m.Size(); got != 24 {
		t.Errorf("Size = %d, want 24", got)
	}
	m.Segs = []SegRef{{0, 0, math.MaxUint64 - 7}, {0, 8, 16}}
	if got := m.Size(); got != math.MaxUint64 {
		t.Errorf("overflowing Size = %d, want MaxUint64", got)
	}
	for _, n := range []int{-1, 0, MaxSegments + 1} {
		if MsgSize(n) != -1 {
			t.Errorf("MsgSize(%d) = %d, want -1", n, MsgSize(n))
		}
	}
}

func TestAllocs(t *testing.T) {
	segs := []SegRef{{0, 0, 64}, {2, 4096, 1 << 20}, {0, 128, 8}}
	b := make([]byte, MsgSize(len(segs)))
	var m Msg
	inl := [][]byte{make([]byte, 64), make([]byte, 8)}
	ib := make([]byte, InlineSizeOf(inl))
	views := make([][]byte, 0, 4)
	ids := []uint64{1, 2, 3}
	fb := make([]byte, FreeSize(len(ids)))
	idbuf := make([]uint64, 0, 8)
	sb, ub := make([]byte, SockSize), make([]byte, UnmapSize)
	check := func(err error) {
		if err != nil {
			panic(err)
		}
	}
	check2 := func(_ int, err error) { check(err) }
	// In order: each parser reads what the encoder before it wrote.
	for _, tc := range []struct {
		name string
		f    func()
	}{
		{"PutMsg", func() { check2(PutMsg(b, 1, segs)) }},
		{"ParseMsg", func() { check(ParseMsg(b, &m)) }},
		{"PutInline", func() { check2(PutInline(ib, inl)) }},
		{"ParseInline", func() {
			var err error
			views, err = ParseInline(ib, views)
			check(err)
		}},
		{"PutFree", func() { check2(PutFree(fb, ids)) }},
		{"ParseFree", func() {
			var err error
			idbuf, err = ParseFree(fb, idbuf)
			check(err)
		}},
		{"SOCK", func() {
			check2(PutSock(sb, 5))
			_, err := ParseSock(sb)
			check(err)
		}},
		{"UNMAP", func() {
			check2(PutUnmap(ub, 5))
			_, err := ParseUnmap(ub)
			check(err)
		}},
	} {
		tc.f() // grow the reused slices
		if n := testing.AllocsPerRun(100, tc.f); n != 0 {
			t.Errorf("%s: %v allocations per run, want 0", tc.name, n)
		}
	}
}
