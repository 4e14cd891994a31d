package ringbuf

import (
	"context"
	"fmt"
	"testing"
)

// BenchmarkWriteRead writes, reads and releases one record per op on one
// goroutine: the cost of the ring itself plus a copy in.
func BenchmarkWriteRead(b *testing.B) {
	for _, size := range []int{8, 64, 1024, 16384} {
		b.Run(fmt.Sprintf("size=%d", size), func(b *testing.B) {
			r, _ := newTestRing(b, 1<<20)
			p, c := r.Producer(Options{}), r.Consumer(Options{})
			msg := make([]byte, size)
			b.SetBytes(int64(size))
			b.ReportAllocs()
			for b.Loop() {
				if err := p.Write(msg); err != nil {
					b.Fatal(err)
				}
				if _, err := c.Poll(); err != nil {
					b.Fatal(err)
				}
				if err := c.Release(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkStream streams records from a producer goroutine to a consumer
// goroutine (throughput; with 2 cores, both spin or park).
func BenchmarkStream(b *testing.B) {
	for _, s := range []WaitStrategy{BusySpin, Adaptive, Block} {
		for _, size := range []int{64, 16384} {
			b.Run(fmt.Sprintf("%v/size=%d", s, size), func(b *testing.B) {
				r, _ := newTestRing(b, 1<<20)
				cb, pb := newBell(), newBell()
				p := r.Producer(Options{Strategy: s, Ringer: cb, Waiter: pb})
				c := r.Consumer(Options{Strategy: s, Ringer: pb, Waiter: cb})
				ctx := context.Background()
				b.SetBytes(int64(size))
				done := make(chan error, 1)
				n := b.N
				go func() {
					for i := 0; i < n; {
						_, err := c.Poll()
						switch err {
						case nil:
							i++
							if i%16 == 0 {
								err = c.Release()
							}
						case ErrEmpty:
							if err = c.Release(); err == nil {
								err = c.Wait(ctx)
							}
						}
						if err != nil {
							done <- err
							return
						}
					}
					done <- c.Release()
				}()
				msg := make([]byte, size)
				b.ResetTimer()
				for range n {
					for {
						err := p.Write(msg)
						if err == nil {
							break
						}
						if err != ErrFull {
							b.Fatal(err)
						}
						if err := p.WaitSpace(ctx, size); err != nil {
							b.Fatal(err)
						}
					}
				}
				if err := <-done; err != nil {
					b.Fatal(err)
				}
			})
		}
	}
}
