package ringbuf

import (
	"context"
	"encoding/binary"
	"errors"
	"strings"
	"testing"
)

// Raw accessors for building hostile images.
func setTail(mem []byte, v uint64) { binary.NativeEndian.PutUint64(mem[offTail:], v) }
func setHead(mem []byte, v uint64) { binary.NativeEndian.PutUint64(mem[offHead:], v) }
func setRecord(mem []byte, off int, length, flags uint32) {
	binary.NativeEndian.PutUint32(mem[HeaderSize+off:], length)
	binary.NativeEndian.PutUint32(mem[HeaderSize+off+4:], flags)
}

func TestConsumerCorruption(t *testing.T) {
	// Every case starts from a 4 KiB ring holding a 4-byte record at offset
	// 0 and a 100-byte record at offset 16 (tail 128). prep edits the
	// memory before the Consumer is made; late (if any) after it has read
	// everything it could.
	tests := []struct {
		name   string
		prep   func(mem []byte)
		late   func(mem []byte)
		phrase string
	}{
		{"tail beyond capacity", func(m []byte) { setTail(m, 4096+8) }, nil,
			"tail 4104 is 4104 bytes ahead of head 0, capacity is 4096"},
		{"tail beyond capacity later", nil, func(m []byte) { setTail(m, 1<<40) },
			"tail 1099511627776 is 1099511627776 bytes ahead of head 0, capacity is 4096"},
		{"tail backwards", nil, func(m []byte) { setTail(m, 64) },
			"tail moved backwards from 128 to 64"},
		{"tail misaligned", nil, func(m []byte) { setTail(m, 131) },
			"tail 131 is not 8-byte aligned"},
		{"tail misaligned at start", func(m []byte) { setTail(m, 131) }, nil,
			"tail 131 is not 8-byte aligned"},
		{"head misaligned", func(m []byte) { setHead(m, 4) }, nil,
			"head 4 is not 8-byte aligned"},
		{"head ahead of tail", func(m []byte) { setHead(m, 256) }, nil,
			"head 256 is ahead of tail 128"},
		{"length over max", func(m []byte) { setRecord(m, 0, 5000, 0) }, nil,
			"record at offset 0 claims 5000 bytes, max is 2040"},
		{"length over max, huge", func(m []byte) { setRecord(m, 16, 0xffffffff, 0) }, nil,
			"record at offset 16 claims 4294967295 bytes, max is 2040"},
		{"more than published", func(m []byte) { setRecord(m, 0, 200, 0) }, nil,
			"record at offset 0 claims 200 bytes, only 120 published"},
		{"crosses the end", func(m []byte) {
			setHead(m, 4032)
			setRecord(m, 4032, 100, 0)
			setTail(m, 4032+112)
		}, nil, "record at offset 4032 claims 100 bytes, crosses the end of the data area (56 bytes left)"},
		{"unknown flags", func(m []byte) { setRecord(m, 16, 100, 2) }, nil,
			"record at offset 16 has unknown flags 0x2"},
		{"unknown flags with padding", func(m []byte) { setRecord(m, 0, 4, 0x80000001) }, nil,
			"record at offset 0 has unknown flags 0x80000001"},
		{"short padding", func(m []byte) { setRecord(m, 0, 4, flagPadding) }, nil,
			"padding record at offset 0 claims 4 bytes, does not end at the end of the data area (4088 bytes left)"},
		{"long padding", func(m []byte) {
			setHead(m, 4032)
			setRecord(m, 4032, 1000, flagPadding)
			setTail(m, 4096+16)
		}, nil, "padding record at offset 4032 claims 1000 bytes, does not end at the end of the data area (56 bytes left)"},
		{"padding not published", func(m []byte) {
			setHead(m, 4032)
			setRecord(m, 4032, 56, flagPadding)
			setTail(m, 4040)
		}, nil, "padding record at offset 4032 claims 56 bytes, only 0 published"},
		{"padding then bad record", func(m []byte) {
			setHead(m, 4032)
			setRecord(m, 4032, 56, flagPadding)
			setRecord(m, 0, 3000, 0)
			setTail(m, 4096+16)
		}, nil, "record at offset 0 claims 3000 bytes, max is 2040"},
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
		setTail(mem, 0)
		setHead(mem, 0)
		c := r.Consumer(Options{Strategy: s, Waiter: newBell()})
		setTail(mem, 12345)
		checkCorrupt(t, c.Wait(context.Background()), "tail 12345 is 12345 bytes ahead of head 0")
	}
}

func TestProducerCorruption(t *testing.T) {
	tests := []struct {
		name   string
		tamper func(mem []byte)
		phrase string
	}{
		{"head ahead of tail", func(m []byte) { setHead(m, 8192) },
			"head 8192 is ahead of tail 5104"},
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
			if err := fill(); err != ErrFull { // caches head 1008
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
		r, mem := newTestRing(t, MinCapacity)
		setTail(mem, 8192)
		p := r.Producer(Options{})
		_, err := p.Claim(1)
		checkCorrupt(t, err, "tail 8192 is 8192 bytes ahead of head 0, capacity is 4096")
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
