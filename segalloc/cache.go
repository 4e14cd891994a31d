package segalloc

import "time"

// cacheLocked puts a zeroed, idle mapping in the cache (clean false: it is
// not fully zeroed and must go), evicting the oldest cached mappings past
// MaxCached. It returns the mappings to unmap (after unlocking).
func (a *Allocator) cacheLocked(m Mapping, clean bool) []Mapping {
	size := int64(len(m.Bytes()))
	if a.closed || !clean || size > a.maxCache {
		a.forgetMappingLocked(m)
		return []Mapping{m}
	}
	var drop []Mapping
	for len(a.cache) > 0 && a.st.MappingBytesCached+size > a.maxCache {
		drop = append(drop, a.evictLocked())
	}
	a.cache = append(a.cache, cached{m: m, since: time.Now()})
	a.st.MappingBytesCached += size
	a.armTrimLocked()
	return drop
}

// armTrimLocked arms the trim timer for the oldest cached mapping, unless
// it is armed already, the cache is empty or idle trimming is off. A timer
// armed for a mapping that has since left the cache fires early, finds
// nothing old enough and re-arms: cheaper than re-arming on every reuse.
func (a *Allocator) armTrimLocked() {
	if a.idle <= 0 || len(a.cache) == 0 || a.closed || a.trimSet {
		return
	}
	d := max(a.idle-time.Since(a.cache[0].since), 0)
	a.trimSet = true
	if a.trim == nil {
		a.trim = time.AfterFunc(d, a.trimIdle)
	} else {
		a.trim.Reset(d)
	}
}

// trimIdle unmaps the cached mappings idle for CacheIdle, then re-arms the
// timer for the next one. It runs on the timer's goroutine.
func (a *Allocator) trimIdle() {
	a.mu.Lock()
	a.trimSet = false
	if a.closed {
		a.mu.Unlock()
		return
	}
	var drop []Mapping
	for len(a.cache) > 0 && time.Since(a.cache[0].since) >= a.idle {
		drop = append(drop, a.evictLocked())
		a.st.MappingsTrimmed++
	}
	a.armTrimLocked()
	a.busy++ // waitScrubbed waits for these Unmaps too
	a.mu.Unlock()
	for _, m := range drop {
		a.mapper.Unmap(m)
	}
	a.mu.Lock()
	a.busy--
	a.signalDrainedLocked()
	a.mu.Unlock()
}

// evictLocked removes the oldest cached mapping and returns it for unmapping.
func (a *Allocator) evictLocked() Mapping {
	m := a.cache[0].m
	a.cache[0] = cached{}
	a.cache = a.cache[1:]
	a.st.MappingBytesCached -= int64(len(m.Bytes()))
	a.forgetMappingLocked(m)
	return m
}
