package segalloc

import "sync/atomic"

// signalDrainedLocked wakes waitScrubbed callers once nothing is dirty or
// being zeroed.
func (a *Allocator) signalDrainedLocked() {
	if a.b.ndirty == 0 && len(a.dirtyMap) == 0 && a.busy == 0 {
		a.drained.Broadcast()
	}
}

// waitScrubbed waits until every released block and mapping has been zeroed
// and made allocatable, or dropped and given back to the Mapper. Tests use
// it to wait for the scrubber without sleeping.
func (a *Allocator) waitScrubbed() {
	a.mu.Lock()
	for a.b.ndirty > 0 || len(a.dirtyMap) > 0 || a.busy > 0 {
		a.drained.Wait()
	}
	a.mu.Unlock()
}

// scrubber zeroes released blocks and mappings until Close.
func (a *Allocator) scrubber() {
	defer close(a.done)
	a.mu.Lock()
	for !a.closed {
		// Largest blocks first: they are the scarce ones.
		if i, _, used, ok := a.b.takeDirty(0, a.b.maxOrder, false); ok {
			a.scrubBlockLocked(i, used)
			continue
		}
		if len(a.dirtyMap) > 0 {
			it := a.dirtyMap[0]
			a.dirtyMap[0] = mapItem{}
			a.dirtyMap = a.dirtyMap[1:]
			a.busy++
			a.mu.Unlock()
			n := zero(it.m.Bytes()[:it.used], &a.closing)
			a.mu.Lock()
			a.st.BytesScrubbed += int64(n)
			drop := a.cacheLocked(it.m, n == it.used)
			if len(drop) > 0 {
				// Still busy: waitScrubbed must not return before
				// the Mapper has been told.
				a.mu.Unlock()
				a.unmapAll(drop)
				a.mu.Lock()
			}
			a.busy--
			a.signalDrainedLocked()
			continue
		}
		a.work.Wait()
	}
	a.mu.Unlock()
}

// zero clears b in chunks, stopping early when abort is set; it returns the
// number of bytes cleared.
func zero(b []byte, abort *atomic.Bool) int {
	n := 0
	for n < len(b) {
		if abort != nil && abort.Load() {
			return n
		}
		end := min(n+scrubChunk, len(b))
		clear(b[n:end])
		n = end
	}
	return n
}

// scrubBlockLocked zeroes the used bytes of dirty pool block i, which the
// caller took with takeDirty, and makes it allocatable. It unlocks mu
// while zeroing; the block counts as busy meanwhile, for waitScrubbed.
func (a *Allocator) scrubBlockLocked(i int32, used int) {
	a.busy++
	a.mu.Unlock()
	n := zero(a.blockBytes(i)[:used], nil)
	a.mu.Lock()
	a.busy--
	a.st.BytesScrubbed += int64(n)
	a.st.PoolDirty -= int64(a.blockSize(i))
	a.b.release(i)
	a.signalDrainedLocked()
}
