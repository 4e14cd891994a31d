// Package pingpong holds the round-trip workloads that the benchmarks and the
// demo run between two processes: the floors (a spin on one shared cache line,
// a raw eventfd exchange) and the ring round trip. Each workload has a client
// side, which times n round trips, and a server side, which answers them.
//
// The shared region of a spin or ring exchange looks like this:
//
//	offset 0          one 64-byte cache line: the spin word (floors only)
//	offset 4096       request ring   (client produces, server consumes)
//	offset 4096+R     response ring  (server produces, client consumes)
//
// where R is ringbuf.SizeFor(capacity) rounded up to a page.
package pingpong

import (
	"sync/atomic"
	"time"
	"unsafe"
)

// SpinWord returns the spin word at the start of mem, which must be at least
// 8 bytes long and 8-byte aligned (shared memory always is).
func SpinWord(mem []byte) *atomic.Uint64 {
	return (*atomic.Uint64)(unsafe.Pointer(&mem[0]))
}

// SpinClient times n round trips on w: it stores an odd value and spins
// until the server answers with the next even one. Samples, if not nil,
// receives each round trip's duration.
func SpinClient(w *atomic.Uint64, n int, samples []time.Duration) time.Duration {
	start := time.Now()
	last := start
	for i := uint64(0); i < uint64(n); i++ {
		w.Store(2*i + 1)
		for w.Load() != 2*i+2 {
		}
		if samples != nil {
			now := time.Now()
			samples[i] = now.Sub(last)
			last = now
		}
	}
	return time.Since(start)
}

// SpinServer answers n round trips of SpinClient.
func SpinServer(w *atomic.Uint64, n int) {
	for i := uint64(0); i < uint64(n); i++ {
		for w.Load() != 2*i+1 {
		}
		w.Store(2*i + 2)
	}
}
