//go:build linux

package main

import (
	"fmt"
	"strconv"
	"strings"
)

// benchText is bench.txt: the run's results in Go's benchmark format
// (https://go.dev/design/14313-benchmark-format), so that benchstat
// compares two runs:
//
//	benchstat old/bench.txt new/bench.txt
//
// The header holds the configuration that must match for two runs to
// compare (goos, goarch, pkg, cpu); the machine's other facts are in
// report.md. Each result is one line: its name says the workload and, as
// "/key=value" parts, the transport, size and clients (benchstat can
// group by them: -col /transport); its iteration count is the calls
// measured; ns/op is the mean call time, then p50-ns, p99-ns, MB/s,
// calls/s, allocs/op, sleeps/op, peer-sleeps/op and cpu-pct where the
// result has them.
func benchText(rep *Report) string {
	var b strings.Builder
	fmt.Fprintf(&b, "goos: %s\ngoarch: %s\npkg: github.com/capnshm/capnshm/bench\n", rep.Machine.OS, rep.Machine.Arch)
	if m := rep.Machine.CPUModel; m != "" {
		fmt.Fprintf(&b, "cpu: %s\n", m)
	}
	procs := rep.Machine.GOMAXPROCS
	line := func(name string, n int64, metrics ...benchMetric) {
		fmt.Fprintf(&b, "%s-%d\t%d", name, procs, max(n, 1))
		for _, m := range metrics {
			fmt.Fprintf(&b, "\t%s %s", strconv.FormatFloat(m.v, 'f', -1, 64), m.unit)
		}
		b.WriteString("\n")
	}
	f := rep.Floors
	if f.SpinRTT > 0 {
		line("BenchmarkFloor/kind=spin", int64(f.Rounds), benchMetric{float64(f.SpinRTT), "p50-ns"})
	}
	if f.EventfdRTT > 0 {
		line("BenchmarkFloor/kind=eventfd", int64(f.Rounds), benchMetric{float64(f.EventfdRTT), "p50-ns"})
	}
	if f.MemcpyGBps > 0 {
		line("BenchmarkFloor/kind=memcpy", 1, benchMetric{round(f.MemcpyGBps*1000, 1), "MB/s"})
	}
	for _, r := range rep.Results {
		name := "Benchmark" + capitalize(r.Workload) + "/transport=" + r.Transport
		if r.Size > 0 && r.Workload != "ring" {
			name += "/size=" + sizeName(r.Size)
		}
		if r.Workload == "ping" {
			name += fmt.Sprintf("/clients=%d", r.Clients)
		}
		if r.OpenLoop {
			name += "/loop=open"
		}
		var ms []benchMetric
		if r.Mean > 0 {
			ms = append(ms, benchMetric{float64(r.Mean), "ns/op"})
		}
		if r.P50 > 0 {
			ms = append(ms, benchMetric{float64(r.P50), "p50-ns"}, benchMetric{float64(r.P99), "p99-ns"})
		}
		if r.MBps > 0 {
			ms = append(ms, benchMetric{round(r.MBps, 2), "MB/s"})
		}
		if r.OpsPerSec > 0 && r.Workload == "ping" {
			ms = append(ms, benchMetric{round(r.OpsPerSec, 1), "calls/s"})
		}
		if r.AllocsPerOp != nil {
			ms = append(ms, benchMetric{round(*r.AllocsPerOp, 2), "allocs/op"})
		}
		if r.SleepsPerOp != nil {
			ms = append(ms, benchMetric{round(*r.SleepsPerOp, 2), "sleeps/op"})
		}
		if r.PeerSleepsPerOp != nil {
			ms = append(ms, benchMetric{round(*r.PeerSleepsPerOp, 2), "peer-sleeps/op"})
		}
		if r.CPUPct != nil {
			ms = append(ms, benchMetric{round(*r.CPUPct, 4), "cpu-pct"})
		}
		if len(ms) == 0 {
			continue
		}
		line(name, r.Ops, ms...)
	}
	return b.String()
}

type benchMetric struct {
	v    float64
	unit string
}

func round(v float64, digits int) float64 {
	f, _ := strconv.ParseFloat(strconv.FormatFloat(v, 'f', digits, 64), 64)
	return f
}
