package ringbuf_test

import (
	"context"
	"fmt"

	"github.com/capnshm/capnshm/ringbuf"
)

func Example() {
	// In production mem is shared memory mapped by both processes; one
	// calls Init, the other Attach. Heap memory works the same in-process.
	mem := make([]byte, ringbuf.SizeFor(64<<10))
	r, err := ringbuf.Init(mem)
	if err != nil {
		panic(err)
	}
	peer, err := ringbuf.Attach(mem)
	if err != nil {
		panic(err)
	}
	p := r.Producer(ringbuf.Options{})
	c := peer.Consumer(ringbuf.Options{})

	// One record at a time...
	if err := p.Write([]byte("hello")); err != nil {
		panic(err)
	}
	// ...or a batch, published by one Commit.
	for _, s := range []string{"shared", "memory"} {
		buf, err := p.Claim(len(s))
		if err != nil {
			panic(err)
		}
		copy(buf, s)
	}
	if err := p.Commit(); err != nil {
		panic(err)
	}

	ctx := context.Background()
	for range 3 {
		if err := c.Wait(ctx); err != nil {
			panic(err)
		}
		rec, err := c.Poll()
		if err != nil {
			panic(err)
		}
		fmt.Printf("%s\n", rec) // valid until Release
	}
	if err := c.Release(); err != nil {
		panic(err)
	}
	if _, err := c.Poll(); err == ringbuf.ErrEmpty {
		fmt.Println("empty")
	}
	// Output:
	// hello
	// shared
	// memory
	// empty
}
