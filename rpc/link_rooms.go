package rpc

import (
	"encoding/binary"
	"sync"

	rpccp "capnproto.org/go/capnp/v3/std/capnp/rpc"
)

// Rooms: where a small Return arrives without an allocation of its own.
//
// capnshm's engine allocates each call's question with room for one inMsg
// (question.retIn) and offers it here under the question's ID. When a
// message small enough for an inMsg's own buffer arrives inline,
// RecvMessage copies it into private memory once, reads from that copy
// whether it is a Return and for which question (peekReturn), and, if that
// question's room is on offer, builds the message there instead of in a
// new inMsg. The room is taken out of the table as it is filled, so it is
// filled at most once; the engine withdraws a room it no longer wants
// (its Return came some other way). The message is then read as any other
// (finishIn, decode) from the room's private bytes: the peek only chose
// where it lives. If a peer could make the peek and go-capnp's reading
// disagree, a message would live in the wrong question's room, which
// costs that question its room and nothing else: nothing is ever written
// into a room twice or reused.
//
// rooms.mu is a leaf: taken under Conn.mu (offer, withdraw) and recv.mu
// (take), and nothing is taken under it.
type roomTable struct {
	mu sync.Mutex
	by []*inMsg // by question ID; nil: none on offer
}

// offerRoom puts room on offer for the Return of question id.
func (t *Transport) offerRoom(id uint32, room *inMsg) {
	r := &t.rooms
	r.mu.Lock()
	if int(id) >= len(r.by) {
		if id > maxRoomID {
			r.mu.Unlock()
			return
		}
		r.by = append(r.by, make([]*inMsg, int(id)+1-len(r.by))...)
	}
	r.by[id] = room
	r.mu.Unlock()
}

// maxRoomID bounds the table: questions with higher IDs (a caller with
// that many calls in flight) go without a room.
const maxRoomID = 1 << 16

// withdrawRoom takes room off offer, if it still is.
func (t *Transport) withdrawRoom(id uint32, room *inMsg) {
	r := &t.rooms
	r.mu.Lock()
	if int(id) < len(r.by) && r.by[id] == room {
		r.by[id] = nil
	}
	r.mu.Unlock()
}

// takeRoom takes the room on offer for question id, or returns nil.
func (t *Transport) takeRoom(id uint32) *inMsg {
	r := &t.rooms
	r.mu.Lock()
	var room *inMsg
	if int(id) < len(r.by) {
		room, r.by[id] = r.by[id], nil
	}
	r.mu.Unlock()
	return room
}

// intoRoom builds a message of one segment, segs[0] (the peer's memory),
// in the room of the question it returns to, and returns it; nil when it
// is too big, not a Return, or its question has no room on offer.
func (t *Transport) intoRoom(segs [][]byte) *inMsg {
	if len(segs) != 1 || len(segs[0]) > smallCopy || !t.send.noGuards.Load() {
		// Only capnshm's engine (ownedByEngine) offers rooms.
		return nil
	}
	var priv [smallCopy]byte
	n := copy(priv[:], segs[0]) // the peer's bytes, read once
	id, ok := peekReturn(priv[:n])
	if !ok {
		return nil
	}
	room := t.takeRoom(id)
	if room == nil {
		return nil
	}
	*room = inMsg{t: t}
	copy(room.small[:n], priv[:n])
	room.one[0] = room.small[:n:n]
	room.arena.segs = room.one[:]
	room.maps = room.oneMap[:0]
	t.stats.bytesCopied.Add(uint64(n))
	t.stats.roomsFilled.Add(1)
	return room
}

// peekReturn reads, from b, a private copy of a message of one segment,
// the answerId of the Return it holds, reading the same fields as go-capnp
// does: the root struct, its union tag (data offset 0), its first
// pointer, that struct's first 32 bits. ok is false for any other message,
// and for any pointer it does not follow (not a struct pointer, or out of
// b); such a message gets no room.
func peekReturn(b []byte) (answerID uint32, ok bool) {
	data, ptrs, dataWords, ptrCount, ok := structAt(b, 0)
	if !ok || dataWords < 1 || ptrCount < 1 {
		return 0, false
	}
	if rpccp.Message_Which(binary.LittleEndian.Uint16(b[data:])) != rpccp.Message_Which_return {
		return 0, false
	}
	data, _, dataWords, _, ok = structAt(b, ptrs)
	if !ok || dataWords < 1 {
		return 0, false
	}
	return binary.LittleEndian.Uint32(b[data:]), true
}

// structAt follows the struct pointer at byte at of b: its data section
// starts at data, its pointer section at ptrs.
func structAt(b []byte, at int) (data, ptrs, dataWords, ptrCount int, ok bool) {
	if at < 0 || at+8 > len(b) {
		return 0, 0, 0, 0, false
	}
	p := binary.LittleEndian.Uint64(b[at:])
	if p&3 != 0 { // not a struct pointer
		return 0, 0, 0, 0, false
	}
	off := int(int32(uint32(p)) >> 2) // words from the pointer's end
	dataWords, ptrCount = int(uint16(p>>32)), int(uint16(p>>48))
	start := at + 8 + off*8
	end := start + (dataWords+ptrCount)*8
	if start < 0 || end > len(b) {
		return 0, 0, 0, 0, false
	}
	return start, start + dataWords*8, dataWords, ptrCount, true
}
