package ringbuf

import (
	"context"
	"encoding/binary"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"
)

// Raw accessors for building hostile images.
func setHead(mem []byte, v uint64) { binary.NativeEndian.PutUint64(mem[offHead:], v) }

// setWord stores the header word at offset off of the data area.
func setWord(mem []byte, off int, h uint64) {
	atomic.StoreUint64((*uint64)(unsafe.Pointer(&mem[HeaderSize+off])), h)
}

// setRecord stores a record header; flags are stored as given (add
// flagPresent for a well-formed one).
func setRecord(mem []byte, off int, length, flags uint32) {
	setWord(mem, off, uint64(flags)<<32|uint64(length))
}

func TestConsumerCorruption(t *testing.T) {
	// Every case starts from a 4 KiB ring holding a 4-byte record at offset
	// 0 and a 100-byte record at offset 16 (the terminator at 128). prep
	// edits the memory before the Consumer is made; late (if any) after it
	// has read everything it could.
	const ok = flagPresent
	tests := []struct {
		name   string
		prep   func(mem []byte)
		late   func(mem []byte)
		phrase string
	}{
		{"head misaligned", func(m []byte) { setHead(m, 4) }, nil,
			"head 4 is not 8-byte aligned"},
		{"no present bit", func(m []byte) { setRecord(m, 0, 4, 0) }, nil,
			"record at offset 0 has header 0x4 without the present bit"},
		{"padding without present bit", func(m []byte) { setRecord(m, 16, 100, flagPadding) }, nil,
			"record at offset 16 has header 0x100000064 without the present bit"},
		{"no present bit later", nil, func(m []byte) { setRecord(m, 128, 0, flagPadding) },
			"record at offset 128 has header 0x100000000 without the present bit"},
		{"unknown flags", func(m []byte) { setRecord(m, 16, 100, ok|4) }, nil,
			"record at offset 16 has unknown flags 0x6"},
		{"unknown flags with padding", func(m []byte) { setRecord(m, 0, 4, 0x80000003) }, nil,
			"record at offset 0 has unknown flags 0x80000003"},
		{"unknown flags later", nil, func(m []byte) { setRecord(m, 128, 8, 0xffffffff) },
			"record at offset 128 has unknown flags 0xffffffff"},
		{"length over max", func(m []byte) { setRecord(m, 0, 5000, ok) }, nil,
			"record at offset 0 claims 5000 bytes, max is 2040"},
		{"length over max, huge", func(m []byte) { setRecord(m, 16, 0xffffffff, ok) }, nil,
			"record at offset 16 claims 4294967295 bytes, max is 2040"},
		{"length over max later", nil, func(m []byte) { setRecord(m, 128, 2041, ok) },
			"record at offset 128 claims 2041 bytes, max is 2040"},
		{"crosses the end", func(m []byte) {
			setHead(m, 4032)
			setRecord(m, 4032, 100, ok)
		}, nil, "record at offset 4032 claims 100 bytes, crosses the end of the data area (56 bytes left)"},
		{"short padding", func(m []byte) { setRecord(m, 0, 4, ok|flagPadding) }, nil,
			"padding record at offset 0 claims 4 bytes, does not end at the end of the data area (4088 bytes left)"},
		{"long padding", func(m []byte) {
			setHead(m, 4032)
			setRecord(m, 4032, 1000, ok|flagPadding)
		}, nil, "padding record at offset 4032 claims 1000 bytes, does not end at the end of the data area (56 bytes left)"},
		{"padding then bad record", func(m []byte) {
			setHead(m, 4032)
			setRecord(m, 4032, 56, ok|flagPadding)
			setRecord(m, 0, 3000, ok)
		}, nil, "record at offset 0 claims 3000 bytes, max is 2040"},
		{"records all around the ring", func(m []byte) {
			// Four forged 1 KiB records fill the ring; the consumer, not
			// releasing, must not read the first one again as a fifth.
			for off := 0; off < 4096; off += 1024 {
				setRecord(m, off, 1016, ok)
			}
		}, nil, "record at offset 0 (position 4096) ends 5120 bytes past the released head 0, more than the capacity 4096"},
		{"records all around the ring later", nil, func(m []byte) {
			// The consumer has read to 128 without releasing; forged
			// records from there fill the ring to 4096, and at offset 0
			// is the unreleased 4-byte record again.
			setRecord(m, 128, 2040, ok)
			setRecord(m, 2176, 1912, ok|flagPadding)
		}, "record at offset 0 (position 4096) ends 4112 bytes past the released head 0, more than the capacity 4096"},
		{"paddings all around the ring", func(m []byte) { setRecord(m, 0, 4088, ok|flagPadding) }, nil,
			"record at offset 0 (position 4096) ends 8192 bytes past the released head 0, more than the capacity 4096"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, mem := newTestRing(t, MinCapacity)
			p := r.Producer(Options{})
			if err := p.Write([]byte("abcd")); err != nil {
				t.Fatal(err)
			}
			if err := p.Write(make([]byte, 100)); err != nil {
				t.Fatal(err)
			}
			if tt.prep != nil {
				tt.prep(mem)
			}
			c := r.Consumer(Options{})
			err := drain(c)
			if tt.late != nil {
				if err != nil {
					t.Fatalf("before late corruption: %v", err)
				}
				tt.late(mem)
				err = drain(c)
			}
			checkCorrupt(t, err, tt.phrase)
			// Poisoned: every later call returns the same error.
			if _, err2 := c.Poll(); err2 != err {
				t.Fatalf("Poll after corruption: %v", err2)
			}
			if err2 := c.Release(); err2 != err {
				t.Fatalf("Release after corruption: %v", err2)
			}
			if err2 := c.Wait(context.Background()); err2 != err {
				t.Fatalf("Wait after corruption: %v", err2)
			}
		})
	}
}

// drain polls until the ring is empty (nil) or an error.
func drain(c *Consumer) error {
	for range 1000 {
		_, err := c.Poll()
		if err == ErrEmpty {
			return nil
		}
		if err != nil {
			return err
		}
	}
	return errors.New("drain: no end")
}

func checkCorrupt(t *testing.T, err error, phrase string) {
	t.Helper()
	if !errors.Is(err, ErrCorrupt) {
		t.Fatalf("err = %v, want ErrCorrupt", err)
	}
	if !strings.Contains(err.Error(), phrase) {
		t.Fatalf("err = %q, want it to contain %q", err, phrase)
	}
	if !strings.HasPrefix(err.Error(), "ringbuf: corrupt ring: ") {
		t.Fatalf("err = %q", err)
	}
}

func TestConsumerCorruptionInWait(t *testing.T) {
	r, mem := newTestRing(t, MinCapacity)
	for _, s := range []WaitStrategy{Adaptive, BusySpin, Block} {
		for _, during := range []bool{false, true} {
			setWord(mem, 0, 0)
			bell := newBell()
			c := r.Consumer(Options{Strategy: s, Waiter: bell, SpinTime: 100 * time.Microsecond, Yields: 2})
			corrupt := func() {
				setRecord(mem, 0, 12345, flagPresent)
				bell.Ring()
			}
			if during {
				go func() {
					time.Sleep(2 * time.Millisecond)
					corrupt()
				}()
			} else {
				corrupt()
			}
			checkCorrupt(t, c.Wait(context.Background()), "record at offset 0 claims 12345 bytes, max is 2040")
		}
	}
}

func TestProducerCorruption(t *testing.T) {
	tests := []struct {
		name   string
		tamper func(mem []byte)
		phrase string
	}{
		{"head ahead of tail", func(m []byte) { setHead(m, 8192) },
			"head 8192 is ahead of tail 4032"},
		{"head misaligned", func(m []byte) { setHead(m, 1012) },
			"head 1012 is not 8-byte aligned"},
		{"head backwards", func(m []byte) { setHead(m, 0) },
			"head moved backwards from 1008 to 0"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, mem := newTestRing(t, MinCapacity)
			p, c := r.Producer(Options{}), r.Consumer(Options{})
			msg := make([]byte, 1000)
			fill := func() error {
				for {
					if err := p.Write(msg); err != nil {
						return err
					}
				}
			}
			if err := fill(); err != ErrFull {
				t.Fatal(err)
			}
			if _, err := c.Poll(); err != nil {
				t.Fatal(err)
			}
			if err := c.Release(); err != nil {
				t.Fatal(err)
			}
			// 64 bytes before the end and 1008 freed: no room for a
			// padding record, the record and the terminator. Caches head
			// 1008.
			if err := fill(); err != ErrFull {
				t.Fatal(err)
			}
			tt.tamper(mem)
			err := fill()
			checkCorrupt(t, err, tt.phrase)
			if _, err2 := p.Claim(1); err2 != err {
				t.Fatalf("Claim after corruption: %v", err2)
			}
			if err2 := p.Commit(); err2 != err {
				t.Fatalf("Commit after corruption: %v", err2)
			}
			if err2 := p.WaitSpace(context.Background(), 1); err2 != err {
				t.Fatalf("WaitSpace after corruption: %v", err2)
			}
		})
	}
	t.Run("at start", func(t *testing.T) {
		for _, tt := range []struct {
			name   string
			tamper func(mem []byte)
			phrase string
		}{
			{"head misaligned", func(m []byte) { setHead(m, 12) }, "head 12 is not 8-byte aligned"},
			{"bad record", func(m []byte) { setRecord(m, 16, 3000, flagPresent) }, "record at offset 16 claims 3000 bytes, max is 2040"},
			{"records all around", func(m []byte) {
				for off := 0; off < 4096; off += 1024 {
					setRecord(m, off, 1016, flagPresent)
				}
			}, "record at offset 0 (position 4096) ends 5120 bytes past the released head 0"},
		} {
			t.Run(tt.name, func(t *testing.T) {
				r, mem := newTestRing(t, MinCapacity)
				if err := r.Producer(Options{}).Write([]byte("x")); err != nil {
					t.Fatal(err)
				}
				tt.tamper(mem)
				p := r.Producer(Options{})
				_, err := p.Claim(1)
				checkCorrupt(t, err, tt.phrase)
				if err2 := p.Commit(); err2 != err {
					t.Fatalf("Commit after corruption: %v", err2)
				}
			})
		}
	})
	t.Run("in WaitSpace", func(t *testing.T) {
		r, mem := newTestRing(t, MinCapacity)
		p := r.Producer(Options{Strategy: Block, Waiter: newBell()})
		for p.Write(make([]byte, 1000)) == nil {
		}
		setHead(mem, 1<<20)
		checkCorrupt(t, p.WaitSpace(context.Background(), 1000), "head 1048576 is ahead of tail 4032")
	})
}
