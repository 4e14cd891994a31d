package ringbuf

import "sync/atomic"

// The stores of the wake-up protocol.
//
// Each side of the protocol stores one word and then loads the other
// side's (Dekker's pattern; see the package documentation): the consumer
// stores data_wanted and loads the record header at its position, the
// producer stores that header and loads data_wanted; the same with head and
// space_wanted the other way. The protocol needs the store to be visible
// before the load reads, which sequentially consistent atomics give.
//
// Go's sync/atomic promises that, and on amd64 a Store is an XCHG, a full
// barrier. But under the race detector, a Store to memory outside the Go
// heap (our shared memory) is a release store that a later load may
// pass: two goroutines that store and then load, on a shared page, both
// saw the other's word still zero in 172 of 2,000,000 rounds, and never
// in a plain build or on heap memory (TestFencedStoreThenLoad: hundreds of
// rounds in a million). In this ring that
// is a lost wake-up: the consumer parks with a record published, and a
// capnshm connection hung in `go test -race` (TestNoLostWakeUpOutsideHeap
// lost one within seconds). An exchange is a read-modify-write, a full
// barrier in every build, and on amd64 the same instruction as a Store.
//
// Loads stay plain atomic loads: they come after the barrier.

// storeFenced32 stores v in *p and orders the store before every later load.
func storeFenced32(p *uint32, v uint32) { atomic.SwapUint32(p, v) }

// storeFenced64 stores v in *p and orders the store before every later load.
func storeFenced64(p *uint64, v uint64) { atomic.SwapUint64(p, v) }
