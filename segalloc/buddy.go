package segalloc

// Block states, stored at a block's head index (the index of its first
// MinBlock unit): the kind in the high bits, the order in the low five.
// Indices that are not the head of a block hold 0.
const (
	kindFree  uint8 = 1 << 5 // on the free list of its order
	kindUsed  uint8 = 2 << 5 // held by an arena
	kindDirty uint8 = 3 << 5 // released, on the dirty list of its order
	kindBusy  uint8 = 4 << 5 // being zeroed (by the scrubber or an Allocate)
	kindMask  uint8 = 7 << 5
	orderMask uint8 = 1<<5 - 1
)

// nilIdx ends a list.
const nilIdx int32 = -1

// buddy is the buddy allocator over the pool, in units of MinBlock. It does
// no locking and no zeroing; Allocator does both. All of its metadata lives
// in Go memory.
type buddy struct {
	maxOrder int      // log2(MaxBlock / MinBlock)
	state    []uint8  // per unit: kind|order at block heads, else 0
	next     []int32  // list links per unit (a block is on at most one list)
	prev     []int32  //
	used     []uint32 // per dirty block head: bytes to zero
	free     []int32  // free list head per order
	dirty    []int32  // dirty list head per order
	nfree    []int    // blocks on each free list
	ndirty   int      // blocks on all dirty lists
}

// init sets b up for units MinBlock units made of top blocks of order
// maxOrder, all free. units must be a multiple of 1<<maxOrder.
func (b *buddy) init(units int, maxOrder int) {
	b.maxOrder = maxOrder
	b.state = make([]uint8, units)
	b.next = make([]int32, units)
	b.prev = make([]int32, units)
	b.used = make([]uint32, units)
	b.free = make([]int32, maxOrder+1)
	b.dirty = make([]int32, maxOrder+1)
	b.nfree = make([]int, maxOrder+1)
	for k := range b.free {
		b.free[k] = nilIdx
		b.dirty[k] = nilIdx
	}
	// Push top blocks in reverse so that the list pops them lowest first.
	for i := units - 1<<maxOrder; i >= 0; i -= 1 << maxOrder {
		b.state[i] = kindFree | uint8(maxOrder)
		b.pushFree(maxOrder, int32(i))
	}
}

func (b *buddy) push(heads []int32, k int, i int32) {
	h := heads[k]
	b.next[i] = h
	b.prev[i] = nilIdx
	if h != nilIdx {
		b.prev[h] = i
	}
	heads[k] = i
}

func (b *buddy) unlink(heads []int32, k int, i int32) {
	p, n := b.prev[i], b.next[i]
	if p != nilIdx {
		b.next[p] = n
	} else {
		heads[k] = n
	}
	if n != nilIdx {
		b.prev[n] = p
	}
}

func (b *buddy) pushFree(k int, i int32) { b.push(b.free, k, i); b.nfree[k]++ }

func (b *buddy) unlinkFree(k int, i int32) { b.unlink(b.free, k, i); b.nfree[k]-- }

// order returns the order of the block whose head is i.
func (b *buddy) order(i int32) int { return int(b.state[i] & orderMask) }

// alloc takes a free block of order k, splitting a larger one if needed. It
// returns the block's head index, or false when no free block of order >= k
// exists.
func (b *buddy) alloc(k int) (int32, bool) {
	for o := k; o <= b.maxOrder; o++ {
		i := b.free[o]
		if i == nilIdx {
			continue
		}
		b.unlinkFree(o, i)
		for o > k {
			o--
			j := i + 1<<o
			b.state[j] = kindFree | uint8(o)
			b.pushFree(o, j)
		}
		b.state[i] = kindUsed | uint8(k)
		return i, true
	}
	return nilIdx, false
}

// largestFree returns the largest order in [lo, hi] with a free block, or -1.
func (b *buddy) largestFree(lo, hi int) int {
	for o := hi; o >= lo; o-- {
		if b.free[o] != nilIdx {
			return o
		}
	}
	return -1
}

// release returns the block at head i (in use or busy) to the free lists,
// merging it with its buddy for as long as the buddy is free and whole.
func (b *buddy) release(i int32) {
	k := b.order(i)
	for k < b.maxOrder {
		j := i ^ 1<<k
		if b.state[j] != kindFree|uint8(k) {
			break
		}
		b.unlinkFree(k, j)
		b.state[j] = 0
		if j < i {
			b.state[i] = 0
			i = j
		}
		k++
	}
	b.state[i] = kindFree | uint8(k)
	b.pushFree(k, i)
}

// markDirty moves the in-use block at i to the dirty list, with used bytes
// to zero before it may be reused.
func (b *buddy) markDirty(i int32, used int) {
	k := b.order(i)
	b.state[i] = kindDirty | uint8(k)
	b.used[i] = uint32(used)
	b.push(b.dirty, k, i)
	b.ndirty++
}

// takeDirty removes a dirty block of order in [lo, hi] from its list and
// marks it busy, searching from the smallest order when smallest is true,
// else from the largest. It returns the head, the order and the used bytes.
func (b *buddy) takeDirty(lo, hi int, smallest bool) (i int32, k int, used int, ok bool) {
	if b.ndirty == 0 {
		return nilIdx, 0, 0, false
	}
	for n := 0; n <= hi-lo; n++ {
		k = hi - n
		if smallest {
			k = lo + n
		}
		if i = b.dirty[k]; i != nilIdx {
			b.unlink(b.dirty, k, i)
			b.ndirty--
			b.state[i] = kindBusy | uint8(k)
			return i, k, int(b.used[i]), true
		}
	}
	return nilIdx, 0, 0, false
}
