//go:build linux

package main

import (
	"fmt"
	"time"

	"github.com/capnshm/capnshm/ringbuf"
)

// step is one measurement of a run. The run is planned whole before it
// starts (plan), so that the progress bar knows its length and the steps
// of one transport share its server.
type step struct {
	workload string
	// transport is a transport label; for the raw ring, the ring's label
	// (shm, shm-spin, shm-block); empty for the floors.
	transport string
	size      int64 // echo and inplace: the message; stream: the total
	clients   int
	// calls is the number of calls a C++ measurement makes.
	calls int
	// weight is the time the step is expected to take.
	weight time.Duration
}

func (s step) String() string {
	out := s.workload
	if s.transport != "" {
		out += " " + s.transport
	}
	if s.size > 0 {
		out += " " + sizeName(s.size)
	}
	if s.clients > 1 {
		out += fmt.Sprintf(" x%d clients", s.clients)
	}
	return out
}

// weightMs is the step's weight on the progress bar: at least 1.
func (s step) weightMs() int64 { return max(s.weight.Milliseconds(), 1) }

// rpcWorkloads are the workloads that run on a transport, in order.
var rpcWorkloads = []string{"ping", "echo", "inplace", "stream", "clients", "idle"}

// ringWeight is the expected time of one raw ring round trip.
func ringWeight(st ringbuf.WaitStrategy) time.Duration {
	switch st {
	case ringbuf.BusySpin:
		return time.Microsecond
	case ringbuf.Block:
		return 15 * time.Microsecond
	}
	return 3 * time.Microsecond
}

// callWeight is a rough time of one call of size bytes each way on a
// slow transport: what the minimum number of calls of a measurement costs
// when they are large.
func callWeight(size int64) time.Duration {
	return 100*time.Microsecond + time.Duration(size*4)
}

// cppCallsFor is how many calls a C++ measurement makes so that it takes
// about d at C++'s speed here (a ping 30-40 µs, a 16 MiB echo 25 ms):
// between 3 and 200000.
func cppCallsFor(d time.Duration, workload string, size int64) int {
	per := 35 * time.Microsecond
	if workload == "echo" {
		per += time.Duration(size * 3 / 2)
	}
	return int(min(max(int64(d/per), 3), 200_000))
}

// plan returns the steps of a run of cfg, in the order they run.
func plan(cfg *config) []step {
	var steps []step
	if cfg.has("floors") {
		steps = append(steps, step{workload: "floors", weight: time.Duration(cfg.rounds)*8*time.Microsecond + cfg.duration + 100*time.Millisecond})
	}
	if cfg.has("ring") {
		for _, tr := range cfg.transports {
			d, _ := lookupTransport(tr)
			if d.ringLabel == "" {
				continue
			}
			steps = append(steps, step{workload: "ring", transport: d.ringLabel, size: 8, clients: 1,
				weight: time.Duration(cfg.rounds)*ringWeight(d.strategy) + 50*time.Millisecond})
		}
	}
	latency := func(size int64) time.Duration {
		return max(cfg.duration+cfg.duration/20, 6*callWeight(size))
	}
	for _, tr := range cfg.transports {
		d, _ := lookupTransport(tr)
		for _, w := range rpcWorkloads {
			if !cfg.has(w) || !d.supports(w) {
				continue
			}
			s := step{workload: w, transport: tr, clients: 1}
			switch w {
			case "ping":
				s.weight = latency(0)
				if d.impl == implCpp {
					s.calls = cppCallsFor(cfg.duration, w, 0)
				}
				steps = append(steps, s)
			case "echo":
				for _, n := range cfg.sizes {
					s.size, s.weight = n, latency(n)
					if d.impl == implCpp {
						s.calls = cppCallsFor(cfg.duration, w, n)
					}
					steps = append(steps, s)
				}
			case "inplace":
				s.size, s.weight = cfg.inplaceSize, latency(cfg.inplaceSize)
				steps = append(steps, s)
			case "stream":
				// 1 GB/s is about go-capnp's speed over a socket here.
				s.size, s.weight = cfg.streamTotal, time.Duration(cfg.streamTotal)
				steps = append(steps, s)
			case "clients":
				for _, n := range cfg.clients {
					if n == 1 && cfg.has("ping") {
						continue // the ping workload
					}
					s.clients, s.weight = n, cfg.duration+time.Duration(n)*50*time.Millisecond
					steps = append(steps, s)
				}
			case "idle":
				s.weight = cfg.idle
				steps = append(steps, s)
			}
		}
	}
	return steps
}
