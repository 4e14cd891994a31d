package rpc_test

import (
	"context"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	capnp "capnproto.org/go/capnp/v3"
	"github.com/HdrHistogram/hdrhistogram-go"

	"github.com/capnshm/capnshm/internal/echoproto"
	"github.com/capnshm/capnshm/internal/peertest"
	"github.com/capnshm/capnshm/rpc"
)

func init() {
	peertest.Register("flow-server", flowServerPeer)
}

// flowServerPeer serves an echo server on args[0] and says "listening";
// it closes the server at EOF on stdin.
func flowServerPeer(args []string) int {
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	boot := capnp.Client(echoproto.Echo_ServerToClient(&echoproto.Server{}))
	srv, err := rpc.Listen(args[0], boot, rpc.WithPoolSize(4<<20), rpc.WithLogger(logger))
	if err != nil {
		return peertest.Fail("listen: %v", err)
	}
	go srv.Serve(context.Background())
	peertest.Say("listening")
	in := peertest.Stdin()
	for in.Scan() {
	}
	if err := srv.Close(); err != nil {
		return peertest.Fail("close: %v", err)
	}
	return 0
}

const (
	flowPool  = 32 << 20
	flowChunk = 1 << 20
)

// flowRun is what one streaming run saw.
type flowRun struct {
	pings    *hdrhistogram.Histogram // µs
	elapsed  time.Duration
	streamed uint64 // bytes pushed, as the server counted them
	count    uint64
	peakHeld int64 // most bytes of this side's memory held by messages at once (sampled)
	err      error
	stats    rpc.Stats
}

// heldBytes is the memory the transport's sent messages hold now: pool,
// overflow mappings in use, heap.
func heldBytes(s rpc.Stats) int64 {
	p := s.Pool
	return p.PoolInUse + (p.MappingBytesLive - p.MappingBytesCached) + p.HeapBytesLive
}

// pingHistogram returns a histogram of round trips in microseconds, from
// 1 µs to a minute, 3 significant digits.
func pingHistogram() *hdrhistogram.Histogram { return hdrhistogram.New(1, 60_000_000, 3) }

// flowPing makes one ping and records its round trip.
func flowPing(ctx context.Context, boot echoproto.Echo, h *hdrhistogram.Histogram) error {
	start := time.Now()
	if err := apiPingBoot(ctx, boot); err != nil {
		return err
	}
	return h.RecordValue(max(time.Since(start).Microseconds(), 1))
}

// flowPushed asks the server how much push has received.
func flowPushed(ctx context.Context, boot echoproto.Echo) (bytes, count uint64, err error) {
	f, release := boot.Pushed(ctx, nil)
	defer release()
	res, err := f.Struct()
	if err != nil {
		return 0, 0, err
	}
	return res.Bytes(), res.Count(), nil
}

// flowStream pushes total bytes in flowChunk calls written in place, on a
// separate reference to boot with limiter (none if nil), while another
// goroutine pings boot the whole time and a third samples the memory held.
func flowStream(ctx context.Context, c *rpc.Conn, boot echoproto.Echo, total int64, limited bool) flowRun {
	run := flowRun{pings: pingHistogram()}
	bytes0, count0, err := flowPushed(ctx, boot)
	if err != nil {
		run.err = err
		return run
	}
	stream := boot.AddRef()
	defer stream.Release()
	if limited {
		stream.SetFlowLimiter(c.FlowLimiter())
	}
	pattern := make([]byte, flowChunk)
	echoproto.FillPattern(pattern, 1, 0)

	done := make(chan struct{})
	var wg sync.WaitGroup
	var pingErr error
	var peak atomic.Int64
	wg.Add(2)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-done:
				return
			default:
			}
			if err := flowPing(ctx, boot, run.pings); err != nil {
				pingErr = err
				return
			}
		}
	}()
	go func() {
		defer wg.Done()
		tick := time.NewTicker(time.Millisecond)
		defer tick.Stop()
		for {
			if h := heldBytes(c.Stats().Stats); h > peak.Load() {
				peak.Store(h)
			}
			select {
			case <-done:
				return
			case <-tick.C:
			}
		}
	}()

	start := time.Now()
	for sent := int64(0); sent < total && run.err == nil; sent += flowChunk {
		n := min(flowChunk, total-sent)
		run.err = stream.Push(ctx, func(p echoproto.Echo_push_Params) error {
			ptr, b, err := echoproto.NewData(p.Segment(), int(n))
			if err != nil {
				return err
			}
			copy(b, pattern)
			return capnp.Struct(p).SetPtr(0, ptr)
		})
	}
	if err := stream.WaitStreaming(); run.err == nil {
		run.err = err
	}
	run.elapsed = time.Since(start)
	close(done)
	wg.Wait()
	if run.err == nil {
		run.err = pingErr
	}
	run.peakHeld = peak.Load()
	run.stats = c.Stats().Stats
	bytes1, count1, err := flowPushed(ctx, boot)
	if run.err == nil {
		run.err = err
	}
	run.streamed, run.count = bytes1-bytes0, count1-count0
	return run
}

func flowLogRun(t *testing.T, name string, total int64, r flowRun) {
	t.Helper()
	p := r.stats.Pool
	t.Logf("%s: %d MiB in %v (%.0f MiB/s); pings during it: n=%d p50=%dµs p99=%dµs max=%dµs; peak memory held by sent messages %.1f MiB; pool high water %.1f of %.0f MiB; overflow mappings %d, heap fallbacks %d, on socket %d; err=%v",
		name, total>>20, r.elapsed.Round(time.Millisecond), float64(total)/(1<<20)/r.elapsed.Seconds(),
		r.pings.TotalCount(), r.pings.ValueAtQuantile(50), r.pings.ValueAtQuantile(99), r.pings.Max(),
		float64(r.peakHeld)/(1<<20), float64(p.PoolHighWater)/(1<<20), float64(p.PoolSize)/(1<<20),
		p.MappingAllocs-p.MappingForOversized, p.HeapFallbacks, r.stats.SentOnSocket, r.err)
}

// TestFlowLimiterStreaming streams 1 GiB (64 MiB with -short or -race) of
// push calls with Conn.FlowLimiter to a server in another process, while
// small pings go on the same connection; then the same without the
// limiter. It asserts correctness only (every byte arrived, no error, and
// with the limiter the pool was never exhausted: no overflow mapping, no
// heap, nothing on the socket) and logs the ping latencies next to an idle
// connection's.
func TestFlowLimiterStreaming(t *testing.T) {
	total := int64(1 << 30)
	idlePings := 5000
	if testing.Short() || raceEnabled {
		total, idlePings = 64<<20, 500
	}
	addr := apiAddr(t, rpc.SchemeShmAbstract)
	srv := peertest.Start(t, "flow-server", nil, addr)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("server's stderr:\n%s", srv.Stderr())
		}
	})
	srv.Expect("listening")
	t.Cleanup(func() { // after the connections' cleanups: they close first
		srv.CloseStdin()
		srv.WaitOK()
	})

	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()

	// With the limiter.
	c := apiDial(t, addr, rpc.WithPoolSize(flowPool), rpc.WithFallback(rpc.FallbackRequire))
	boot := echoproto.Echo(c.Bootstrap(ctx))
	defer boot.Release()

	idle := pingHistogram()
	for range idlePings {
		if err := flowPing(ctx, boot, idle); err != nil {
			t.Fatalf("idle ping: %v", err)
		}
	}
	t.Logf("idle connection: %d pings p50=%dµs p99=%dµs max=%dµs", idle.TotalCount(), idle.ValueAtQuantile(50), idle.ValueAtQuantile(99), idle.Max())

	r := flowStream(ctx, c, boot, total, true)
	flowLogRun(t, "with FlowLimiter (default window, 16 MiB)", total, r)
	if r.err != nil {
		t.Fatalf("limited stream: %v", r.err)
	}
	if r.streamed != uint64(total) || r.count != uint64((total+flowChunk-1)/flowChunk) {
		t.Errorf("the server received %d bytes in %d pushes, want %d bytes in %d", r.streamed, r.count, total, (total+flowChunk-1)/flowChunk)
	}
	if r.pings.TotalCount() == 0 {
		t.Error("no ping completed during the stream")
	}
	p := r.stats.Pool
	if p.HeapFallbacks != 0 || r.stats.SentOnSocket != 0 || p.MappingAllocs != p.MappingForOversized || p.FailedAllocs != 0 {
		t.Errorf("with the limiter the pool was exhausted: %d overflow mappings, %d heap fallbacks, %d messages on the socket, %d failed allocations",
			p.MappingAllocs-p.MappingForOversized, p.HeapFallbacks, r.stats.SentOnSocket, p.FailedAllocs)
	}
	if r.stats.SentByReference < uint64(r.count) {
		t.Errorf("only %d messages went by reference for %d pushes", r.stats.SentByReference, r.count)
	}

	// A smaller window trades throughput for the latency of the calls that
	// queue behind the stream (on the server, calls to one object run one
	// at a time, so a ping waits for the pushes ahead of it).
	small := min(total, 256<<20)
	c3 := apiDial(t, addr, rpc.WithPoolSize(flowPool), rpc.WithFallback(rpc.FallbackRequire), rpc.WithFlowWindow(2<<20))
	boot3 := echoproto.Echo(c3.Bootstrap(ctx))
	defer boot3.Release()
	r3 := flowStream(ctx, c3, boot3, small, true)
	flowLogRun(t, "with FlowLimiter (window 2 MiB)", small, r3)
	if r3.err != nil || r3.streamed != uint64(small) {
		t.Errorf("2 MiB window: the server received %d bytes, want %d; err=%v", r3.streamed, small, r3.err)
	}
	t.Logf("ping p99: idle %dµs; during the stream: %dµs (16 MiB window), %dµs (2 MiB window)",
		idle.ValueAtQuantile(99), r.pings.ValueAtQuantile(99), r3.pings.ValueAtQuantile(99))

	// Without the limiter, on a fresh connection: the sender runs ahead of
	// the server by as much memory as it can get. Logged, not asserted:
	// how far it gets depends on the machine.
	nolimit := min(total, 256<<20)
	c2 := apiDial(t, addr, rpc.WithPoolSize(flowPool), rpc.WithFallback(rpc.FallbackRequire))
	boot2 := echoproto.Echo(c2.Bootstrap(ctx))
	defer boot2.Release()
	r2 := flowStream(ctx, c2, boot2, nolimit, false)
	flowLogRun(t, "without a limiter", nolimit, r2)
	if r2.err == nil && r2.streamed != uint64(nolimit) {
		t.Errorf("without the limiter the server received %d bytes, want %d", r2.streamed, nolimit)
	}
	p2 := r2.stats.Pool
	switch {
	case p2.HeapFallbacks > 0 || r2.stats.SentOnSocket > 0 || p2.MappingAllocs > p2.MappingForOversized:
		t.Logf("without the limiter the sender exhausted its %d MiB pool (peak %.0f MiB held)", flowPool>>20, float64(r2.peakHeld)/(1<<20))
	case r2.peakHeld > r.peakHeld:
		t.Logf("without the limiter the sender held up to %.1f MiB in flight, against %.1f MiB with it", float64(r2.peakHeld)/(1<<20), float64(r.peakHeld)/(1<<20))
	default:
		t.Logf("without the limiter the server kept up on this run")
	}
}
