//go:build linux

package main

import (
	"fmt"
	"io"
	"os"
	"time"

	"github.com/schollz/progressbar/v3"
	"golang.org/x/sys/unix"
)

// progress reports the run on stderr: a progress bar over the whole run
// on a terminal, with each result printed above it, or one plain line per
// step and per result otherwise. The bar moves by each step's expected
// time (step.weight) when the step ends, and is redrawn only then and
// when a line is printed: no goroutine draws it while a measurement runs.
type progress struct {
	w     io.Writer
	start time.Time
	bar   *progressbar.ProgressBar // nil: plain lines
	desc  string
}

// isTerminal reports whether w is a terminal.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

// newProgress returns the reporter of a run of steps; with bar, a
// progress bar is drawn on w.
func newProgress(w io.Writer, steps []step, bar bool) *progress {
	p := &progress{w: w, start: time.Now()}
	if !bar || len(steps) == 0 {
		return p
	}
	var total int64
	for _, s := range steps {
		total += s.weightMs()
	}
	p.bar = progressbar.NewOptions64(total,
		progressbar.OptionSetWriter(w),
		progressbar.OptionSetDescription("bench"),
		progressbar.OptionSetWidth(30),
		progressbar.OptionSetPredictTime(true),
		progressbar.OptionSetElapsedTime(true),
		progressbar.OptionShowDescriptionAtLineEnd(),
		progressbar.OptionClearOnFinish(),
		progressbar.OptionSetRenderBlankState(true),
	)
	return p
}

// printf prints one line: above the bar, or timestamped.
func (p *progress) printf(format string, args ...any) {
	line := fmt.Sprintf("[%6.1fs] %s", time.Since(p.start).Seconds(), fmt.Sprintf(format, args...))
	if p.bar == nil {
		fmt.Fprintln(p.w, line)
		return
	}
	_, _ = progressbar.Bprintln(p.bar, line)
	p.bar.Describe(p.desc) // draws the line, then the bar
}

// begin says that step s starts.
func (p *progress) begin(s step) {
	if p.bar == nil {
		p.printf("%s", s)
		return
	}
	p.desc = s.String()
	p.bar.Describe(p.desc)
}

// done moves the bar past step s.
func (p *progress) done(s step) {
	if p.bar != nil {
		_ = p.bar.Add64(s.weightMs())
	}
}

// finish removes the bar.
func (p *progress) finish() {
	if p.bar != nil {
		_ = p.bar.Finish()
	}
}

// result prints a result.
func (p *progress) result(r *Result) {
	s := fmt.Sprintf("%-7s %-16s", r.Workload, r.Transport)
	if r.Size > 0 {
		s += " " + sizeName(r.Size)
	}
	if r.Clients > 1 {
		s += fmt.Sprintf(" x%d clients", r.Clients)
	}
	if r.Ops > 0 && r.P50 > 0 {
		s += fmt.Sprintf(": p50 %v p99 %v (%d ops)", time.Duration(r.P50), time.Duration(r.P99), r.Ops)
	}
	if r.Clients > 1 && r.OpsPerSec > 0 {
		s += fmt.Sprintf(" %.0f calls/s", r.OpsPerSec)
	}
	if r.MBps > 0 {
		s += fmt.Sprintf(" %.0f MB/s", r.MBps)
	}
	if r.AllocsPerOp != nil {
		s += fmt.Sprintf(" %.1f allocs/op", *r.AllocsPerOp)
	}
	if r.CPUPct != nil {
		s += fmt.Sprintf(": %.3f%% of a core", *r.CPUPct)
	}
	p.printf("%s", s)
}
