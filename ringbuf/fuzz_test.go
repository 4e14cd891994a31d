package ringbuf

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"
	"unsafe"
)

// fuzzImage returns the data area of a well-formed 4 KiB ring after writing
// and partly consuming records, with its head.
func fuzzImage(f *testing.F, sizes ...int) ([]byte, uint64) {
	mem := alignedBuf(SizeFor(MinCapacity))
	r, err := Init(mem)
	if err != nil {
		f.Fatal(err)
	}
	p, c := r.Producer(Options{}), r.Consumer(Options{})
	for i, n := range sizes {
		for {
			err := p.Write(bytes.Repeat([]byte{byte(i)}, n))
			if err == nil {
				break
			}
			if err != ErrFull {
				f.Fatal(err)
			}
			if _, err := c.Poll(); err != nil {
				f.Fatal(err)
			}
			if err := c.Release(); err != nil {
				f.Fatal(err)
			}
		}
	}
	return bytes.Clone(mem[HeaderSize:]), binary.NativeEndian.Uint64(mem[offHead:])
}

// FuzzConsumer feeds arbitrary ring images (data area, head, and optionally
// a raw header) to Attach, a Consumer and a Producer: they may only return
// errors, never panic or touch memory outside the ring. It also checks that
// records written through a Producer come back intact from a copy of the
// ring image.
func FuzzConsumer(f *testing.F) {
	for _, sizes := range [][]int{
		{0},
		{1, 2, 3, 100},
		{1000, 1000, 1000, 1000, 1500},
		{2040, 2040, 2040},
		{7, 500, 2000, 13, 999, 1, 0, 64},
	} {
		data, head := fuzzImage(f, sizes...)
		f.Add(data, head, false, []byte(nil))
	}
	hdr := func(length, flags uint32) []byte {
		return binary.NativeEndian.AppendUint64(nil, makeHeader(uint64(length), flags))
	}
	f.Add([]byte{}, uint64(0), false, []byte(nil))
	f.Add(hdr(0, 0), uint64(0), false, []byte(nil))
	f.Add(make([]byte, 16), uint64(0), true, []byte("CSRB\x02\x00\x00\x00\x00\x10\x00\x00\x00\x00\x00\x00"))
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 1}, uint64(8), true, []byte("CSRB"))
	f.Add(bytes.Repeat(hdr(1016, 0), 512), uint64(0), false, []byte(nil))
	f.Add(bytes.Repeat(hdr(8, 0), 512), uint64(4096), false, []byte(nil))
	f.Add(append(bytes.Repeat([]byte{0}, 4088), hdr(0, flagPadding)...), uint64(4088), false, []byte(nil))

	f.Fuzz(func(t *testing.T, data []byte, head uint64, rawHeader bool, header []byte) {
		mem := alignedBuf(SizeFor(MinCapacity))
		if _, err := Init(mem); err != nil {
			t.Fatal(err)
		}
		if rawHeader {
			copy(mem[:HeaderSize], header)
		}
		copy(mem[HeaderSize:], data)
		setHead(mem, head)
		checkHostile(t, mem)
		checkRoundTrip(t, data)
	})
}

func checkHostile(t *testing.T, mem []byte) {
	r, err := Attach(mem)
	if err != nil {
		if !errors.Is(err, ErrBadHeader) {
			t.Fatalf("Attach: %v", err)
		}
		return
	}
	lo := uintptr(unsafe.Pointer(&r.data[0]))
	hi := lo + uintptr(len(r.data))
	c := r.Consumer(Options{})
	for i := 0; i < 2*MinCapacity/8+2; i++ {
		b, err := c.Poll()
		if err == ErrEmpty {
			break
		}
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("Poll: %v", err)
			}
			if _, err2 := c.Poll(); err2 != err {
				t.Fatalf("not poisoned: %v then %v", err, err2)
			}
			break
		}
		if len(b) > r.MaxPayload() {
			t.Fatalf("%d-byte payload", len(b))
		}
		if len(b) > 0 {
			p := uintptr(unsafe.Pointer(&b[0]))
			if p < lo || p+uintptr(len(b)) > hi || (p-lo)%8 != 0 {
				t.Fatalf("payload [%d, +%d) outside the data area or misaligned", p-lo, len(b))
			}
		}
		if i%3 == 0 {
			if err := c.Release(); err != nil && !errors.Is(err, ErrCorrupt) {
				t.Fatal(err)
			}
		}
	}
	p := r.Producer(Options{})
	for i := range 64 {
		b, err := p.Claim(i * 97 % (r.MaxPayload() + 2))
		switch {
		case err == nil:
			clear(b)
		case errors.Is(err, ErrFull), errors.Is(err, ErrTooLarge):
		case errors.Is(err, ErrCorrupt):
			return
		default:
			t.Fatalf("Claim: %v", err)
		}
		if i%5 == 0 {
			if err := p.Commit(); err != nil && !errors.Is(err, ErrCorrupt) {
				t.Fatal(err)
			}
		}
	}
}

// checkRoundTrip cuts data into records (a byte gives the next length/8),
// writes them into a fresh ring, copies the ring image, attaches to the copy
// and reads them back.
func checkRoundTrip(t *testing.T, data []byte) {
	mem := alignedBuf(SizeFor(MinCapacity))
	r, err := Init(mem)
	if err != nil {
		t.Fatal(err)
	}
	// Start at a data-dependent position so that records wrap.
	start := uint64(len(data)) * 24 % (3 * MinCapacity)
	setHead(mem, start)
	p := r.Producer(Options{})
	var want [][]byte
	for rest := data; len(rest) > 0; {
		n := min(int(rest[0])*8, len(rest)-1)
		rec := rest[1 : 1+n]
		rest = rest[1+n:]
		if err := p.Write(rec); err == ErrFull {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		want = append(want, rec)
	}
	img := alignedBuf(len(mem))
	copy(img, mem)
	r2, err := Attach(img)
	if err != nil {
		t.Fatal(err)
	}
	c := r2.Consumer(Options{})
	for i, w := range want {
		b, err := c.Poll()
		if err != nil || !bytes.Equal(b, w) {
			t.Fatalf("record %d: %v, %q, want %q", i, err, b, w)
		}
	}
	if _, err := c.Poll(); err != ErrEmpty {
		t.Fatalf("after %d records: %v", len(want), err)
	}
}
