//go:build linux

package main

import (
	"encoding/json"
	"fmt"
	"html"
	"io"
	"math"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// find returns the first result matching, or nil.
func (rep *Report) find(workload, transport string, size int64, clients int) *Result {
	for _, r := range rep.Results {
		if r.Workload == workload && r.Transport == transport && (size == 0 || r.Size == size) && (clients == 0 || r.Clients == clients) {
			return r
		}
	}
	return nil
}

// target is one of the figures the transport is held to.
type target struct {
	name   string
	ratio  string // the measured figure(s)
	met    bool
	absent string // why it was not measured, if it was not
}

func (t target) status() string {
	switch {
	case t.absent != "":
		return "not measured"
	case t.met:
		return "met"
	}
	return "missed"
}

// targets computes the targets from one run's results.
func targets(rep *Report) []target {
	var ts []target
	lat := func(workload string, tr string, size int64) float64 {
		if r := rep.find(workload, tr, size, 1); r != nil && r.Ops > 0 {
			return float64(r.P50)
		}
		return 0
	}
	missing := func(name, what string) target { return target{name: name, absent: what + " not in this run"} }

	name := "RPC ping: shm ≥3x faster than unix (p50)"
	if s, u := lat("ping", "shm", 0), lat("ping", "unix", 0); s > 0 && u > 0 {
		ts = append(ts, target{name: name, ratio: fmt.Sprintf("%.2fx (shm %v, unix %v)", u/s, ns(s), ns(u)), met: u/s >= 3})
	} else {
		ts = append(ts, missing(name, "ping on shm and unix"))
	}

	name = "echo 16 MiB: shm ≥5x faster than unix (mean)"
	mean := func(tr string) float64 {
		if r := rep.find("echo", tr, 16<<20, 1); r != nil {
			return float64(r.Mean)
		}
		return 0
	}
	if s, u := mean("shm"), mean("unix"); s > 0 && u > 0 {
		ts = append(ts, target{name: name, ratio: fmt.Sprintf("%.2fx (shm %v, unix %v)", u/s, ns(s), ns(u)), met: u/s >= 5})
	} else {
		ts = append(ts, missing(name, "16 MiB echo on shm and unix"))
	}

	name = "streaming: shm ≥2.5 GB/s and ≥5x unix"
	rs, ru := rep.find("stream", "shm", 0, 0), rep.find("stream", "unix", 0, 0)
	if rs != nil && ru != nil && ru.MBps > 0 {
		ts = append(ts, target{name: name, ratio: fmt.Sprintf("%.2f GB/s, %.2fx unix (%.2f GB/s)", rs.MBps/1000, rs.MBps/ru.MBps, ru.MBps/1000), met: rs.MBps >= 2500 && rs.MBps/ru.MBps >= 5})
	} else {
		ts = append(ts, missing(name, "stream on shm and unix"))
	}

	name = "idle connected pair (shm): ≤1% of one core"
	if r := rep.find("idle", "shm", 0, 0); r != nil && r.CPUPct != nil {
		ts = append(ts, target{name: name, ratio: fmt.Sprintf("%.3f%%", *r.CPUPct), met: *r.CPUPct <= 1})
	} else {
		ts = append(ts, missing(name, "idle on shm"))
	}

	name = "raw ring, busy-spin: within 2x of the spin floor (p50)"
	if s, f := lat("ring", "shm-spin", 0), float64(rep.Floors.SpinRTT); s > 0 && f > 0 {
		ts = append(ts, target{name: name, ratio: fmt.Sprintf("%.2fx (ring %v, floor %v)", s/f, ns(s), ns(f)), met: s/f <= 2})
	} else {
		ts = append(ts, missing(name, "ring on shm-spin and the floors"))
	}

	name = "raw ring, block: within 1.3x of the eventfd floor (p50)"
	if s, f := lat("ring", "shm-block", 0), float64(rep.Floors.EventfdRTT); s > 0 && f > 0 {
		ts = append(ts, target{name: name, ratio: fmt.Sprintf("%.2fx (ring %v, floor %v)", s/f, ns(s), ns(f)), met: s/f <= 1.3})
	} else {
		ts = append(ts, missing(name, "ring on shm-block and the floors"))
	}
	return ts
}

func ns(v float64) time.Duration { return time.Duration(v) }

func dur(v int64) string {
	if v == 0 {
		return "-"
	}
	d := time.Duration(v)
	switch {
	case d < 10*time.Microsecond:
		return d.Round(time.Nanosecond).String()
	case d < 10*time.Millisecond:
		return d.Round(100 * time.Nanosecond).String()
	}
	return d.Round(10 * time.Microsecond).String()
}

// rows returns the table's header and rows.
func rows(rep *Report) ([]string, [][]string) {
	head := []string{"workload", "transport", "size", "clients", "ops", "p50", "p99", "p99.9", "max", "MB/s", "CPU %"}
	var out [][]string
	for _, r := range rep.Results {
		size, mbps, cpu := "-", "-", "-"
		if r.Size > 0 {
			size = sizeName(r.Size)
		}
		switch {
		case r.MBps >= 100:
			mbps = fmt.Sprintf("%.0f", r.MBps)
		case r.MBps > 0:
			mbps = fmt.Sprintf("%.2g", r.MBps)
		}
		if r.CPUPct != nil {
			cpu = fmt.Sprintf("%.3f", *r.CPUPct)
		}
		w := r.Workload
		if r.OpenLoop {
			w += " (open loop)"
		}
		row := []string{w, r.Transport, size, fmt.Sprint(r.Clients), fmt.Sprint(r.Ops), dur(r.P50), dur(r.P99), dur(r.P999), dur(r.Max), mbps, cpu}
		if r.Workload == "stream" || r.Workload == "idle" {
			for i := 4; i <= 8; i++ {
				row[i] = "-"
			}
		}
		out = append(out, row)
	}
	return head, out
}

func floorsLine(f Floors) string {
	if f == (Floors{}) {
		return "floors: not measured in this run (workload floors)"
	}
	return fmt.Sprintf("floors (same run, two processes): spin on a shared cache line p50 %s, blocking eventfd pair p50 %s; memcpy %.1f GB/s",
		dur(f.SpinRTT), dur(f.EventfdRTT), f.MemcpyGBps)
}

func printTable(w io.Writer, rep *Report) {
	fmt.Fprintln(w, floorsLine(rep.Floors))
	fmt.Fprintln(w)
	head, rs := rows(rep)
	width := make([]int, len(head))
	for i, h := range head {
		width[i] = len(h)
	}
	for _, r := range rs {
		for i, c := range r {
			width[i] = max(width[i], len(c))
		}
	}
	line := func(cells []string) {
		for i, c := range cells {
			if i < 2 {
				fmt.Fprintf(w, "%-*s  ", width[i], c)
			} else {
				fmt.Fprintf(w, "%*s  ", width[i], c)
			}
		}
		fmt.Fprintln(w)
	}
	line(head)
	for _, r := range rs {
		line(r)
	}
}

func printTargets(w io.Writer, rep *Report) {
	fmt.Fprintln(w, "targets (ratios from this run):")
	for _, t := range targets(rep) {
		fig := t.ratio
		if t.absent != "" {
			fig = t.absent
		}
		fmt.Fprintf(w, "  %-13s %s: %s\n", "["+t.status()+"]", t.name, fig)
	}
}

// writeReport writes report.md, results.json and the plots into dir.
func writeReport(dir string, rep *Report) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	js, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "results.json"), append(js, '\n'), 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "latency-ping.svg"), []byte(latencyPlot(rep)), 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "throughput-echo.svg"), []byte(throughputPlot(rep)), 0o644); err != nil {
		return err
	}
	var b strings.Builder
	fmt.Fprintf(&b, "# capnshm bench\n\n%s; run took %s", rep.Host, rep.Elapsed)
	if rep.Quick {
		b.WriteString(" (-quick)")
	}
	if rep.Rate > 0 {
		fmt.Fprintf(&b, "; ping and echo open loop at %.0f calls/s, latency from each call's intended send time", rep.Rate)
	}
	b.WriteString(".\n\nClient and server are separate processes. Latencies are per round trip, from an HDR histogram; " +
		"MB/s is payload bytes in one direction per second (echo: size / mean call time). " +
		"shm is the default (adaptive) wait strategy, shm-spin busy-spins, shm-block parks at once; unix and tcp are go-capnp's stream transport.\n\n")
	fmt.Fprintf(&b, "%s.\n\n## Targets\n\n| target | measured | status |\n|---|---|---|\n", floorsLine(rep.Floors))
	for _, t := range targets(rep) {
		fig := t.ratio
		if t.absent != "" {
			fig = t.absent
		}
		fmt.Fprintf(&b, "| %s | %s | **%s** |\n", t.name, fig, t.status())
	}
	b.WriteString("\n## Results\n\n")
	head, rs := rows(rep)
	fmt.Fprintf(&b, "| %s |\n|%s\n", strings.Join(head, " | "), strings.Repeat("---|", len(head)))
	for _, r := range rs {
		fmt.Fprintf(&b, "| %s |\n", strings.Join(r, " | "))
	}
	b.WriteString("\n## Plots\n\n![ping latency distribution](latency-ping.svg)\n\n![echo throughput](throughput-echo.svg)\n\nRaw results: [results.json](results.json).\n")
	return os.WriteFile(filepath.Join(dir, "report.md"), []byte(b.String()), 0o644)
}

// The plots: hand-written SVG.

type point struct{ x, y float64 }

type series struct {
	name   string
	points []point
}

var palette = []string{"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#17becf"}

type axis struct {
	label    string
	log      bool
	min, max float64
	ticks    []float64
	tickName func(float64) string
}

func (a axis) pos(v float64, length float64) float64 {
	if a.log {
		return (math.Log10(v) - math.Log10(a.min)) / (math.Log10(a.max) - math.Log10(a.min)) * length
	}
	return (v - a.min) / (a.max - a.min) * length
}

// logAxis returns a log axis covering lo..hi with ticks at powers of base.
func logAxis(label string, lo, hi, base float64, name func(float64) string) axis {
	a := axis{label: label, log: true, tickName: name}
	a.min = math.Pow(base, math.Floor(math.Log(lo)/math.Log(base)))
	a.max = math.Pow(base, math.Ceil(math.Log(hi)/math.Log(base)))
	if a.max <= a.min {
		a.max = a.min * base
	}
	step := 1.0
	if n := math.Log(a.max/a.min) / math.Log(base); n > 10 {
		step = math.Ceil(n / 10)
	}
	for v := a.min; v <= a.max*1.0001; v *= math.Pow(base, step) {
		a.ticks = append(a.ticks, v)
	}
	return a
}

func plot(title string, x, y axis, ss []series, hline *series) string {
	const W, H, left, right, top, bottom = 760.0, 440.0, 80.0, 150.0, 40.0, 50.0
	pw, ph := W-left-right, H-top-bottom
	px := func(v float64) float64 { return left + x.pos(v, pw) }
	py := func(v float64) float64 { return top + ph - y.pos(v, ph) }
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%.0f" height="%.0f" font-family="sans-serif" font-size="12">`+"\n", W, H)
	fmt.Fprintf(&b, `<rect width="100%%" height="100%%" fill="white"/>`+"\n")
	fmt.Fprintf(&b, `<text x="%.0f" y="22" font-size="15" text-anchor="middle">%s</text>`+"\n", left+pw/2, html.EscapeString(title))
	for _, t := range x.ticks {
		fmt.Fprintf(&b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#ddd"/><text x="%.1f" y="%.1f" text-anchor="middle">%s</text>`+"\n",
			px(t), top, px(t), top+ph, px(t), top+ph+16, html.EscapeString(x.tickName(t)))
	}
	for _, t := range y.ticks {
		fmt.Fprintf(&b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#ddd"/><text x="%.1f" y="%.1f" text-anchor="end">%s</text>`+"\n",
			left, py(t), left+pw, py(t), left-6, py(t)+4, html.EscapeString(y.tickName(t)))
	}
	fmt.Fprintf(&b, `<rect x="%.0f" y="%.0f" width="%.0f" height="%.0f" fill="none" stroke="black"/>`+"\n", left, top, pw, ph)
	fmt.Fprintf(&b, `<text x="%.0f" y="%.0f" text-anchor="middle">%s</text>`+"\n", left+pw/2, H-10, html.EscapeString(x.label))
	fmt.Fprintf(&b, `<text transform="translate(18 %.0f) rotate(-90)" text-anchor="middle">%s</text>`+"\n", top+ph/2, html.EscapeString(y.label))
	legend := func(i int, name, color, dash string) {
		ly := top + 10 + float64(i)*20
		fmt.Fprintf(&b, `<line x1="%.0f" y1="%.0f" x2="%.0f" y2="%.0f" stroke="%s" stroke-width="2" %s/><text x="%.0f" y="%.0f">%s</text>`+"\n",
			left+pw+10, ly, left+pw+34, ly, color, dash, left+pw+40, ly+4, html.EscapeString(name))
	}
	for i, s := range ss {
		color := palette[i%len(palette)]
		var pts []string
		for _, p := range s.points {
			pts = append(pts, fmt.Sprintf("%.1f,%.1f", px(p.x), py(p.y)))
		}
		fmt.Fprintf(&b, `<polyline fill="none" stroke="%s" stroke-width="2" points="%s"/>`+"\n", color, strings.Join(pts, " "))
		if len(s.points) < 12 {
			for _, p := range s.points {
				fmt.Fprintf(&b, `<circle cx="%.1f" cy="%.1f" r="3" fill="%s"/>`+"\n", px(p.x), py(p.y), color)
			}
		}
		legend(i, s.name, color, "")
	}
	if hline != nil && len(hline.points) == 1 {
		v := hline.points[0].y
		fmt.Fprintf(&b, `<line x1="%.0f" y1="%.1f" x2="%.0f" y2="%.1f" stroke="#555" stroke-dasharray="6 4"/>`+"\n", left, py(v), left+pw, py(v))
		legend(len(ss), hline.name, "#555", `stroke-dasharray="6 4"`)
	}
	b.WriteString("</svg>\n")
	return b.String()
}

func nsName(v float64) string { return time.Duration(v).String() }

func emptyPlot(title, why string) string {
	return fmt.Sprintf(`<svg xmlns="http://www.w3.org/2000/svg" width="760" height="120" font-family="sans-serif"><text x="20" y="40" font-size="15">%s</text><text x="20" y="70">%s</text></svg>`+"\n",
		html.EscapeString(title), html.EscapeString(why))
}

// latencyPlot draws the ping latency CDF of each transport (one client).
func latencyPlot(rep *Report) string {
	const title = "RPC ping latency distribution (one client)"
	var ss []series
	lo, hi := math.Inf(1), 0.0
	for _, r := range rep.Results {
		if r.Workload != "ping" || r.Clients != 1 || r.hist == nil || r.Ops == 0 {
			continue
		}
		s := series{name: r.Transport}
		qs := []float64{0}
		for q := 1.0; q <= 99; q++ {
			qs = append(qs, q)
		}
		qs = append(qs, 99.5, 99.9, 99.99, 100)
		for _, q := range qs {
			v := float64(max(r.hist.ValueAtQuantile(q), 1))
			s.points = append(s.points, point{v, q})
			lo, hi = min(lo, v), max(hi, v)
		}
		ss = append(ss, s)
	}
	if len(ss) == 0 {
		return emptyPlot(title, "no ping results in this run")
	}
	x := logAxis("round-trip latency (log scale)", lo, hi, 10, nsName)
	y := axis{label: "percentile of calls", min: 0, max: 100, ticks: []float64{0, 25, 50, 75, 90, 100}, tickName: func(v float64) string { return fmt.Sprintf("%g", v) }}
	return plot(title, x, y, ss, nil)
}

// throughputPlot draws echo throughput against message size per transport,
// with the memcpy floor.
func throughputPlot(rep *Report) string {
	const title = "echo throughput against message size"
	var ss []series
	idx := map[string]int{}
	xlo, xhi, ylo, yhi := math.Inf(1), 0.0, math.Inf(1), 0.0
	for _, r := range rep.Results {
		if r.Workload != "echo" || r.MBps <= 0 {
			continue
		}
		i, ok := idx[r.Transport]
		if !ok {
			i = len(ss)
			idx[r.Transport] = i
			ss = append(ss, series{name: r.Transport})
		}
		ss[i].points = append(ss[i].points, point{float64(r.Size), r.MBps})
		xlo, xhi = min(xlo, float64(r.Size)), max(xhi, float64(r.Size))
		ylo, yhi = min(ylo, r.MBps), max(yhi, r.MBps)
	}
	if len(ss) == 0 {
		return emptyPlot(title, "no echo results in this run")
	}
	var hline *series
	if f := rep.Floors.MemcpyGBps * 1000; f > 0 {
		hline = &series{name: "memcpy floor", points: []point{{0, f}}}
		ylo, yhi = min(ylo, f), max(yhi, f)
	}
	x := logAxis("message size (log scale)", xlo, max(xhi, xlo*2), 2, func(v float64) string { return sizeName(int64(v)) })
	y := logAxis("MB/s (log scale)", ylo, yhi, 10, func(v float64) string { return fmt.Sprintf("%g", v) })
	return plot(title, x, y, ss, hline)
}
