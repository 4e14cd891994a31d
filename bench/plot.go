//go:build linux

package main

// The report's plots, hand-written SVG. Every transport keeps one look in
// every plot: its colour says the medium (and wait strategy), its line
// what runs the RPC: solid for capnshm's engine, dashed for go-capnp,
// dotted for C++ EZ-RPC.

import (
	"fmt"
	"html"
	"math"
	"slices"
	"strings"
	"time"
)

// The plots' files in the report directory.
const (
	plotLatency    = "latency-ping.svg"
	plotLatencyCDF = "latency-ping-cdf.svg"
	plotThroughput = "throughput-echo.svg"
	plotClients    = "clients.svg"
)

// look is how a transport is drawn: lines in color with dash, bars
// filled with color in pattern (solid, hatch or dots).
type look struct{ color, dash, pattern string }

var mediumColors = map[string]string{
	"shm":       "#1f77b4",
	"shm-spin":  "#17becf",
	"shm-block": "#9467bd",
	"unix":      "#d62728",
	"tcp":       "#2ca02c",
	"pipe":      "#ff7f0e",
	"mem":       "#8c564b",
}

var implDash = map[string]string{
	implEngine:  "",
	implGoCapnp: "7 4",
	implCpp:     "2 3",
}

var implPattern = map[string]string{
	implEngine:  "",
	implGoCapnp: "hatch",
	implCpp:     "dots",
}

func lookOf(transport string) look {
	d, ok := lookupTransport(transport)
	if !ok {
		return look{color: "#555"}
	}
	medium := d.medium
	if d.ringLabel != "" {
		medium = d.ringLabel // shm, shm-spin, shm-block
	}
	return look{color: mediumColors[medium], dash: implDash[d.impl], pattern: implPattern[d.impl]}
}

func (l look) attr() string {
	if l.dash == "" {
		return ""
	}
	return fmt.Sprintf(` stroke-dasharray="%s"`, l.dash)
}

type point struct{ x, y float64 }

type series struct {
	name   string
	look   look
	points []point
	// markers draws a dot at every point.
	markers bool
}

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

// canvas is an SVG plot area with margins.
type canvas struct {
	// patterns are the fill patterns defined so far, by id.
	patterns                       map[string]bool
	b                              strings.Builder
	w, h, left, right, top, bottom float64
	legendY                        float64
	pw, ph                         float64
	x, y                           axis
}

func newCanvas(title string, w, h, left, right, bottom float64, x, y axis) *canvas {
	c := &canvas{w: w, h: h, left: left, right: right, top: 40, bottom: bottom, x: x, y: y}
	c.pw, c.ph = w-left-right, h-c.top-c.bottom
	c.legendY = c.top + 10
	fmt.Fprintf(&c.b, `<svg xmlns="http://www.w3.org/2000/svg" width="%.0f" height="%.0f" font-family="sans-serif" font-size="12">`+"\n", w, h)
	c.b.WriteString(`<rect width="100%" height="100%" fill="white"/>` + "\n")
	fmt.Fprintf(&c.b, `<text x="%.0f" y="22" font-size="15" text-anchor="middle">%s</text>`+"\n", left+c.pw/2, html.EscapeString(title))
	return c
}

func (c *canvas) px(v float64) float64 { return c.left + c.x.pos(v, c.pw) }
func (c *canvas) py(v float64) float64 { return c.top + c.ph - c.y.pos(v, c.ph) }

// frame draws the grid, the ticks of both axes (the y axis's unless
// yNames draws its own) and the labels.
func (c *canvas) frame(yTicks bool) {
	for _, t := range c.x.ticks {
		fmt.Fprintf(&c.b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#ddd"/><text x="%.1f" y="%.1f" text-anchor="middle">%s</text>`+"\n",
			c.px(t), c.top, c.px(t), c.top+c.ph, c.px(t), c.top+c.ph+16, html.EscapeString(c.x.tickName(t)))
	}
	if yTicks {
		for _, t := range c.y.ticks {
			fmt.Fprintf(&c.b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#ddd"/><text x="%.1f" y="%.1f" text-anchor="end">%s</text>`+"\n",
				c.left, c.py(t), c.left+c.pw, c.py(t), c.left-6, c.py(t)+4, html.EscapeString(c.y.tickName(t)))
		}
		fmt.Fprintf(&c.b, `<text transform="translate(18 %.0f) rotate(-90)" text-anchor="middle">%s</text>`+"\n", c.top+c.ph/2, html.EscapeString(c.y.label))
	}
	fmt.Fprintf(&c.b, `<rect x="%.0f" y="%.0f" width="%.0f" height="%.0f" fill="none" stroke="black"/>`+"\n", c.left, c.top, c.pw, c.ph)
	fmt.Fprintf(&c.b, `<text x="%.0f" y="%.0f" text-anchor="middle">%s</text>`+"\n", c.left+c.pw/2, c.top+c.ph+40, html.EscapeString(c.x.label))
}

// legend adds one entry at the right of the plot.
func (c *canvas) legend(name string, l look) {
	x := c.left + c.pw + 10
	fmt.Fprintf(&c.b, `<line x1="%.0f" y1="%.0f" x2="%.0f" y2="%.0f" stroke="%s" stroke-width="2.5"%s/><text x="%.0f" y="%.0f">%s</text>`+"\n",
		x, c.legendY, x+28, c.legendY, l.color, l.attr(), x+34, c.legendY+4, html.EscapeString(name))
	c.legendY += 18
}

func (c *canvas) series(s series) {
	var pts []string
	for _, p := range s.points {
		pts = append(pts, fmt.Sprintf("%.1f,%.1f", c.px(p.x), c.py(p.y)))
	}
	fmt.Fprintf(&c.b, `<polyline fill="none" stroke="%s" stroke-width="2"%s points="%s"/>`+"\n", s.look.color, s.look.attr(), strings.Join(pts, " "))
	if s.markers || len(s.points) < 12 {
		for _, p := range s.points {
			fmt.Fprintf(&c.b, `<circle cx="%.1f" cy="%.1f" r="3" fill="%s"/>`+"\n", c.px(p.x), c.py(p.y), s.look.color)
		}
	}
	c.legend(s.name, s.look)
}

// hline draws a horizontal reference line at y, vline a vertical one at x.
func (c *canvas) hline(name string, y float64) {
	fmt.Fprintf(&c.b, `<line x1="%.0f" y1="%.1f" x2="%.0f" y2="%.1f" stroke="#555" stroke-dasharray="3 6" stroke-width="1.5"/>`+"\n", c.left, c.py(y), c.left+c.pw, c.py(y))
	c.legend(name, look{color: "#555", dash: "3 6"})
}

func (c *canvas) vline(name string, x float64) {
	fmt.Fprintf(&c.b, `<line x1="%.1f" y1="%.0f" x2="%.1f" y2="%.0f" stroke="#555" stroke-dasharray="3 6" stroke-width="1.5"/>`+"\n", c.px(x), c.top, c.px(x), c.top+c.ph)
	fmt.Fprintf(&c.b, `<text x="%.1f" y="%.0f" text-anchor="middle" fill="#555">%s</text>`+"\n", c.px(x), c.top-4, html.EscapeString(name))
}

// fill returns the fill of a bar drawn with l, defining its pattern.
func (c *canvas) fill(l look) string {
	if l.pattern == "" {
		return l.color
	}
	id := l.pattern + "-" + strings.TrimPrefix(l.color, "#")
	if !c.patterns[id] {
		if c.patterns == nil {
			c.patterns = map[string]bool{}
		}
		c.patterns[id] = true
		fmt.Fprintf(&c.b, `<defs><pattern id="%s" width="6" height="6" patternUnits="userSpaceOnUse">`, id)
		fmt.Fprintf(&c.b, `<rect width="6" height="6" fill="%s" fill-opacity="0.25"/>`, l.color)
		if l.pattern == "hatch" {
			fmt.Fprintf(&c.b, `<path d="M-1,1 l2,-2 M0,6 l6,-6 M5,7 l2,-2" stroke="%s" stroke-width="1.6"/>`, l.color)
		} else {
			fmt.Fprintf(&c.b, `<circle cx="3" cy="3" r="1.4" fill="%s"/>`, l.color)
		}
		c.b.WriteString("</pattern></defs>\n")
	}
	return "url(#" + id + ")"
}

func (c *canvas) String() string { return c.b.String() + "</svg>\n" }

func nsName(v float64) string { return time.Duration(v).String() }

func emptyPlot(title, why string) string {
	return fmt.Sprintf(`<svg xmlns="http://www.w3.org/2000/svg" width="760" height="120" font-family="sans-serif"><rect width="100%%" height="100%%" fill="white"/><text x="20" y="40" font-size="15">%s</text><text x="20" y="70">%s</text></svg>`+"\n",
		html.EscapeString(title), html.EscapeString(why))
}

// pings are the one-client ping results, in the order they ran.
func pings(rep *Report) []*Result {
	var out []*Result
	for _, r := range rep.Results {
		if r.Workload == "ping" && r.Clients == 1 && r.Ops > 0 && r.P50 > 0 {
			out = append(out, r)
		}
	}
	return out
}

// latencyPlot draws each transport's ping p50 as a bar, its p99 as a
// whisker, on a log axis, with the floors.
func latencyPlot(rep *Report) string {
	const title = "RPC ping round trip, one client: bar to p50, whisker to p99"
	rs := pings(rep)
	if len(rs) == 0 {
		return emptyPlot(title, "no ping results in this run")
	}
	lo, hi := math.Inf(1), 0.0
	for _, r := range rs {
		lo, hi = min(lo, float64(r.P50)), max(hi, float64(r.P99))
	}
	for _, f := range []int64{rep.Floors.SpinRTT, rep.Floors.EventfdRTT} {
		if f > 0 {
			lo = min(lo, float64(f))
		}
	}
	const rowH = 26.0
	h := 40 + 72 + rowH*float64(len(rs)) + 10
	// Room right of the longest whisker for its label.
	x := logAxis("round-trip latency (log scale)", lo, hi*2.5, 10, nsName)
	y := axis{min: 0, max: float64(len(rs))}
	c := newCanvas(title, 820, h, 130, 30, 72, x, y)
	c.frame(false)
	for i, r := range rs {
		l := lookOf(r.Transport)
		top := c.top + 5 + float64(i)*rowH
		x0, x1, x2 := c.left, c.px(float64(r.P50)), c.px(float64(r.P99))
		fmt.Fprintf(&c.b, `<text x="%.0f" y="%.0f" text-anchor="end">%s</text>`+"\n", c.left-6, top+rowH/2+2, html.EscapeString(r.Transport))
		fill := c.fill(l)
		fmt.Fprintf(&c.b, `<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="%s" fill-opacity="0.85" stroke="%s"/>`+"\n",
			x0, top, max(x1-x0, 1), rowH-8, fill, l.color)
		mid := top + (rowH-8)/2
		fmt.Fprintf(&c.b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="black"/><line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="black"/>`+"\n",
			x1, mid, x2, mid, x2, mid-5, x2, mid+5)
		fmt.Fprintf(&c.b, `<text x="%.1f" y="%.1f" font-size="11">%s</text>`+"\n", x2+4, mid+4, html.EscapeString(dur(r.P50)))
	}
	if f := rep.Floors.SpinRTT; f > 0 {
		c.vline("spin floor", float64(f))
	}
	if f := rep.Floors.EventfdRTT; f > 0 {
		c.vline("eventfd floor", float64(f))
	}
	fmt.Fprintf(&c.b, `<text x="%.0f" y="%.0f" text-anchor="end" fill="#555">solid: capnshm's engine; hatched: go-capnp; dotted: C++ EZ-RPC</text>`+"\n", c.left+c.pw, c.h-8)
	return c.String()
}

// latencyCDFPlot draws the ping latency distribution of each transport
// (one client): every percentile of the Go transports' histograms, and
// the quantiles the C++ peer reports.
func latencyCDFPlot(rep *Report) string {
	const title = "RPC ping latency distribution (one client)"
	var ss []series
	lo, hi := math.Inf(1), 0.0
	for _, r := range pings(rep) {
		s := series{name: r.Transport, look: lookOf(r.Transport)}
		if r.hist != nil {
			qs := []float64{0}
			for q := 1.0; q <= 99; q++ {
				qs = append(qs, q)
			}
			qs = append(qs, 99.5, 99.9, 99.99, 100)
			for _, q := range qs {
				s.points = append(s.points, point{float64(max(r.hist.ValueAtQuantile(q), 1)), q})
			}
		} else {
			s.markers = true
			for _, p := range []point{{float64(r.P50), 50}, {float64(r.P90), 90}, {float64(r.P99), 99}, {float64(r.P999), 99.9}, {float64(r.Max), 100}} {
				if p.x > 0 {
					s.points = append(s.points, p)
				}
			}
		}
		for _, p := range s.points {
			lo, hi = min(lo, p.x), max(hi, p.x)
		}
		ss = append(ss, s)
	}
	if len(ss) == 0 {
		return emptyPlot(title, "no ping results in this run")
	}
	x := logAxis("round-trip latency (log scale)", lo, hi, 10, nsName)
	y := axis{label: "percentile of calls", min: 0, max: 100, ticks: []float64{0, 25, 50, 75, 90, 100}, tickName: func(v float64) string { return fmt.Sprintf("%g", v) }}
	c := newCanvas(title, 860, 480, 80, 170, 50, x, y)
	c.frame(true)
	for _, s := range ss {
		c.series(s)
	}
	return c.String()
}

// seriesBy groups results matching keep into one series per transport,
// in the order they ran.
func seriesBy(rep *Report, keep func(*Result) bool, pt func(*Result) point) []series {
	var ss []series
	idx := map[string]int{}
	for _, r := range rep.Results {
		if !keep(r) {
			continue
		}
		i, ok := idx[r.Transport]
		if !ok {
			i = len(ss)
			idx[r.Transport] = i
			ss = append(ss, series{name: r.Transport, look: lookOf(r.Transport)})
		}
		ss[i].points = append(ss[i].points, pt(r))
	}
	for i := range ss {
		slices.SortFunc(ss[i].points, func(a, b point) int { return int(math.Copysign(1, a.x-b.x)) })
	}
	return ss
}

func bounds(ss []series) (xlo, xhi, ylo, yhi float64) {
	xlo, ylo = math.Inf(1), math.Inf(1)
	for _, s := range ss {
		for _, p := range s.points {
			xlo, xhi, ylo, yhi = min(xlo, p.x), max(xhi, p.x), min(ylo, p.y), max(yhi, p.y)
		}
	}
	return
}

// throughputPlot draws echo throughput against message size per transport,
// with the memcpy floor.
func throughputPlot(rep *Report) string {
	const title = "echo throughput against message size"
	ss := seriesBy(rep, func(r *Result) bool { return r.Workload == "echo" && r.MBps > 0 },
		func(r *Result) point { return point{float64(r.Size), r.MBps} })
	if len(ss) == 0 {
		return emptyPlot(title, "no echo results in this run")
	}
	xlo, xhi, ylo, yhi := bounds(ss)
	f := rep.Floors.MemcpyGBps * 1000
	if f > 0 {
		ylo, yhi = min(ylo, f), max(yhi, f)
	}
	x := logAxis("message size (log scale)", xlo, max(xhi, xlo*2), 2, func(v float64) string { return sizeName(int64(v)) })
	y := logAxis("MB/s (log scale)", ylo, yhi, 10, func(v float64) string { return fmt.Sprintf("%g", v) })
	c := newCanvas(title, 860, 480, 80, 170, 50, x, y)
	c.frame(true)
	for _, s := range ss {
		c.series(s)
	}
	if f > 0 {
		c.hline("memcpy floor", f)
	}
	return c.String()
}

// clientsPlot draws calls per second against the number of clients
// (one client: the ping workload).
func clientsPlot(rep *Report) string {
	const title = "calls per second against concurrent clients (ping, one server)"
	ss := seriesBy(rep, func(r *Result) bool { return r.Workload == "ping" && r.OpsPerSec > 0 && r.hist != nil },
		func(r *Result) point { return point{float64(r.Clients), r.OpsPerSec} })
	ss = slices.DeleteFunc(ss, func(s series) bool { return len(s.points) < 2 })
	if len(ss) == 0 {
		return emptyPlot(title, "no results with more than one client count in this run")
	}
	xlo, xhi, ylo, yhi := bounds(ss)
	x := logAxis("clients (log scale)", xlo, max(xhi, xlo*2), 2, func(v float64) string { return fmt.Sprintf("%g", v) })
	y := logAxis("calls/s, all clients (log scale)", ylo, yhi, 10, func(v float64) string { return fmt.Sprintf("%g", v) })
	c := newCanvas(title, 860, 480, 80, 170, 50, x, y)
	c.frame(true)
	for _, s := range ss {
		s.markers = true
		c.series(s)
	}
	return c.String()
}
