//go:build linux

package main

import (
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
	"unicode"
)

// reportFiles are the files writeReport writes.
var reportFiles = []string{"report.md", "results.json", "bench.txt", plotLatency, plotLatencyCDF, plotThroughput, plotClients}

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

// rateName formats a rate (MB/s, calls/s) with sense of its size.
func rateName(v float64) string {
	switch {
	case v <= 0:
		return "-"
	case v >= 100:
		return fmt.Sprintf("%.0f", v)
	}
	return fmt.Sprintf("%.2g", v)
}

// rows returns the results table's header and rows.
func rows(rep *Report) ([]string, [][]string) {
	head := []string{"workload", "transport", "size", "clients", "ops", "p50", "p99", "p99.9", "max", "MB/s", "calls/s", "allocs/op", "thread sleeps/op (client+server)", "copied B/op (client+server)", "CPU %"}
	var out [][]string
	for _, r := range rep.Results {
		size, cpu, allocs, sleeps, copied, calls := "-", "-", "-", "-", "-", "-"
		if r.Size > 0 {
			size = sizeName(r.Size)
		}
		if r.CPUPct != nil {
			cpu = fmt.Sprintf("%.3f", *r.CPUPct)
		}
		if r.AllocsPerOp != nil {
			allocs = fmt.Sprintf("%.1f", *r.AllocsPerOp)
		}
		if r.SleepsPerOp != nil {
			sleeps = fmt.Sprintf("%.1f", *r.SleepsPerOp)
			if r.PeerSleepsPerOp != nil {
				sleeps += fmt.Sprintf("+%.1f", *r.PeerSleepsPerOp)
			}
		}
		if r.CopiedBytes != nil && r.Ops > 0 {
			copied = fmt.Sprintf("%.0f", float64(*r.CopiedBytes)/float64(r.Ops))
			if r.PeerCopiedBytes != nil {
				copied += fmt.Sprintf("+%.0f", float64(*r.PeerCopiedBytes)/float64(r.Ops))
			}
		}
		if r.Workload == "ping" || r.Workload == "echo" {
			calls = rateName(r.OpsPerSec)
		}
		w := r.Workload
		if r.OpenLoop {
			w += " (open loop)"
		}
		row := []string{w, r.Transport, size, fmt.Sprint(r.Clients), fmt.Sprint(r.Ops), dur(r.P50), dur(r.P99), dur(r.P999), dur(r.Max), rateName(r.MBps), calls, allocs, sleeps, copied, cpu}
		if r.Workload == "stream" || r.Workload == "idle" {
			for i := 5; i <= 8; i++ {
				row[i] = "-"
			}
		}
		if r.Workload == "idle" {
			row[4] = "-"
		}
		out = append(out, row)
	}
	return head, out
}

func floorsLine(f Floors) string { return "floors " + floorsText(f) }

func floorsText(f Floors) string {
	if f.SpinRTT == 0 && f.EventfdRTT == 0 {
		return "not measured in this run (workload floors)"
	}
	return fmt.Sprintf("(same run, two processes, %d round trips): spin on a shared cache line p50 %s, blocking eventfd pair p50 %s; memcpy %.1f GB/s",
		f.Rounds, dur(f.SpinRTT), dur(f.EventfdRTT), f.MemcpyGBps)
}

func printTable(w io.Writer, rep *Report) {
	fmt.Fprintln(w, "machine:", rep.Machine)
	fmt.Fprintln(w, floorsLine(rep.Floors))
	for _, tr := range slices.Sorted(maps.Keys(rep.NotMeasured)) {
		fmt.Fprintf(w, "%s: %s\n", tr, rep.NotMeasured[tr])
	}
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

// figureOf is what a target's row shows as measured.
func figureOf(t Target) string {
	if t.Status == statusNotMeasured {
		return t.Note
	}
	return t.Measured
}

func printTargets(w io.Writer, ts []Target) {
	fmt.Fprintln(w, "targets (ratios from this run, p50 for latency):")
	for _, t := range ts {
		fmt.Fprintf(w, "  %-14s %s: %s\n", "["+t.Status+"]", t.Name, figureOf(t))
	}
}

// writeReport writes the report's files into dir.
func writeReport(dir string, rep *Report) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	js, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return err
	}
	files := map[string]string{
		"results.json": string(js) + "\n",
		"report.md":    markdown(rep),
		"bench.txt":    benchText(rep),
		plotLatency:    latencyPlot(rep),
		plotLatencyCDF: latencyCDFPlot(rep),
		plotThroughput: throughputPlot(rep),
		plotClients:    clientsPlot(rep),
	}
	for _, name := range reportFiles {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(files[name]), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// markdown is report.md.
func markdown(rep *Report) string {
	var b strings.Builder
	b.WriteString("# capnshm bench\n\n")
	fmt.Fprintf(&b, "- **Machine**: %s\n", rep.Machine)
	fmt.Fprintf(&b, "- **Run**: took %s; %s per measurement", rep.Elapsed, rep.Duration)
	if rep.Quick {
		b.WriteString(" (-quick)")
	}
	if rep.Rate > 0 {
		fmt.Fprintf(&b, "; ping and echo open loop at %.0f calls/s, latency from each call's intended send time (the C++ peer runs closed loop)", rep.Rate)
	}
	b.WriteString("\n")
	fmt.Fprintf(&b, "- **Floors** %s\n", floorsText(rep.Floors))
	for _, tr := range slices.Sorted(maps.Keys(rep.NotMeasured)) {
		fmt.Fprintf(&b, "- **%s**: %s\n", tr, rep.NotMeasured[tr])
	}
	b.WriteString("\nEach transport is named by what runs the RPC and over what: `engine-*` is capnshm's engine " +
		"(rpc.Dial/rpc.Listen; `engine-shm` the adaptive wait strategy, `-spin` busy-spins, `-block` parks at once), " +
		"`gocapnp-*` is go-capnp's rpc.Conn on both ends (`gocapnp-shm` over capnshm's shared-memory transport, " +
		"`gocapnp-unix` and `-tcp` over go-capnp's own stream transport), `cpp-ezrpc-*` is Cap'n Proto's C++ EZ-RPC " +
		"on both ends (bench/cpp/peer.c++, which runs ping and echo only), `*-pipe` runs both ends in the bench's process over net.Pipe and `*-mem` over each implementation's own in-process pipe (capnshm's rpc.Pipe, which hands messages over by reference; go-capnp's transport.NewPipe, which copies them) " +
		"(no idle pair to measure there). " +
		"Client and server are separate processes otherwise. Latencies are per round trip, from an HDR histogram " +
		"(the C++ peer sorts its own samples); MB/s is payload bytes in one direction per second (echo: size / mean call time); " +
		"allocs/op counts the bench process's heap allocations per call (the caller; for the pipes both ends); " +
		"thread sleeps/op are the voluntary context switches of each process's threads per call (getrusage; for the pipes both ends are the first figure): " +
		"each is a thread that blocked and had to be woken, by a doorbell, a socket or the Go runtime handing a goroutine to an idle P; " +
		"copied bytes are what capnshm's shared-memory transport copied over the measured calls (inline messages, messages it had to put on the socket; " +
		"the stream transports copy every byte and do not count it).\n\n")

	b.WriteString("## Targets\n\nRatios from this run, p50 for latency.\n\n")
	targetTable := func(issue bool) {
		b.WriteString("| target | measured | status |\n|---|---|---|\n")
		for _, t := range rep.Targets {
			if t.Issue11 == issue {
				fmt.Fprintf(&b, "| %s | %s | **%s** |\n", t.Name, strings.ReplaceAll(figureOf(t), "|", "\\|"), t.Status)
			}
		}
	}
	b.WriteString("### Issue 11\n\n")
	targetTable(true)
	b.WriteString("\n### The transport's own\n\n")
	targetTable(false)

	b.WriteString("\n## Closing note\n\n")
	var missed, absent []Target
	for _, t := range rep.Targets {
		switch t.Status {
		case statusMissed:
			missed = append(missed, t)
		case statusNotMeasured:
			absent = append(absent, t)
		}
	}
	if len(missed) == 0 {
		b.WriteString("Every target measured in this run was met.\n")
	} else {
		b.WriteString("Each missed target, with what this run shows of the gap and what would close it:\n\n")
		for _, t := range missed {
			fmt.Fprintf(&b, "- **%s**: measured %s. %s.\n", t.Name, t.Measured, t.Note)
		}
	}
	if len(absent) > 0 {
		b.WriteString("\nNot measured:\n\n")
		for _, t := range absent {
			fmt.Fprintf(&b, "- %s: %s.\n", t.Name, t.Note)
		}
	}

	b.WriteString("\n## Results\n\n")
	head, rs := rows(rep)
	fmt.Fprintf(&b, "| %s |\n|%s\n", strings.Join(head, " | "), strings.Repeat("---|", len(head)))
	for _, r := range rs {
		fmt.Fprintf(&b, "| %s |\n", strings.Join(r, " | "))
	}
	fmt.Fprintf(&b, "\n## Plots\n\n![ping latency per transport](%s)\n\n![ping latency distribution](%s)\n\n![echo throughput against size](%s)\n\n![calls per second against clients](%s)\n\n",
		plotLatency, plotLatencyCDF, plotThroughput, plotClients)
	b.WriteString("Raw results: [results.json](results.json); [bench.txt](bench.txt) in Go benchmark format, " +
		"for `benchstat old/bench.txt new/bench.txt`.\n")
	return b.String()
}

// capitalize returns s with its first letter in upper case.
func capitalize(s string) string {
	if s == "" {
		return s
	}
	r := []rune(s)
	r[0] = unicode.ToUpper(r[0])
	return string(r)
}
