package segalloc

import (
	"fmt"
	"math/rand/v2"
	"testing"
)

// buddyModel is the reference: a bitmap of used units. With eager merging,
// a buddy allocator can serve order k exactly when some aligned run of 1<<k
// units is entirely free.
type buddyModel struct {
	used []bool
}

func (m *buddyModel) canAlloc(k int) bool {
	n := 1 << k
	for i := 0; i+n <= len(m.used); i += n {
		free := true
		for j := i; j < i+n; j++ {
			if m.used[j] {
				free = false
				break
			}
		}
		if free {
			return true
		}
	}
	return false
}

// checkBuddy verifies the buddy's internal invariants: every unit is
// covered by exactly one block head; list membership matches states;
// no two free buddies of the same order remain unmerged.
func checkBuddy(t *testing.T, b *buddy) {
	t.Helper()
	units := len(b.state)
	covered := 0
	for i := 0; i < units; {
		st := b.state[i]
		if st&kindMask == 0 {
			t.Fatalf("unit %d: not a block head where one was expected", i)
		}
		k := int(st & orderMask)
		if i%(1<<k) != 0 {
			t.Fatalf("block %d of order %d misaligned", i, k)
		}
		for j := i + 1; j < i+1<<k; j++ {
			if b.state[j] != 0 {
				t.Fatalf("unit %d inside block %d (order %d) has state %#x", j, i, k, b.state[j])
			}
		}
		if st&kindMask == kindFree && k < b.maxOrder {
			if bd := i ^ 1<<k; b.state[bd] == kindFree|uint8(k) {
				t.Fatalf("free block %d and its free buddy %d (order %d) not merged", i, bd, k)
			}
		}
		covered += 1 << k
		i += 1 << k
	}
	if covered != units {
		t.Fatalf("blocks cover %d units of %d", covered, units)
	}
	for k := 0; k <= b.maxOrder; k++ {
		n := 0
		for i := b.free[k]; i != nilIdx; i = b.next[i] {
			if b.state[i] != kindFree|uint8(k) {
				t.Fatalf("free list %d holds block %d with state %#x", k, i, b.state[i])
			}
			n++
		}
		if n != b.nfree[k] {
			t.Fatalf("free list %d: %d entries, count says %d", k, n, b.nfree[k])
		}
	}
}

func TestBuddyModel(t *testing.T) {
	for _, tc := range []struct {
		units, maxOrder int
	}{
		{8, 3},
		{64, 3},
		{32, 0},
		{16, 4},
		{256, 5},
	} {
		t.Run(fmt.Sprintf("units=%d,maxOrder=%d", tc.units, tc.maxOrder), func(t *testing.T) {
			r := rand.New(rand.NewPCG(uint64(tc.units), uint64(tc.maxOrder)))
			var b buddy
			b.init(tc.units, tc.maxOrder)
			checkBuddy(t, &b)
			m := buddyModel{used: make([]bool, tc.units)}
			live := map[int32]int{} // head -> order
			var heads []int32
			for step := 0; step < 4000; step++ {
				if len(heads) > 0 && r.IntN(100) < 45 {
					j := r.IntN(len(heads))
					i := heads[j]
					heads[j] = heads[len(heads)-1]
					heads = heads[:len(heads)-1]
					k := live[i]
					delete(live, i)
					if r.IntN(2) == 0 { // through the dirty list, as the scrubber does
						b.markDirty(i, 8)
						gi, gk, used, ok := b.takeDirty(k, k, true)
						if !ok || gi != i || gk != k || used != 8 {
							t.Fatalf("takeDirty = %d,%d,%d,%v; want %d,%d,8,true", gi, gk, used, ok, i, k)
						}
					}
					b.release(i)
					for u := int(i); u < int(i)+1<<k; u++ {
						m.used[u] = false
					}
				} else {
					k := r.IntN(tc.maxOrder + 1)
					want := m.canAlloc(k)
					i, ok := b.alloc(k)
					if ok != want {
						t.Fatalf("step %d: alloc(order %d) ok=%v, model says %v", step, k, ok, want)
					}
					if !ok {
						continue
					}
					if int(i)%(1<<k) != 0 || int(i)+1<<k > tc.units || i < 0 {
						t.Fatalf("alloc(order %d) = %d: misaligned or outside the pool", k, i)
					}
					for u := int(i); u < int(i)+1<<k; u++ {
						if m.used[u] {
							t.Fatalf("alloc(order %d) = %d overlaps a live block at unit %d", k, i, u)
						}
						m.used[u] = true
					}
					live[i] = k
					heads = append(heads, i)
				}
				if step%97 == 0 {
					checkBuddy(t, &b)
				}
			}
			for _, i := range heads {
				b.release(i)
			}
			checkBuddy(t, &b)
			for k := 0; k < tc.maxOrder; k++ {
				if b.nfree[k] != 0 {
					t.Errorf("after freeing everything, %d free blocks of order %d remain", b.nfree[k], k)
				}
			}
			if got, want := b.nfree[tc.maxOrder], tc.units>>tc.maxOrder; got != want {
				t.Errorf("after freeing everything, %d top blocks, want %d", got, want)
			}
		})
	}
}

func TestBuddyExhaustion(t *testing.T) {
	for _, k := range []int{0, 1, 3} {
		t.Run(fmt.Sprintf("order=%d", k), func(t *testing.T) {
			const units, maxOrder = 64, 3
			var b buddy
			b.init(units, maxOrder)
			seen := map[int32]bool{}
			var got []int32
			for n := 0; n < units>>k; n++ {
				i, ok := b.alloc(k)
				if !ok {
					t.Fatalf("alloc %d of %d failed", n, units>>k)
				}
				if seen[i] {
					t.Fatalf("block %d handed out twice", i)
				}
				seen[i] = true
				got = append(got, i)
			}
			for o := 0; o <= maxOrder; o++ {
				if _, ok := b.alloc(o); ok {
					t.Fatalf("alloc(order %d) succeeded on a full pool", o)
				}
			}
			for _, i := range got {
				b.release(i)
			}
			checkBuddy(t, &b)
			if b.nfree[maxOrder] != units>>maxOrder {
				t.Fatalf("not fully coalesced: %v", b.nfree)
			}
		})
	}
}
