package ringbuf

import (
	"bytes"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// modelRec is a record in the model FIFO: its payload and the ring position
// just past it.
type modelRec struct {
	data []byte
	end  uint64
}

// TestModel runs random operation sequences against a slice FIFO model.
func TestModel(t *testing.T) {
	seeds, ops := 60, 3000
	if testing.Short() {
		seeds = 10
	}
	base := uint64(time.Now().UnixNano())
	for i := range seeds {
		seed := base + uint64(i)
		if !runModel(t, seed, ops) {
			t.Fatalf("failed with seed %d (rerun: runModel(t, %d, %d))", seed, seed, ops)
		}
	}
}

func runModel(t *testing.T, seed uint64, ops int) bool {
	t.Helper()
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	capacity := MinCapacity << rng.IntN(3)
	r, _ := newTestRing(t, capacity)
	p, c := r.Producer(Options{}), r.Consumer(Options{})
	max := r.MaxPayload()

	var (
		tail     uint64     // model claim position
		head     uint64     // model released position
		claimed  []modelRec // claimed, not committed
		bufs     [][]byte   // the slices Claim returned for claimed
		queue    []modelRec // committed, not polled
		polled   []modelRec // polled, not released
		views    [][]byte   // the slices Poll returned for polled
		released uint64
	)
	fail := func(format string, args ...any) bool {
		t.Errorf("seed %d: "+format, append([]any{seed}, args...)...)
		return false
	}
	size := func() int {
		switch rng.IntN(10) {
		case 0:
			return max - rng.IntN(16)
		case 1, 2:
			return rng.IntN(capacity / 4)
		case 3:
			return 0
		default:
			return rng.IntN(200)
		}
	}
	// checkTerminator checks the protocol's invariant: the word at the
	// producer's published position is zero.
	checkTerminator := func() bool {
		if w := atomic.LoadUint64(r.word(p.pub % uint64(capacity))); w != 0 {
			return fail("word %#x at published position %d (claimed to %d), want 0", w, p.pub, tail)
		}
		if p.tail != tail {
			return fail("producer tail %d, model %d", p.tail, tail)
		}
		return true
	}
	claim := func(n int) (bool, bool) { // ok, continue
		rs := recordSize(uint64(n))
		left := uint64(capacity) - tail%uint64(capacity)
		need := rs
		if rs > left {
			need += left
		}
		fits := need+8 <= uint64(capacity)-(tail-head) // and the terminator
		b, err := p.Claim(n)
		if !fits {
			if err != ErrFull {
				return false, fail("Claim(%d) = %v, want ErrFull (tail %d head %d)", n, err, tail, head)
			}
			return false, true
		}
		if err != nil {
			return false, fail("Claim(%d) = %v, want success (tail %d head %d)", n, err, tail, head)
		}
		if len(b) != n {
			return false, fail("Claim(%d) returned %d bytes", n, len(b))
		}
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		tail += need
		claimed = append(claimed, modelRec{bytes.Clone(b), tail})
		bufs = append(bufs, b)
		return true, checkTerminator()
	}
	for range ops {
		switch op := rng.IntN(10); {
		case op < 3:
			if _, ok := claim(size()); !ok {
				return false
			}
		case op < 5:
			if err := p.Commit(); err != nil {
				return fail("Commit: %v", err)
			}
			// The producer must not touch what it claimed after Commit;
			// check that nothing else did in between.
			for i := range claimed {
				if !bytes.Equal(bufs[i], claimed[i].data) {
					return fail("claimed record changed before commit")
				}
			}
			queue = append(queue, claimed...)
			claimed, bufs = claimed[:0], bufs[:0]
			if !checkTerminator() {
				return false
			}
		case op < 6:
			if len(claimed) > 0 {
				continue // Write would commit the claimed records too
			}
			n := size()
			ok, cont := claim(n)
			if !cont {
				return false
			}
			if ok {
				if err := p.Commit(); err != nil {
					return fail("Commit: %v", err)
				}
				queue = append(queue, claimed...)
				claimed, bufs = claimed[:0], bufs[:0]
			}
		case op < 9:
			b, err := c.Poll()
			if len(queue) == 0 {
				if err != ErrEmpty {
					return fail("Poll on empty = %q, %v", b, err)
				}
				continue
			}
			if err != nil {
				return fail("Poll = %v, want %d bytes", err, len(queue[0].data))
			}
			if !bytes.Equal(b, queue[0].data) {
				return fail("Poll = %d bytes, want %d (content equal: %v)", len(b), len(queue[0].data), bytes.Equal(b, queue[0].data))
			}
			polled = append(polled, queue[0])
			views = append(views, b)
			queue = queue[1:]
		default:
			for i := range polled {
				if !bytes.Equal(views[i], polled[i].data) {
					return fail("polled record %d changed before Release", i)
				}
			}
			if err := c.Release(); err != nil {
				return fail("Release: %v", err)
			}
			if len(polled) > 0 {
				head = polled[len(polled)-1].end
				released = head
			}
			polled, views = polled[:0], views[:0]
			// Sanity: the shared head equals the model's.
			if h := atomic.LoadUint64(r.head); h != released {
				return fail("head %d, model %d", h, released)
			}
		}
	}
	return true
}

// TestConcurrent exchanges checksummed records between a producer and a
// consumer goroutine over one heap ring, for each wait strategy.
func TestConcurrent(t *testing.T) {
	n := 100_000
	if testing.Short() {
		n = 10_000
	}
	for _, s := range []WaitStrategy{Adaptive, BusySpin, Block} {
		for _, bell := range []bool{true, false} {
			name := s.String()
			if !bell {
				if s == BusySpin {
					continue
				}
				name += "-sleep"
				n := n / 10
				t.Run(name, func(t *testing.T) { runConcurrent(t, s, false, n) })
				continue
			}
			n := n
			if s == BusySpin {
				// Two spinners on a loaded 2-CPU machine often run one
				// at a time, a time slice per ring-full.
				n /= 10
			}
			t.Run(name, func(t *testing.T) { runConcurrent(t, s, true, n) })
		}
	}
}

// pattern is the source of record bodies: the body of record seq is
// pattern[seq%251:][:len].
var pattern = func() []byte {
	b := make([]byte, 251+MinCapacity)
	for i := range b {
		b[i] = byte(i*131 + i>>8)
	}
	return b
}()

func recordLen(seq uint64) int {
	if seq%997 == 0 {
		return 2000 // near MaxPayload of the 4 KiB ring: forces full/wrap
	}
	return int(seq*7919%300) + 16
}

func runConcurrent(t *testing.T, s WaitStrategy, bells bool, n int) {
	r, _ := newTestRing(t, MinCapacity)
	var po, co Options
	po = Options{Strategy: s, SpinTime: 2 * time.Microsecond, Yields: 5}
	co = po
	var cb, pb *chanBell
	if bells {
		cb, pb = newBell(), newBell()
		po.Ringer, po.Waiter = cb, pb
		co.Ringer, co.Waiter = pb, cb
	}
	p, c := r.Producer(po), r.Consumer(co)
	// No deadline of its own: a spinning pair on a loaded machine can be
	// slow without being wrong, and go test -timeout catches a hang.
	ctx := t.Context()
	var wg sync.WaitGroup
	var perr error
	wg.Add(1)
	go func() {
		defer wg.Done()
		rng := rand.New(rand.NewPCG(1, 2))
		for seq := uint64(0); seq < uint64(n); {
			batch := 1 + rng.IntN(8)
			for i := 0; i < batch && seq < uint64(n); i++ {
				l := recordLen(seq)
				b, err := p.Claim(l)
				if errors.Is(err, ErrFull) {
					if err := p.Commit(); err != nil {
						perr = err
						return
					}
					if err := p.WaitSpace(ctx, l); err != nil {
						perr = err
						return
					}
					b, err = p.Claim(l)
				}
				if err != nil {
					perr = err
					return
				}
				body := b[12:]
				copy(body, pattern[seq%251:])
				binary.LittleEndian.PutUint64(b, seq)
				binary.LittleEndian.PutUint32(b[8:], crc32.ChecksumIEEE(body))
				seq++
			}
			if err := p.Commit(); err != nil {
				perr = err
				return
			}
		}
	}()
	var got uint64
	for got < uint64(n) {
		b, err := c.Poll()
		if err == ErrEmpty {
			if err := c.Release(); err != nil {
				t.Fatal(err)
			}
			if err := c.Wait(ctx); err != nil {
				t.Fatalf("after %d records: %v", got, err)
			}
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		if len(b) != recordLen(got) {
			t.Fatalf("record %d: %d bytes, want %d", got, len(b), recordLen(got))
		}
		if seq := binary.LittleEndian.Uint64(b); seq != got {
			t.Fatalf("record %d has sequence number %d", got, seq)
		}
		body := b[12:]
		if crc32.ChecksumIEEE(body) != binary.LittleEndian.Uint32(b[8:]) || !bytes.Equal(body, pattern[got%251:][:len(body)]) {
			t.Fatalf("record %d: bad checksum or body", got)
		}
		got++
		if got%3 == 0 {
			if err := c.Release(); err != nil {
				t.Fatal(err)
			}
		}
	}
	wg.Wait()
	if perr != nil {
		t.Fatalf("producer: %v", perr)
	}
	if _, err := c.Poll(); err != ErrEmpty {
		t.Fatalf("extra record: %v", err)
	}
	ps, cs := p.Stats(), c.Stats()
	t.Logf("producer %+v", ps)
	t.Logf("consumer %+v", cs)
	if bells {
		if ps.Rings != uint64(cb.rings.Load()) || cs.Rings != uint64(pb.rings.Load()) {
			t.Fatalf("ring counts disagree")
		}
	}
}
