//go:build linux

package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestQuickJSON builds the program and runs the whole suite in -quick mode
// with a tiny duration and a short idle measurement, and checks that stdout
// is one JSON document holding every workload on every transport, and that
// the report directory was written.
func TestQuickJSON(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the bench program (about 10 s)")
	}
	dir := t.TempDir()
	exe := filepath.Join(dir, "bench")
	build := exec.Command("go", "build", "-o", exe, ".")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
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
		Floors  map[string]float64 `json:"floors"`
		Results []map[string]any   `json:"results"`
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
	seen := map[string]bool{}
	for _, r := range rep.Results {
		w, _ := r["workload"].(string)
		tr, _ := r["transport"].(string)
		seen[w+"/"+tr] = true
		switch w {
		case "ping", "echo", "inplace", "ring":
			if p50, _ := r["p50_ns"].(float64); p50 <= 0 {
				t.Errorf("%s/%s: p50_ns %v", w, tr, r["p50_ns"])
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
	}
	for _, tr := range allTransports {
		for _, w := range []string{"ping", "echo", "inplace", "stream", "idle"} {
			if !seen[w+"/"+tr] {
				t.Errorf("no %s result on %s", w, tr)
			}
		}
		if _, ok := strategyOf(tr); ok && !seen["ring/"+tr] {
			t.Errorf("no ring result on %s", tr)
		}
	}
	for _, f := range []string{"report.md", "results.json", "latency-ping.svg", "throughput-echo.svg"} {
		b, err := os.ReadFile(filepath.Join(out, f))
		if err != nil || len(b) == 0 {
			t.Errorf("report file %s: %v (%d bytes)", f, err, len(b))
		}
	}
	if md, _ := os.ReadFile(filepath.Join(out, "report.md")); !strings.Contains(string(md), "## Targets") {
		t.Errorf("report.md has no targets section")
	}
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
