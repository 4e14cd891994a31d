//go:build linux

package main

import (
	"bytes"
	"context"
	"encoding/json"
	"encoding/xml"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestQuickJSON builds the program and runs the whole suite in -quick mode
// with a tiny duration and a short idle measurement, and checks that stdout
// is one JSON document holding every workload each transport runs (the
// C++ ones measured, or said not measured and why), the targets, and that
// the report directory was written.
func TestQuickJSON(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the bench program (about 30 s)")
	}
	dir := t.TempDir()
	exe := filepath.Join(dir, "bench")
	build := exec.Command("go", "build", "-o", exe, ".")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	out := filepath.Join(dir, "report")
	cmd := exec.CommandContext(ctx, exe, "-quick", "-json", "-duration", "20ms", "-rounds", "2000",
		"-idle", "200ms", "-sizes", "64,1MiB", "-stream-total", "16MiB", "-inplace-size", "4MiB", "-out", out)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("bench: %v\nstderr:\n%s", err, stderr.String())
	}
	var rep struct {
		Floors      map[string]float64 `json:"floors"`
		Results     []map[string]any   `json:"results"`
		Targets     []Target           `json:"targets"`
		NotMeasured map[string]string  `json:"not_measured"`
		Machine     Machine            `json:"machine"`
	}
	dec := json.NewDecoder(&stdout)
	if err := dec.Decode(&rep); err != nil {
		t.Fatalf("stdout is not JSON: %v\n%s", err, stdout.String())
	}
	if dec.More() {
		t.Fatalf("stdout holds more than one JSON document")
	}
	for _, k := range []string{"spin_rtt_ns", "eventfd_rtt_ns", "memcpy_gbps"} {
		if rep.Floors[k] <= 0 {
			t.Errorf("floors.%s = %v, want > 0", k, rep.Floors[k])
		}
	}
	if rep.Machine.CPUs <= 0 || rep.Machine.Go == "" || rep.Machine.GOMAXPROCS <= 0 {
		t.Errorf("machine %+v", rep.Machine)
	}
	seen := map[string]bool{}
	for _, r := range rep.Results {
		w, _ := r["workload"].(string)
		tr, _ := r["transport"].(string)
		if c, _ := r["clients"].(float64); w == "ping" && c > 1 {
			w = "clients"
			if ops, _ := r["ops_per_sec"].(float64); ops <= 0 {
				t.Errorf("ping/%s with %v clients: ops_per_sec %v", tr, c, r["ops_per_sec"])
			}
		}
		seen[w+"/"+tr] = true
		switch w {
		case "ping", "echo", "inplace", "ring":
			if p50, _ := r["p50_ns"].(float64); p50 <= 0 {
				t.Errorf("%s/%s: p50_ns %v", w, tr, r["p50_ns"])
			}
			if _, ok := r["allocs_per_op"]; w != "ring" && !strings.HasPrefix(tr, implCpp) && !ok {
				t.Errorf("%s/%s: no allocs_per_op", w, tr)
			}
		case "stream":
			if mbps, _ := r["mbps"].(float64); mbps <= 0 {
				t.Errorf("stream/%s: mbps %v", tr, r["mbps"])
			}
		case "idle":
			if _, ok := r["cpu_pct"].(float64); !ok {
				t.Errorf("idle/%s: no cpu_pct", tr)
			}
		}
		if w == "echo" && (tr == "engine-shm" || tr == "gocapnp-shm") {
			if _, ok := r["copied_bytes"]; !ok {
				t.Errorf("echo/%s: no copied_bytes", tr)
			}
		}
	}
	for _, d := range transportDefs {
		if why, ok := rep.NotMeasured[d.name]; ok {
			if d.impl != implCpp || !strings.Contains(why, "not measured") {
				t.Errorf("%s not measured: %q", d.name, why)
			}
			if os.Getenv("CAPNSHM_REQUIRE_CPP") == "1" {
				t.Errorf("%s not measured (%s); CAPNSHM_REQUIRE_CPP=1 makes this a failure", d.name, why)
			}
			continue
		}
		for _, w := range rpcWorkloads {
			if d.supports(w) != seen[w+"/"+d.name] {
				t.Errorf("%s on %s: result %v, want %v", w, d.name, seen[w+"/"+d.name], d.supports(w))
			}
		}
		if d.ringLabel != "" && !seen["ring/"+d.ringLabel] {
			t.Errorf("no ring result for %s", d.ringLabel)
		}
	}
	if len(rep.Targets) != len(targets(&Report{})) {
		t.Errorf("%d targets, want %d", len(rep.Targets), len(targets(&Report{})))
	}
	for _, tg := range rep.Targets {
		if tg.Status != statusNotMeasured && tg.Measured == "" {
			t.Errorf("target %q: %s with nothing measured", tg.Name, tg.Status)
		}
	}
	for _, f := range reportFiles {
		b, err := os.ReadFile(filepath.Join(out, f))
		if err != nil || len(b) == 0 {
			t.Errorf("report file %s: %v (%d bytes)", f, err, len(b))
		}
	}
	md, _ := os.ReadFile(filepath.Join(out, "report.md"))
	for _, want := range []string{"## Targets", "### Issue 11", "## Closing note", "**Machine**"} {
		if !strings.Contains(string(md), want) {
			t.Errorf("report.md has no %q", want)
		}
	}
	txt, _ := os.ReadFile(filepath.Join(out, "bench.txt"))
	checkBenchText(t, string(txt))
}

func TestParseSize(t *testing.T) {
	for s, want := range map[string]int64{"64": 64, "4KiB": 4 << 10, "16MiB": 16 << 20, "1GiB": 1 << 30, "2M": 2 << 20, "10B": 10} {
		if got, err := parseSize(s); err != nil || got != want {
			t.Errorf("parseSize(%q) = %d, %v; want %d", s, got, err, want)
		}
		if got := sizeName(want); s != "2M" && s != "64" && got != s {
			t.Errorf("sizeName(%d) = %q, want %q", want, got, s)
		}
	}
	if _, err := parseSize("x"); err == nil {
		t.Error("parseSize(x) succeeded")
	}
}

func TestParseTransports(t *testing.T) {
	for _, c := range []struct {
		in   string
		want []string
		err  string
	}{
		{in: "gocapnp-tcp,engine-shm", want: []string{"engine-shm", "gocapnp-tcp"}},
		{in: "shm,unix,shm-block", want: []string{"engine-shm", "engine-shm-block", "engine-unix"}},
		{in: "cpp-ezrpc", want: []string{"cpp-ezrpc-unix", "cpp-ezrpc-tcp"}},
		{in: "gocapnp, engine-pipe,gocapnp-shm", want: []string{"engine-pipe", "gocapnp-shm", "gocapnp-unix", "gocapnp-tcp", "gocapnp-pipe", "gocapnp-mem", "gocapnp-unix-1p"}},
		{in: "engine", want: []string{"engine-shm", "engine-shm-spin", "engine-shm-block", "engine-unix", "engine-tcp", "engine-pipe", "engine-mem", "engine-shm-1p", "engine-unix-1p"}},
		{in: "1p,cpp-ezrpc-unix", want: []string{"cpp-ezrpc-unix", "engine-shm-1p", "engine-unix-1p", "gocapnp-unix-1p"}},
		{in: "", want: nil},
		{in: "shm,udp", err: `unknown transport "udp"`},
		{in: "gocapnp-shm-spin", err: `unknown transport "gocapnp-shm-spin"`},
	} {
		got, err := parseTransports(c.in)
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("parseTransports(%q): error %v, want %q", c.in, err, c.err)
			}
			continue
		}
		if err != nil || !slices.Equal(got, c.want) {
			t.Errorf("parseTransports(%q) = %v, %v; want %v", c.in, got, err, c.want)
		}
	}
}

// TestFlagErrors: every bad flag is refused with exit status 2 and a
// message that names the flag and what was wrong, before anything runs.
func TestFlagErrors(t *testing.T) {
	for _, c := range []struct {
		args []string
		msg  string
	}{
		{[]string{"-transports", "shm,quic"}, `-transports: unknown transport "quic"`},
		{[]string{"-workloads", "ping,pong"}, `-workloads: unknown "pong"`},
		{[]string{"-sizes", "64,huge"}, `-sizes: bad size "huge"`},
		{[]string{"-sizes", "1GiB"}, `-sizes: bad size "1GiB"`},
		{[]string{"-sizes", "300MiB", "-transports", "cpp-ezrpc-unix", "-workloads", "echo"}, "over the C++ peer's largest echo"},
		{[]string{"-clients", "1,0"}, `-clients: bad count "0"`},
		{[]string{"-stream-total", "-1"}, "-stream-total: bad size"},
		{[]string{"-inplace-size", "1GiB"}, "-inplace-size: bad size"},
		{[]string{"-workloads", "inplace", "-transports", "cpp-ezrpc"}, "nothing to measure"},
		{[]string{"-workloads", ""}, "nothing to measure"},
		{[]string{"-nosuchflag"}, "flag provided but not defined"},
	} {
		var stdout, stderr bytes.Buffer
		if rc := realMain(c.args, &stdout, &stderr); rc != 2 {
			t.Errorf("%q: exit status %d, want 2 (stderr %q)", c.args, rc, stderr.String())
		}
		if !strings.Contains(stderr.String(), c.msg) {
			t.Errorf("%q: stderr %q, want it to contain %q", c.args, stderr.String(), c.msg)
		}
		if stdout.Len() != 0 {
			t.Errorf("%q: stdout %q, want nothing", c.args, stdout.String())
		}
	}
}

func testConfig(workloads, transports []string) *config {
	return &config{
		workloads: workloads, transports: transports,
		sizes: []int64{64, 16 << 20}, duration: 100 * time.Millisecond, rounds: 1000, idle: time.Second,
		streamTotal: 64 << 20, inplaceSize: 4 << 20, clients: []int{1, 2, 8},
	}
}

// TestPlan: which steps each transport gets, in order, with what.
func TestPlan(t *testing.T) {
	all := plan(testConfig(allWorkloads, allTransports))
	byTransport := map[string][]string{}
	for _, s := range all {
		if s.weight <= 0 {
			t.Errorf("%s: weight %v", s, s.weight)
		}
		byTransport[s.transport] = append(byTransport[s.transport], s.String())
		if strings.HasPrefix(s.transport, implCpp) != (s.calls > 0) {
			t.Errorf("%s: %d C++ calls", s, s.calls)
		}
	}
	want := map[string][]string{
		"":               {"floors"},
		"shm":            {"ring shm 8B"},
		"shm-spin":       {"ring shm-spin 8B"},
		"shm-block":      {"ring shm-block 8B"},
		"engine-shm":     {"ping engine-shm", "echo engine-shm 64B", "echo engine-shm 16MiB", "inplace engine-shm 4MiB", "stream engine-shm 64MiB", "clients engine-shm x2 clients", "clients engine-shm x8 clients", "idle engine-shm"},
		"engine-pipe":    {"ping engine-pipe", "echo engine-pipe 64B", "echo engine-pipe 16MiB", "inplace engine-pipe 4MiB", "stream engine-pipe 64MiB", "clients engine-pipe x2 clients", "clients engine-pipe x8 clients"},
		"gocapnp-unix":   {"ping gocapnp-unix", "echo gocapnp-unix 64B", "echo gocapnp-unix 16MiB", "inplace gocapnp-unix 4MiB", "stream gocapnp-unix 64MiB", "clients gocapnp-unix x2 clients", "clients gocapnp-unix x8 clients", "idle gocapnp-unix"},
		"cpp-ezrpc-unix": {"ping cpp-ezrpc-unix", "echo cpp-ezrpc-unix 64B", "echo cpp-ezrpc-unix 16MiB"},
		"engine-shm-1p":  {"ping engine-shm-1p", "echo engine-shm-1p 64B", "echo engine-shm-1p 16MiB", "clients engine-shm-1p x2 clients", "clients engine-shm-1p x8 clients"},
	}
	for tr, steps := range want {
		if !slices.Equal(byTransport[tr], steps) {
			t.Errorf("steps of %q:\n got %q\nwant %q", tr, byTransport[tr], steps)
		}
	}
	if all[0].workload != "floors" || all[len(all)-1].transport != "gocapnp-unix-1p" {
		t.Errorf("first step %s, last %s", all[0], all[len(all)-1])
	}
	// Without ping, one client is a clients step; without an engine shm
	// transport, no ring.
	steps := plan(testConfig([]string{"ring", "clients"}, []string{"gocapnp-shm"}))
	var got []string
	for _, s := range steps {
		got = append(got, s.String())
	}
	if w := []string{"clients gocapnp-shm", "clients gocapnp-shm x2 clients", "clients gocapnp-shm x8 clients"}; !slices.Equal(got, w) {
		t.Errorf("clients without ping: %q, want %q", got, w)
	}
}

func TestCppCallsFor(t *testing.T) {
	for _, c := range []struct {
		d        time.Duration
		workload string
		size     int64
		lo, hi   int
	}{
		{time.Second, "ping", 0, 20_000, 40_000},
		{100 * time.Millisecond, "ping", 0, 2_000, 4_000},
		{time.Second, "echo", 64 << 20, 3, 20},
		{time.Millisecond, "echo", 64 << 20, 3, 3},
		{time.Hour, "ping", 0, 200_000, 200_000},
	} {
		if n := cppCallsFor(c.d, c.workload, c.size); n < c.lo || n > c.hi {
			t.Errorf("cppCallsFor(%v, %s, %d) = %d, want %d..%d", c.d, c.workload, c.size, n, c.lo, c.hi)
		}
	}
}

func ptr[T any](v T) *T { return &v }

// syntheticReport is a run with every figure the targets read, made up:
// ping p50s in µs by transport, and the rest.
func syntheticReport(pingUs map[string]int64) *Report {
	rep := &Report{
		Floors:  Floors{SpinRTT: 300, EventfdRTT: 5000, MemcpyGBps: 6, Rounds: 1000},
		Machine: Machine{OS: "linux", Arch: "amd64", CPUs: 2, GOMAXPROCS: 2, CPUModel: "Test CPU @ 1GHz", Kernel: "Linux 6.1.0 x86_64", Go: "go1.26.8"},
		Elapsed: "1m0s", Duration: "1s",
	}
	add := func(r *Result) { rep.Results = append(rep.Results, r) }
	for _, tr := range allTransports {
		us, ok := pingUs[tr]
		if !ok {
			continue
		}
		r := &Result{Workload: "ping", Transport: tr, Clients: 1, Ops: 1000, P50: us * 1000, P90: us * 1100, P99: us * 2000, P999: us * 3000, Max: us * 4000, Mean: us * 1200, OpsPerSec: 1e6 / float64(us)}
		if !strings.HasPrefix(tr, implCpp) {
			r.AllocsPerOp = ptr(8.0)
		}
		add(r)
	}
	add(&Result{Workload: "ring", Transport: "shm", Size: 8, Clients: 1, Ops: 1000, P50: 2000, P99: 3000, Mean: 2100})
	add(&Result{Workload: "ring", Transport: "shm-spin", Size: 8, Clients: 1, Ops: 1000, P50: 500, P99: 900, Mean: 600})
	add(&Result{Workload: "ring", Transport: "shm-block", Size: 8, Clients: 1, Ops: 1000, P50: 6000, P99: 9000, Mean: 6500})
	add(&Result{Workload: "echo", Transport: "engine-shm", Size: 16 << 20, Clients: 1, Ops: 100, P50: 4e6, P99: 5e6, Mean: 4e6, MBps: 4000, CopiedBytes: ptr(uint64(4800)), PeerCopiedBytes: ptr(uint64(2400))})
	add(&Result{Workload: "echo", Transport: "engine-unix", Size: 16 << 20, Clients: 1, Ops: 40, P50: 25e6, P99: 30e6, Mean: 25e6, MBps: 600})
	add(&Result{Workload: "echo", Transport: "gocapnp-unix", Size: 16 << 20, Clients: 1, Ops: 30, P50: 30e6, P99: 40e6, Mean: 30e6, MBps: 500})
	add(&Result{Workload: "ping", Transport: "engine-shm", Clients: 8, Ops: 100000, P50: 50000, P99: 90000, Mean: 60000, OpsPerSec: 90000})
	add(&Result{Workload: "ping", Transport: "gocapnp-unix", Clients: 8, Ops: 30000, P50: 200000, P99: 400000, Mean: 250000, OpsPerSec: 20000})
	add(&Result{Workload: "stream", Transport: "engine-shm", Size: 1 << 30, Clients: 1, Ops: 1024, MBps: 4000})
	add(&Result{Workload: "stream", Transport: "engine-unix", Size: 1 << 30, Clients: 1, Ops: 1024, MBps: 500})
	add(&Result{Workload: "idle", Transport: "engine-shm", Clients: 1, CPUPct: ptr(0.3)})
	return rep
}

func targetByName(t *testing.T, ts []Target, prefix string) Target {
	t.Helper()
	for _, tg := range ts {
		if strings.HasPrefix(tg.Name, prefix) {
			return tg
		}
	}
	t.Fatalf("no target %q", prefix)
	return Target{}
}

// TestTargets computes the targets from made-up reports and checks each
// status, figure and note.
func TestTargets(t *testing.T) {
	pings := map[string]int64{"engine-shm": 12, "engine-shm-block": 20, "engine-unix": 25, "engine-pipe": 5, "gocapnp-unix": 60, "gocapnp-pipe": 25, "cpp-ezrpc-unix": 30,
		"engine-shm-1p": 9, "engine-unix-1p": 36, "gocapnp-unix-1p": 40}
	ts := targets(syntheticReport(pings))
	for _, c := range []struct {
		prefix, status string
		value          float64
		note           string
	}{
		{"engine ping over shm ≤ 1/3 of C++", statusMissed, 0.4, "must come down from 12µs to 10µs"},
		{"engine ping over shm ≤ 1/4 of go-capnp", statusMet, 0.2, ""},
		{"engine ping over shm with parked peers", statusMissed, 4, "the raw ring round trip (shm-block) is 6µs of its 20µs"},
		{"engine ping over unix ≤ C++", statusMet, 25.0 / 30, ""},
		{"engine ping, both ends in one process", statusMet, 0.2, ""},
		{"allocations per ping", statusMet, 8, ""},
		{"8 clients on one server", statusMet, 4.5, ""},
		{"16 MiB echo over shm", statusMet, 7.5, ""},
		{"idle connected pair", statusMet, 0.3, ""},
		{"engine ping: shm ≥3x faster than unix", statusMissed, 25.0 / 12, "engine-shm ping p50 must come down to 8.33µs"},
		{"echo 16 MiB: engine shm ≥5x", statusMet, 6.25, ""},
		{"streaming", statusMet, 8, ""},
		{"raw ring, busy-spin", statusMet, 500.0 / 300, ""},
		{"raw ring, block", statusMet, 1.2, ""},
		{"GOMAXPROCS=1: engine ping over shm ≤ 1/3", statusMet, 0.3, ""},
		{"GOMAXPROCS=1: engine ping over shm ≤ 1/4", statusMet, 9.0 / 40, ""},
		{"GOMAXPROCS=1: engine ping over unix", statusMissed, 36.0 / 30, "no idle P"},
	} {
		tg := targetByName(t, ts, c.prefix)
		if tg.Status != c.status || (tg.Value-c.value) > 1e-9 || (c.value-tg.Value) > 1e-9 {
			t.Errorf("%s: %s %v, want %s %v (%s; %s)", tg.Name, tg.Status, tg.Value, c.status, c.value, tg.Measured, tg.Note)
		}
		if !strings.Contains(tg.Note, c.note) || (c.note == "" && tg.Note != "") {
			t.Errorf("%s: note %q, want %q", tg.Name, tg.Note, c.note)
		}
	}
	if n := len(ts); n != 17 {
		t.Errorf("%d targets, want 17", n)
	}
	issue := 0
	for _, tg := range ts {
		if tg.Issue11 {
			issue++
		}
	}
	if issue != 9 {
		t.Errorf("%d targets of issue 11, want its 9 rows", issue)
	}

	// C++ not measured: the targets that need it say why.
	rep := syntheticReport(pings)
	rep.Results = slices.DeleteFunc(rep.Results, func(r *Result) bool { return strings.HasPrefix(r.Transport, implCpp) })
	rep.NotMeasured = map[string]string{"cpp-ezrpc-unix": "not measured: C++ EZ-RPC needs g++"}
	tg := targetByName(t, targets(rep), "engine ping over unix ≤ C++")
	if tg.Status != statusNotMeasured || !strings.Contains(tg.Note, "cpp-ezrpc-unix not measured: C++ EZ-RPC needs g++") {
		t.Errorf("without C++: %+v", tg)
	}

	// Copies of the payload, too many allocations, a busy idle pair: missed.
	rep = syntheticReport(pings)
	for _, r := range rep.Results {
		switch {
		case r.Workload == "echo" && r.Transport == "engine-shm":
			r.PeerCopiedBytes = ptr(uint64(16 << 20))
		case r.Workload == "ping" && r.Transport == "engine-shm" && r.Clients == 1:
			r.AllocsPerOp = ptr(41.0)
		case r.Workload == "idle":
			r.CPUPct = ptr(3.0)
		}
	}
	ts = targets(rep)
	for prefix, note := range map[string]string{
		"16 MiB echo over shm":  "payload bytes were copied",
		"allocations per ping":  "31.0 allocations too many",
		"idle connected pair":   "an idle pair must park",
		"8 clients on one serv": "",
	} {
		tg := targetByName(t, ts, prefix)
		if note == "" {
			if tg.Status != statusMet {
				t.Errorf("%s: %s", tg.Name, tg.Status)
			}
			continue
		}
		if tg.Status != statusMissed || !strings.Contains(tg.Note, note) {
			t.Errorf("%s: %s %q, want missed with %q", tg.Name, tg.Status, tg.Note, note)
		}
	}

	// Open loop against closed loop does not compare.
	rep = syntheticReport(pings)
	for _, r := range rep.Results {
		if r.Transport == "engine-unix" && r.Workload == "ping" {
			r.OpenLoop = true
		}
	}
	tg = targetByName(t, targets(rep), "engine ping over unix ≤ C++")
	if tg.Status != statusNotMeasured || !strings.Contains(tg.Note, "one ran open loop (-rate), the other closed loop") {
		t.Errorf("open against closed loop: %+v", tg)
	}

	// An empty run: everything not measured, each saying what is missing.
	for _, tg := range targets(&Report{}) {
		if tg.Status != statusNotMeasured || tg.Note == "" {
			t.Errorf("empty run: %+v", tg)
		}
	}
}

// benchLine is a result line of Go's benchmark format: a name without
// spaces ending in -GOMAXPROCS, an iteration count, then value-unit pairs.
var benchLine = regexp.MustCompile(`^Benchmark[A-Z]\S*-\d+\t\d+(\t-?[0-9.]+(e[-+]?\d+)? \S+)+$`)

func checkBenchText(t *testing.T, text string) {
	t.Helper()
	lines := strings.Split(strings.TrimSuffix(text, "\n"), "\n")
	results := 0
	for _, l := range lines {
		switch {
		case strings.HasPrefix(l, "Benchmark"):
			results++
			if !benchLine.MatchString(l) {
				t.Errorf("bench.txt: bad line %q", l)
			}
		case regexp.MustCompile(`^[a-z][a-z0-9-]*: \S`).MatchString(l):
		default:
			t.Errorf("bench.txt: neither a configuration nor a result line: %q", l)
		}
	}
	if results == 0 {
		t.Errorf("bench.txt has no results:\n%s", text)
	}
	for _, h := range []string{"goos: ", "goarch: ", "pkg: "} {
		if !strings.Contains(text, "\n"+h) && !strings.HasPrefix(text, h) {
			t.Errorf("bench.txt has no %q line", h)
		}
	}
}

func TestBenchText(t *testing.T) {
	rep := syntheticReport(map[string]int64{"engine-shm": 12, "cpp-ezrpc-unix": 30})
	rep.Results = append(rep.Results, &Result{Workload: "ping", Transport: "engine-unix", Clients: 1, Ops: 10, P50: 1000, P99: 2000, Mean: 1500, OpenLoop: true})
	text := benchText(rep)
	checkBenchText(t, text)
	for _, want := range []string{
		"cpu: Test CPU @ 1GHz\n",
		"BenchmarkFloor/kind=spin-2\t1000\t300 p50-ns\n",
		"BenchmarkFloor/kind=memcpy-2\t1\t6000 MB/s\n",
		"BenchmarkPing/transport=engine-shm/clients=1-2\t1000\t14400 ns/op\t12000 p50-ns\t24000 p99-ns\t",
		"\t8 allocs/op\n",
		"BenchmarkPing/transport=engine-shm/clients=8-2\t100000\t60000 ns/op\t50000 p50-ns\t90000 p99-ns\t90000 calls/s\n",
		"BenchmarkEcho/transport=engine-shm/size=16MiB-2\t100\t4000000 ns/op",
		"BenchmarkRing/transport=shm-spin-2\t1000\t600 ns/op",
		"BenchmarkStream/transport=engine-shm/size=1GiB-2\t1024\t4000 MB/s\n",
		"BenchmarkIdle/transport=engine-shm-2\t1\t0.3 cpu-pct\n",
		"BenchmarkPing/transport=engine-unix/clients=1/loop=open-2\t10\t",
		"BenchmarkPing/transport=cpp-ezrpc-unix/clients=1-2\t1000\t36000 ns/op",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("bench.txt has no %q:\n%s", want, text)
		}
	}
	// benchstat compares lines by name: names are unique in a run.
	seen := map[string]bool{}
	for _, l := range strings.Split(text, "\n") {
		if name, _, ok := strings.Cut(l, "\t"); ok && strings.HasPrefix(l, "Benchmark") {
			if seen[name] {
				t.Errorf("bench.txt: %s twice", name)
			}
			seen[name] = true
		}
	}
}

// TestBenchstat runs benchstat on two bench.txt files when it is
// installed, as main.go's doc tells users to.
func TestBenchstat(t *testing.T) {
	exe, err := exec.LookPath("benchstat")
	if err != nil {
		home, _ := os.UserHomeDir()
		if exe = filepath.Join(home, "go", "bin", "benchstat"); !fileExists(exe) {
			t.Skip("benchstat not installed (go install golang.org/x/perf/cmd/benchstat@latest)")
		}
	}
	dir := t.TempDir()
	old, cur := filepath.Join(dir, "old.txt"), filepath.Join(dir, "new.txt")
	a := syntheticReport(map[string]int64{"engine-shm": 12, "gocapnp-unix": 60})
	b := syntheticReport(map[string]int64{"engine-shm": 6, "gocapnp-unix": 60})
	if err := errors.Join(os.WriteFile(old, []byte(benchText(a)), 0o644), os.WriteFile(cur, []byte(benchText(b)), 0o644)); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(exe, old, cur).CombinedOutput()
	if err != nil {
		t.Fatalf("benchstat: %v\n%s", err, out)
	}
	// One run holds one sample of each: benchstat shows both values (and
	// says it needs more samples for a confidence interval).
	for _, want := range []string{"Ping/transport=engine-shm/clients=1-2", "12.000µ", "6.000µ", "p50-sec", "allocs/op", "calls/s"} {
		if !bytes.Contains(out, []byte(want)) {
			t.Errorf("benchstat's output has no %q:\n%s", want, out)
		}
	}
	if bytes.Contains(out, []byte("parsing")) || bytes.Contains(out, []byte("error")) {
		t.Errorf("benchstat complained:\n%s", out)
	}
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

func TestMarkdown(t *testing.T) {
	rep := syntheticReport(map[string]int64{"engine-shm": 12, "engine-shm-block": 20, "engine-unix": 25, "gocapnp-unix": 60, "cpp-ezrpc-unix": 30})
	rep.NotMeasured = map[string]string{"cpp-ezrpc-tcp": "not measured: made up"}
	rep.Targets = targets(rep)
	md := markdown(rep)
	for _, want := range []string{
		"- **Machine**: 2 CPUs (GOMAXPROCS 2), Test CPU @ 1GHz; Linux 6.1.0 x86_64; go1.26.8 linux/amd64\n",
		"- **cpp-ezrpc-tcp**: not measured: made up\n",
		"| engine ping over shm ≤ 1/3 of C++ EZ-RPC ping over unix | 0.40 (engine-shm ping p50 12µs, cpp-ezrpc-unix ping p50 30µs; goal ≤ 1/3) | **missed** |",
		"| engine ping, both ends in one process ≤ 1/4 of go-capnp's in-process pipe | ping on engine-mem not in this run; ping on engine-pipe not in this run; ping on gocapnp-mem not in this run; ping on gocapnp-pipe not in this run | **not measured** |",
		"## Closing note\n\nEach missed target, with what this run shows of the gap and what would close it:\n\n- **engine ping over shm ≤ 1/3 of C++ EZ-RPC ping over unix**: measured 0.40 (engine-shm ping p50 12µs, cpp-ezrpc-unix ping p50 30µs; goal ≤ 1/3). 1.20x over: engine-shm ping p50 must come down from 12µs to 10µs; the raw ring round trip (shm) is 2µs of its 12µs",
		"\nNot measured:\n\n- engine ping, both ends in one process",
		"| ping | engine-shm | - | 1 | 1000 | 12µs | 24µs | 36µs | 48µs | - | 83333 | 8.0 | - | - |",
		"| echo | engine-shm | 16MiB | 1 | 100 | 4ms | 5ms |",
		"| 48+24 | - |",
		"![ping latency per transport](latency-ping.svg)",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("report.md has no %q:\n%s", want, md)
		}
	}
	// The transport's own targets are in their own table, after issue 11's.
	if i, j := strings.Index(md, "### Issue 11"), strings.Index(md, "| raw ring, block"); i < 0 || j < i || j < strings.Index(md, "### The transport's own") {
		t.Errorf("targets tables out of order:\n%s", md)
	}
}

// TestPlots: every plot is well-formed SVG and names every transport it
// draws; an empty run gives a plot that says what is missing.
func TestPlots(t *testing.T) {
	pingUs := map[string]int64{}
	for i, tr := range allTransports {
		pingUs[tr] = int64(10 + i)
	}
	rep := syntheticReport(pingUs)
	for _, tr := range []string{"engine-shm", "gocapnp-shm", "cpp-ezrpc-tcp"} {
		for _, n := range []int64{64, 1 << 20} {
			rep.Results = append(rep.Results, &Result{Workload: "echo", Transport: tr, Size: n, Clients: 1, Ops: 10, P50: 1000, Mean: 1000, MBps: float64(n) / 1000})
		}
	}
	for name, svg := range map[string]string{
		plotLatency: latencyPlot(rep), plotLatencyCDF: latencyCDFPlot(rep), plotThroughput: throughputPlot(rep),
	} {
		checkSVG(t, name, svg)
		for _, tr := range []string{"engine-shm", "gocapnp-shm", "cpp-ezrpc-tcp"} {
			if !strings.Contains(svg, ">"+tr+"<") {
				t.Errorf("%s does not name %s", name, tr)
			}
		}
	}
	// Dashes say what runs the RPC: go-capnp dashed, C++ dotted.
	if cdf := latencyCDFPlot(rep); !strings.Contains(cdf, `stroke-dasharray="7 4"`) || !strings.Contains(cdf, `stroke-dasharray="2 3"`) {
		t.Errorf("the CDF does not dash go-capnp and C++")
	}
	checkSVG(t, plotClients, clientsPlot(rep))
	for name, f := range map[string]func(*Report) string{plotLatency: latencyPlot, plotLatencyCDF: latencyCDFPlot, plotThroughput: throughputPlot, plotClients: clientsPlot} {
		svg := f(&Report{})
		checkSVG(t, name+" (empty)", svg)
		if !strings.Contains(svg, "no ") {
			t.Errorf("%s of an empty run does not say what is missing: %s", name, svg)
		}
	}
}

func checkSVG(t *testing.T, name, svg string) {
	t.Helper()
	d := xml.NewDecoder(strings.NewReader(svg))
	for {
		_, err := d.Token()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Errorf("%s is not well-formed XML: %v", name, err)
			return
		}
	}
	if strings.Contains(svg, "NaN") || strings.Contains(svg, "Inf") {
		t.Errorf("%s has NaN or Inf coordinates", name)
	}
}

func TestCPUModel(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R)   CPU @ 2.20GHz\nprocessor\t: 1\nmodel name\t: other\n", "Intel(R) Xeon(R) CPU @ 2.20GHz"},
		{"processor\t: 0\nBogoMIPS\t: 50.00\n\nHardware\t: BCM2835\n", "BCM2835"},
		{"system type\t\t: foo\ncpu model\t\t: MIPS 24Kc V7.4\n", "MIPS 24Kc V7.4"},
		{"processor\t: 0\nmodel name\t:\n", ""},
		{"", ""},
	} {
		if got := cpuModel([]byte(c.in)); got != c.want {
			t.Errorf("cpuModel(%q) = %q, want %q", c.in, got, c.want)
		}
	}
	if m := thisMachine(); m.CPUs < 1 || m.Kernel == "" || !strings.HasPrefix(m.Go, "go") {
		t.Errorf("thisMachine() = %+v", m)
	}
}

// TestProgress: a bar over the whole run with results printed above it,
// or plain lines.
func TestProgress(t *testing.T) {
	steps := plan(testConfig([]string{"ping", "idle"}, []string{"engine-shm"}))
	r := &Result{Workload: "ping", Transport: "engine-shm", Clients: 1, Ops: 10, P50: 12000, P99: 20000, AllocsPerOp: ptr(7.0)}
	for _, bar := range []bool{false, true} {
		var out bytes.Buffer
		p := newProgress(&out, steps, bar)
		for _, s := range steps {
			p.begin(s)
			p.result(r)
			p.done(s)
		}
		p.finish()
		got := out.String()
		if !strings.Contains(got, "ping    engine-shm      : p50 12µs p99 20µs (10 ops) 7.0 allocs/op") {
			t.Errorf("bar %v: no result line in %q", bar, got)
		}
		if hasBar := strings.Contains(got, "%"); hasBar != bar {
			t.Errorf("bar %v: output %q", bar, got)
		}
		if !bar && !strings.Contains(got, "] idle engine-shm\n") {
			t.Errorf("plain progress names no step: %q", got)
		}
	}
	if isTerminal(&bytes.Buffer{}) {
		t.Error("a buffer is a terminal")
	}
	f, err := os.CreateTemp(t.TempDir(), "notatty")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if isTerminal(f) {
		t.Error("a file is a terminal")
	}
}

// TestMain lets the test binary be the bench's peer: the bench starts
// os.Executable with -child.
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == "-child" {
		os.Exit(realMain(os.Args[1:], os.Stdout, os.Stderr))
	}
	os.Exit(m.Run())
}

// TestRunInProcess runs the RPC workloads on a transport of each kind in
// this process (under -race, the client side and the pipes' servers),
// with the test binary as the server child, and checks that every planned
// measurement gave its result with its counters.
func TestRunInProcess(t *testing.T) {
	if testing.Short() {
		t.Skip("starts server processes and shared-memory connections")
	}
	cfg := testConfig([]string{"ping", "echo", "inplace", "stream", "clients", "idle"},
		[]string{"engine-shm", "engine-tcp", "engine-pipe", "gocapnp-shm", "gocapnp-unix", "gocapnp-pipe"})
	cfg.duration, cfg.idle = 10*time.Millisecond, 50*time.Millisecond
	cfg.sizes, cfg.inplaceSize, cfg.streamTotal, cfg.clients = []int64{64, 1 << 20}, 1<<20, 4<<20, []int{1, 3}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var progress bytes.Buffer
	rep, err := run(ctx, cfg, &progress, false)
	if err != nil {
		t.Fatalf("run: %v\nprogress:\n%s", err, progress.String())
	}
	steps := plan(cfg)
	if len(rep.Results) != len(steps) {
		t.Fatalf("%d results of %d steps:\n%s", len(rep.Results), len(steps), progress.String())
	}
	for i, s := range steps {
		r := rep.Results[i]
		if r.Transport != s.transport || (r.Workload != s.workload && s.workload != "clients") || r.Clients != s.clients {
			t.Errorf("result %d is %s %s x%d, want %s", i, r.Workload, r.Transport, r.Clients, s)
		}
		switch s.workload {
		case "idle":
			if r.CPUPct == nil {
				t.Errorf("%s: no CPU", s)
			}
			continue
		case "stream":
			if r.MBps <= 0 {
				t.Errorf("%s: %v MB/s", s, r.MBps)
			}
		default:
			if r.Ops < 1 || r.P50 <= 0 || r.P50 > r.P99 || r.OpsPerSec <= 0 {
				t.Errorf("%s: figures %+v", s, r)
			}
		}
		if r.AllocsPerOp == nil || *r.AllocsPerOp <= 0 {
			t.Errorf("%s: allocs/op %v", s, r.AllocsPerOp)
		}
		d, _ := lookupTransport(s.transport)
		counts := d.medium == "shm"
		if s.workload != "clients" && (r.CopiedBytes != nil) != counts {
			t.Errorf("%s: copied bytes %v, want counted: %v", s, r.CopiedBytes, counts)
		}
		if s.workload != "clients" && (r.PeerCopiedBytes != nil) != counts {
			t.Errorf("%s: server's copied bytes %v", s, r.PeerCopiedBytes)
		}
		// A 1 MiB echo over shared memory copies no payload, either side.
		if s.workload == "echo" && s.size == 1<<20 && d.medium == "shm" && r.CopiedBytes != nil && r.PeerCopiedBytes != nil &&
			*r.CopiedBytes+*r.PeerCopiedBytes >= 1<<20 {
			t.Errorf("%s: %d+%d bytes copied", s, *r.CopiedBytes, *r.PeerCopiedBytes)
		}
	}
}
