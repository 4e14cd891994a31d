//go:build linux

package main

import (
	"fmt"
	"math"
	"strings"
	"time"
)

// Target is one figure the engine or the transport is held to, computed
// from one run's results (ratios of the same run; p50 for latency).
type Target struct {
	Name string `json:"name"`
	// Issue11 marks the rows of issue 11's Targets table.
	Issue11 bool `json:"issue11,omitempty"`
	// Value is the figure compared with the goal (a ratio, or a count).
	Value    float64 `json:"value,omitempty"`
	Measured string  `json:"measured,omitempty"`
	Status   string  `json:"status"` // met, missed, not measured
	// Note says, for a target not measured, why; for one missed, what
	// this run shows of the gap and what would close it.
	Note string `json:"note,omitempty"`
}

// Target statuses.
const (
	statusMet         = "met"
	statusMissed      = "missed"
	statusNotMeasured = "not measured"
)

// figure is one measured value, or why it is missing.
type figure struct {
	v       float64
	what    string // e.g. "engine-shm ping p50"
	missing string
	// openLoop: measured at -rate calls per second (the C++ peer and the
	// floors never are).
	openLoop bool
}

func (f figure) ok() bool { return f.missing == "" && f.v > 0 }

// figures reads the figures of a report.
type figures struct{ rep *Report }

// absent says why a figure of workload on tr is not in the report.
func (fs figures) absent(workload, tr string) string {
	if why, ok := fs.rep.NotMeasured[tr]; ok {
		return tr + " " + why
	}
	return workload + " on " + tr + " not in this run"
}

func (fs figures) result(workload, tr string, size int64, clients int) (*Result, string) {
	r := fs.rep.find(workload, tr, size, clients)
	if r == nil || (r.Ops == 0 && r.MBps == 0 && r.CPUPct == nil) {
		w := workload
		if size > 0 {
			w += " " + sizeName(size)
		}
		if clients > 1 {
			w += fmt.Sprintf(" with %d clients", clients)
		}
		return nil, fs.absent(w, tr)
	}
	return r, ""
}

// p50 is the p50 latency of workload on tr (one client unless clients).
func (fs figures) p50(workload, tr string, size int64) figure {
	f := figure{what: tr + " " + workload + " p50"}
	r, why := fs.result(workload, tr, size, 1)
	if r == nil {
		f.missing = why
		return f
	}
	f.v, f.openLoop = float64(r.P50), r.OpenLoop
	return f
}

// fastest returns the smallest of the figures measured; if none is, a
// missing figure that says why for each.
func (fs figures) fastest(f ...figure) figure {
	best := f[0]
	var why []string
	for _, g := range f {
		if g.ok() && (!best.ok() || g.v < best.v) {
			best = g
		}
		if g.missing != "" {
			why = append(why, g.missing)
		}
	}
	if !best.ok() && len(why) > 0 {
		best.missing = strings.Join(why, "; ")
	}
	return best
}

func (fs figures) mean(workload, tr string, size int64) figure {
	f := figure{what: tr + " " + workload + " mean"}
	r, why := fs.result(workload, tr, size, 1)
	if r == nil {
		f.missing = why
		return f
	}
	f.v, f.openLoop = float64(r.Mean), r.OpenLoop
	return f
}

func (fs figures) callsPerSec(tr string, clients int) figure {
	f := figure{what: fmt.Sprintf("%s %d clients calls/s", tr, clients)}
	r, why := fs.result("ping", tr, 0, clients)
	if r == nil {
		f.missing = why
		return f
	}
	f.v = r.OpsPerSec
	return f
}

func (fs figures) floor(name string, v int64) figure {
	f := figure{what: name + " floor p50", v: float64(v)}
	if v <= 0 {
		f.missing = "the floors not in this run"
	}
	return f
}

// missingOf returns why any of fs is missing, or why they do not
// compare (one open loop, another closed), or "".
func missingOf(fs ...figure) string {
	var why []string
	for _, f := range fs {
		if f.missing != "" {
			why = append(why, f.missing)
		} else if f.v <= 0 {
			why = append(why, f.what+" is 0")
		}
	}
	if len(why) == 0 {
		for _, f := range fs[1:] {
			if f.openLoop != fs[0].openLoop {
				why = append(why, fmt.Sprintf("%s and %s do not compare: one ran open loop (-rate), the other closed loop", fs[0].what, f.what))
			}
		}
	}
	return strings.Join(why, "; ")
}

// ns formats nanoseconds as a duration of 3 significant digits.
func ns(v float64) string {
	if v <= 0 {
		return dur(0)
	}
	unit := math.Pow(10, math.Floor(math.Log10(v))-2)
	return time.Duration(math.Round(v/unit) * unit).String()
}

// latencyRatio is a target "a ≤ goal × b" on latencies. why, if not nil,
// explains a miss.
func latencyRatio(name string, a, b figure, goal float64, why func(budget float64) string) Target {
	t := Target{Name: name, Issue11: true}
	if m := missingOf(a, b); m != "" {
		t.Status, t.Note = statusNotMeasured, m
		return t
	}
	t.Value = a.v / b.v
	t.Measured = fmt.Sprintf("%.2f (%s %s, %s %s; goal ≤ %s)", t.Value, a.what, ns(a.v), b.what, ns(b.v), goalName(goal))
	t.Status = statusMet
	if t.Value > goal {
		t.Status = statusMissed
		budget := goal * b.v
		t.Note = fmt.Sprintf("%.2fx over: %s must come down from %s to %s", t.Value/goal, a.what, ns(a.v), ns(budget))
		if why != nil {
			if w := why(budget); w != "" {
				t.Note += "; " + w
			}
		}
	}
	return t
}

func goalName(g float64) string {
	switch g {
	case 1.0 / 3:
		return "1/3"
	case 1.0 / 4:
		return "1/4"
	}
	return fmt.Sprintf("%g", g)
}

// ringShare explains a shm ping's latency: the raw ring round trip of the
// same wait strategy measured in this run, and what is left for the RPC
// layer within budget.
func (fs figures) ringShare(tr, ringLabel string) func(budget float64) string {
	return func(budget float64) string {
		p, ring := fs.p50("ping", tr, 0), fs.p50("ring", ringLabel, 0)
		if !p.ok() || !ring.ok() {
			return ""
		}
		rpc := p.v - ring.v
		s := fmt.Sprintf("the raw ring round trip (%s) is %s of its %s, the RPC layer (encoding, tables, wake-ups and goroutine hand-offs on both sides) the other %s",
			ringLabel, ns(ring.v), ns(p.v), ns(rpc))
		if left := budget - ring.v; left > 0 {
			s += fmt.Sprintf("; closing it takes the RPC layer's share to %s or less", ns(left))
		} else {
			s += "; the ring alone is over the budget: only a faster wake-up (another wait strategy) closes it"
		}
		return s
	}
}

// targets computes every target from one run.
func targets(rep *Report) []Target {
	fs := figures{rep}
	var ts []Target

	cppPing := fs.p50("ping", "cpp-ezrpc-unix", 0)
	shmPing := fs.p50("ping", "engine-shm", 0)
	ts = append(ts, latencyRatio("engine ping over shm ≤ 1/3 of C++ EZ-RPC ping over unix",
		shmPing, cppPing, 1.0/3, fs.ringShare("engine-shm", "shm")))
	ts = append(ts, latencyRatio("engine ping over shm ≤ 1/4 of go-capnp ping over unix",
		shmPing, fs.p50("ping", "gocapnp-unix", 0), 1.0/4, fs.ringShare("engine-shm", "shm")))
	ts = append(ts, latencyRatio("engine ping over shm with parked peers ≤ 3x the eventfd floor",
		fs.p50("ping", "engine-shm-block", 0), fs.floor("eventfd", rep.Floors.EventfdRTT), 3, fs.ringShare("engine-shm-block", "shm-block")))
	ts = append(ts, latencyRatio("engine ping over unix ≤ C++ EZ-RPC ping over unix",
		fs.p50("ping", "engine-unix", 0), cppPing, 1, func(float64) string {
			return "both run on the same kind of socket between two processes, so the gap is the RPC layer's CPU and wake-ups per call"
		}))
	// Each side's fastest way to have both ends in one process: over
	// net.Pipe, or over its own in-process pipe (capnshm's rpc.Pipe,
	// go-capnp's transport.NewPipe).
	enginePipe := fs.fastest(fs.p50("ping", "engine-mem", 0), fs.p50("ping", "engine-pipe", 0))
	goPipe := fs.fastest(fs.p50("ping", "gocapnp-mem", 0), fs.p50("ping", "gocapnp-pipe", 0))
	ts = append(ts, latencyRatio("engine ping, both ends in one process ≤ 1/4 of go-capnp's in-process pipe",
		enginePipe, goPipe, 1.0/4, func(float64) string {
			s := "in one process there are no syscalls: this is the CPU of both ends of each RPC layer and the goroutine hand-offs between them"
			engine, gocapnp := strings.Fields(enginePipe.what)[0], strings.Fields(goPipe.what)[0]
			if a := allocsOf(rep, engine); a != nil {
				s += fmt.Sprintf(" (%s %.0f allocations a ping, both ends", engine, *a)
				if g := allocsOf(rep, gocapnp); g != nil {
					s += fmt.Sprintf("; %s %.0f", gocapnp, *g)
				}
				s += ")"
			}
			return s
		}))
	ts = append(ts, allocTarget(rep))
	ts = append(ts, clientsTarget(fs))
	ts = append(ts, echoTarget(rep, fs))
	ts = append(ts, idleTarget(rep))

	// The same latency targets with one P in every Go process (the -1p
	// transports), as the C++ peers run on one thread: what GOMAXPROCS=1
	// buys on this machine. Not the issue's targets, which are the
	// defaults above.
	onePWhy := func(float64) string {
		return "with one P there is no idle P whose thread the runtime wakes for each goroutine a call passes through; what is left is the RPC layer's CPU and the doorbells"
	}
	for _, t := range []Target{
		latencyRatio("GOMAXPROCS=1: engine ping over shm ≤ 1/3 of C++ EZ-RPC ping over unix",
			fs.p50("ping", "engine-shm-1p", 0), cppPing, 1.0/3, onePWhy),
		latencyRatio("GOMAXPROCS=1: engine ping over shm ≤ 1/4 of go-capnp ping over unix (GOMAXPROCS=1 too)",
			fs.p50("ping", "engine-shm-1p", 0), fs.p50("ping", "gocapnp-unix-1p", 0), 1.0/4, onePWhy),
		latencyRatio("GOMAXPROCS=1: engine ping over unix ≤ C++ EZ-RPC ping over unix",
			fs.p50("ping", "engine-unix-1p", 0), cppPing, 1, onePWhy),
	} {
		t.Issue11 = false
		ts = append(ts, t)
	}

	// The transport's own targets.
	ts = append(ts, speedup("engine ping: shm ≥3x faster than unix (p50)",
		fs.p50("ping", "engine-unix", 0), fs.p50("ping", "engine-shm", 0), 3))
	ts = append(ts, speedup("echo 16 MiB: engine shm ≥5x faster than engine unix (mean)",
		fs.mean("echo", "engine-unix", 16<<20), fs.mean("echo", "engine-shm", 16<<20), 5))
	ts = append(ts, streamTarget(fs))
	ts = append(ts, floorTarget("raw ring, busy-spin: within 2x of the spin floor (p50)",
		fs.p50("ring", "shm-spin", 0), fs.floor("spin", rep.Floors.SpinRTT), 2))
	ts = append(ts, floorTarget("raw ring, block: within 1.3x of the eventfd floor (p50)",
		fs.p50("ring", "shm-block", 0), fs.floor("eventfd", rep.Floors.EventfdRTT), 1.3))
	return ts
}

func allocsOf(rep *Report, tr string) *float64 {
	if r := rep.find("ping", tr, 0, 1); r != nil {
		return r.AllocsPerOp
	}
	return nil
}

func allocTarget(rep *Report) Target {
	t := Target{Name: "allocations per ping in the calling process ≤ 10", Issue11: true}
	a := allocsOf(rep, "engine-shm")
	if a == nil {
		t.Status, t.Note = statusNotMeasured, figures{rep}.absent("ping", "engine-shm")
		return t
	}
	t.Value = *a
	var others []string
	for _, tr := range []string{"engine-unix", "gocapnp-shm", "gocapnp-unix"} {
		if o := allocsOf(rep, tr); o != nil {
			others = append(others, fmt.Sprintf("%s %.1f", tr, *o))
		}
	}
	t.Measured = fmt.Sprintf("%.1f (engine-shm)", *a)
	if len(others) > 0 {
		t.Measured += "; " + strings.Join(others, ", ")
	}
	t.Status = statusMet
	if *a > 10 {
		t.Status = statusMissed
		t.Note = fmt.Sprintf("%.1f allocations too many a ping (runtime.MemStats.Mallocs over the ping workload, this process: the caller and its connection's goroutines)", *a-10)
	}
	return t
}

func clientsTarget(fs figures) Target {
	t := Target{Name: "8 clients on one server, calls/s ≥ 3x go-capnp over unix", Issue11: true}
	e, g := fs.callsPerSec("engine-shm", 8), fs.callsPerSec("gocapnp-unix", 8)
	if m := missingOf(e, g); m != "" {
		t.Status, t.Note = statusNotMeasured, m
		return t
	}
	t.Value = e.v / g.v
	t.Measured = fmt.Sprintf("%.2fx (engine-shm %.0f calls/s, gocapnp-unix %.0f calls/s)", t.Value, e.v, g.v)
	t.Status = statusMet
	if t.Value < 3 {
		t.Status = statusMissed
		t.Note = fmt.Sprintf("engine-shm needs %.0f calls/s with 8 clients", 3*g.v)
		if one := fs.callsPerSec("engine-shm", 1); one.ok() {
			t.Note += fmt.Sprintf("; with one client it made %.0f calls/s, so 8 clients scale it %.2fx on this machine's %d CPUs (clients, server and their doorbells share them)",
				one.v, e.v/one.v, fs.rep.Machine.CPUs)
		}
	}
	return t
}

func echoTarget(rep *Report, fs figures) Target {
	const size = 16 << 20
	t := Target{Name: "16 MiB echo over shm ≥ 5x go-capnp over unix; 0 payload bytes copied", Issue11: true}
	e, g := fs.mean("echo", "engine-shm", size), fs.mean("echo", "gocapnp-unix", size)
	if m := missingOf(e, g); m != "" {
		t.Status, t.Note = statusNotMeasured, m
		return t
	}
	t.Value = g.v / e.v
	r := rep.find("echo", "engine-shm", size, 1)
	copied := "bytes copied not counted"
	noCopy := false
	if r.CopiedBytes != nil && r.PeerCopiedBytes != nil {
		// Transports copy whole messages; a call or return of this echo
		// carries 16 MiB, so less than that copied over the whole
		// measurement means none of them was copied.
		total := *r.CopiedBytes + *r.PeerCopiedBytes
		noCopy = total < size
		copied = fmt.Sprintf("copied over %d calls: client %d B, server %d B", r.Ops, *r.CopiedBytes, *r.PeerCopiedBytes)
		if noCopy {
			copied += " (control messages only: no payload)"
		}
	}
	t.Measured = fmt.Sprintf("%.2fx (engine-shm %s, gocapnp-unix %s, means); %s", t.Value, ns(e.v), ns(g.v), copied)
	t.Status = statusMet
	var why []string
	if t.Value < 5 {
		why = append(why, fmt.Sprintf("engine-shm must come down to %s", ns(g.v/5)))
		if f := rep.Floors.MemcpyGBps; f > 0 {
			why = append(why, fmt.Sprintf("the echo writes 16 MiB into the request and the server copies it into its results: at this run's memcpy speed (%.1f GB/s) those two copies alone take %s", f, ns(2*size/f)))
		}
	}
	if !noCopy {
		why = append(why, "payload bytes were copied, or not counted: "+copied)
	}
	if len(why) > 0 {
		t.Status, t.Note = statusMissed, strings.Join(why, "; ")
	}
	return t
}

func idleTarget(rep *Report) Target {
	t := Target{Name: "idle connected pair ≤ 1% of a core", Issue11: true}
	r := rep.find("idle", "engine-shm", 0, 0)
	if r == nil || r.CPUPct == nil {
		t.Status, t.Note = statusNotMeasured, figures{rep}.absent("idle", "engine-shm")
		return t
	}
	t.Value = *r.CPUPct
	t.Measured = fmt.Sprintf("%.3f%% of a core (engine-shm, both processes)", *r.CPUPct)
	t.Status = statusMet
	if *r.CPUPct > 1 {
		t.Status = statusMissed
		t.Note = "an idle pair must park: something polls (a spinning waiter, a timer)"
	}
	return t
}

// speedup is a target "slow ≥ goal × fast".
func speedup(name string, slow, fast figure, goal float64) Target {
	t := Target{Name: name}
	if m := missingOf(slow, fast); m != "" {
		t.Status, t.Note = statusNotMeasured, m
		return t
	}
	t.Value = slow.v / fast.v
	t.Measured = fmt.Sprintf("%.2fx (%s %s, %s %s)", t.Value, fast.what, ns(fast.v), slow.what, ns(slow.v))
	t.Status = statusMet
	if t.Value < goal {
		t.Status = statusMissed
		t.Note = fmt.Sprintf("%s must come down to %s", fast.what, ns(slow.v/goal))
	}
	return t
}

// floorTarget is a target "v ≤ goal × floor".
func floorTarget(name string, v, floor figure, goal float64) Target {
	t := Target{Name: name}
	if m := missingOf(v, floor); m != "" {
		t.Status, t.Note = statusNotMeasured, m
		return t
	}
	t.Value = v.v / floor.v
	t.Measured = fmt.Sprintf("%.2fx (%s %s, %s %s)", t.Value, v.what, ns(v.v), floor.what, ns(floor.v))
	t.Status = statusMet
	if t.Value > goal {
		t.Status = statusMissed
		t.Note = fmt.Sprintf("%s must come down to %s", v.what, ns(goal*floor.v))
	}
	return t
}

func streamTarget(fs figures) Target {
	t := Target{Name: "streaming: engine shm ≥2.5 GB/s and ≥5x engine unix"}
	rs, why1 := fs.result("stream", "engine-shm", 0, 0)
	ru, why2 := fs.result("stream", "engine-unix", 0, 0)
	if rs == nil || ru == nil || ru.MBps <= 0 {
		t.Status, t.Note = statusNotMeasured, strings.Trim(why1+"; "+why2, "; ")
		return t
	}
	t.Value = rs.MBps / ru.MBps
	t.Measured = fmt.Sprintf("%.2f GB/s, %.2fx engine-unix (%.2f GB/s)", rs.MBps/1000, t.Value, ru.MBps/1000)
	t.Status = statusMet
	if rs.MBps < 2500 || t.Value < 5 {
		t.Status = statusMissed
		t.Note = fmt.Sprintf("engine-shm streamed %.2f GB/s; it needs %.2f GB/s", rs.MBps/1000, max(2.5, 5*ru.MBps/1000))
	}
	return t
}
