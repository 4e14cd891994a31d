package segalloc

import (
	"errors"
	"fmt"
	"math"
	"math/bits"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"
)

// Loc says where a segment lives: LocPool, LocHeap, or the ID of the
// dedicated Mapping that holds it.
type Loc uint32

const (
	// LocPool: the segment is a block of the pool.
	LocPool Loc = 0
	// LocHeap: the segment is heap memory; the transport copies it at send.
	LocHeap Loc = ^Loc(0)
)

// Mapping is a dedicated shared mapping, made by the transport's Mapper.
type Mapping interface {
	// ID identifies the mapping: > 0, never ^uint32(0), and unique for the
	// allocator's life. It is the segment's Loc.
	ID() uint32
	// Bytes returns the mapped memory, zeroed when made.
	Bytes() []byte
}

// Mapper makes and drops dedicated mappings. The Allocator calls it without
// holding its lock, possibly from several goroutines at once.
type Mapper interface {
	// Map makes a dedicated zeroed mapping of at least size bytes.
	Map(size int) (Mapping, error)
	// Unmap tells the transport that the allocator drops m for good (evicted
	// from its cache, or at Close). No segment refers to it any more.
	Unmap(m Mapping)
}

// Options tune an Allocator. The zero value gives the defaults.
type Options struct {
	// MinBlock is the smallest pool block: a power of two, at least 8.
	// Default 1 KiB.
	MinBlock int
	// MaxBlock is the largest pool block: a power of two, at least MinBlock
	// and at most 1 GiB. Default: the largest power of two <= pool/4, capped
	// at 16 MiB (and at least MinBlock). The pool length must be a multiple
	// of MaxBlock.
	MaxBlock int
	// FirstSegment is the size of an arena's first segment, rounded up to a
	// power of two and to MinBlock; at most MaxBlock. Default MinBlock.
	FirstSegment int
	// NoScrub reuses freed memory without zeroing it, for a user that zeroes
	// everything it allocates itself: go-capnp v3.0.1-alpha.2 clears every
	// object's space in its alloc, so zeroing on free as well would clear
	// each byte twice. Only bytes the user allocated are ever sent, so
	// stale bytes stay within this pool, which only this connection's peer
	// maps.
	NoScrub bool
	// Mapper makes dedicated mappings. Nil: none; segments larger than
	// MaxBlock and pool exhaustion go to the heap.
	Mapper Mapper
	// MaxDedicated caps the bytes of dedicated mappings alive (in use, dirty
	// and cached). Zero: 8 GiB. Negative: no dedicated mappings.
	MaxDedicated int64
	// MaxCached caps the bytes of idle dedicated mappings kept for reuse.
	// Zero: 256 MiB. Negative: none are kept.
	MaxCached int64
	// CacheIdle unmaps a cached mapping that has not been reused for this
	// long, so that an idle connection gives back the memory of its last
	// large message (in both processes: the peer unmaps what this side
	// unmaps). Zero: kept until evicted or Close.
	CacheIdle time.Duration
	// MaxHeap caps the bytes of heap fallback segments alive. Zero: 256 MiB.
	// Negative: no heap fallback.
	MaxHeap int64
}

// Stats are the allocator's counters, a snapshot taken by Allocator.Stats.
// Byte counts are segment capacities.
type Stats struct {
	PoolSize      int64 // bytes in the pool
	PoolInUse     int64 // pool bytes held by arenas
	PoolHighWater int64 // highest PoolInUse seen
	PoolDirty     int64 // pool bytes released and not yet zeroed
	BlocksInUse   int64 // pool blocks held by arenas

	Allocs       int64 // segments allocated, all locations
	PoolAllocs   int64 // segments allocated in the pool
	PoolSmaller  int64 // pool segments smaller than growth wanted (the wanted size had no free block)
	Frees        int64 // segments returned by arenas, all locations
	FailedAllocs int64 // Allocate calls that returned an error

	MappingsMade        int64 // dedicated mappings made by the Mapper
	MappingsReused      int64 // segments served by an existing (cached or dirty) mapping
	MappingsUnmapped    int64 // dedicated mappings given back to the Mapper
	MappingFailures     int64 // Mapper.Map errors (or unusable mappings)
	MappingsLive        int64 // dedicated mappings alive (in use, dirty or cached)
	MappingsInUse       int64 // dedicated mappings held by arenas
	MappingBytesLive    int64 // bytes of MappingsLive
	MappingBytesCached  int64 // bytes of idle, zeroed mappings kept for reuse
	MappingsTrimmed     int64 // cached mappings unmapped after CacheIdle unused
	MappingAllocs       int64 // segments allocated in dedicated mappings
	MappingForOversized int64 // of MappingAllocs, segments larger than MaxBlock

	HeapFallbacks int64 // segments allocated on the heap
	HeapBytesLive int64 // bytes of heap segments alive

	BytesScrubbed int64 // bytes zeroed before reuse (scrubber, inline and synchronous)
	SyncScrubs    int64 // blocks or mappings an Allocate zeroed itself rather than fail

	ArenasAlive    int64 // arenas made and not yet fully released
	ArenasShared   int64 // arenas whose reference count is above 1 (held by the peer too)
	RefcountErrors int64 // Release or Retain on an arena whose last reference was gone
}

var (
	// ErrExhausted is wrapped by the error Allocate returns when the pool,
	// the dedicated-mapping cap and the heap cap are all exhausted.
	ErrExhausted = errors.New("segalloc: no memory for segment")
	// ErrClosed is wrapped by the error Allocate returns after Close.
	ErrClosed = errors.New("segalloc: allocator closed")
)

const (
	defaultMinBlock     = 1 << 10
	defaultMaxBlockCap  = 16 << 20
	maxMaxBlock         = 1 << 30
	defaultMaxDedicated = 8 << 30
	defaultMaxCached    = 256 << 20
	defaultMaxHeap      = 256 << 20

	// smallMapGranule and bigMapGranule round dedicated mapping sizes: a
	// pool-overflow segment (<= 1 MiB) to 64 KiB (the Windows allocation
	// granularity), anything larger to 1 MiB.
	smallMapGranule = 64 << 10
	bigMapGranule   = 1 << 20

	// inlineScrubMax: Release zeroes up to this many used bytes itself.
	inlineScrubMax = 1 << 10
	// scrubChunk: mappings are zeroed in chunks of this size, so Close does
	// not wait for a huge mapping to be zeroed.
	scrubChunk = 4 << 20
)

// maxSegCap is the largest segment go-capnp can address (1<<32 - 8 bytes,
// less on 32-bit platforms).
var maxSegCap = int(min(int64(1<<32-8), int64(math.MaxInt)&^7))

// Allocator allocates Cap'n Proto segments in one pool. Its methods may be
// called from any goroutine.
type Allocator struct {
	pool     []byte
	minShift uint // log2(MinBlock)
	maxBlock int
	first    int // first segment size
	mapper   Mapper
	maxDed   int64
	maxCache int64
	idle     time.Duration // CacheIdle
	maxHeap  int64
	noScrub  bool

	closing atomic.Bool // set by Close before taking mu: aborts long scrubs
	done    chan struct{}

	mu       sync.Mutex
	work     sync.Cond // the scrubber waits here for dirty items
	drained  sync.Cond // broadcast when nothing is dirty or being zeroed
	b        buddy
	dirtyMap []mapItem   // released mappings waiting to be zeroed, oldest first
	cache    []cached    // zeroed idle mappings, oldest first
	trim     *time.Timer // fires trimIdle; made on first use
	trimSet  bool        // trim is armed (a timer early for the oldest is fine)
	busy     int         // items being zeroed outside mu
	closed   bool
	st       Stats // all but the three counters below

	// Arena counters, kept off mu: they change on every send.
	arenasAlive  atomic.Int64
	arenasShared atomic.Int64
	refErrors    atomic.Int64
}

// cached is an idle mapping in the cache and when it went there.
type cached struct {
	m     Mapping
	since time.Time
}

// mapItem is a dirty mapping and the bytes of it to zero.
type mapItem struct {
	m    Mapping
	used int
}

// New makes an Allocator over pool, the owner's read-write mapping of the
// shared pool (8-byte aligned, assumed zeroed, its length a multiple of
// MaxBlock; it may be empty, and then every segment is a dedicated mapping
// or heap memory). It starts the background scrubber goroutine, which runs
// until Close. Block metadata takes 13 bytes of Go memory per MinBlock of
// pool (about 13 MiB for a 1 GiB pool with 1 KiB blocks).
func New(pool []byte, opts Options) (*Allocator, error) {
	a, err := newAllocator(pool, opts)
	if err != nil {
		return nil, err
	}
	go a.scrubber()
	return a, nil
}

// newAllocator is New without starting the scrubber (tests start it late).
func newAllocator(pool []byte, opts Options) (*Allocator, error) {
	minB := opts.MinBlock
	if minB == 0 {
		minB = defaultMinBlock
	}
	if minB < 8 || !isPow2(minB) || minB > maxMaxBlock {
		return nil, fmt.Errorf("segalloc: MinBlock %d is not a power of two in [8, %d]", minB, maxMaxBlock)
	}
	maxB := opts.MaxBlock
	if maxB == 0 {
		maxB = defaultMaxBlockCap
		if q := len(pool) / 4; q < maxB {
			maxB = floorPow2(q)
		}
		maxB = max(maxB, minB)
	}
	if !isPow2(maxB) || maxB < minB || maxB > maxMaxBlock {
		return nil, fmt.Errorf("segalloc: MaxBlock %d is not a power of two in [MinBlock=%d, %d]", maxB, minB, maxMaxBlock)
	}
	if len(pool)%maxB != 0 {
		return nil, fmt.Errorf("segalloc: pool length %d is not a multiple of MaxBlock %d", len(pool), maxB)
	}
	if len(pool) > 0 {
		if a := uintptr(unsafe.Pointer(unsafe.SliceData(pool))) % 8; a != 0 {
			return nil, fmt.Errorf("segalloc: pool starts %d bytes past an 8-byte boundary, want 8-byte alignment", a)
		}
	}
	units := len(pool) / minB
	if int64(units) > math.MaxInt32 {
		return nil, fmt.Errorf("segalloc: pool of %d bytes has more than 2^31 blocks of MinBlock %d bytes; raise MinBlock", len(pool), minB)
	}
	first := opts.FirstSegment
	if first < 0 {
		return nil, fmt.Errorf("segalloc: FirstSegment %d is negative", first)
	}
	first = max(ceilPow2(first), minB)
	if first > maxB {
		return nil, fmt.Errorf("segalloc: FirstSegment %d is larger than MaxBlock %d", opts.FirstSegment, maxB)
	}
	a := &Allocator{
		pool:     pool[:len(pool):len(pool)],
		minShift: uint(bits.TrailingZeros(uint(minB))),
		maxBlock: maxB,
		first:    first,
		mapper:   opts.Mapper,
		maxDed:   limit(opts.MaxDedicated, defaultMaxDedicated),
		maxCache: limit(opts.MaxCached, defaultMaxCached),
		idle:     max(opts.CacheIdle, 0),
		maxHeap:  limit(opts.MaxHeap, defaultMaxHeap),
		noScrub:  opts.NoScrub,
		done:     make(chan struct{}),
	}
	a.work.L = &a.mu
	a.drained.L = &a.mu
	a.b.init(units, bits.TrailingZeros(uint(maxB))-int(a.minShift))
	a.st.PoolSize = int64(len(pool))
	return a, nil
}

// limit applies the zero-means-default, negative-means-none convention.
func limit(v, def int64) int64 {
	switch {
	case v == 0:
		return def
	case v < 0:
		return 0
	}
	return v
}

func isPow2(n int) bool { return n > 0 && n&(n-1) == 0 }

// floorPow2 returns the largest power of two <= n (0 for n < 1).
func floorPow2(n int) int {
	if n < 1 {
		return 0
	}
	return 1 << (bits.Len(uint(n)) - 1)
}

// ceilPow2 returns the smallest power of two >= n (1 for n <= 1), or a
// negative number when that overflows int.
func ceilPow2(n int) int {
	if n <= 1 {
		return 1
	}
	s := bits.Len(uint(n - 1))
	if s >= bits.UintSize-1 {
		return -1
	}
	return 1 << s
}

func roundUp(n, g int) int { return (n + g - 1) / g * g }

// NewArena returns an empty arena with one reference (go-capnp's), for one
// message.
func (a *Allocator) NewArena() *Arena {
	ar := new(Arena)
	a.InitArena(ar)
	return ar
}

// InitArena makes ar, a zero Arena the caller holds (in a struct of its
// own, which saves an allocation per message), what NewArena returns. ar
// must not be copied afterwards.
func (a *Allocator) InitArena(ar *Arena) {
	ar.a = a
	ar.segs = ar.inline[:0]
	ar.refs.Store(1)
	a.arenasAlive.Add(1)
}

// Stats returns a snapshot of the counters.
func (a *Allocator) Stats() Stats {
	a.mu.Lock()
	st := a.st
	a.mu.Unlock()
	st.ArenasAlive = a.arenasAlive.Load()
	st.ArenasShared = a.arenasShared.Load()
	st.RefcountErrors = a.refErrors.Load()
	return st
}

// Close stops the scrubber and unmaps the cached and dirty mappings. Arenas
// still alive keep their segments and work until their last Release (which
// then unmaps their mappings); Allocate fails with ErrClosed from now on.
// Close is idempotent and returns nil.
func (a *Allocator) Close() error {
	a.closing.Store(true)
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return nil
	}
	a.closed = true
	var drop []Mapping
	for _, c := range a.cache {
		drop = append(drop, c.m)
	}
	a.cache = nil
	if a.trim != nil {
		a.trim.Stop()
	}
	a.st.MappingBytesCached = 0
	for _, it := range a.dirtyMap {
		drop = append(drop, it.m)
	}
	a.dirtyMap = nil
	for _, m := range drop {
		a.forgetMappingLocked(m)
	}
	// The pool is never allocated from again: dirty blocks need no zeroing.
	for {
		i, _, _, ok := a.b.takeDirty(0, a.b.maxOrder, true)
		if !ok {
			break
		}
		a.st.PoolDirty -= int64(a.blockSize(i))
		a.b.release(i)
	}
	a.work.Broadcast()
	a.signalDrainedLocked()
	a.mu.Unlock()
	a.unmapAll(drop)
	<-a.done
	return nil
}

// blockSize returns the size of the pool block whose head is i.
func (a *Allocator) blockSize(i int32) int { return 1 << (a.minShift + uint(a.b.order(i))) }

// blockBytes returns the pool block whose head is i, len 0, cap its size.
func (a *Allocator) blockBytes(i int32) []byte {
	off := int(i) << a.minShift
	end := off + a.blockSize(i)
	return a.pool[off:off:end]
}

// forgetMappingLocked updates the counters for a mapping about to be
// unmapped (not in use, not cached).
func (a *Allocator) forgetMappingLocked(m Mapping) {
	a.st.MappingsLive--
	a.st.MappingBytesLive -= int64(len(m.Bytes()))
	a.st.MappingsUnmapped++
}

// unmapAll calls Mapper.Unmap on each mapping; mu must not be held.
func (a *Allocator) unmapAll(ms []Mapping) {
	for _, m := range ms {
		a.mapper.Unmap(m)
	}
}

// segment is what the allocator hands to an arena: the public description
// plus what freeing needs.
type segment struct {
	Segment
	block int32 // pool block head (LocPool)
	used  int   // bytes to zero at free; -1: unknown (the whole capacity)
}

// alloc allocates one segment for an arena whose last segment had capacity
// prev (-1 for the first segment), holding at least minsz bytes.
func (a *Allocator) alloc(prev int, minsz int) (segment, error) {
	need := max(roundUp(minsz, 8), 8)
	if minsz < 0 || minsz > maxSegCap {
		a.mu.Lock()
		a.st.FailedAllocs++
		a.mu.Unlock()
		return segment{}, fmt.Errorf("segalloc: segment of %d bytes requested, more than a segment can hold (%d)", minsz, maxSegCap)
	}
	var want int
	if prev < 0 {
		want = max(a.first, ceilPow2(need))
	} else {
		want = max(ceilPow2(int(min(2*int64(prev), int64(maxSegCap)))), ceilPow2(need))
	}
	oversized := need > a.maxBlock
	if !oversized {
		want = min(max(want, 1<<a.minShift), a.maxBlock)
	}

	a.mu.Lock()
	if a.closed {
		a.st.FailedAllocs++
		a.mu.Unlock()
		return segment{}, fmt.Errorf("segalloc: allocate %d bytes: %w", minsz, ErrClosed)
	}
	var seg segment
	var ok bool
	if !oversized {
		k := bits.TrailingZeros(uint(want)) - int(a.minShift)
		m := max(bits.TrailingZeros(uint(ceilPow2(need)))-int(a.minShift), 0)
		if seg, ok = a.poolLocked(k, m); !ok {
			seg, ok = a.syncScrubLocked(k, m)
		}
		if ok {
			a.st.PoolAllocs++
			a.st.Allocs++
			a.mu.Unlock()
			return seg, nil
		}
		if a.closed {
			a.st.FailedAllocs++
			a.mu.Unlock()
			return segment{}, fmt.Errorf("segalloc: allocate %d bytes: %w", minsz, ErrClosed)
		}
	}
	// Dedicated mapping. (mapLocked may unlock and relock mu.)
	size := roundUp(need, bigMapGranule)
	if !oversized {
		size = roundUp(want, smallMapGranule)
	}
	seg, ok, err := a.mapLocked(size)
	if err != nil {
		a.st.FailedAllocs++
		a.mu.Unlock()
		return segment{}, fmt.Errorf("segalloc: allocate %d bytes: %w", minsz, err)
	}
	if ok {
		a.st.MappingAllocs++
		if oversized {
			a.st.MappingForOversized++
		}
		a.st.Allocs++
		a.mu.Unlock()
		return seg, nil
	}
	// Heap: the wanted size if it fits under MaxHeap, else just what is needed.
	hsize := size
	if !oversized {
		hsize = want
		if a.st.HeapBytesLive+int64(hsize) > a.maxHeap {
			hsize = ceilPow2(need)
		}
	}
	hsize = min(hsize, maxSegCap)
	if a.st.HeapBytesLive+int64(hsize) <= a.maxHeap {
		a.st.HeapBytesLive += int64(hsize)
		a.st.HeapFallbacks++
		a.st.Allocs++
		a.mu.Unlock()
		return segment{Segment: Segment{Loc: LocHeap, Data: make([]byte, 0, hsize)}, block: nilIdx, used: -1}, nil
	}
	a.st.FailedAllocs++
	err = fmt.Errorf("segalloc: segment of %d bytes: pool (%d of %d bytes in use, %d dirty; no free block of %d..%d bytes), %s, heap (%d of MaxHeap %d bytes live): %w",
		need, a.st.PoolInUse, a.st.PoolSize, a.st.PoolDirty, min(ceilPow2(need), a.maxBlock), min(want, a.maxBlock),
		a.mappingLimitText(size), a.st.HeapBytesLive, a.maxHeap, ErrExhausted)
	a.mu.Unlock()
	return segment{}, err
}

// mappingLimitText describes why no mapping could serve size bytes.
func (a *Allocator) mappingLimitText(size int) string {
	if a.mapper == nil {
		return "no Mapper for dedicated mappings"
	}
	return fmt.Sprintf("dedicated mappings (%d of MaxDedicated %d bytes live, %d more wanted, %d Map failures)",
		a.st.MappingBytesLive, a.maxDed, size, a.st.MappingFailures)
}

// poolLocked takes a clean pool block of order k, or failing that the
// largest free block of order in [m, k).
func (a *Allocator) poolLocked(k, m int) (segment, bool) {
	i, ok := a.b.alloc(k)
	if !ok {
		o := a.b.largestFree(m, k-1)
		if o < 0 {
			return segment{}, false
		}
		i, _ = a.b.alloc(o)
		a.st.PoolSmaller++
	}
	size := a.blockSize(i)
	a.st.PoolInUse += int64(size)
	a.st.PoolHighWater = max(a.st.PoolHighWater, a.st.PoolInUse)
	a.st.BlocksInUse++
	return segment{
		Segment: Segment{Loc: LocPool, Offset: int(i) << a.minShift, Data: a.blockBytes(i)},
		block:   i,
		used:    -1,
	}, true
}

// syncScrubLocked zeroes dirty pool blocks in the caller, rather than fail,
// until a block of order in [m, k] can be allocated: first a dirty block of
// order >= m (the smallest such), else smaller dirty blocks (largest first,
// hoping they merge) up to a budget of twice the wanted size. It unlocks mu
// while zeroing.
func (a *Allocator) syncScrubLocked(k, m int) (segment, bool) {
	budget := 2 << (a.minShift + uint(k))
	for a.b.ndirty > 0 && !a.closed {
		i, _, used, ok := a.b.takeDirty(m, a.b.maxOrder, true)
		if !ok {
			if budget <= 0 || m == 0 {
				return segment{}, false
			}
			var o int
			if i, o, used, ok = a.b.takeDirty(0, m-1, false); !ok {
				return segment{}, false
			}
			budget -= 1 << (a.minShift + uint(o))
		}
		a.st.SyncScrubs++
		a.scrubBlockLocked(i, used)
		if a.closed {
			return segment{}, false
		}
		if seg, ok := a.poolLocked(k, m); ok {
			return seg, true
		}
	}
	return segment{}, false
}

// mapLocked finds a dedicated mapping of at least size bytes: a cached one
// of at most twice that, a dirty one (zeroed here), or a new one within
// MaxDedicated. ok false with a nil error means none is available. It
// unlocks mu around zeroing and Mapper calls.
func (a *Allocator) mapLocked(size int) (seg segment, ok bool, err error) {
	if a.mapper == nil || int64(size) > a.maxDed {
		return segment{}, false, nil
	}
	fits := func(m Mapping) bool { n := len(m.Bytes()); return n >= size && n/2 <= size }
	for j, c := range a.cache {
		if m := c.m; fits(m) {
			a.cache = append(a.cache[:j], a.cache[j+1:]...)
			a.st.MappingBytesCached -= int64(len(m.Bytes()))
			a.st.MappingsReused++
			return a.useMappingLocked(m), true, nil
		}
	}
	for j, it := range a.dirtyMap {
		if fits(it.m) {
			a.dirtyMap = append(a.dirtyMap[:j], a.dirtyMap[j+1:]...)
			a.busy++
			a.mu.Unlock()
			n := zero(it.m.Bytes()[:it.used], nil)
			a.mu.Lock()
			a.busy--
			a.st.BytesScrubbed += int64(n)
			a.st.SyncScrubs++
			a.signalDrainedLocked()
			if a.closed {
				a.forgetMappingLocked(it.m)
				a.mu.Unlock()
				a.mapper.Unmap(it.m)
				a.mu.Lock()
				return segment{}, false, ErrClosed
			}
			a.st.MappingsReused++
			return a.useMappingLocked(it.m), true, nil
		}
	}
	// A new mapping, evicting cached ones if that makes room.
	if a.st.MappingBytesLive-a.st.MappingBytesCached+int64(size) > a.maxDed {
		return segment{}, false, nil
	}
	var drop []Mapping
	for a.st.MappingBytesLive+int64(size) > a.maxDed {
		drop = append(drop, a.evictLocked())
	}
	// Reserve the bytes while Map runs unlocked.
	a.st.MappingBytesLive += int64(size)
	a.mu.Unlock()
	a.unmapAll(drop)
	m, err := a.mapper.Map(size)
	if err == nil && m != nil && (m.ID() == 0 || Loc(m.ID()) == LocHeap || len(m.Bytes()) < size) {
		a.mapper.Unmap(m)
		err = fmt.Errorf("unusable mapping (ID %d, %d bytes for %d wanted)", m.ID(), len(m.Bytes()), size)
	} else if err == nil && m == nil {
		err = errors.New("nil mapping")
	}
	a.mu.Lock()
	a.st.MappingBytesLive -= int64(size)
	if err != nil {
		a.st.MappingFailures++
		return segment{}, false, nil
	}
	a.st.MappingsMade++
	a.st.MappingsLive++
	a.st.MappingBytesLive += int64(len(m.Bytes()))
	if a.closed {
		a.forgetMappingLocked(m)
		a.mu.Unlock()
		a.mapper.Unmap(m)
		a.mu.Lock()
		return segment{}, false, ErrClosed
	}
	return a.useMappingLocked(m), true, nil
}

// useMappingLocked hands out m as a segment.
func (a *Allocator) useMappingLocked(m Mapping) segment {
	a.st.MappingsInUse++
	b := m.Bytes()
	return segment{
		Segment: Segment{Loc: Loc(m.ID()), Data: b[:0:min(len(b), maxSegCap)], Mapping: m},
		block:   nilIdx,
		used:    -1,
	}
}

// free takes back the segments of an arena whose last reference is gone
// (and counts the arena gone).
func (a *Allocator) free(segs []segment) {
	// Zero small used lengths here: cheaper than handing them over.
	scrubbed := 0
	for j := range segs {
		s := &segs[j]
		if a.noScrub {
			s.used = 0 // clean as far as the user is concerned
			continue
		}
		if s.used < 0 || s.used > cap(s.Data) {
			s.used = cap(s.Data)
		}
		if s.Loc != LocHeap && s.used <= inlineScrubMax {
			clear(s.Data[:s.used])
			scrubbed += s.used
			s.used = 0
		}
	}
	var drop []Mapping
	a.mu.Lock()
	a.st.BytesScrubbed += int64(scrubbed)
	queued := false
	for j := range segs {
		s := &segs[j]
		a.st.Frees++
		switch {
		case s.Loc == LocPool:
			a.st.PoolInUse -= int64(cap(s.Data))
			a.st.BlocksInUse--
			if s.used == 0 || a.closed {
				a.b.release(s.block)
			} else {
				a.b.markDirty(s.block, s.used)
				a.st.PoolDirty += int64(cap(s.Data))
				queued = true
			}
		case s.Loc == LocHeap:
			a.st.HeapBytesLive -= int64(cap(s.Data))
		default:
			a.st.MappingsInUse--
			size := int64(len(s.Mapping.Bytes()))
			if s.used == 0 || a.closed || size > a.maxCache {
				drop = append(drop, a.cacheLocked(s.Mapping, s.used == 0)...)
			} else {
				a.dirtyMap = append(a.dirtyMap, mapItem{m: s.Mapping, used: s.used})
				queued = true
			}
		}
		segs[j] = segment{}
	}
	if queued {
		a.work.Signal()
	}
	a.mu.Unlock()
	a.arenasAlive.Add(-1)
	a.unmapAll(drop)
}
