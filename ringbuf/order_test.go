package ringbuf

import (
	"runtime"
	"sync/atomic"
	"testing"
	"unsafe"

	"github.com/capnshm/capnshm/shm"
)

// TestFencedStoreThenLoad is the wake-up protocol's two sides alone, as
// the ring runs them, on shared memory outside the Go heap: the consumer
// stores data_wanted with storeFenced32 and loads the record header; the
// producer stores the header with storeFenced64 and loads data_wanted. In
// each round both start together, and at least one of them must see the
// other's store. Under the race detector, with plain atomic Stores in
// both places, neither saw the other's in 585 to 2,755 rounds of a million
// (three runs); with the exchanges, in none.
func TestFencedStoreThenLoad(t *testing.T) {
	if runtime.GOMAXPROCS(0) < 2 {
		t.Skip("needs two Ps: the two sides must run at once")
	}
	region, err := shm.Create(4096, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer region.Close()
	mem := region.Bytes()
	wanted := (*uint32)(unsafe.Pointer(&mem[offDataWanted]))
	header := (*uint64)(unsafe.Pointer(&mem[HeaderSize]))
	rounds := 1_000_000
	if testing.Short() {
		rounds = 100_000
	}
	var start, done atomic.Int64 // round barriers, on the heap
	sawWanted := make([]bool, rounds)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		for i := range rounds {
			for start.Load() != int64(i+1) {
			}
			storeFenced64(header, makeHeader(8, 0)) // the producer publishes
			sawWanted[i] = atomic.LoadUint32(wanted) == 1
			done.Store(int64(i + 1))
		}
	}()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	lost := 0
	for i := range rounds {
		atomic.StoreUint32(wanted, 0)
		atomic.StoreUint64(header, 0)
		start.Store(int64(i + 1))
		storeFenced32(wanted, 1) // the consumer announces that it parks
		sawHeader := atomic.LoadUint64(header) != 0
		for done.Load() != int64(i+1) {
		}
		if !sawHeader && !sawWanted[i] {
			lost++
		}
	}
	if lost > 0 {
		t.Fatalf("in %d of %d rounds neither side saw the other's store: the consumer would park with a record published and the producer would not ring", lost, rounds)
	}
}
