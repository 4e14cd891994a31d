package segalloc

import (
	"fmt"
	"testing"

	"capnproto.org/go/capnp/v3"
)

// BenchmarkAllocFree: one arena, one segment of the given size, released.
// used=0 measures the allocator's bookkeeping (SetUsed says nothing was
// written: no zeroing); used=all adds zeroing the whole segment (inline up
// to 1 KiB, else by the scrubber or, when it lags, by Allocate itself).
func BenchmarkAllocFree(b *testing.B) {
	for _, size := range []int{kib, 64 * kib, mib, 16 * mib} {
		for _, full := range []bool{false, true} {
			name := fmt.Sprintf("size=%s/used=0", sizeName(size))
			if full {
				name = fmt.Sprintf("size=%s/used=all", sizeName(size))
			}
			b.Run(name, func(b *testing.B) {
				a, _ := newTestAlloc(b, 64*mib, Options{MaxBlock: 16 * mib, FirstSegment: size})
				used := []int{0}
				if full {
					used[0] = size
					b.SetBytes(int64(size))
				}
				b.ReportAllocs()
				for b.Loop() {
					ar := a.NewArena()
					if _, _, err := ar.Allocate(8, nil); err != nil {
						b.Fatal(err)
					}
					ar.SetUsed(used)
					ar.Release()
				}
				b.StopTimer()
				a.waitScrubbed()
				st := a.Stats()
				b.ReportMetric(float64(st.SyncScrubs)/float64(b.N), "syncscrubs/op")
			})
		}
	}
}

func sizeName(n int) string {
	switch {
	case n >= mib:
		return fmt.Sprintf("%dMiB", n/mib)
	case n >= kib:
		return fmt.Sprintf("%dKiB", n/kib)
	}
	return fmt.Sprintf("%dB", n)
}

// BenchmarkMessage: NewMessage, a small struct with a text field, the used
// lengths read back as the transport does, Release. capnp.MultiSegment is
// go-capnp's own heap arena, for comparison.
func BenchmarkMessage(b *testing.B) {
	build := func(b *testing.B, arena capnp.Arena) *capnp.Message {
		msg, seg, err := capnp.NewMessage(arena)
		if err != nil {
			b.Fatal(err)
		}
		st, err := capnp.NewRootStruct(seg, rootSize)
		if err != nil {
			b.Fatal(err)
		}
		st.SetUint64(0, 42)
		if err := st.SetNewText(1, "hello, shared memory"); err != nil {
			b.Fatal(err)
		}
		return msg
	}
	b.Run("segalloc", func(b *testing.B) {
		a, _ := newTestAlloc(b, 16*mib, Options{})
		used := make([]int, 0, 4)
		b.ReportAllocs()
		for b.Loop() {
			ar := a.NewArena()
			msg := build(b, ar)
			used = used[:0]
			for i := int64(0); i < msg.NumSegments(); i++ {
				s, _ := msg.Segment(capnp.SegmentID(i))
				used = append(used, len(s.Data()))
			}
			ar.SetUsed(used)
			msg.Release()
		}
	})
	b.Run("capnp.MultiSegment", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			msg := build(b, capnp.MultiSegment(nil))
			msg.Release()
		}
	})
}
