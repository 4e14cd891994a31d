package segalloc

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	"capnproto.org/go/capnp/v3"
)

// Segment describes one segment of an arena.
type Segment struct {
	// Loc is where the segment lives: LocPool, LocHeap, or the ID of its
	// dedicated Mapping.
	Loc Loc
	// Offset is the segment's offset in the pool (LocPool), else 0.
	Offset int
	// Data is the segment's memory as Allocate returned it: len 0, cap the
	// block size. The used bytes are those of the capnp.Message's segment.
	Data []byte
	// Mapping is the dedicated mapping holding the segment, else nil.
	Mapping Mapping
}

// Arena is a capnp.Arena whose segments come from an Allocator. It is safe
// for the concurrent use go-capnp makes of it (and for Retain and Release
// from any goroutine).
//
// An arena is reference counted: NewArena returns it with one reference
// (go-capnp's, dropped by Message.Release), and the transport adds one with
// Retain when the peer receives the message. When the last reference is
// gone the segments go back to the allocator; the arena must not be used
// after that.
type Arena struct {
	a    *Allocator
	refs atomic.Int32

	mu       sync.Mutex
	segs     []segment
	released bool
	failed   error      // the last Allocate's error, for Err
	inline   [4]segment // backing for segs: most messages have few segments
}

var _ capnp.Arena = (*Arena)(nil)

// errReleased is returned by Allocate and Data on a released arena.
var errReleased = errors.New("segalloc: arena used after its last Release")

// Err returns the error of the arena's last failed Allocate, nil if none
// failed. go-capnp passes an allocation error up as text only; Err gives
// callers the error itself (errors.Is(err, ErrExhausted)).
func (ar *Arena) Err() error {
	ar.mu.Lock()
	defer ar.mu.Unlock()
	return ar.failed
}

// NumSegments returns the number of segments allocated so far.
func (ar *Arena) NumSegments() int64 {
	ar.mu.Lock()
	defer ar.mu.Unlock()
	return int64(len(ar.segs))
}

// Data returns segment id: its used bytes once SetUsed has said how many,
// else an empty slice with the segment's capacity (as Allocate returned it).
func (ar *Arena) Data(id capnp.SegmentID) ([]byte, error) {
	ar.mu.Lock()
	defer ar.mu.Unlock()
	if ar.released {
		return nil, errReleased
	}
	if int64(id) >= int64(len(ar.segs)) {
		return nil, fmt.Errorf("segalloc: segment %d requested, arena has %d", id, len(ar.segs))
	}
	s := &ar.segs[id]
	if s.used > 0 {
		return s.Data[:s.used], nil
	}
	return s.Data, nil
}

// Allocate returns a segment with at least minsz bytes free: one of the
// message's segments that still has room (go-capnp asks whenever the
// segment it is writing in is full, even if a later one has room), else a
// new one (see the package documentation for the sizes and where they
// come from). segs is the message's view of its segments, with the bytes
// used so far; a segment missing from it is never reused.
func (ar *Arena) Allocate(minsz capnp.Size, segs map[capnp.SegmentID]*capnp.Segment) (capnp.SegmentID, []byte, error) {
	ar.mu.Lock()
	defer ar.mu.Unlock()
	if ar.released {
		return 0, nil, errReleased
	}
	// Newest first: it is the largest, and the likeliest to have room.
	for i := len(ar.segs) - 1; i >= 0 && segs != nil; i-- {
		id := capnp.SegmentID(i)
		if seg := segs[id]; seg != nil {
			if d := seg.Data(); cap(d)-len(d) >= int(minsz) {
				return id, d, nil
			}
		}
	}
	if int64(len(ar.segs)) >= 1<<32 {
		return 0, nil, errors.New("segalloc: too many segments")
	}
	prev := -1
	if n := len(ar.segs); n > 0 {
		prev = cap(ar.segs[n-1].Data)
	}
	s, err := ar.a.alloc(prev, int(minsz))
	if err != nil {
		ar.failed = err
		return 0, nil, err
	}
	ar.segs = append(ar.segs, s)
	return capnp.SegmentID(len(ar.segs) - 1), s.Data, nil
}

// Retain adds a reference: the transport calls it when the message is sent,
// for the peer's reference. Retain after the last Release is a no-op
// counted in Stats.RefcountErrors.
func (ar *Arena) Retain() {
	for {
		n := ar.refs.Load()
		if n <= 0 {
			ar.a.refError()
			return
		}
		if ar.refs.CompareAndSwap(n, n+1) {
			if n == 1 {
				ar.a.shared(+1)
			}
			return
		}
	}
}

// Release drops one reference (it is capnp.Arena's Release, called by
// Message.Release). When none is left, the segments go back to the
// allocator: pool blocks and mappings to the scrubber, heap segments to the
// garbage collector. Release beyond the last reference is a no-op counted
// in Stats.RefcountErrors.
func (ar *Arena) Release() {
	for {
		n := ar.refs.Load()
		if n <= 0 {
			ar.a.refError()
			return
		}
		if !ar.refs.CompareAndSwap(n, n-1) {
			continue
		}
		switch n {
		case 2:
			ar.a.shared(-1)
		case 1:
			ar.mu.Lock()
			segs := ar.segs
			ar.segs = nil
			ar.released = true
			ar.mu.Unlock()
			ar.a.free(segs)
		}
		return
	}
}

func (a *Allocator) refError() { a.refErrors.Add(1) }

func (a *Allocator) shared(d int64) { a.arenasShared.Add(d) }

// Segments returns the segments allocated so far, in id order (a copy; the
// Data slices alias the segments' memory).
func (ar *Arena) Segments() []Segment { return ar.AppendSegments(nil) }

// AppendSegments appends the segments allocated so far, in id order, to dst
// and returns the result: Segments without an allocation when dst has room.
func (ar *Arena) AppendSegments(dst []Segment) []Segment {
	ar.mu.Lock()
	defer ar.mu.Unlock()
	for i := range ar.segs {
		dst = append(dst, ar.segs[i].Segment)
	}
	return dst
}

// SetUsed records the final used length of each segment (lengths[i] for
// segment i, as the transport reads them from the capnp.Message at send:
// len(msg.Segment(i).Data())). Freeing then zeroes only [0, used) of each;
// nothing may be written past those lengths afterwards. Segments without a
// length (lengths shorter than the segment list) are zeroed whole; a length
// out of [0, cap] counts as the whole capacity.
func (ar *Arena) SetUsed(lengths []int) {
	ar.mu.Lock()
	defer ar.mu.Unlock()
	for i := range ar.segs {
		u := -1
		if i < len(lengths) && lengths[i] >= 0 && lengths[i] <= cap(ar.segs[i].Data) {
			u = lengths[i]
		}
		ar.segs[i].used = u
	}
}
