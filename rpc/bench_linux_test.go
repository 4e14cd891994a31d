package rpc_test

// Benchmarks of capnshm's RPC engine against go-capnp's rpc.Conn, each over
// capnshm's shared memory transport and over sockets, with the server in
// another process, in one run:
//
//	go test -run '^$' -bench . -benchtime 2s -timeout 30m ./rpc/
//
// BenchmarkRPC/<rpc>/<transport>/<workload> measures one combination:
//
//	rpc:        engine  (capnshm's rpc.Conn on both ends)
//	            gocapnp (go-capnp v3.0.1-alpha.2's rpc.Conn on both ends)
//	transports: shm  (rpc.NewTransport over a socketpair, server in a peer process)
//	            unix (a stream transport over a unix socket, server in a peer process:
//	                  rpc.NewStreamTransport for the engine, go-capnp's own for gocapnp)
//	            tcp  (the same over TCP loopback)
//	            pipe (the same over net.Pipe, both ends in this process: the RPC layer alone)
//	workloads:  ping, echo/<size>, inplace64M; and BenchmarkRPC/baseline.
//
// BenchmarkSummary interleaves the combinations that the targets compare in
// one process and reports their ratios. Allocations are this process's
// only: for shm, unix and tcp that is the client; for pipe it is client and
// server. Nothing here asserts a timing. CAPNSHM_BENCH_STRATEGY=adaptive|busy|block
// runs the shm side (both processes) with that ring wait strategy, and
// CAPNSHM_BENCH_SPIN=<duration> with that spin time.

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	capnp "capnproto.org/go/capnp/v3"
	gorpc "capnproto.org/go/capnp/v3/rpc"
	"capnproto.org/go/capnp/v3/rpc/transport"
	"golang.org/x/sys/unix"

	"github.com/capnshm/capnshm/internal/echoproto"
	"github.com/capnshm/capnshm/internal/gostream"
	"github.com/capnshm/capnshm/internal/peertest"
	"github.com/capnshm/capnshm/ringbuf"
	"github.com/capnshm/capnshm/rpc"
)

func init() {
	peertest.Register("bench-server", benchServerPeer)
}

// The RPC implementations the benchmarks compare.
const (
	implEngine  = "engine"
	implGoCapnp = "gocapnp"
)

// envStrategy, if set (adaptive, busy, block), makes the shm benchmarks use
// that ring wait strategy on both sides (the peer inherits it).
const envStrategy = "CAPNSHM_BENCH_STRATEGY"

// benchShmOptions are the shm transport's options of both ends: the
// logger, and the wait strategy, spin time (CAPNSHM_BENCH_SPIN) and yield
// time (CAPNSHM_BENCH_YIELD; negative: none) the environment asks for.
func benchShmOptions() []rpc.Option {
	opts := []rpc.Option{rpc.WithLogger(benchLogger())}
	switch os.Getenv(envStrategy) {
	case "adaptive":
		opts = append(opts, rpc.WithWaitStrategy(ringbuf.Adaptive))
	case "busy":
		opts = append(opts, rpc.WithWaitStrategy(ringbuf.BusySpin))
	case "block":
		opts = append(opts, rpc.WithWaitStrategy(ringbuf.Block))
	}
	if d, _ := time.ParseDuration(os.Getenv("CAPNSHM_BENCH_SPIN")); d != 0 {
		opts = append(opts, rpc.WithSpinTime(max(d, 0)))
	}
	if d, _ := time.ParseDuration(os.Getenv("CAPNSHM_BENCH_YIELD")); d != 0 {
		opts = append(opts, rpc.WithYieldTime(max(d, 0)))
	}
	return opts
}

// benchServerPeer serves echoproto.Server with the RPC implementation of
// args[0] over the transport of args[1]: shm or unix on the socket it
// inherited, or tcp on a listener on 127.0.0.1 whose port it prints ("port
// N") before accepting one connection, on args[2] Ps (GOMAXPROCS). It says
// "serving" once connected and exits when its stdin ends.
func benchServerPeer(args []string) int {
	if len(args) != 3 {
		return peertest.Fail("want arguments: rpc transport GOMAXPROCS, got %q", args)
	}
	impl, name := args[0], args[1]
	procs, err := strconv.Atoi(args[2])
	if err != nil || procs < 1 {
		return peertest.Fail("GOMAXPROCS %q: want a count", args[2])
	}
	runtime.GOMAXPROCS(procs)
	var t transport.Transport
	switch name {
	case "shm", "unix":
		conn, err := unixConn(int(peertest.Handles()[0]))
		if err != nil {
			return peertest.Fail("%v", err)
		}
		if name == "unix" {
			t = benchStream(impl, conn)
			break
		}
		tr, err := rpc.NewTransport(context.Background(), conn, rpc.Listener, benchShmOptions()...)
		if err != nil {
			return peertest.Fail("handshake failed: %v", err)
		}
		t = tr
	case "tcp":
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return peertest.Fail("listen: %v", err)
		}
		peertest.Say("port %d", l.Addr().(*net.TCPAddr).Port)
		// Nobody dialled within a minute: give up rather than linger.
		_ = l.(*net.TCPListener).SetDeadline(time.Now().Add(time.Minute))
		conn, err := l.Accept()
		l.Close()
		if err != nil {
			return peertest.Fail("accept: %v", err)
		}
		t = benchStream(impl, conn)
	default:
		return peertest.Fail("unknown transport %q", name)
	}
	closeConn, err := benchRPCConn(impl, t, capnp.Client(echoproto.Echo_ServerToClient(&echoproto.Server{})), nil)
	if err != nil {
		return peertest.Fail("%v", err)
	}
	peertest.Say("serving")
	in := peertest.Stdin()
	for in.Scan() {
	}
	closeConn()
	return 0
}

// benchStream is the stream transport of impl on rwc, carrying messages up
// to streamLimit.
func benchStream(impl string, rwc io.ReadWriteCloser) transport.Transport {
	if impl == implGoCapnp {
		return streamTransport(rwc)
	}
	t, err := rpc.NewStreamTransport(rwc, rpc.WithMaxMessage(streamLimit))
	if err != nil {
		panic(err) // the options are constants
	}
	return t
}

// benchRPCConn runs impl's RPC connection over t with bootstrap as what the
// peer's Bootstrap gets. With boot non-nil it also bootstraps the peer's
// capability into *boot. The returned function closes the connection and
// waits until it has shut down.
func benchRPCConn(impl string, t transport.Transport, bootstrap capnp.Client, boot *echoproto.Echo) (func(), error) {
	if impl == implGoCapnp {
		c := gorpc.NewConn(t, &gorpc.Options{BootstrapClient: bootstrap, Logger: benchLogger()})
		if boot != nil {
			// The bootstrap capability outlives the connection's first
			// context; it is released after the connection closed (a
			// release before Close races with Close in go-capnp).
			*boot = echoproto.Bootstrap(context.Background(), c)
		}
		return func() {
			c.Close()
			<-c.Done()
			if boot != nil {
				boot.Release()
			}
		}, nil
	}
	c, err := rpc.NewConn(t, bootstrap, rpc.WithLogger(benchLogger()))
	if err != nil {
		return nil, err
	}
	if boot != nil {
		*boot = echoproto.Echo(c.Bootstrap(context.Background()))
	}
	return func() {
		if boot != nil {
			boot.Release()
		}
		c.Close()
		<-c.Done()
	}, nil
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

// streamTransport is go-capnp's stream transport with its limits raised
// to streamLimit (gostream).
func streamTransport(rwc io.ReadWriteCloser) transport.Transport {
	return gostream.New(rwc, streamLimit)
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

// dialBench connects to a new server of impl over the named transport.
// Everything (connections, peer processes) goes away when tb ends.
func dialBench(tb testing.TB, impl, name string) *benchConn {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	bc := &benchConn{name: impl + "/" + name}
	var t transport.Transport
	switch name {
	case "shm":
		mine, theirs := socketPair(tb)
		p := startBenchPeer(tb, impl, name, []uintptr{uintptr(theirs)})
		unix.Close(theirs)
		tr, err := rpc.NewTransport(ctx, mine, rpc.Dialer, benchShmOptions()...)
		if err != nil {
			tb.Fatalf("handshake: %v; peer: %s", err, p.Stderr())
		}
		p.Expect("serving")
		t, bc.tr = tr, tr
	case "unix":
		mine, theirs := socketPair(tb)
		p := startBenchPeer(tb, impl, name, []uintptr{uintptr(theirs)})
		unix.Close(theirs)
		p.Expect("serving")
		t = benchStream(impl, mine)
	case "tcp":
		p := startBenchPeer(tb, impl, name, nil)
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
		t = benchStream(impl, conn)
	case "pipe":
		mine, theirs := net.Pipe()
		closeServer, err := benchRPCConn(impl, benchStream(impl, theirs), capnp.Client(echoproto.Echo_ServerToClient(&echoproto.Server{})), nil)
		if err != nil {
			tb.Fatal(err)
		}
		tb.Cleanup(closeServer)
		t = benchStream(impl, mine)
	case "mem":
		var mine, theirs transport.Transport
		if impl == implEngine {
			mine, theirs = rpc.Pipe()
		} else {
			a, b := transport.NewPipe(pipeBuf)
			mine, theirs = transport.New(a), transport.New(b)
		}
		closeServer, err := benchRPCConn(impl, theirs, capnp.Client(echoproto.Echo_ServerToClient(&echoproto.Server{})), nil)
		if err != nil {
			tb.Fatal(err)
		}
		tb.Cleanup(closeServer)
		t = mine
	default:
		tb.Fatalf("unknown transport %q", name)
	}
	closeClient, err := benchRPCConn(impl, t, capnp.Client{}, &bc.boot)
	if err != nil {
		tb.Fatal(err)
	}
	callCtx, callCancel := context.WithTimeout(context.Background(), benchTimeout)
	bc.ctx = callCtx
	tb.Cleanup(func() {
		defer callCancel()
		done := make(chan struct{})
		go func() { closeClient(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			tb.Errorf("%s: the connection did not shut down", bc.name)
		}
	})
	if err := bc.ping(ctx); err != nil { // connected and serving
		tb.Fatalf("%s: first ping: %v", bc.name, err)
	}
	return bc
}

func startBenchPeer(tb testing.TB, impl, name string, handles []uintptr) *peertest.Peer {
	tb.Helper()
	// The server runs on as many Ps as this process (go test -cpu 1,2
	// compares one P with two on both sides).
	p := peertest.Start(tb, "bench-server", handles, impl, name, strconv.Itoa(runtime.GOMAXPROCS(0)))
	tb.Cleanup(func() {
		if tb.Failed() {
			tb.Logf("bench-server %s %s peer's stderr:\n%s", impl, name, p.Stderr())
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

const pipeBuf = 256

func BenchmarkRPC(b *testing.B) {
	for _, impl := range []string{implEngine, implGoCapnp} {
		b.Run(impl, func(b *testing.B) {
			for _, name := range []string{"shm", "unix", "tcp", "pipe", "mem"} {
				b.Run(name, func(b *testing.B) { benchTransport(b, impl, name) })
			}
		})
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

func benchTransport(b *testing.B, impl, name string) {
	bc := dialBench(b, impl, name)
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
// combination in turn, summaryPings pings, then for each in turn
// summaryEchoes 16 MiB echoes. The order rotates every round. Use
// -benchtime Nx for N rounds.
const (
	summaryPings  = 200
	summaryEchoes = 2
)

type summaryTally struct {
	pingNs, echoNs time.Duration
	pings, echoes  int
	pingMallocs    uint64
}

// BenchmarkSummary runs the engine and go-capnp over shm, unix and pipe,
// interleaved in chunks in one process (so they share the noise of the
// machine), and reports the ratios of issue 11's targets:
//
//	engine-shm-ping / gocapnp-unix-ping      ≤ 1/4
//	engine-pipe-ping / gocapnp-pipe-ping     ≤ 1/4 (both ends in this process)
//	engine-shm allocs per ping               ≤ 10 (this process: the caller)
//	gocapnp-unix-echo16M / engine-shm-echo16M ≥ 5
//
// and the engine's own shm/unix ratio. It reports, does not assert. ns/op
// is the time of one round.
func BenchmarkSummary(b *testing.B) {
	type combo struct{ impl, name string }
	combos := []combo{
		{implEngine, "shm"}, {implEngine, "unix"}, {implEngine, "pipe"},
		{implGoCapnp, "shm"}, {implGoCapnp, "unix"}, {implGoCapnp, "pipe"},
	}
	const (
		eShm, eUnix, ePipe = 0, 1, 2
		gShm, gUnix, gPipe = 3, 4, 5
	)
	conns := make([]*benchConn, len(combos))
	for i, c := range combos {
		conns[i] = dialBench(b, c.impl, c.name)
	}
	src := make([]byte, 16<<20)
	echoproto.FillPattern(src, 5, 0)
	tally := make([]summaryTally, len(combos))
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
					b.Fatalf("%s: %v", conns[i].name, err)
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
					b.Fatalf("%s: %v", conns[i].name, err)
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
	var line strings.Builder
	for i, c := range combos {
		n := c.impl + "-" + c.name
		b.ReportMetric(ping(i), n+"-ping-ns")
		b.ReportMetric(echo(i), n+"-echo16M-ns")
		b.ReportMetric(allocs(i), n+"-ping-allocs")
		fmt.Fprintf(&line, "; %s ping %.0f ns, echo16M %.0f ns, %.1f allocs/ping", n, ping(i), echo(i), allocs(i))
	}
	b.ReportMetric(ping(eShm)/ping(gUnix), "engine-shm/gocapnp-unix-ping")
	b.ReportMetric(ping(ePipe)/ping(gPipe), "engine-pipe/gocapnp-pipe-ping")
	b.ReportMetric(ping(eShm)/ping(eUnix), "engine-shm/engine-unix-ping")
	b.ReportMetric(ping(eShm)/ping(gShm), "engine-shm/gocapnp-shm-ping")
	b.ReportMetric(echo(gUnix)/echo(eShm), "gocapnp-unix/engine-shm-echo16M")
	b.Logf("rounds %d%s (pipe counts both ends)", round, line.String())
}

// BenchmarkDial: what a connection costs to set up, per address kind:
// rpc.Dial (for shm: the handshake, creating and prefaulting this side's
// pool, mapping the server's), a first ping, Close. The server is in this
// process: its half of the setup is in the figure too.
func BenchmarkDial(b *testing.B) {
	for _, scheme := range []rpc.Scheme{rpc.SchemeShm, rpc.SchemeUnix} {
		b.Run(string(scheme), func(b *testing.B) {
			addr := fmt.Sprintf("%s-abstract:capnshm-bench-dial-%d", scheme, os.Getpid())
			srv, err := rpc.Listen(addr, capnp.Client(echoproto.Echo_ServerToClient(&echoproto.Server{})))
			if err != nil {
				b.Fatal(err)
			}
			defer srv.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
			defer cancel()
			go srv.Serve(ctx)
			for b.Loop() {
				c, err := rpc.Dial(ctx, addr)
				if err != nil {
					b.Fatal(err)
				}
				if err := apiPing(ctx, c); err != nil {
					b.Fatal(err)
				}
				c.Close()
			}
		})
	}
}
