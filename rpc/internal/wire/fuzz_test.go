package wire

import (
	"bytes"
	"errors"
	"testing"
)

// reencodeRecord parses b by its kind and encodes the result again. It
// returns nil, err when b does not parse.
func reencodeRecord(t *testing.T, b []byte) ([]byte, error) {
	k, err := Peek(b)
	if err != nil {
		return nil, err
	}
	out := make([]byte, len(b)+64)
	var n int
	var perr error // parse error
	switch k {
	case KindMsg:
		var m Msg
		if perr = ParseMsg(b, &m); perr == nil {
			n, err = PutMsg(out, m.ID, m.Segs)
		}
	case KindInline:
		var segs [][]byte
		if segs, perr = ParseInline(b, nil); perr == nil {
			n, err = PutInline(out, segs)
			if err == nil && n != InlineSizeOf(segs) {
				t.Fatalf("PutInline wrote %d bytes, InlineSizeOf says %d", n, InlineSizeOf(segs))
			}
		}
	case KindFree:
		var ids []uint64
		if ids, perr = ParseFree(b, nil); perr == nil {
			n, err = PutFree(out, ids)
		}
	case KindSock:
		var seq uint64
		if seq, perr = ParseSock(b); perr == nil {
			n, err = PutSock(out, seq)
		}
	case KindUnmap:
		var id uint32
		if id, perr = ParseUnmap(b); perr == nil {
			n, err = PutUnmap(out, id)
		}
	default:
		t.Fatalf("Peek returned unknown kind %v", k)
	}
	if perr != nil {
		return nil, perr
	}
	if err != nil {
		t.Fatalf("re-encoding a parsed %v record: %v", k, err)
	}
	return out[:n], nil
}

func FuzzParseRecord(f *testing.F) {
	b := make([]byte, 4096)
	add := func(n int, err error) {
		if err != nil {
			f.Fatal(err)
		}
		f.Add(append([]byte(nil), b[:n]...))
	}
	add(PutMsg(b, 1, []SegRef{{0, 0, 8}}))
	add(PutMsg(b, 99, []SegRef{{0, 64, 128}, {3, 0, 1 << 30}, {0, 8, 8}}))
	add(PutInline(b, [][]byte{{}}))
	add(PutInline(b, [][]byte{make([]byte, 8), bytes.Repeat([]byte{7}, 24), make([]byte, 8)}))
	add(PutFree(b, []uint64{1, 2, 3}))
	add(PutSock(b, 5))
	add(PutUnmap(b, 2))
	f.Add([]byte{1, 0, 0, 0, 255, 255, 255, 255})
	f.Add([]byte{2, 0, 0, 0, 1, 0, 0, 0, 255, 255, 255, 255})
	f.Fuzz(func(t *testing.T, b []byte) {
		in := append([]byte(nil), b...)
		out, err := reencodeRecord(t, b)
		if !bytes.Equal(in, b) {
			t.Fatal("parsing modified its input")
		}
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error %v does not wrap ErrMalformed", err)
			}
			return
		}
		if !bytes.Equal(out, b) {
			t.Fatalf("re-encoding changed the record\n  in %x\n out %x", b, out)
		}
	})
}

func FuzzParseFrameHeader(f *testing.F) {
	for _, h := range []FrameHeader{
		{Type: FrameHello, NFDs: 4, Length: HelloSize},
		{Type: FrameRefuse, Length: 20},
		{Type: FrameMap, NFDs: 1, Length: MappingSize},
		{Type: FrameMsg, Length: 64, Seq: 3},
		{Type: FrameBye},
	} {
		b := make([]byte, FrameHeaderSize)
		if _, err := PutFrameHeader(b, h); err != nil {
			f.Fatal(err)
		}
		f.Add(b, 1024)
	}
	f.Fuzz(func(t *testing.T, b []byte, maxPayload int) {
		h, err := ParseFrameHeader(b, maxPayload)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error %v does not wrap ErrMalformed", err)
			}
			return
		}
		if h.Type == FrameMsg && int64(h.Length) > int64(maxPayload) {
			t.Fatalf("MSG payload %d accepted over the limit %d", h.Length, maxPayload)
		}
		if int(h.NFDs) != h.Type.FDs() {
			t.Fatalf("%v frame with %d descriptors accepted", h.Type, h.NFDs)
		}
		out := make([]byte, FrameHeaderSize)
		if _, err := PutFrameHeader(out, h); err != nil {
			t.Fatalf("re-encoding %+v: %v", h, err)
		}
		if !bytes.Equal(out, b[:FrameHeaderSize]) {
			t.Fatalf("re-encoding changed the header\n  in %x\n out %x", b[:FrameHeaderSize], out)
		}
	})
}

func FuzzParseHello(f *testing.F) {
	b := make([]byte, HelloSize)
	if _, err := PutHello(b, validHello()); err != nil {
		f.Fatal(err)
	}
	f.Add(b)
	f.Add(b[:6])
	r := make([]byte, 32)
	n, _ := PutRefuse(r, Refuse{Version: 1, Reason: "go away"})
	f.Add(r[:n])
	r = make([]byte, 64)
	n, _ = PutRefuse(r, Refuse{Version: 1, Reason: "required", Flags: RefuseNoFallback, MaxMessage: 1 << 26})
	f.Add(r[:n])
	f.Fuzz(func(t *testing.T, b []byte) {
		if h, err := ParseHello(b); err != nil {
			if !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrVersion) {
				t.Fatalf("HELLO error %v wraps neither ErrMalformed nor ErrVersion", err)
			}
		} else {
			out := make([]byte, HelloSize)
			if _, err := PutHello(out, h); err != nil {
				t.Fatalf("re-encoding %+v: %v", h, err)
			}
			if !bytes.Equal(out, b) {
				t.Fatalf("re-encoding changed the HELLO\n  in %x\n out %x", b, out)
			}
		}
		// The same bytes as a REFUSE and a MAP payload.
		if rf, err := ParseRefuse(b); err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("REFUSE error %v does not wrap ErrMalformed", err)
			}
		} else {
			out := make([]byte, RefuseSize(rf))
			if _, err := PutRefuse(out, rf); err != nil || !bytes.Equal(out, b) {
				t.Fatalf("re-encoding REFUSE %+v: %v, %x", rf, err, out)
			}
		}
		if m, err := ParseMapping(b); err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("MAP error %v does not wrap ErrMalformed", err)
			}
		} else {
			out := make([]byte, MappingSize)
			if _, err := PutMapping(out, m); err != nil || !bytes.Equal(out, b) {
				t.Fatalf("re-encoding MAP %+v: %v, %x", m, err, out)
			}
		}
	})
}
