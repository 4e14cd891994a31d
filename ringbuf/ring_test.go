package ringbuf

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"
)

// alignedBuf returns n zero bytes starting on an 8-byte boundary.
func alignedBuf(n int) []byte {
	w := make([]uint64, (n+7)/8+1)
	return unsafe.Slice((*byte)(unsafe.Pointer(&w[0])), n)
}

func newTestRing(t testing.TB, capacity int) (*Ring, []byte) {
	t.Helper()
	mem := alignedBuf(SizeFor(capacity))
	r, err := Init(mem)
	if err != nil {
		t.Fatal(err)
	}
	return r, mem
}

// chanBell is a test doorbell: Ring never blocks, rings coalesce.
type chanBell struct {
	ch    chan struct{}
	rings atomic.Int64
}

func newBell() *chanBell { return &chanBell{ch: make(chan struct{}, 1)} }

func (b *chanBell) Ring() error {
	b.rings.Add(1)
	select {
	case b.ch <- struct{}{}:
	default:
	}
	return nil
}

func (b *chanBell) Wait(ctx context.Context) error {
	select {
	case <-b.ch: // a ring first, even when ctx has ended too
		return nil
	default:
	}
	select {
	case <-b.ch:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func TestInitAttachValidation(t *testing.T) {
	good := func() []byte {
		mem := alignedBuf(SizeFor(MinCapacity))
		if _, err := Init(mem); err != nil {
			t.Fatal(err)
		}
		return mem
	}
	tests := []struct {
		name   string
		mem    func() []byte
		attach bool // Attach instead of Init
		want   error
		phrase string
	}{
		{"nil", func() []byte { return nil }, false, ErrBadSize, "need at least"},
		{"too small", func() []byte { return alignedBuf(SizeFor(MinCapacity / 2)) }, false, ErrBadSize, "need at least"},
		{"header only", func() []byte { return alignedBuf(HeaderSize) }, true, ErrBadSize, "need at least"},
		{"not power of two", func() []byte { return alignedBuf(SizeFor(MinCapacity + 8)) }, false, ErrBadSize, "power of two"},
		{"not power of two attach", func() []byte { return alignedBuf(SizeFor(3 * MinCapacity)) }, true, ErrBadSize, "power of two"},
		{"misaligned", func() []byte { return alignedBuf(SizeFor(MinCapacity) + 8)[4 : 4+SizeFor(MinCapacity)] }, false, ErrBadSize, "8-byte alignment"},
		{"misaligned attach", func() []byte { return alignedBuf(SizeFor(MinCapacity) + 8)[1 : 1+SizeFor(MinCapacity)] }, true, ErrBadSize, "8-byte alignment"},
		{"bad magic", func() []byte { m := good(); m[0] = 'X'; return m }, true, ErrBadHeader, `magic "XSRB"`},
		{"zero memory", func() []byte { return alignedBuf(SizeFor(MinCapacity)) }, true, ErrBadHeader, "magic"},
		{"bad version", func() []byte {
			m := good()
			binary.NativeEndian.PutUint32(m[offVersion:], 7)
			return m
		}, true, ErrBadHeader, "version 7, want 2"},
		{"capacity mismatch", func() []byte {
			m := good()
			binary.NativeEndian.PutUint64(m[offCapacity:], 2*MinCapacity)
			return m
		}, true, ErrBadHeader, "header says capacity 8192"},
		{"longer memory than header", func() []byte {
			m := alignedBuf(SizeFor(2 * MinCapacity))
			if _, err := Init(m[:SizeFor(MinCapacity)]); err != nil {
				t.Fatal(err)
			}
			return m
		}, true, ErrBadHeader, "capacity"},
		{"ok init", func() []byte { return alignedBuf(SizeFor(MinCapacity)) }, false, nil, ""},
		{"ok attach", good, true, nil, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var err error
			var r *Ring
			if tt.attach {
				r, err = Attach(tt.mem())
			} else {
				r, err = Init(tt.mem())
			}
			if tt.want == nil {
				if err != nil || r == nil || r.Capacity() != MinCapacity || r.MaxPayload() != MinCapacity/2-8 {
					t.Fatalf("got %v, %v", r, err)
				}
				return
			}
			if !errors.Is(err, tt.want) || !strings.Contains(err.Error(), tt.phrase) {
				t.Fatalf("err = %v, want %v containing %q", err, tt.want, tt.phrase)
			}
		})
	}
}

func TestAttachKeepsCapacity(t *testing.T) {
	_, mem := newTestRing(t, MinCapacity)
	r, err := Attach(mem)
	if err != nil {
		t.Fatal(err)
	}
	// A peer rewriting the header later must change nothing.
	binary.NativeEndian.PutUint64(mem[offCapacity:], 1<<40)
	if r.Capacity() != MinCapacity {
		t.Fatalf("capacity %d", r.Capacity())
	}
	p, c := r.Producer(Options{}), r.Consumer(Options{})
	if err := p.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	if b, err := c.Poll(); err != nil || string(b) != "x" {
		t.Fatalf("%q %v", b, err)
	}
}

func TestClaimCommitPollRelease(t *testing.T) {
	r, _ := newTestRing(t, MinCapacity)
	p, c := r.Producer(Options{}), r.Consumer(Options{})
	if _, err := c.Poll(); err != ErrEmpty {
		t.Fatalf("empty ring: %v", err)
	}
	buf, err := p.Claim(5)
	if err != nil || len(buf) != 5 || cap(buf) != 5 {
		t.Fatalf("claim: %d %d %v", len(buf), cap(buf), err)
	}
	copy(buf, "hello")
	// Not visible before Commit.
	if _, err := c.Poll(); err != ErrEmpty {
		t.Fatalf("before commit: %v", err)
	}
	if err := p.Commit(); err != nil {
		t.Fatal(err)
	}
	got, err := c.Poll()
	if err != nil || string(got) != "hello" {
		t.Fatalf("poll: %q %v", got, err)
	}
	if _, err := c.Poll(); err != ErrEmpty {
		t.Fatalf("after one: %v", err)
	}
	if err := c.Release(); err != nil {
		t.Fatal(err)
	}
	if h := atomic.LoadUint64(r.head); h != 16 {
		t.Fatalf("head %d, want 16", h)
	}
	// Zero-length record.
	if err := p.Write(nil); err != nil {
		t.Fatal(err)
	}
	if got, err := c.Poll(); err != nil || got == nil || len(got) != 0 {
		t.Fatalf("empty record: %v %v", got, err)
	}
	st := p.Stats()
	if st.Records != 2 || st.Bytes != 5 || st.Commits != 2 {
		t.Fatalf("producer stats %+v", st)
	}
	if cs := c.Stats(); cs.Records != 2 || cs.Bytes != 5 || cs.Releases != 1 {
		t.Fatalf("consumer stats %+v", cs)
	}
}

func TestBatch(t *testing.T) {
	r, _ := newTestRing(t, MinCapacity)
	p, c := r.Producer(Options{}), r.Consumer(Options{})
	var want [][]byte
	for i := range 10 {
		b, err := p.Claim(i * 3)
		if err != nil {
			t.Fatal(err)
		}
		for j := range b {
			b[j] = byte(i)
		}
		want = append(want, bytes.Clone(b))
	}
	if h := atomic.LoadUint64(r.word(0)); h != 0 {
		t.Fatalf("first header %#x stored before Commit", h)
	}
	if _, err := c.Poll(); err != ErrEmpty {
		t.Fatalf("before Commit: %v", err)
	}
	if err := p.Commit(); err != nil {
		t.Fatal(err)
	}
	if p.Stats().Commits != 1 {
		t.Fatal("want one commit")
	}
	var got [][]byte
	for {
		b, err := c.Poll()
		if err == ErrEmpty {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, b) // valid together until Release
	}
	if len(got) != len(want) {
		t.Fatalf("got %d records", len(got))
	}
	for i := range want {
		if !bytes.Equal(got[i], want[i]) {
			t.Fatalf("record %d: %v, want %v", i, got[i], want[i])
		}
	}
	if err := c.Release(); err != nil {
		t.Fatal(err)
	}
	if h := atomic.LoadUint64(r.head); h != p.tail || h != p.pub {
		t.Fatalf("head %d, producer at %d/%d after releasing all", h, p.pub, p.tail)
	}
}

func TestWrapAndFull(t *testing.T) {
	r, mem := newTestRing(t, MinCapacity)
	p, c := r.Producer(Options{}), r.Consumer(Options{})
	max := r.MaxPayload()
	// Fill: 1000-byte payloads take 1008 bytes; 4 fit in 4096 (4032).
	for i := range 4 {
		if err := p.Write(bytes.Repeat([]byte{byte(i)}, 1000)); err != nil {
			t.Fatalf("write %d: %v", i, err)
		}
	}
	if err := p.Write(make([]byte, 1000)); err != ErrFull {
		t.Fatalf("full ring: %v", err)
	}
	if p.Stats().Full != 1 {
		t.Fatal("Full not counted")
	}
	// Free the first two records (2016 bytes), then write one that does not
	// fit in the 64 bytes before the end: padding + record at offset 0.
	for range 2 {
		if _, err := c.Poll(); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.Release(); err != nil {
		t.Fatal(err)
	}
	if err := p.Write(bytes.Repeat([]byte{9}, 1500)); err != nil {
		t.Fatalf("wrapping write: %v", err)
	}
	// Padding header at offset 4032, filling 64 bytes.
	if h := binary.NativeEndian.Uint64(mem[HeaderSize+4032:]); h != makeHeader(56, flagPadding) {
		t.Fatalf("padding header %#x", h)
	}
	if p.tail != 4096+1512 || p.pub != p.tail {
		t.Fatalf("tail %d, published %d", p.tail, p.pub)
	}
	if h := binary.NativeEndian.Uint64(mem[HeaderSize+1512:]); h != 0 {
		t.Fatalf("terminator %#x", h)
	}
	for i, want := range []byte{2, 3, 9} {
		b, err := c.Poll()
		if err != nil || len(b) == 0 || b[0] != want || b[len(b)-1] != want {
			t.Fatalf("record %d: %v", i, err)
		}
	}
	if err := c.Release(); err != nil {
		t.Fatal(err)
	}
	// Largest record, twice around, and one too large.
	for i := range 6 {
		if err := p.Write(bytes.Repeat([]byte{byte(i)}, max)); err != nil {
			t.Fatalf("max write %d: %v", i, err)
		}
		b, err := c.Poll()
		if err != nil || len(b) != max || b[max-1] != byte(i) {
			t.Fatalf("max read %d: %v", i, err)
		}
		if err := c.Release(); err != nil {
			t.Fatal(err)
		}
	}
	for _, n := range []int{max + 1, -1, 1 << 40} {
		if _, err := p.Claim(n); !errors.Is(err, ErrTooLarge) {
			t.Fatalf("Claim(%d): %v", n, err)
		}
		if err := p.WaitSpace(context.Background(), n); !errors.Is(err, ErrTooLarge) {
			t.Fatalf("WaitSpace(%d): %v", n, err)
		}
	}
}

// TestStaleLap fills the ring with large records whose payloads are made of
// plausible record headers, consumes them, then writes small records whose
// positions fall inside those old payloads: the consumer must see exactly
// the new records, and ErrEmpty after each batch, never a stale "header".
func TestStaleLap(t *testing.T) {
	r, mem := newTestRing(t, MinCapacity)
	p, c := r.Producer(Options{}), r.Consumer(Options{})
	// Every word of these payloads reads as a published record: an 8-byte
	// record, or a zero-length one, or a padding record to the end.
	fakes := []uint64{makeHeader(8, 0), makeHeader(0, 0), makeHeader(16, 0)}
	poison := func(b []byte, i int) {
		for j := 0; j+8 <= len(b); j += 8 {
			binary.NativeEndian.PutUint64(b[j:], fakes[(i+j/8)%len(fakes)])
		}
	}
	var seq byte
	check := func(want [][]byte) {
		t.Helper()
		for i, w := range want {
			b, err := c.Poll()
			if err != nil || !bytes.Equal(b, w) {
				t.Fatalf("record %d of %d: %v, %d bytes %.16x..., want %d bytes %.16x...", i, len(want), err, len(b), b, len(w), w)
			}
		}
		if b, err := c.Poll(); err != ErrEmpty {
			t.Fatalf("after %d records: %v, a %d-byte record %.16x..., want ErrEmpty", len(want), err, len(b), b)
		}
		if err := c.Release(); err != nil {
			t.Fatal(err)
		}
	}
	for lap := range 40 {
		// Large records with poisoned payloads, one at a time.
		for i := range 3 {
			b, err := p.Claim(r.MaxPayload()/2 + 8*i + lap%3)
			if err != nil {
				t.Fatal(err)
			}
			poison(b, i+lap)
			want := [][]byte{bytes.Clone(b)}
			if err := p.Commit(); err != nil {
				t.Fatal(err)
			}
			check(want)
		}
		// Small records in batches of 1 to 5: their headers and the
		// terminators land inside the old payloads.
		for k := range 12 {
			var want [][]byte
			for range 1 + (k+lap)%5 {
				b, err := p.Claim(int(seq) % 13)
				if err != nil {
					t.Fatal(err)
				}
				for j := range b {
					b[j] = seq
				}
				seq++
				want = append(want, bytes.Clone(b))
			}
			// Not visible before Commit, even with the stale headers
			// all around.
			if _, err := c.Poll(); err != ErrEmpty {
				t.Fatalf("lap %d: before Commit: %v", lap, err)
			}
			if err := p.Commit(); err != nil {
				t.Fatal(err)
			}
			if h := binary.NativeEndian.Uint64(mem[HeaderSize+int(p.tail%MinCapacity):]); h != 0 {
				t.Fatalf("lap %d: terminator %#x", lap, h)
			}
			check(want)
		}
	}
}

func TestWaitSpaceUncommitted(t *testing.T) {
	r, _ := newTestRing(t, MinCapacity)
	p := r.Producer(Options{})
	for range 3 {
		if _, err := p.Claim(1000); err != nil {
			t.Fatal(err)
		}
	}
	err := p.WaitSpace(context.Background(), 1500)
	if !errors.Is(err, ErrFull) || !strings.Contains(err.Error(), "Commit first") {
		t.Fatalf("got %v", err)
	}
}

func TestWaitContext(t *testing.T) {
	for _, s := range []WaitStrategy{Adaptive, BusySpin, Block} {
		for _, withBell := range []bool{false, true} {
			t.Run(s.String(), func(t *testing.T) {
				r, _ := newTestRing(t, MinCapacity)
				opts := Options{Strategy: s, SpinTime: time.Microsecond, Yields: 2}
				if withBell {
					opts.Waiter = newBell()
				}
				c := r.Consumer(opts)
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Millisecond)
				defer cancel()
				if err := c.Wait(ctx); !errors.Is(err, context.DeadlineExceeded) {
					t.Fatalf("consumer: %v", err)
				}
				if atomic.LoadUint32(r.dataWanted) != 0 {
					t.Fatal("data_wanted left set")
				}
				p := r.Producer(opts)
				for p.Write(make([]byte, 100)) == nil {
				}
				if err := p.WaitSpace(ctx, 100); !errors.Is(err, context.DeadlineExceeded) {
					t.Fatalf("producer: %v", err)
				}
				// Ready at once: no wait.
				if err := c.Wait(ctx); err != nil {
					t.Fatalf("ready consumer: %v", err)
				}
			})
		}
	}
}

// TestWakeUp checks the doorbell handshake: a parked consumer is rung once,
// a running one is not rung at all.
func TestWakeUp(t *testing.T) {
	r, _ := newTestRing(t, MinCapacity)
	cb, pb := newBell(), newBell()
	waiter := &enterBell{chanBell: cb, entered: make(chan struct{})}
	p := r.Producer(Options{Ringer: cb, Waiter: pb, Strategy: Block})
	c := r.Consumer(Options{Ringer: pb, Waiter: waiter, Strategy: Block})
	// Nobody waits: commits ring nothing.
	for range 3 {
		if err := p.Write([]byte("a")); err != nil {
			t.Fatal(err)
		}
	}
	if cb.rings.Load() != 0 {
		t.Fatal("rang a consumer that was not waiting")
	}
	for {
		if _, err := c.Poll(); err != nil {
			break
		}
	}
	if err := c.Release(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error)
	go func() { done <- c.Wait(context.Background()) }()
	// The consumer sleeps on its doorbell: one commit rings it once.
	<-waiter.entered
	if !p.ConsumerWaiting() {
		t.Fatal("ConsumerWaiting false while the consumer sleeps on its doorbell")
	}
	if err := p.Write([]byte("b")); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if n := cb.rings.Load(); n != 1 {
		t.Fatalf("rang %d times, want 1", n)
	}
	if atomic.LoadUint32(r.dataWanted) != 0 || p.ConsumerWaiting() {
		t.Fatal("data_wanted left set")
	}
	// Awake again: further commits ring nothing.
	for range 2 {
		if err := p.Write([]byte("c")); err != nil {
			t.Fatal(err)
		}
	}
	if n := cb.rings.Load(); n != 1 {
		t.Fatalf("rang %d times after the consumer woke, want 1", n)
	}
}

// enterBell is a chanBell whose first Wait closes entered: the waiter has
// announced that it parks and found nothing to read.
type enterBell struct {
	*chanBell
	entered chan struct{}
	once    sync.Once
}

func (b *enterBell) Wait(ctx context.Context) error {
	b.once.Do(func() { close(b.entered) })
	return b.chanBell.Wait(ctx)
}

type errBell struct{}

func (errBell) Ring() error                    { return errors.New("bell broken") }
func (errBell) Wait(ctx context.Context) error { return errors.New("bell broken") }

func TestDoorbellErrors(t *testing.T) {
	r, _ := newTestRing(t, MinCapacity)
	c := r.Consumer(Options{Strategy: Block, Waiter: errBell{}})
	if err := c.Wait(context.Background()); err == nil || !strings.Contains(err.Error(), "bell broken") {
		t.Fatalf("wait: %v", err)
	}
	atomic.StoreUint32(r.dataWanted, 1)
	p := r.Producer(Options{Ringer: errBell{}})
	if err := p.Write([]byte("x")); err == nil || !strings.Contains(err.Error(), "ringing the consumer") {
		t.Fatalf("commit: %v", err)
	}
	// Published regardless.
	if b, err := c.Poll(); err != nil || string(b) != "x" {
		t.Fatalf("%q %v", b, err)
	}
}

func TestStrategyString(t *testing.T) {
	for s, want := range map[WaitStrategy]string{Adaptive: "Adaptive", BusySpin: "BusySpin", Block: "Block", 9: "WaitStrategy(9)"} {
		if s.String() != want {
			t.Errorf("%d: %q", int(s), s.String())
		}
	}
	var zero WaitStrategy
	if zero != Adaptive {
		t.Error("zero value is not Adaptive")
	}
}

func TestNoAllocs(t *testing.T) {
	r, _ := newTestRing(t, 1<<16)
	p, c := r.Producer(Options{}), r.Consumer(Options{})
	msg := make([]byte, 100)
	ctx := context.Background()
	n := testing.AllocsPerRun(1000, func() {
		if err := p.WaitSpace(ctx, len(msg)); err != nil {
			t.Fatal(err)
		}
		if err := p.Write(msg); err != nil {
			t.Fatal(err)
		}
		b, err := p.Claim(10)
		if err != nil {
			t.Fatal(err)
		}
		b[0] = 1
		if err := p.Commit(); err != nil {
			t.Fatal(err)
		}
		if err := c.Wait(ctx); err != nil {
			t.Fatal(err)
		}
		for range 2 {
			if _, err := c.Poll(); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := c.Poll(); err != ErrEmpty {
			t.Fatal(err)
		}
		if err := c.Release(); err != nil {
			t.Fatal(err)
		}
	})
	if n != 0 {
		t.Fatalf("%v allocations per run", n)
	}
}

// refusingWaiter fails every Wait: a test whose wait must not park sees
// it as an error.
type refusingWaiter struct{ waits int }

var errParked = errors.New("parked")

func (w *refusingWaiter) Wait(context.Context) error { w.waits++; return errParked }

// TestYieldTime checks Adaptive's timed yield phase: with YieldTime it
// polls (yielding) until the ring is ready instead of parking, and parks
// once YieldTime has passed; without it, it parks after its Yields.
func TestYieldTime(t *testing.T) {
	for _, c := range []struct {
		name      string
		yieldTime time.Duration
		readyAt   int // the poll at which ready reports true; 0: never
		wantErr   error
		wantPolls int // 0: any
	}{
		{"ready while yielding", time.Hour, 5000, nil, 5000},
		// The first poll, 2 Yields, park's re-check, then the doorbell.
		{"no yield time parks", 0, 5000, errParked, 4},
		{"yield time passes", time.Millisecond, 0, errParked, 0},
	} {
		t.Run(c.name, func(t *testing.T) {
			w := &refusingWaiter{}
			o := Options{Strategy: Adaptive, SpinTime: -1, Yields: 2, YieldTime: c.yieldTime, Waiter: w}.resolve()
			polls := 0
			ready := func() (bool, error) {
				polls++
				return c.readyAt > 0 && polls >= c.readyAt, nil
			}
			var wanted uint32
			var parks uint64
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			err := o.wait(ctx, &wanted, ready, &parks)
			if !errors.Is(err, c.wantErr) {
				t.Fatalf("wait: %v, want %v", err, c.wantErr)
			}
			if c.wantErr == nil && (parks != 0 || w.waits != 0) {
				t.Errorf("parked %d times, waited on the doorbell %d times; want neither", parks, w.waits)
			}
			if c.wantPolls > 0 && polls != c.wantPolls {
				t.Errorf("%d polls, want %d", polls, c.wantPolls)
			}
			if c.wantErr != nil && c.yieldTime > 0 && polls < yieldCheckEvery {
				t.Errorf("%d polls before parking, want at least %d", polls, yieldCheckEvery)
			}
		})
	}
}
