package rpc

import (
	"fmt"
	"sync"

	"github.com/capnshm/capnshm/rpc/internal/wire"
)

// heldState is the table of this side's messages that the peer holds: sent
// by reference, their segments still in this side's memory until the
// peer's FREE for their id. mu is a leaf.
type heldState struct {
	mu     sync.Mutex
	sent   map[uint64]*outMsg
	nextID uint64
}

func (h *heldState) init() { h.sent = make(map[uint64]*outMsg) }

// add records om as held by the peer and returns the id it is sent under.
func (h *heldState) add(om *outMsg) uint64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.nextID++
	h.sent[h.nextID] = om
	return h.nextID
}

// take removes and returns the message of id, or nil if the peer does not
// hold one by that id.
func (h *heldState) take(id uint64) *outMsg {
	h.mu.Lock()
	defer h.mu.Unlock()
	om := h.sent[id]
	delete(h.sent, id)
	return om
}

// count returns how many messages the peer holds.
func (h *heldState) count() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.sent)
}

// recvFree handles a FREE record: the peer released those messages.
func (t *Transport) recvFree(rec []byte) error {
	var ibuf [64]uint64
	ids, err := wire.ParseFree(rec, ibuf[:0])
	if err != nil {
		return fmt.Errorf("%w: %w", ErrProtocol, err)
	}
	for _, id := range ids {
		om := t.held.take(id)
		if om == nil {
			return fmt.Errorf("%w: FREE of message %d, which the peer does not hold", ErrProtocol, id)
		}
		om.dropPeerRef()
	}
	t.stats.freesReceived.Add(uint64(len(ids)))
	return nil
}
