package segalloc

import (
	"bytes"
	"errors"
	"fmt"
	"sync"
	"testing"
	"unsafe"

	"capnproto.org/go/capnp/v3"

	"github.com/capnshm/capnshm/shm"
)

// roArena is a read-only arena over segments given as byte slices: what a
// peer builds over the owner's memory.
type roArena [][]byte

func (r roArena) NumSegments() int64 { return int64(len(r)) }

func (r roArena) Data(id capnp.SegmentID) ([]byte, error) {
	if int64(id) >= int64(len(r)) {
		return nil, fmt.Errorf("segment %d of %d", id, len(r))
	}
	return r[id], nil
}

func (roArena) Allocate(capnp.Size, map[capnp.SegmentID]*capnp.Segment) (capnp.SegmentID, []byte, error) {
	return 0, nil, errors.New("read-only arena")
}

func (roArena) Release() {}

// shmMapper makes dedicated mappings with the shm package, as the
// transport does.
type shmMapper struct {
	mu     sync.Mutex
	nextID uint32
	live   map[uint32]*shm.Region
}

type shmMapping struct {
	id uint32
	r  *shm.Region
}

func (m *shmMapping) ID() uint32    { return m.id }
func (m *shmMapping) Bytes() []byte { return m.r.Bytes() }

func (sm *shmMapper) Map(size int) (Mapping, error) {
	r, err := shm.Create(int64(size), nil)
	if err != nil {
		return nil, err
	}
	sm.mu.Lock()
	defer sm.mu.Unlock()
	sm.nextID++
	if sm.live == nil {
		sm.live = map[uint32]*shm.Region{}
	}
	sm.live[sm.nextID] = r
	return &shmMapping{id: sm.nextID, r: r}, nil
}

func (sm *shmMapper) Unmap(m Mapping) {
	sm.mu.Lock()
	r := sm.live[m.ID()]
	delete(sm.live, m.ID())
	sm.mu.Unlock()
	r.Close()
}

var rootSize = capnp.ObjectSize{DataSize: 8, PointerCount: 2}

// buildMessage builds a root struct {u64 = n; data = payload; text} in a
// new message over ar and returns it with the used length of each segment.
func buildMessage(t testing.TB, ar *Arena, payload []byte, text string) (*capnp.Message, []int) {
	t.Helper()
	msg, seg, err := capnp.NewMessage(ar)
	if err != nil {
		t.Fatal(err)
	}
	st, err := capnp.NewRootStruct(seg, rootSize)
	if err != nil {
		t.Fatal(err)
	}
	st.SetUint64(0, uint64(len(payload)))
	if err := st.SetData(0, payload); err != nil {
		t.Fatal(err)
	}
	if err := st.SetNewText(1, text); err != nil {
		t.Fatal(err)
	}
	return msg, usedLengths(t, msg)
}

func usedLengths(t testing.TB, msg *capnp.Message) []int {
	t.Helper()
	var used []int
	for i := int64(0); i < msg.NumSegments(); i++ {
		s, err := msg.Segment(capnp.SegmentID(i))
		if err != nil {
			t.Fatal(err)
		}
		used = append(used, len(s.Data()))
	}
	return used
}

// peerView returns the message's segments as the peer would see them: by
// location, offset and length only, from the pool or the mapping itself.
func peerView(t *testing.T, pool []byte, segs []Segment, used []int) roArena {
	t.Helper()
	if len(segs) != len(used) {
		t.Fatalf("arena has %d segments, message %d", len(segs), len(used))
	}
	var view roArena
	for i, s := range segs {
		var b []byte
		switch {
		case s.Loc == LocPool:
			b = pool[s.Offset : s.Offset+used[i]]
		case s.Loc == LocHeap:
			b = s.Data[:used[i]] // the transport copies it
		default:
			if s.Mapping == nil || Loc(s.Mapping.ID()) != s.Loc {
				t.Fatalf("segment %d: Loc %d, mapping %v", i, s.Loc, s.Mapping)
			}
			b = s.Mapping.Bytes()[:used[i]]
		}
		if used[i] > 0 && unsafe.SliceData(b) != unsafe.SliceData(s.Data) {
			t.Fatalf("segment %d: Data does not alias its location", i)
		}
		view = append(view, b)
	}
	return view
}

func checkMessage(t *testing.T, view roArena, payload []byte, text string) {
	t.Helper()
	msg := &capnp.Message{Arena: view, TraverseLimit: 1 << 40}
	root, err := msg.Root()
	if err != nil {
		t.Fatal(err)
	}
	st := root.Struct()
	if n := st.Uint64(0); n != uint64(len(payload)) {
		t.Fatalf("u64 = %d, want %d", n, len(payload))
	}
	p, err := st.Ptr(0)
	if err != nil {
		t.Fatal(err)
	}
	if got := p.Data(); !bytes.Equal(got, payload) {
		t.Fatalf("data: %d bytes, want %d (equal: false)", len(got), len(payload))
	}
	p, err = st.Ptr(1)
	if err != nil {
		t.Fatal(err)
	}
	if got := p.Text(); got != text {
		t.Fatalf("text %q, want %q", got, text)
	}
}

func pattern(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*31 + 7)
	}
	return b
}

func TestCapnpMessage(t *testing.T) {
	mappers := []struct {
		name string
		new  func() Mapper
	}{
		{"memMapper", func() Mapper { return newMemMapper() }},
		{"shm", func() Mapper { return &shmMapper{} }},
	}
	for _, mp := range mappers {
		for _, tc := range []struct {
			name    string
			size    int
			locs    string // per segment: p = pool, m = mapping
			maxSegs int
		}{
			{"0B", 0, "p", 1},
			{"100B", 100, "p", 1},
			{"10KiB", 10 * kib, "pp", 2},   // far pointer into the second segment
			{"1MiB", mib, "pp", 2},         // exactly MaxBlock: a pool block
			{"3MiB", 3 * mib, "pm", 2},     // larger than MaxBlock: a dedicated mapping
			{"1MiB+1", mib + 1, "pm", 2},   // just over MaxBlock
			{"100KiB", 100 * kib, "pp", 2}, // grows past the doubling
		} {
			t.Run(mp.name+"/"+tc.name, func(t *testing.T) {
				mm := mp.new()
				a, pool := newTestAlloc(t, 4*mib, Options{MaxBlock: mib, Mapper: mm})
				payload := pattern(tc.size)
				ar := a.NewArena()
				msg, used := buildMessage(t, ar, payload, "hello, "+tc.name)
				segs := ar.Segments()
				locs := ""
				for _, s := range segs {
					switch s.Loc {
					case LocPool:
						locs += "p"
					case LocHeap:
						locs += "h"
					default:
						locs += "m"
					}
				}
				if locs != tc.locs {
					t.Errorf("segments %q, want %q", locs, tc.locs)
				}
				ar.SetUsed(used)
				checkMessage(t, peerView(t, pool, segs, used), payload, "hello, "+tc.name)
				// The arena itself serves Data with the used lengths.
				checkMessage(t, roArena(func() [][]byte {
					var v [][]byte
					for i := range segs {
						d, err := ar.Data(capnp.SegmentID(i))
						if err != nil {
							t.Fatal(err)
						}
						v = append(v, d)
					}
					return v
				}()), payload, "hello, "+tc.name)
				msg.Release() // go-capnp's reference: frees
				if st := a.Stats(); st.ArenasAlive != 0 || st.PoolInUse != 0 || st.MappingsInUse != 0 {
					t.Errorf("after Release: %+v", st)
				}
				a.waitScrubbed()
				if i := allZero(pool); i >= 0 {
					t.Errorf("pool byte %d not zeroed", i)
				}
				checkCoalesced(t, a)
			})
		}
	}
}

// TestCapnpManySegments: small blocks force many segments and far
// pointers between them (a linked list of structs, each allocated where
// there is room); the peer's view reads them all.
func TestCapnpManySegments(t *testing.T) {
	a, pool := newTestAlloc(t, 256*kib, Options{MinBlock: 64, MaxBlock: 256})
	ar := a.NewArena()
	msg, seg, err := capnp.NewMessage(ar)
	if err != nil {
		t.Fatal(err)
	}
	node := capnp.ObjectSize{DataSize: 8, PointerCount: 2} // u64, text, next
	const n = 60
	text := func(i int) string { return fmt.Sprintf("element %d with some text", i) }
	cur, err := capnp.NewRootStruct(seg, node)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < n; i++ {
		cur.SetUint64(0, uint64(i*i))
		if err := cur.SetNewText(0, text(i)); err != nil {
			t.Fatal(err)
		}
		if i == n-1 {
			break
		}
		next, err := capnp.NewStruct(cur.Segment(), node)
		if err != nil {
			t.Fatal(err)
		}
		if err := cur.SetPtr(1, next.ToPtr()); err != nil {
			t.Fatal(err)
		}
		cur = next
	}
	used := usedLengths(t, msg)
	if len(used) < 10 {
		t.Fatalf("only %d segments", len(used))
	}
	for i, s := range ar.Segments() {
		if s.Loc != LocPool {
			t.Fatalf("segment %d at %v", i, s.Loc)
		}
	}
	ar.SetUsed(used)
	view := peerView(t, pool, ar.Segments(), used)
	rmsg := &capnp.Message{Arena: view}
	p, err := rmsg.Root()
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < n; i++ {
		e := p.Struct()
		tp, err := e.Ptr(0)
		if err != nil {
			t.Fatal(err)
		}
		if e.Uint64(0) != uint64(i*i) || tp.Text() != text(i) {
			t.Fatalf("element %d: %d %q", i, e.Uint64(0), tp.Text())
		}
		if p, err = e.Ptr(1); err != nil {
			t.Fatal(err)
		}
		if p.IsValid() != (i < n-1) {
			t.Fatalf("element %d: next valid %v", i, p.IsValid())
		}
	}
	t.Logf("%d segments, used %v", len(used), used)
	msg.Release()
	checkCoalesced(t, a)
}

// TestCapnpRetainedByPeer: go-capnp releases first, the peer later.
func TestCapnpRetainedByPeer(t *testing.T) {
	a, pool := newTestAlloc(t, 64*kib, Options{MaxBlock: 16 * kib})
	ar := a.NewArena()
	msg, used := buildMessage(t, ar, pattern(3000), "x")
	ar.SetUsed(used)
	ar.Retain() // sent
	view := peerView(t, pool, ar.Segments(), used)
	msg.Release()
	if st := a.Stats(); st.BlocksInUse == 0 || st.ArenasShared != 0 || st.ArenasAlive != 1 {
		t.Fatalf("freed while the peer holds it: %+v", st)
	}
	checkMessage(t, view, pattern(3000), "x")
	ar.Release() // the peer's FREE
	checkCoalesced(t, a)
}

// TestCapnpConcurrent: several goroutines build, check and release
// messages at once.
func TestCapnpConcurrent(t *testing.T) {
	a, pool := newTestAlloc(t, 1*mib, Options{MaxBlock: 64 * kib, Mapper: newMemMapper()})
	var wg sync.WaitGroup
	for g := 0; g < 4; g++ {
		wg.Go(func() {
			for i := 0; i < 100; i++ {
				size := []int{0, 100, 5 * kib, 40 * kib, 100 * kib}[(g+i)%5]
				payload := pattern(size)
				ar := a.NewArena()
				msg, used := buildMessage(t, ar, payload, "t")
				ar.SetUsed(used)
				ar.Retain()
				checkMessage(t, peerView(t, pool, ar.Segments(), used), payload, "t")
				msg.Release()
				ar.Release()
			}
		})
	}
	wg.Wait()
	if st := a.Stats(); st.ArenasAlive != 0 || st.FailedAllocs != 0 {
		t.Errorf("stats %+v", st)
	}
	checkCoalesced(t, a)
	if i := allZero(pool); i >= 0 {
		t.Errorf("pool byte %d not zero at rest", i)
	}
}

// TestArenaReusesRoom: go-capnp asks the arena for a segment whenever the
// segment it allocates in is full, even when a later segment has room
// (setting many pointers of a struct whose segment was filled by a large
// field). The arena hands back the segment with room instead of a new one
// each time; before, each of those allocations made a segment twice the
// size of the last, and 1,000 of them exhausted the allocator.
func TestArenaReusesRoom(t *testing.T) {
	a, _ := newTestAlloc(t, 1<<20, Options{MaxHeap: 64 << 20})
	ar := a.NewArena()
	msg, seg, err := capnp.NewMessage(ar)
	if err != nil {
		t.Fatal(err)
	}
	defer msg.Release()
	st, err := capnp.NewRootStruct(seg, capnp.ObjectSize{PointerCount: 2})
	if err != nil {
		t.Fatal(err)
	}
	// Fill the root's segment to the last byte.
	first, _ := msg.Segment(0)
	room := cap(first.Data()) - len(first.Data()) - 8 // the Data's list pointer lands in st
	if err := st.SetData(0, make([]byte, room)); err != nil {
		t.Fatal(err)
	}
	list, err := capnp.NewPointerList(st.Segment(), 1000)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.SetPtr(1, list.ToPtr()); err != nil {
		t.Fatal(err)
	}
	for i := range 1000 {
		// Each text is allocated in the (full) root segment first.
		txt, err := capnp.NewText(st.Segment(), fmt.Sprintf("element %d", i))
		if err != nil {
			t.Fatalf("text %d: %v (segments: %d)", i, err, msg.NumSegments())
		}
		if err := list.Set(i, txt.ToPtr()); err != nil {
			t.Fatal(err)
		}
	}
	if n := msg.NumSegments(); n > 4 {
		t.Errorf("1,000 small objects after a full segment took %d segments, want a few", n)
	}
	var total int
	for i := range msg.NumSegments() {
		s, _ := msg.Segment(capnp.SegmentID(i))
		total += cap(s.Data())
	}
	if total > 4*cap(first.Data())+64<<10 {
		t.Errorf("segments of %d bytes in all for a %d-byte first segment and 1,000 short texts", total, cap(first.Data()))
	}
}

// TestArenaErr: an arena keeps the error of its last failed Allocate, which
// go-capnp passes up as text only.
func TestArenaErr(t *testing.T) {
	a, _ := newTestAlloc(t, 64<<10, Options{MaxHeap: -1}) // no heap fallback, no Mapper
	ar := a.NewArena()
	defer ar.Release()
	if err := ar.Err(); err != nil {
		t.Fatalf("Err of a fresh arena = %v", err)
	}
	if _, _, err := ar.Allocate(1<<20, nil); !errors.Is(err, ErrExhausted) {
		t.Fatalf("Allocate(1 MiB) from a 64 KiB pool = %v, want ErrExhausted", err)
	}
	if err := ar.Err(); !errors.Is(err, ErrExhausted) {
		t.Fatalf("Err after a failed Allocate = %v, want ErrExhausted", err)
	}
}
