//go:build linux

package main

import (
	"context"
	"fmt"
	"io"
	"runtime"
	"sync"
	"time"

	capnp "capnproto.org/go/capnp/v3"
	"github.com/HdrHistogram/hdrhistogram-go"

	"github.com/capnshm/capnshm/internal/echoproto"
	"github.com/capnshm/capnshm/rpc"
)

// Report is what -json prints and results.json holds.
type Report struct {
	Floors  Floors    `json:"floors"`
	Results []*Result `json:"results"`
	// The run's settings and host, for the reader of results.json.
	Host    string  `json:"host,omitempty"`
	Quick   bool    `json:"quick,omitempty"`
	Rate    float64 `json:"rate,omitempty"`
	Elapsed string  `json:"elapsed,omitempty"`
}

// Floors are this machine's floors, measured in the same run: the p50
// round trip of a spin on one shared cache line and of two blocking
// eventfds between two processes, and memcpy bandwidth in one process.
type Floors struct {
	SpinRTT    int64   `json:"spin_rtt_ns,omitempty"`
	EventfdRTT int64   `json:"eventfd_rtt_ns,omitempty"`
	MemcpyGBps float64 `json:"memcpy_gbps,omitempty"`
}

// Result is one workload on one transport. Latencies are per call (per
// round trip); mbps is payload bytes (one direction) per second / 1e6.
type Result struct {
	Workload  string   `json:"workload"`
	Transport string   `json:"transport,omitempty"`
	Size      int64    `json:"size,omitempty"`
	Clients   int      `json:"clients,omitempty"`
	Ops       int64    `json:"ops,omitempty"`
	P50       int64    `json:"p50_ns,omitempty"`
	P99       int64    `json:"p99_ns,omitempty"`
	P999      int64    `json:"p999_ns,omitempty"`
	Max       int64    `json:"max_ns,omitempty"`
	Mean      int64    `json:"mean_ns,omitempty"`
	MBps      float64  `json:"mbps,omitempty"`
	OpsPerSec float64  `json:"ops_per_sec,omitempty"`
	CPUPct    *float64 `json:"cpu_pct,omitempty"`
	// OpenLoop: latencies measured from each call's intended send time at
	// -rate calls per second (corrected for coordinated omission).
	OpenLoop bool `json:"open_loop,omitempty"`

	hist *hdrhistogram.Histogram
}

func newHist() *hdrhistogram.Histogram { return hdrhistogram.New(1, int64(10*time.Minute), 3) }

func record(h *hdrhistogram.Histogram, d time.Duration) {
	v := max(d.Nanoseconds(), 1)
	_ = h.RecordValue(min(v, h.HighestTrackableValue()))
}

// fill sets the latency fields of r from its histogram.
func (r *Result) fill(h *hdrhistogram.Histogram) {
	r.hist = h
	r.Ops = h.TotalCount()
	r.P50 = h.ValueAtQuantile(50)
	r.P99 = h.ValueAtQuantile(99)
	r.P999 = h.ValueAtQuantile(99.9)
	r.Max = h.Max()
	r.Mean = int64(h.Mean())
}

func fromSamples(s []time.Duration) *hdrhistogram.Histogram {
	h := newHist()
	for _, d := range s {
		record(h, d)
	}
	return h
}

// progress writes one line per step to stderr.
type progress struct {
	w     io.Writer
	start time.Time
}

func (p *progress) printf(format string, args ...any) {
	fmt.Fprintf(p.w, "[%6.1fs] %s\n", time.Since(p.start).Seconds(), fmt.Sprintf(format, args...))
}

func (p *progress) result(r *Result) {
	s := fmt.Sprintf("%-7s %-9s", r.Workload, r.Transport)
	if r.Size > 0 {
		s += " " + sizeName(r.Size)
	}
	if r.Clients > 1 {
		s += fmt.Sprintf(" x%d clients", r.Clients)
	}
	if r.Ops > 0 && r.P50 > 0 {
		s += fmt.Sprintf(": p50 %v p99 %v (%d ops)", time.Duration(r.P50), time.Duration(r.P99), r.Ops)
	}
	if r.MBps > 0 {
		s += fmt.Sprintf(" %.0f MB/s", r.MBps)
	}
	if r.CPUPct != nil {
		s += fmt.Sprintf(": %.3f%% of a core", *r.CPUPct)
	}
	p.printf("%s", s)
}

func run(ctx context.Context, cfg *config, stderr io.Writer) (*Report, error) {
	rep := &Report{Quick: cfg.quick, Rate: cfg.rate, Host: fmt.Sprintf("%s/%s, %d CPUs, %s", runtime.GOOS, runtime.GOARCH, runtime.NumCPU(), runtime.Version())}
	pr := &progress{w: stderr, start: time.Now()}
	add := func(r *Result) {
		rep.Results = append(rep.Results, r)
		pr.result(r)
	}
	pr.printf("bench: workloads %v, transports %v, %v per workload", cfg.workloads, cfg.transports, cfg.duration)

	if cfg.has("floors") {
		pr.printf("floor: spin on a shared cache line, %d round trips", cfg.rounds)
		s, err := spinFloor(cfg.rounds)
		if err != nil {
			return nil, fmt.Errorf("spin floor: %w", err)
		}
		rep.Floors.SpinRTT = fromSamples(s).ValueAtQuantile(50)
		pr.printf("floor: blocking eventfd pair, %d round trips", cfg.rounds)
		if s, err = eventfdFloor(cfg.rounds); err != nil {
			return nil, fmt.Errorf("eventfd floor: %w", err)
		}
		rep.Floors.EventfdRTT = fromSamples(s).ValueAtQuantile(50)
		pr.printf("floor: memcpy bandwidth")
		rep.Floors.MemcpyGBps = memcpyGBps(cfg.duration)
		pr.printf("floors: spin %v, eventfd %v, memcpy %.1f GB/s", time.Duration(rep.Floors.SpinRTT), time.Duration(rep.Floors.EventfdRTT), rep.Floors.MemcpyGBps)
	}
	if cfg.has("ring") {
		for _, tr := range cfg.transports {
			st, ok := strategyOf(tr)
			if !ok {
				continue
			}
			pr.printf("ring: raw ring round trip, %v, %d round trips", st, cfg.rounds)
			s, err := ringRoundTrips(cfg.rounds, st)
			if err != nil {
				return nil, fmt.Errorf("ring %v: %w", st, err)
			}
			r := &Result{Workload: "ring", Transport: tr, Size: 8, Clients: 1}
			r.fill(fromSamples(s))
			add(r)
		}
	}
	for _, tr := range cfg.transports {
		if err := runTransport(ctx, cfg, tr, pr, add); err != nil {
			return nil, fmt.Errorf("%s: %w", tr, err)
		}
	}
	return rep, nil
}

// memcpyGBps copies 64 MiB between two buffers for about d (at least 4
// times) and returns bytes copied per second / 1e9.
func memcpyGBps(d time.Duration) float64 {
	const n = 64 << 20
	src, dst := make([]byte, n), make([]byte, n)
	for i := range src {
		src[i] = byte(i)
	}
	copy(dst, src) // fault the pages in
	var copied int64
	start := time.Now()
	for i := 0; i < 4 || time.Since(start) < d; i++ {
		copy(dst, src)
		copied += n
	}
	return float64(copied) / time.Since(start).Seconds() / 1e9
}

// runTransport starts a server for tr and runs the RPC workloads on it.
func runTransport(ctx context.Context, cfg *config, tr string, pr *progress, add func(*Result)) error {
	rpcWorkloads := false
	for _, w := range []string{"ping", "echo", "inplace", "stream", "clients", "idle"} {
		rpcWorkloads = rpcWorkloads || cfg.has(w)
	}
	if !rpcWorkloads {
		return nil
	}
	pr.printf("%s: starting the server", tr)
	srv, err := startServer(tr)
	if err != nil {
		return err
	}
	defer srv.stop()
	conn, boot, err := srv.dial(ctx)
	if err != nil {
		return err
	}
	defer closeConn(conn, boot)
	callCtx, cancel := context.WithTimeout(ctx, 15*time.Minute)
	defer cancel()

	if cfg.has("ping") {
		r, err := latency(callCtx, cfg, func(ctx context.Context, _ int) error { return ping(ctx, boot) })
		if err != nil {
			return fmt.Errorf("ping: %w", err)
		}
		r.Workload, r.Transport, r.Clients = "ping", tr, 1
		add(r)
	}
	if cfg.has("echo") {
		for _, n := range cfg.sizes {
			src := make([]byte, n)
			echoproto.FillPattern(src, 3, 0)
			r, err := latency(callCtx, cfg, func(ctx context.Context, i int) error { return echo(ctx, boot, src, i) })
			if err != nil {
				return fmt.Errorf("echo %s: %w", sizeName(n), err)
			}
			r.Workload, r.Transport, r.Size, r.Clients = "echo", tr, n, 1
			r.MBps = float64(n) / (float64(r.Mean) / 1e9) / 1e6
			add(r)
		}
	}
	if cfg.has("inplace") {
		n := cfg.inplaceSize
		want := uint64(0)
		for i := int64(0); i < n; i++ {
			want += uint64(byte(i) ^ 0x5a)
		}
		c := *cfg
		c.rate = 0 // always closed loop: one 64 MiB call at a time
		r, err := latency(callCtx, &c, func(ctx context.Context, _ int) error { return sum(ctx, boot, int(n), want) })
		if err != nil {
			return fmt.Errorf("inplace: %w", err)
		}
		r.Workload, r.Transport, r.Size, r.Clients = "inplace", tr, n, 1
		r.MBps = float64(n) / (float64(r.Mean) / 1e9) / 1e6
		add(r)
	}
	if cfg.has("stream") {
		r, err := stream(callCtx, conn, boot, cfg.streamTotal)
		if err != nil {
			return fmt.Errorf("stream: %w", err)
		}
		r.Transport = tr
		add(r)
	}
	if cfg.has("clients") {
		for _, n := range cfg.clients {
			if n == 1 && cfg.has("ping") {
				continue // the ping workload
			}
			r, err := concurrent(callCtx, cfg, srv, n)
			if err != nil {
				return fmt.Errorf("%d clients: %w", n, err)
			}
			r.Transport = tr
			add(r)
		}
	}
	if cfg.has("idle") {
		pr.printf("%s: idle connected pair for %v", tr, cfg.idle)
		r, err := idle(callCtx, cfg.idle, srv, boot)
		if err != nil {
			return fmt.Errorf("idle: %w", err)
		}
		r.Transport = tr
		add(r)
	}
	return nil
}

// latency runs op for cfg.duration (at least 3 times, after a short
// warm-up): back to back (closed loop), or at cfg.rate calls per second
// with each latency measured from the call's intended send time (open
// loop, so a stall counts against every call it delayed).
func latency(ctx context.Context, cfg *config, op func(context.Context, int) error) (*Result, error) {
	warm := time.Now()
	for i := 0; i < 3 || (i < 1000 && time.Since(warm) < cfg.duration/20); i++ {
		if err := op(ctx, i); err != nil {
			return nil, err
		}
	}
	h := newHist()
	r := &Result{}
	start := time.Now()
	if cfg.rate > 0 {
		r.OpenLoop = true
		interval := time.Duration(float64(time.Second) / cfg.rate)
		n := max(int(cfg.duration/interval), 3)
		for i := 0; i < n; i++ {
			intended := start.Add(time.Duration(i) * interval)
			// time.Sleep wakes up to ~1 ms late on a busy VM, which would be
			// charged to the transport: sleep to 2 ms before, then yield-spin.
			if wait := time.Until(intended); wait > 2*time.Millisecond {
				time.Sleep(wait - 2*time.Millisecond)
			}
			for time.Now().Before(intended) {
				runtime.Gosched()
			}
			if err := op(ctx, i); err != nil {
				return nil, err
			}
			record(h, time.Since(intended))
		}
	} else {
		for i := 0; i < 3 || time.Since(start) < cfg.duration; i++ {
			t := time.Now()
			if err := op(ctx, i); err != nil {
				return nil, err
			}
			record(h, time.Since(t))
		}
	}
	r.OpsPerSec = float64(h.TotalCount()) / time.Since(start).Seconds()
	r.fill(h)
	return r, nil
}

// concurrent runs n clients, each on its own connection, pinging back to
// back for cfg.duration; the histogram holds every client's calls.
func concurrent(ctx context.Context, cfg *config, srv *server, n int) (*Result, error) {
	type client struct {
		conn *rpc.Conn
		boot echoproto.Echo
		h    *hdrhistogram.Histogram
		err  error
	}
	cs := make([]*client, n)
	defer func() {
		for _, c := range cs {
			if c != nil {
				closeConn(c.conn, c.boot)
			}
		}
	}()
	for i := range cs {
		conn, boot, err := srv.dial(ctx)
		if err != nil {
			return nil, err
		}
		cs[i] = &client{conn: conn, boot: boot, h: newHist()}
	}
	var wg sync.WaitGroup
	start := time.Now()
	for _, c := range cs {
		wg.Go(func() {
			for i := 0; i < 3 || time.Since(start) < cfg.duration; i++ {
				t := time.Now()
				if err := ping(ctx, c.boot); err != nil {
					c.err = err
					return
				}
				record(c.h, time.Since(t))
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	h := newHist()
	for _, c := range cs {
		if c.err != nil {
			return nil, c.err
		}
		h.Merge(c.h)
	}
	r := &Result{Workload: "ping", Clients: n}
	r.fill(h)
	r.OpsPerSec = float64(h.TotalCount()) / elapsed.Seconds()
	return r, nil
}

// stream pushes total bytes in 1 MiB chunks through `-> stream` calls on a
// reference with the connection's flow limiter, waits for them all, and
// checks what the server received.
func stream(ctx context.Context, conn *rpc.Conn, boot echoproto.Echo, total int64) (*Result, error) {
	const chunk = 1 << 20
	src := make([]byte, chunk)
	echoproto.FillPattern(src, 9, 0)
	before, err := pushed(ctx, boot)
	if err != nil {
		return nil, err
	}
	s := boot.AddRef()
	defer s.Release()
	s.SetFlowLimiter(conn.FlowLimiter())
	h := newHist() // time each Push call takes to return: flow-control waits
	start := time.Now()
	var sent int64
	for sent < total {
		n := min(chunk, total-sent)
		t := time.Now()
		err := s.Push(ctx, func(p echoproto.Echo_push_Params) error {
			ptr, b, err := echoproto.NewData(p.Segment(), int(n))
			if err != nil {
				return err
			}
			copy(b, src)
			return capnp.Struct(p).SetPtr(0, ptr)
		})
		if err != nil {
			return nil, err
		}
		record(h, time.Since(t))
		sent += n
	}
	if err := s.WaitStreaming(); err != nil {
		return nil, err
	}
	elapsed := time.Since(start)
	after, err := pushed(ctx, boot)
	if err != nil {
		return nil, err
	}
	if got := after - before; got != uint64(total) {
		return nil, fmt.Errorf("the server received %d bytes, sent %d", got, total)
	}
	return &Result{Workload: "stream", Size: total, Clients: 1, Ops: h.TotalCount(), MBps: float64(total) / elapsed.Seconds() / 1e6}, nil
}

// idle measures the CPU both processes of a connected pair use over d with
// no traffic, in percent of one core.
func idle(ctx context.Context, d time.Duration, srv *server, boot echoproto.Echo) (*Result, error) {
	if err := ping(ctx, boot); err != nil {
		return nil, err
	}
	runtime.GC()
	s0, err := srv.cpu()
	if err != nil {
		return nil, err
	}
	c0, err := cpuTime()
	if err != nil {
		return nil, err
	}
	start := time.Now()
	time.Sleep(d)
	c1, err := cpuTime()
	if err != nil {
		return nil, err
	}
	s1, err := srv.cpu()
	if err != nil {
		return nil, err
	}
	wall := time.Since(start)
	pct := 100 * ((c1 - c0) + (s1 - s0)).Seconds() / wall.Seconds()
	return &Result{Workload: "idle", Clients: 1, CPUPct: &pct}, nil
}

func ping(ctx context.Context, boot echoproto.Echo) error {
	f, release := boot.Ping(ctx, nil)
	defer release()
	_, err := f.Struct()
	return err
}

func echo(ctx context.Context, boot echoproto.Echo, src []byte, i int) error {
	return echoproto.EchoInPlace(ctx, boot, src, i)
}

// sum builds an n-byte request in place (every byte written where the
// server reads it) and has the server read every byte.
func sum(ctx context.Context, boot echoproto.Echo, n int, want uint64) error {
	f, release := boot.Sum(ctx, func(p echoproto.Echo_sum_Params) error {
		ptr, b, err := echoproto.NewData(p.Segment(), n)
		if err != nil {
			return err
		}
		for i := range b {
			b[i] = byte(i) ^ 0x5a
		}
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

func pushed(ctx context.Context, boot echoproto.Echo) (uint64, error) {
	f, release := boot.Pushed(ctx, nil)
	defer release()
	res, err := f.Struct()
	if err != nil {
		return 0, err
	}
	return res.Bytes(), nil
}
