package segalloc_test

import (
	"fmt"

	"capnproto.org/go/capnp/v3"

	"github.com/capnshm/capnshm/segalloc"
)

func Example() {
	// The pool would be the owner's read-write mapping of a shared-memory
	// region (shm.Create(...).Bytes()); heap memory stands in for it here.
	pool := make([]byte, 1<<20)
	alloc, err := segalloc.New(pool, segalloc.Options{})
	if err != nil {
		panic(err)
	}
	defer alloc.Close()

	// Build a message straight into the pool.
	arena := alloc.NewArena()
	msg, seg, err := capnp.NewMessage(arena)
	if err != nil {
		panic(err)
	}
	root, _ := capnp.NewRootStruct(seg, capnp.ObjectSize{DataSize: 8, PointerCount: 1})
	root.SetUint64(0, 42)
	if err := root.SetData(0, make([]byte, 3000)); err != nil {
		panic(err)
	}

	// At send, the transport records the used lengths, describes each
	// segment to the peer by location and offset, and takes a reference
	// for the peer.
	var used []int
	for i := int64(0); i < msg.NumSegments(); i++ {
		s, _ := msg.Segment(capnp.SegmentID(i))
		used = append(used, len(s.Data()))
	}
	arena.SetUsed(used)
	for i, s := range arena.Segments() {
		fmt.Printf("segment %d: loc %d offset %d used %d of %d\n", i, s.Loc, s.Offset, used[i], cap(s.Data))
	}
	arena.Retain()

	msg.Release()   // go-capnp is done with it
	arena.Release() // the peer sent FREE: the blocks go back
	st := alloc.Stats()
	fmt.Println("arenas alive:", st.ArenasAlive, "pool in use:", st.PoolInUse)
	// Output:
	// segment 0: loc 0 offset 0 used 24 of 1024
	// segment 1: loc 0 offset 4096 used 3008 of 4096
	// arenas alive: 0 pool in use: 0
}
