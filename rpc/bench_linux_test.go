package rpc_test

// Benchmarks of the shared-memory transport against go-capnp's stream
// transport, with the server in another process, in one run:
//
//	go test -run '^$' -bench . -benchtime 2s -timeout 30m ./rpc/
//
// BenchmarkRPC/<transport>/<workload> measures one transport and workload:
//
//	transports: shm  (rpc.NewTransport over a socketpair, server in a peer process)
//	            unix (go-capnp's stream transport over a unix socket, server in a peer process)
//	            tcp  (the same over TCP loopback)
//	            pipe (the same over net.Pipe, both ends in this process: go-capnp's RPC layer alone)
//	workloads:  ping, echo/<size>, inplace64M; and BenchmarkRPC/baseline.
//
// BenchmarkSummary interleaves shm, unix and pipe in one process and reports
// the ratios the transport is held to. Allocations are this process's only:
// for shm, unix and tcp that is the client; for pipe it is client and server.
// Nothing here asserts a timing. CAPNSHM_BENCH_STRATEGY=adaptive|busy|block
// runs the shm side (both processes) with that ring wait strategy.

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	capnp "capnproto.org/go/capnp/v3"
	gorpc "capnproto.org/go/capnp/v3/rpc"
	"capnproto.org/go/capnp/v3/rpc/transport"
	"golang.org/x/sys/unix"

	"github.com/capnshm/capnshm/internal/echoproto"
	"github.com/capnshm/capnshm/internal/peertest"
	"github.com/capnshm/capnshm/ringbuf"
	"github.com/capnshm/capnshm/rpc"
)

func init() {
	peertest.Register("stream-server", streamServerPeer)
	peertest.Register("bench-shm-server", benchShmServerPeer)
}

// envStrategy, if set (adaptive, busy, block), makes the shm benchmarks use
// that ring wait strategy on both sides: a diagnostic, with the
// bench-shm-server peer in place of echo-server.
const envStrategy = "CAPNSHM_BENCH_STRATEGY"

func benchStrategy() (ringbuf.WaitStrategy, bool) {
	switch os.Getenv(envStrategy) {
	case "adaptive":
		return ringbuf.Adaptive, true
	case "busy":
		return ringbuf.BusySpin, true
	case "block":
		return ringbuf.Block, true
	}
	return 0, false
}

// benchSpin is the spin time of CAPNSHM_BENCH_SPIN (a duration), or 0 for
// the default.
func benchSpin() time.Duration {
	d, _ := time.ParseDuration(os.Getenv("CAPNSHM_BENCH_SPIN"))
	return d
}

// benchShmServerPeer is echo-server with the wait strategy of envStrategy
// (inherited from the parent).
func benchShmServerPeer(args []string) int {
	conn, err := unixConn(int(peertest.Handles()[0]))
	if err != nil {
		return peertest.Fail("%v", err)
	}
	opts := []rpc.Option{rpc.WithLogger(benchLogger())}
	if d := benchSpin(); d != 0 {
		opts = append(opts, rpc.WithSpinTime(max(d, 0)))
	}
	if st, ok := benchStrategy(); ok {
		opts = append(opts, rpc.WithWaitStrategy(st))
	}
	tr, err := rpc.NewTransport(context.Background(), conn, rpc.Listener, opts...)
	if err != nil {
		return peertest.Fail("handshake failed: %v", err)
	}
	boot := echoproto.Echo_ServerToClient(&echoproto.Server{})
	c := gorpc.NewConn(tr, &gorpc.Options{BootstrapClient: capnp.Client(boot), Logger: benchLogger()})
	peertest.Say("serving")
	in := peertest.Stdin()
	for in.Scan() {
	}
	c.Close()
	return 0
}

const (
	// benchTimeout bounds every call on a connection (the connection's
	// life): a peer that hangs fails the benchmark instead of hanging the
	// run.
	benchTimeout = 15 * time.Minute
	inplaceSize  = 64 << 20
	// streamLimit is the stream transports' message and traversal limit:
	// go-capnp's default (64 MiB) refuses the 64 MiB in-place message.
	streamLimit = 1 << 30
)

var echoSizes = []struct {
	name string
	n    int
}{
	{"64B", 64},
	{"4KiB", 4 << 10},
	{"64KiB", 64 << 10},
	{"1MiB", 1 << 20},
	{"16MiB", 16 << 20},
}

// streamTransport is go-capnp's stream transport (rpc.NewStreamTransport:
// transport.New over capnp's Encoder and Decoder, unpacked) with the message
// size and traversal limits raised to streamLimit, so that it carries the
// 64 MiB in-place message. Nothing else differs.
func streamTransport(rwc io.ReadWriteCloser) transport.Transport {
	d := capnp.NewDecoder(rwc)
	d.MaxMessageSize = streamLimit
	return transport.New(&bigCodec{Decoder: d, Encoder: capnp.NewEncoder(rwc), Closer: rwc})
}

type bigCodec struct {
	*capnp.Decoder
	*capnp.Encoder
	io.Closer
}

func (c *bigCodec) Decode() (*capnp.Message, error) {
	m, err := c.Decoder.Decode()
	if err == nil {
		m.ResetReadLimit(streamLimit)
	}
	return m, err
}

// streamServerPeer serves echoproto.Server over go-capnp's stream
// transport: on the socket it inherited, or with the argument "tcp" on a
// TCP listener on 127.0.0.1 whose port it prints ("port N") before accepting
// one connection. It says "serving" once connected and exits when its stdin
// ends.
func streamServerPeer(args []string) int {
	var conn net.Conn
	if len(args) > 0 && args[0] == "tcp" {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return peertest.Fail("listen: %v", err)
		}
		peertest.Say("port %d", l.Addr().(*net.TCPAddr).Port)
		// Nobody dialled within a minute: give up rather than linger.
		_ = l.(*net.TCPListener).SetDeadline(time.Now().Add(time.Minute))
		conn, err = l.Accept()
		l.Close()
		if err != nil {
			return peertest.Fail("accept: %v", err)
		}
	} else {
		c, err := unixConn(int(peertest.Handles()[0]))
		if err != nil {
			return peertest.Fail("%v", err)
		}
		conn = c
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	boot := echoproto.Echo_ServerToClient(&echoproto.Server{})
	c := gorpc.NewConn(streamTransport(conn), &gorpc.Options{BootstrapClient: capnp.Client(boot), Logger: logger})
	peertest.Say("serving")
	in := peertest.Stdin()
	for in.Scan() {
	}
	c.Close()
	return 0
}

// benchConn is a client connection to an Echo server.
type benchConn struct {
	name string
	// ctx bounds the calls; it ends after the connection closed, as
	// go-capnp sends a call's Finish under the call's context after the
	// caller has its results.
	ctx  context.Context
	boot echoproto.Echo
	tr   *rpc.Transport // shm only
}

func benchLogger() *slog.Logger {
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

// dialBench connects to a new server for the named transport. Everything
// (connections, peer processes) goes away when tb ends.
func dialBench(tb testing.TB, name string) *benchConn {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	bc := &benchConn{name: name}
	var t transport.Transport
	switch name {
	case "shm":
		mine, theirs := socketPair(tb)
		opts := []rpc.Option{rpc.WithLogger(benchLogger())}
		peer := "echo-server"
		if st, ok := benchStrategy(); ok {
			opts, peer = append(opts, rpc.WithWaitStrategy(st)), "bench-shm-server"
		}
		if d := benchSpin(); d != 0 {
			opts, peer = append(opts, rpc.WithSpinTime(max(d, 0))), "bench-shm-server"
		}
		p := startBenchPeer(tb, peer, []uintptr{uintptr(theirs)})
		unix.Close(theirs)
		tr, err := rpc.NewTransport(ctx, mine, rpc.Dialer, opts...)
		if err != nil {
			tb.Fatalf("handshake: %v; peer: %s", err, p.Stderr())
		}
		p.Expect("serving")
		t, bc.tr = tr, tr
	case "unix":
		mine, theirs := socketPair(tb)
		p := startBenchPeer(tb, "stream-server", []uintptr{uintptr(theirs)})
		unix.Close(theirs)
		p.Expect("serving")
		t = streamTransport(mine)
	case "tcp":
		p := startBenchPeer(tb, "stream-server", nil, "tcp")
		line, err := p.Line(ctx)
		if err != nil {
			tb.Fatal(err)
		}
		port, ok := strings.CutPrefix(line, "port ")
		if !ok {
			tb.Fatalf("peer said %q, want its port", line)
		}
		var d net.Dialer
		conn, err := d.DialContext(ctx, "tcp", net.JoinHostPort("127.0.0.1", port))
		if err != nil {
			tb.Fatal(err)
		}
		p.Expect("serving")
		t = streamTransport(conn)
	case "pipe":
		mine, theirs := net.Pipe()
		boot := echoproto.Echo_ServerToClient(&echoproto.Server{})
		// The server's log would only report the client's close at cleanup.
		srv := gorpc.NewConn(streamTransport(theirs), &gorpc.Options{BootstrapClient: capnp.Client(boot), Logger: slog.New(slog.DiscardHandler)})
		tb.Cleanup(func() { srv.Close() })
		t = streamTransport(mine)
	default:
		tb.Fatalf("unknown transport %q", name)
	}
	c := gorpc.NewConn(t, &gorpc.Options{Logger: benchLogger()})
	// The bootstrap capability outlives ctx; it is released after the
	// connection closed (a release before Close races with Close).
	bc.boot = echoproto.Bootstrap(context.Background(), c)
	callCtx, callCancel := context.WithTimeout(context.Background(), benchTimeout)
	bc.ctx = callCtx
	tb.Cleanup(func() {
		defer callCancel()
		c.Close()
		select {
		case <-c.Done():
		case <-time.After(10 * time.Second):
			tb.Errorf("%s: the connection did not shut down", name)
		}
		bc.boot.Release()
	})
	if err := bc.ping(ctx); err != nil { // connected and serving
		tb.Fatalf("%s: first ping: %v", name, err)
	}
	return bc
}

func startBenchPeer(tb testing.TB, name string, handles []uintptr, args ...string) *peertest.Peer {
	tb.Helper()
	p := peertest.Start(tb, name, handles, args...)
	tb.Cleanup(func() {
		if tb.Failed() {
			tb.Logf("%s peer's stderr:\n%s", name, p.Stderr())
		}
	})
	return p
}

func (bc *benchConn) ping(ctx context.Context) error {
	f, release := bc.boot.Ping(ctx, nil)
	defer release()
	_, err := f.Struct()
	return err
}

func (bc *benchConn) echo(ctx context.Context, src []byte, i int) error {
	return echoproto.EchoInPlace(ctx, bc.boot, src, i)
}

// sum writes n bytes of writePattern straight into the request and has the
// server read every byte.
func (bc *benchConn) sum(ctx context.Context, n int, want uint64) error {
	f, release := bc.boot.Sum(ctx, func(p echoproto.Echo_sum_Params) error {
		ptr, b, err := echoproto.NewData(p.Segment(), n)
		if err != nil {
			return err
		}
		writePattern(b)
		return capnp.Struct(p).SetPtr(0, ptr)
	})
	defer release()
	res, err := f.Struct()
	if err != nil {
		return err
	}
	if res.Length() != uint64(n) || res.Sum() != want {
		return fmt.Errorf("sum: server saw %d bytes summing to %d, want %d and %d", res.Length(), res.Sum(), n, want)
	}
	return nil
}

// writePattern writes every byte of b: the client's work in inplace64M and
// in the baseline.
func writePattern(b []byte) {
	for i := range b {
		b[i] = byte(i) ^ 0x5a
	}
}

var (
	baselineOnce sync.Once
	baselineBuf  []byte
	inplaceSum   uint64
)

// baselineBuffer returns the 64 MiB of ordinary memory of the baseline (made
// once) and the sum of writePattern over it.
func baselineBuffer() ([]byte, uint64) {
	baselineOnce.Do(func() {
		baselineBuf = make([]byte, inplaceSize)
		writePattern(baselineBuf)
		inplaceSum = echoproto.Sum(baselineBuf)
	})
	return baselineBuf, inplaceSum
}

// baselineOp writes and reads every byte of buf: what inplace64M does
// without the RPC.
func baselineOp(buf []byte, want uint64) error {
	writePattern(buf)
	if s := echoproto.Sum(buf); s != want {
		return fmt.Errorf("baseline: sum %d, want %d", s, want)
	}
	return nil
}

// copiedPerOp reports the shm transport's copied bytes per operation since
// before (client side: inline messages it sent and received, anything
// copied out or sent on the socket).
func copiedPerOp(b *testing.B, bc *benchConn, before rpc.Stats) {
	if bc.tr == nil {
		return
	}
	after := bc.tr.Stats()
	b.ReportMetric(float64(after.BytesCopied-before.BytesCopied)/float64(b.N), "copied-B/op")
	b.ReportMetric(float64(after.SentByReference-before.SentByReference)/float64(b.N), "byref-msgs/op")
}

func BenchmarkRPC(b *testing.B) {
	for _, name := range []string{"shm", "unix", "tcp", "pipe"} {
		b.Run(name, func(b *testing.B) { benchTransport(b, name) })
	}
	b.Run("baseline", func(b *testing.B) {
		buf, want := baselineBuffer()
		b.SetBytes(inplaceSize)
		b.ReportAllocs()
		for b.Loop() {
			if err := baselineOp(buf, want); err != nil {
				b.Fatal(err)
			}
		}
	})
}

func benchTransport(b *testing.B, name string) {
	bc := dialBench(b, name)
	b.Run("ping", func(b *testing.B) {
		ctx := bc.ctx
		b.ReportAllocs()
		var before rpc.Stats
		if bc.tr != nil {
			before = bc.tr.Stats()
		}
		for b.Loop() {
			if err := bc.ping(ctx); err != nil {
				b.Fatal(err)
			}
		}
		copiedPerOp(b, bc, before)
	})
	for _, sz := range echoSizes {
		b.Run("echo/"+sz.name, func(b *testing.B) {
			ctx := bc.ctx
			src := make([]byte, sz.n)
			echoproto.FillPattern(src, 3, 0)
			b.SetBytes(int64(sz.n))
			b.ReportAllocs()
			var before rpc.Stats
			if bc.tr != nil {
				before = bc.tr.Stats()
			}
			i := 0
			for b.Loop() {
				if err := bc.echo(ctx, src, i); err != nil {
					b.Fatal(err)
				}
				i++
			}
			copiedPerOp(b, bc, before)
		})
	}
	b.Run("inplace64M", func(b *testing.B) {
		ctx := bc.ctx
		buf, want := baselineBuffer()
		b.SetBytes(inplaceSize)
		b.ReportAllocs()
		var before rpc.Stats
		if bc.tr != nil {
			before = bc.tr.Stats()
		}
		for b.Loop() {
			if err := bc.sum(ctx, inplaceSize, want); err != nil {
				b.Fatal(err)
			}
		}
		copiedPerOp(b, bc, before)
		perOp := float64(b.Elapsed().Nanoseconds()) / float64(b.N)
		// The reference, measured now, in this process: the baseline plus
		// one ping on this connection.
		const baseReps, pingReps = 3, 200
		start := time.Now()
		for range baseReps {
			if err := baselineOp(buf, want); err != nil {
				b.Fatal(err)
			}
		}
		base := float64(time.Since(start).Nanoseconds()) / baseReps
		start = time.Now()
		for range pingReps {
			if err := bc.ping(ctx); err != nil {
				b.Fatal(err)
			}
		}
		ping := float64(time.Since(start).Nanoseconds()) / pingReps
		b.ReportMetric(perOp/(base+ping), "x-baseline")
		b.ReportMetric(base, "baseline-ns")
	})
}

// Summary parameters: one round (one b.Loop iteration) runs, for each
// transport in turn, summaryPings pings, then for each in turn summaryEchoes
// 16 MiB echoes. The order rotates every round. Use -benchtime Nx for N
// rounds.
const (
	summaryPings  = 200
	summaryEchoes = 2
)

type summaryTally struct {
	pingNs, echoNs time.Duration
	pings, echoes  int
	pingMallocs    uint64
}

// BenchmarkSummary runs shm, unix and pipe interleaved in chunks, in one
// process (so they share the noise of the machine), and reports the ratios
// the transport is held to:
//
//	shm-ping/unix-ping     ≤ 1/3
//	shm-ping/pipe-ping     ≤ 1.3
//	unix-echo16M/shm-echo16M ≥ 5
//	shm-allocs-unix-allocs (per ping) ≤ 5
//
// It reports, does not assert. ns/op is the time of one round.
func BenchmarkSummary(b *testing.B) {
	names := []string{"shm", "unix", "pipe"}
	conns := make([]*benchConn, len(names))
	for i, n := range names {
		conns[i] = dialBench(b, n)
	}
	src := make([]byte, 16<<20)
	echoproto.FillPattern(src, 5, 0)
	tally := make([]summaryTally, len(names))
	var ms runtime.MemStats
	round := 0
	for b.Loop() {
		for k := range conns {
			i := (k + round) % len(conns)
			runtime.ReadMemStats(&ms)
			m0 := ms.Mallocs
			start := time.Now()
			for range summaryPings {
				if err := conns[i].ping(conns[i].ctx); err != nil {
					b.Fatalf("%s: %v", names[i], err)
				}
			}
			tally[i].pingNs += time.Since(start)
			tally[i].pings += summaryPings
			runtime.ReadMemStats(&ms)
			tally[i].pingMallocs += ms.Mallocs - m0
		}
		for k := range conns {
			i := (k + round) % len(conns)
			start := time.Now()
			for j := range summaryEchoes {
				if err := conns[i].echo(conns[i].ctx, src, round*summaryEchoes+j); err != nil {
					b.Fatalf("%s: %v", names[i], err)
				}
			}
			tally[i].echoNs += time.Since(start)
			tally[i].echoes += summaryEchoes
		}
		round++
	}
	ping := func(i int) float64 { return float64(tally[i].pingNs.Nanoseconds()) / float64(tally[i].pings) }
	echo := func(i int) float64 { return float64(tally[i].echoNs.Nanoseconds()) / float64(tally[i].echoes) }
	allocs := func(i int) float64 { return float64(tally[i].pingMallocs) / float64(tally[i].pings) }
	const shm, unixT, pipe = 0, 1, 2
	for i, n := range names {
		b.ReportMetric(ping(i), n+"-ping-ns")
		b.ReportMetric(echo(i), n+"-echo16M-ns")
		b.ReportMetric(allocs(i), n+"-ping-allocs")
	}
	b.ReportMetric(ping(shm)/ping(unixT), "shm/unix-ping")
	b.ReportMetric(ping(shm)/ping(pipe), "shm/pipe-ping")
	b.ReportMetric(echo(unixT)/echo(shm), "unix/shm-echo16M")
	b.ReportMetric(allocs(shm)-allocs(unixT), "shm-unix-ping-allocs")
	b.Logf("rounds %d: ping ns shm %.0f unix %.0f pipe %.0f; echo16M ns shm %.0f unix %.0f pipe %.0f; allocs/ping shm %.1f unix %.1f pipe %.1f (pipe counts both ends)",
		round, ping(shm), ping(unixT), ping(pipe), echo(shm), echo(unixT), echo(pipe), allocs(shm), allocs(unixT), allocs(pipe))
}
