//go:build linux

package main

import (
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
)

// Report is what -json prints and results.json holds. CI reads results
// and floors.
type Report struct {
	Floors  Floors    `json:"floors"`
	Results []*Result `json:"results"`
	// Targets are issue 11's targets and the transport's own, computed
	// from Results and Floors.
	Targets []Target `json:"targets,omitempty"`
	// NotMeasured says, per transport, why it was left out of this run
	// (the C++ toolchain missing).
	NotMeasured map[string]string `json:"not_measured,omitempty"`
	// The run's settings and host, for the reader of results.json.
	Machine Machine `json:"machine"`
	Host    string  `json:"host,omitempty"`
	Quick   bool    `json:"quick,omitempty"`
	Rate    float64 `json:"rate,omitempty"`
	// Duration is the time of each latency and throughput measurement.
	Duration string `json:"duration,omitempty"`
	Elapsed  string `json:"elapsed,omitempty"`
}

// Floors are this machine's floors, measured in the same run: the p50
// round trip of a spin on one shared cache line and of two blocking
// eventfds between two processes, and memcpy bandwidth in one process.
type Floors struct {
	SpinRTT    int64   `json:"spin_rtt_ns,omitempty"`
	EventfdRTT int64   `json:"eventfd_rtt_ns,omitempty"`
	MemcpyGBps float64 `json:"memcpy_gbps,omitempty"`
	// Rounds is the number of round trips of each floor.
	Rounds int `json:"rounds,omitempty"`
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
	P90       int64    `json:"p90_ns,omitempty"`
	P99       int64    `json:"p99_ns,omitempty"`
	P999      int64    `json:"p999_ns,omitempty"`
	Max       int64    `json:"max_ns,omitempty"`
	Mean      int64    `json:"mean_ns,omitempty"`
	MBps      float64  `json:"mbps,omitempty"`
	OpsPerSec float64  `json:"ops_per_sec,omitempty"`
	CPUPct    *float64 `json:"cpu_pct,omitempty"`
	// AllocsPerOp are the heap allocations of the bench's process per
	// call (runtime.MemStats.Mallocs over the measured calls): the
	// calling process, and for the pipes the server too.
	AllocsPerOp *float64 `json:"allocs_per_op,omitempty"`
	// SleepsPerOp and PeerSleepsPerOp are the thread sleeps (voluntary
	// context switches, all threads) of the bench's process and of the
	// server's per call: how often a thread had to be woken. The pipes'
	// server is the bench's process.
	SleepsPerOp     *float64 `json:"sleeps_per_op,omitempty"`
	PeerSleepsPerOp *float64 `json:"peer_sleeps_per_op,omitempty"`
	// CopiedBytes and PeerCopiedBytes are the message bytes the client's
	// and the server's transports copied over the measured calls
	// (rpc.Stats.BytesCopied: inline messages, socket bytes, small
	// messages copied out), where the transport counts them.
	CopiedBytes     *uint64 `json:"copied_bytes,omitempty"`
	PeerCopiedBytes *uint64 `json:"peer_copied_bytes,omitempty"`
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
	r.P90 = h.ValueAtQuantile(90)
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

// find returns the first result matching (size 0 and clients 0 match
// any), or nil.
func (rep *Report) find(workload, transport string, size int64, clients int) *Result {
	for _, r := range rep.Results {
		if r.Workload == workload && r.Transport == transport && (size == 0 || r.Size == size) && (clients == 0 || r.Clients == clients) {
			return r
		}
	}
	return nil
}
