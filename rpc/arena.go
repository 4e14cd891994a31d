package rpc

import (
	"errors"

	capnp "capnproto.org/go/capnp/v3"
)

// roArena is the arena of a received message: views of memory the peer
// wrote (its pool or a dedicated mapping, mapped read-only) or a private
// copy. It never allocates and never recycles its segments (capnp's
// MultiSegmentArena would put them in a buffer pool: fatal for shared
// memory).
type roArena struct {
	segs [][]byte
	// shared: segs are views of the peer's shared memory, which the peer
	// can change while this side reads them (a message read in place).
	shared bool
}

// inSharedMemory reports whether msg is a message read in place from a
// peer's shared memory.
func inSharedMemory(msg *capnp.Message) bool {
	a, ok := msg.Arena.(*roArena)
	return ok && a.shared
}

var errReadOnly = errors.New("capnshm: a received message is read-only")

func (a *roArena) NumSegments() int64 { return int64(len(a.segs)) }

func (a *roArena) Data(id capnp.SegmentID) ([]byte, error) {
	if int64(id) >= int64(len(a.segs)) {
		return nil, errors.New("capnshm: segment id out of range")
	}
	return a.segs[id], nil
}

func (a *roArena) Allocate(capnp.Size, map[capnp.SegmentID]*capnp.Segment) (capnp.SegmentID, []byte, error) {
	return 0, nil, errReadOnly
}

func (a *roArena) Release() {}
