package rpc

import (
	"fmt"
	"sync"

	"github.com/capnshm/capnshm/rpc/internal/wire"
	"github.com/capnshm/capnshm/segalloc"
	"github.com/capnshm/capnshm/shm"
)

// mapper makes this side's dedicated mappings for segalloc and announces
// each to the peer (its handle, in a MAP frame) before first use. mu is a
// leaf.
type mapper struct {
	t         *Transport // set when the link starts; no mapping exists before
	mu        sync.Mutex
	making    int // Map calls under way
	next      uint32
	regions   map[uint32]*shm.Region
	announced map[uint32]bool
}

type mapping struct {
	id uint32
	r  *shm.Region
}

func (m *mapping) ID() uint32    { return m.id }
func (m *mapping) Bytes() []byte { return m.r.Bytes() }

// maxMappings caps this side's dedicated mappings alive at once: a quarter
// of DefaultMaxPeerMappings, so that a peer with the default limit never
// sees too many, even with UNMAP records still on their way. Beyond it
// segalloc falls back to the heap (and the socket).
const maxMappings = DefaultMaxPeerMappings / 4

func (mp *mapper) Map(size int) (segalloc.Mapping, error) {
	mp.mu.Lock()
	n := len(mp.regions) + mp.making
	if n >= maxMappings {
		mp.mu.Unlock()
		return nil, fmt.Errorf("capnshm: %d dedicated mappings alive, the most this side keeps", n)
	}
	mp.making++
	mp.mu.Unlock()
	// Written by this side only: sealed against the peer's writes.
	r, err := shm.Create(int64(size), &shm.Options{Name: "capnshm-dedicated", Prefault: true, PeerReadOnly: true})
	mp.mu.Lock()
	defer mp.mu.Unlock()
	mp.making--
	if err != nil {
		return nil, err
	}
	mp.next++
	mp.regions[mp.next] = r
	return &mapping{id: mp.next, r: r}, nil
}

func (mp *mapper) Unmap(sm segalloc.Mapping) {
	m := sm.(*mapping)
	mp.mu.Lock()
	announced := mp.announced[m.id]
	delete(mp.announced, m.id)
	delete(mp.regions, m.id)
	mp.mu.Unlock()
	m.r.Close()
	if announced && mp.t != nil {
		mp.t.queueUnmap(m.id)
	}
}

// announce sends the mapping's handle to the peer if not done yet.
// Called with send.mu held, before the record that refers to it.
func (mp *mapper) announce(sm segalloc.Mapping) error {
	m := sm.(*mapping)
	mp.mu.Lock()
	done := mp.announced[m.id]
	mp.announced[m.id] = true
	mp.mu.Unlock()
	if done {
		return nil
	}
	var b [wire.MappingSize]byte
	if _, err := wire.PutMapping(b[:], wire.Mapping{ID: m.id, Size: uint64(m.r.Len())}); err != nil {
		return err
	}
	t := mp.t
	if err := t.ep.fc.WriteFrame(wire.FrameMap, 0, b[:], []wire.FD{wire.FD(m.r.Handle())}); err != nil {
		t.fail(fmt.Errorf("%w: sending a dedicated mapping: %w", ErrPeerGone, err))
		return t.cause()
	}
	return nil
}

func (mp *mapper) closeAll() {
	mp.mu.Lock()
	defer mp.mu.Unlock()
	for id, r := range mp.regions {
		r.Close()
		delete(mp.regions, id)
	}
}
