//go:build linux

package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"sync"
	"time"

	capnp "capnproto.org/go/capnp/v3"
	"github.com/HdrHistogram/hdrhistogram-go"

	"github.com/capnshm/capnshm/internal/echoproto"
)

// run runs the steps of cfg's plan and returns their report (targets
// not yet computed). With bar, progress is a bar on stderr.
func run(ctx context.Context, cfg *config, stderr io.Writer, bar bool) (*Report, error) {
	m := thisMachine()
	rep := &Report{Quick: cfg.quick, Rate: cfg.rate, Machine: m, Host: m.String(), Duration: cfg.duration.String()}
	steps := plan(cfg)
	var total time.Duration
	for _, s := range steps {
		total += s.weight
	}
	pr := newProgress(stderr, steps, bar)
	defer pr.finish()
	pr.printf("bench: %d measurements, about %v: workloads %v, transports %v, %v per measurement", len(steps), total.Round(time.Second), cfg.workloads, cfg.transports, cfg.duration)
	r := &runner{cfg: cfg, rep: rep, pr: pr}
	for i := 0; i < len(steps); {
		s := steps[i]
		if s.workload == "floors" || s.workload == "ring" {
			pr.begin(s)
			if err := r.mechanism(s); err != nil {
				return nil, err
			}
			pr.done(s)
			i++
			continue
		}
		j := i + 1
		for j < len(steps) && steps[j].transport == s.transport {
			j++
		}
		d, _ := lookupTransport(s.transport)
		var err error
		if d.impl == implCpp {
			err = r.cpp(ctx, d, steps[i:j])
		} else {
			err = r.transport(ctx, d, steps[i:j])
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", s.transport, err)
		}
		i = j
	}
	return rep, nil
}

// runner runs a plan's steps into rep.
type runner struct {
	cfg *config
	rep *Report
	pr  *progress
	// cppExe and cppErr are the C++ peer, built once a run.
	cppExe   string
	cppErr   error
	cppBuilt bool
}

func (r *runner) add(res *Result) {
	r.rep.Results = append(r.rep.Results, res)
	r.pr.result(res)
}

// mechanism runs the floors or a raw ring step.
func (r *runner) mechanism(s step) error {
	cfg, rep, pr := r.cfg, r.rep, r.pr
	if s.workload == "floors" {
		rep.Floors.Rounds = cfg.rounds
		sp, err := spinFloor(cfg.rounds)
		if err != nil {
			return fmt.Errorf("spin floor: %w", err)
		}
		rep.Floors.SpinRTT = fromSamples(sp).ValueAtQuantile(50)
		if sp, err = eventfdFloor(cfg.rounds); err != nil {
			return fmt.Errorf("eventfd floor: %w", err)
		}
		rep.Floors.EventfdRTT = fromSamples(sp).ValueAtQuantile(50)
		rep.Floors.MemcpyGBps = memcpyGBps(cfg.duration)
		pr.printf("floors: spin %v, eventfd %v, memcpy %.1f GB/s (%d round trips each)", time.Duration(rep.Floors.SpinRTT), time.Duration(rep.Floors.EventfdRTT), rep.Floors.MemcpyGBps, cfg.rounds)
		return nil
	}
	for _, d := range transportDefs {
		if d.ringLabel != s.transport {
			continue
		}
		sp, err := ringRoundTrips(cfg.rounds, d.strategy)
		if err != nil {
			return fmt.Errorf("ring %v: %w", d.strategy, err)
		}
		res := &Result{Workload: "ring", Transport: s.transport, Size: 8, Clients: 1}
		res.fill(fromSamples(sp))
		r.add(res)
		return nil
	}
	return fmt.Errorf("no ring %q", s.transport)
}

// transport starts the server of d and runs its steps on it.
func (r *runner) transport(ctx context.Context, d transportDef, steps []step) (err error) {
	r.pr.printf("%s: starting the server", d.name)
	if d.procs > 0 {
		// The server child sets its own (serverChild).
		defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(d.procs))
	}
	ep, err := startEndpoint(d)
	if err != nil {
		return err
	}
	defer ep.stop()
	callCtx, cancel := context.WithTimeout(ctx, 15*time.Minute)
	defer cancel()
	main, err := ep.dial(callCtx)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := main.close(); cerr != nil && err == nil {
			err = cerr
		}
	}()
	for _, s := range steps {
		r.pr.begin(s)
		res, err := r.measure(callCtx, s, ep, main)
		if err != nil {
			return fmt.Errorf("%s: %w", s, err)
		}
		res.Workload, res.Transport = s.workload, s.transport
		if res.Clients == 0 {
			res.Clients = s.clients
		}
		if s.workload == "clients" {
			res.Workload = "ping"
		}
		r.add(res)
		r.pr.done(s)
	}
	return nil
}

// measure runs one RPC step.
func (r *runner) measure(ctx context.Context, s step, ep endpoint, c *client) (*Result, error) {
	cfg := r.cfg
	pb := &probe{c: c, ep: ep}
	switch s.workload {
	case "ping":
		return latency(ctx, cfg, func(ctx context.Context, _ int) error { return ping(ctx, c.boot) }, pb)
	case "echo":
		src := make([]byte, s.size)
		echoproto.FillPattern(src, 3, 0)
		res, err := latency(ctx, cfg, func(ctx context.Context, i int) error { return echo(ctx, c.boot, src, i) }, pb)
		if err != nil {
			return nil, err
		}
		res.Size = s.size
		res.MBps = float64(s.size) / (float64(res.Mean) / 1e9) / 1e6
		return res, nil
	case "inplace":
		n := s.size
		want := uint64(0)
		for i := int64(0); i < n; i++ {
			want += uint64(byte(i) ^ 0x5a)
		}
		closed := *cfg
		closed.rate = 0 // always closed loop: one 64 MiB call at a time
		res, err := latency(ctx, &closed, func(ctx context.Context, _ int) error { return sum(ctx, c.boot, int(n), want) }, pb)
		if err != nil {
			return nil, err
		}
		res.Size = n
		res.MBps = float64(n) / (float64(res.Mean) / 1e9) / 1e6
		return res, nil
	case "stream":
		return stream(ctx, c, s.size, pb)
	case "clients":
		return concurrent(ctx, cfg, ep, s.clients)
	case "idle":
		return idle(ctx, cfg.idle, ep, c)
	}
	return nil, fmt.Errorf("unknown workload %q", s.workload)
}

// cpp runs the C++ steps of d: builds the peer (once a run), starts its
// server and runs its client once per step. A missing toolchain is
// recorded in the report as the reason these were not measured.
func (r *runner) cpp(ctx context.Context, d transportDef, steps []step) error {
	if !r.cppBuilt {
		r.pr.printf("%s: building the C++ peer (or finding it in the cache)", d.name)
		r.cppExe, r.cppErr = buildCppPeer(ctx)
		r.cppBuilt = true
	}
	if errors.Is(r.cppErr, errNotMeasured) {
		if r.rep.NotMeasured == nil {
			r.rep.NotMeasured = map[string]string{}
		}
		r.rep.NotMeasured[d.name] = r.cppErr.Error()
		r.pr.printf("%s: %v", d.name, r.cppErr)
		for _, s := range steps {
			r.pr.done(s)
		}
		return nil
	}
	if r.cppErr != nil {
		return r.cppErr
	}
	dir, err := os.MkdirTemp("", "capnshm-cpp-ezrpc-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	bind, err := cppBind(d.medium, dir)
	if err != nil {
		return err
	}
	srv, err := startCppPeer(ctx, r.cppExe, bind)
	if err != nil {
		return err
	}
	for _, s := range steps {
		r.pr.begin(s)
		res, err := runCppClient(ctx, r.cppExe, srv.addr, s.workload, s.calls, s.size)
		if err != nil {
			return errors.Join(fmt.Errorf("%s: %w", s, err), srv.stop())
		}
		res.Transport = d.name
		r.add(&res)
		r.pr.done(s)
	}
	return srv.stop()
}

// probe reads the counters a measurement reports around its measured
// calls: this process's allocations and the transports' copied bytes.
type probe struct {
	c      *client
	ep     endpoint
	before counters
}

type counters struct {
	mallocs                uint64
	copied, peerCopied     uint64
	hasCopied, hasPeerCopy bool
	sleeps, peerSleeps     uint64
	hasPeerSleeps          bool
}

// read reads the counters; this process's allocations and thread sleeps
// last when starting and first when stopping, so that asking the server
// counts none of them.
func (p *probe) read(starting bool) (counters, error) {
	var c counters
	var ms runtime.MemStats
	peer := func() error {
		if p.ep == nil {
			return nil
		}
		var err error
		if c.peerCopied, c.hasPeerCopy, err = p.ep.copied(); err != nil {
			return err
		}
		c.peerSleeps, c.hasPeerSleeps, err = p.ep.sleeps()
		return err
	}
	own := func() error {
		runtime.ReadMemStats(&ms)
		c.mallocs = ms.Mallocs
		var err error
		c.sleeps, err = threadSleeps()
		return err
	}
	if !starting {
		if err := own(); err != nil {
			return c, err
		}
	}
	if p.c != nil {
		s, ok := p.c.stats()
		c.copied, c.hasCopied = s.BytesCopied, ok
	}
	if err := peer(); err != nil {
		return c, err
	}
	if starting {
		if err := own(); err != nil {
			return c, err
		}
	}
	return c, nil
}

func (p *probe) start() error {
	if p == nil {
		return nil
	}
	var err error
	p.before, err = p.read(true)
	return err
}

// stop sets res's counters from the start to now, over ops calls.
func (p *probe) stop(res *Result, ops int64) error {
	if p == nil {
		return nil
	}
	after, err := p.read(false)
	if err != nil {
		return err
	}
	if ops > 0 {
		a := float64(after.mallocs-p.before.mallocs) / float64(ops)
		res.AllocsPerOp = &a
		s := float64(after.sleeps-p.before.sleeps) / float64(ops)
		res.SleepsPerOp = &s
		if after.hasPeerSleeps && p.before.hasPeerSleeps {
			ps := float64(after.peerSleeps-p.before.peerSleeps) / float64(ops)
			res.PeerSleepsPerOp = &ps
		}
	}
	if after.hasCopied && p.before.hasCopied {
		n := after.copied - p.before.copied
		res.CopiedBytes = &n
	}
	if after.hasPeerCopy && p.before.hasPeerCopy {
		n := after.peerCopied - p.before.peerCopied
		res.PeerCopiedBytes = &n
	}
	return nil
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

// latency runs op for cfg.duration (at least 3 times, after a short
// warm-up): back to back (closed loop), or at cfg.rate calls per second
// with each latency measured from the call's intended send time (open
// loop, so a stall counts against every call it delayed). pb, if not nil,
// counts allocations and copies over the measured calls.
func latency(ctx context.Context, cfg *config, op func(context.Context, int) error, pb *probe) (*Result, error) {
	warm := time.Now()
	for i := 0; i < 3 || (i < 1000 && time.Since(warm) < cfg.duration/20); i++ {
		if err := op(ctx, i); err != nil {
			return nil, err
		}
	}
	h := newHist()
	r := &Result{}
	if err := pb.start(); err != nil {
		return nil, err
	}
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
	if err := pb.stop(r, h.TotalCount()); err != nil {
		return nil, err
	}
	r.fill(h)
	return r, nil
}

// concurrent runs n clients, each on its own connection, pinging back to
// back for cfg.duration (each at least once); the histogram holds every
// client's calls, and ops_per_sec is all of them together.
func concurrent(ctx context.Context, cfg *config, ep endpoint, n int) (res *Result, err error) {
	type conn struct {
		c   *client
		h   *hdrhistogram.Histogram
		err error
	}
	cs := make([]*conn, 0, n)
	defer func() {
		for _, c := range cs {
			if cerr := c.c.close(); cerr != nil && err == nil {
				err = cerr
			}
		}
	}()
	for range n {
		c, err := ep.dial(ctx)
		if err != nil {
			return nil, err
		}
		cs = append(cs, &conn{c: c, h: newHist()})
	}
	pb := &probe{}
	if err := pb.start(); err != nil {
		return nil, err
	}
	var wg sync.WaitGroup
	start := time.Now()
	for _, c := range cs {
		wg.Go(func() {
			for i := 0; i < 1 || time.Since(start) < cfg.duration; i++ {
				t := time.Now()
				if err := ping(ctx, c.c.boot); err != nil {
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
	if err := pb.stop(r, h.TotalCount()); err != nil {
		return nil, err
	}
	r.fill(h)
	r.OpsPerSec = float64(h.TotalCount()) / elapsed.Seconds()
	return r, nil
}

// stream pushes total bytes in 1 MiB chunks through `-> stream` calls on a
// reference with the connection's flow limiter, waits for them all, and
// checks what the server received.
func stream(ctx context.Context, c *client, total int64, pb *probe) (*Result, error) {
	const chunk = 1 << 20
	src := make([]byte, chunk)
	echoproto.FillPattern(src, 9, 0)
	before, err := pushed(ctx, c.boot)
	if err != nil {
		return nil, err
	}
	s := c.boot.AddRef()
	defer s.Release()
	s.SetFlowLimiter(c.limiter)
	h := newHist() // time each Push call takes to return: flow-control waits
	if err := pb.start(); err != nil {
		return nil, err
	}
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
	r := &Result{Workload: "stream", Size: total, Clients: 1, Ops: h.TotalCount(), MBps: float64(total) / elapsed.Seconds() / 1e6}
	if err := pb.stop(r, h.TotalCount()); err != nil {
		return nil, err
	}
	after, err := pushed(ctx, c.boot)
	if err != nil {
		return nil, err
	}
	if got := after - before; got != uint64(total) {
		return nil, fmt.Errorf("the server received %d bytes, sent %d", got, total)
	}
	return r, nil
}

// idle measures the CPU both processes of a connected pair use over d with
// no traffic, in percent of one core.
func idle(ctx context.Context, d time.Duration, ep endpoint, c *client) (*Result, error) {
	if err := ping(ctx, c.boot); err != nil {
		return nil, err
	}
	runtime.GC()
	s0, err := ep.cpu()
	if err != nil {
		return nil, err
	}
	c0, err := cpuTime()
	if err != nil {
		return nil, err
	}
	start := time.Now()
	t := time.NewTimer(d)
	select {
	case <-t.C:
	case <-ctx.Done():
		t.Stop()
		return nil, ctx.Err()
	}
	c1, err := cpuTime()
	if err != nil {
		return nil, err
	}
	s1, err := ep.cpu()
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
