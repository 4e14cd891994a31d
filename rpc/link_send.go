package rpc

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	capnp "capnproto.org/go/capnp/v3"
	"capnproto.org/go/capnp/v3/rpc/transport"
	rpccp "capnproto.org/go/capnp/v3/std/capnp/rpc"

	"github.com/capnshm/capnshm/ringbuf"
	"github.com/capnshm/capnshm/rpc/internal/wire"
	"github.com/capnshm/capnshm/segalloc"
)

// sendState is the sending side: this side's outbound ring and the order
// of everything published in it. mu serialises Send, the pending flushes
// and Close; every record and every socket frame that a record refers to
// is written under it, which keeps FIFO order across the three paths.
type sendState struct {
	mu        sync.Mutex
	out       *ringbuf.Producer // under mu
	sockSeq   uint64            // under mu: socket messages sent
	questions questionGuard     // outgoing questions, checked under mu
	// noGuards: capnshm's engine runs here (Transport.ownedByEngine), so
	// go-capnp's guards are off, both ways.
	noGuards atomic.Bool
}

// outMsg is a message this side builds and sends. Its capnp.Message and
// arena live inside it: one allocation per message.
type outMsg struct {
	t        *Transport
	msg      *capnp.Message  // &own, or a dead message's
	arena    *segalloc.Arena // &ownArena, nil for a dead message
	rm       rpccp.Message
	refs     atomic.Int32 // go-capnp's reference, plus the peer's after Send by reference
	released atomic.Bool
	sent     bool
	err      error

	own      capnp.Message
	ownArena segalloc.Arena
}

// NewMessage starts a message in this side's pool. It never blocks. When
// even the heap fallback is exhausted it returns a message that cannot be
// sent, with an error, never a nil message (go-capnp requires that).
func (t *Transport) NewMessage() (transport.OutgoingMessage, error) {
	return t.newMessageIn(new(outMsg))
}

// newMessageIn is NewMessage in om, a zero outMsg that the caller has
// embedded in a longer-lived struct of its own (the engine's question, so
// that a call costs one allocation less); om must not be reused.
func (t *Transport) newMessageIn(om *outMsg) (transport.OutgoingMessage, error) {
	om.t = t
	om.refs.Store(1)
	// Counted live before closed is read: Close stores closed before it
	// reads liveLocal (maybeFinalize), so either this sees closed, or
	// Close sees this message and leaves the pool mapped until it is
	// released. Counting after the check let Close unmap the pool under
	// the first writes below.
	t.life.liveLocal.Add(1)
	if t.life.closed.Load() {
		t.unlive()
		return t.deadMessage(om, t.cause())
	}
	if h := testHookNewMessage.Load(); h != nil {
		(*h)(t) // between the check and the first write
	}
	t.ep.mine.alloc.InitArena(&om.ownArena)
	om.arena = &om.ownArena
	// The first segment now: a Message over an arena that has one starts
	// in it without allocating the segment map it makes otherwise.
	if _, _, err := om.arena.Allocate(0, nil); err != nil {
		om.arena.Release()
		t.unlive()
		return t.deadMessage(om, fmt.Errorf("capnshm: new message: %w", err))
	}
	seg, err := om.own.Reset(om.arena)
	if err != nil {
		om.arena.Release()
		t.unlive()
		return t.deadMessage(om, fmt.Errorf("capnshm: new message: %w", err))
	}
	om.msg = &om.own
	rm, err := rpccp.NewRootMessage(seg)
	if err != nil {
		om.msg.Release()
		t.unlive()
		return t.deadMessage(om, fmt.Errorf("capnshm: new message: %w", err))
	}
	om.rm = rm
	return om, nil
}

// unlive drops a live message's count and unmaps the pool if that was the
// last thing keeping a closed transport's memory.
func (t *Transport) unlive() {
	t.life.liveLocal.Add(-1)
	t.maybeFinalize()
}

// testHookNewMessage, set by tests only, runs in NewMessage after the
// closed check and before the message's first write.
var testHookNewMessage atomic.Pointer[func(*Transport)]

// deadMessage returns a heap message that Send refuses with err.
func (t *Transport) deadMessage(om *outMsg, err error) (transport.OutgoingMessage, error) {
	msg, seg := capnp.NewSingleSegmentMessage(nil)
	om.msg, om.arena, om.err = msg, nil, err
	om.rm, _ = rpccp.NewRootMessage(seg)
	return om, err
}

func (om *outMsg) Message() rpccp.Message { return om.rm }

// allocErr is the pool's error if building the message ran out of memory.
func (om *outMsg) allocErr() error {
	if om.arena == nil {
		return nil
	}
	return om.arena.Err()
}

// Release drops go-capnp's reference. The segments return to the pool when
// the peer has released its reference too.
func (om *outMsg) Release() {
	if om.released.Swap(true) {
		return
	}
	if om.arena == nil {
		om.msg.Release()
		return
	}
	// If it was never sent, record the lengths used so that scrubbing
	// zeroes only what capnp wrote.
	if !om.sent {
		om.arena.SetUsed(segmentLengths(om.msg, nil))
	}
	om.msg.Release() // drops the arena's local reference
	om.t.unlive()
}

// dropPeerRef drops the peer's reference after its FREE.
func (om *outMsg) dropPeerRef() { om.arena.Release() }

func segmentLengths(msg *capnp.Message, buf []int) []int {
	n := int(msg.NumSegments())
	buf = buf[:0]
	for i := 0; i < n; i++ {
		s, err := msg.Segment(capnp.SegmentID(i))
		if err != nil {
			buf = append(buf, 0)
			continue
		}
		buf = append(buf, len(s.Data()))
	}
	return buf
}

// Send transmits the message: inline in the ring if small, by reference to
// its segments in shared memory otherwise, or on the socket if part of it
// had to go to the heap. All three keep FIFO order. It blocks only while
// the ring is full, and returns when the transport closes.
func (om *outMsg) Send() error {
	if om.released.Load() {
		panic("capnshm: Send after Release")
	}
	if om.err != nil {
		return om.err
	}
	if om.sent {
		return errors.New("capnshm: message sent twice")
	}
	om.sent = true
	t := om.t
	var lbuf [8]int
	lengths := segmentLengths(om.msg, lbuf[:0])
	om.arena.SetUsed(lengths)
	var total int
	for _, n := range lengths {
		total += n
	}
	if uint64(total) > t.ep.peerMax {
		return t.tooLarge(om, total)
	}
	var sbuf [8]segalloc.Segment
	segs := om.arena.AppendSegments(sbuf[:0])
	heap := false
	for i := range lengths {
		if segs[i].Loc == segalloc.LocHeap {
			heap = true
		}
	}

	t.send.mu.Lock()
	defer t.send.mu.Unlock()
	if t.stopped() {
		return t.cause()
	}
	if !t.send.noGuards.Load() {
		if err := t.send.questions.check(om.rm); err != nil {
			return err
		}
	}
	t.flushPendingLocked(false)
	switch {
	case total <= t.opts.InlineMax && !heap:
		return t.sendInline(om.msg, lengths, total)
	case heap:
		return t.sendOnSocket(om.msg, total)
	default:
		return t.sendByReference(om, segs, lengths, total)
	}
}

// tooLarge handles a message larger than the peer accepts, which the peer
// would have to abort the connection for. A call fails with ErrTooLarge and
// the connection goes on; a Return with results is replaced by a Return
// with an exception that says why (the caller fails alone, too); anything
// else ends the connection with the error, because the peer would be left
// waiting for something that never comes.
func (t *Transport) tooLarge(om *outMsg, total int) error {
	repl, err := tooLarge(om.rm, uint64(total), t.ep.peerMax)
	switch {
	case repl != nil:
		defer repl.Release()
		lengths := segmentLengths(repl, nil)
		n := 0
		for _, l := range lengths {
			n += l
		}
		t.send.mu.Lock()
		defer t.send.mu.Unlock()
		if t.stopped() {
			return t.cause()
		}
		return t.sendInline(repl, lengths, n)
	case om.rm.Which() != rpccp.Message_Which_call:
		t.fail(err)
	}
	return err
}

// countSent counts a message about to be published: before the commit,
// because the peer may answer (and a caller read Stats) at once after it.
func (t *Transport) countSent(total int) {
	t.stats.messagesSent.Add(1)
	t.stats.bytesSent.Add(uint64(total))
}

// claim claims an n-byte record in the outbound ring, waiting for space.
// Called with send.mu held.
func (t *Transport) claim(n int) ([]byte, error) {
	for {
		b, err := t.send.out.Claim(n)
		if !errors.Is(err, ringbuf.ErrFull) {
			if err != nil {
				return nil, t.claimError(err)
			}
			return b, nil
		}
		if err := t.send.out.Commit(); err != nil {
			return nil, t.ringError(err)
		}
		if err := t.send.out.WaitSpace(t.life.ctx, n); err != nil {
			if t.life.ctx.Err() != nil {
				return nil, t.cause()
			}
			return nil, t.ringError(err)
		}
	}
}

// commit publishes the records claimed. Called with send.mu held.
func (t *Transport) commit() error {
	if err := t.send.out.Commit(); err != nil {
		return t.ringError(err)
	}
	return nil
}

// claimError is what a failed claim (other than ErrFull) gives: a corrupt
// outbound ring (the peer wrote an impossible head) ends the connection,
// once, with ErrProtocol; a payload too large for the ring is the caller's
// error alone.
func (t *Transport) claimError(err error) error {
	if errors.Is(err, ringbuf.ErrCorrupt) {
		if t.life.ctx.Err() != nil {
			return t.cause()
		}
		return t.ringError(err)
	}
	return fmt.Errorf("capnshm: outbound ring: %w", err)
}

// ringError turns an error from the outbound ring into the connection's end.
func (t *Transport) ringError(err error) error {
	if errors.Is(err, ringbuf.ErrCorrupt) {
		err = fmt.Errorf("%w: %w", ErrProtocol, err)
	}
	t.fail(err)
	return err
}

func (t *Transport) sendInline(msg *capnp.Message, lengths []int, total int) error {
	var sbuf [8][]byte
	segs := sbuf[:0]
	for i := range lengths {
		s, err := msg.Segment(capnp.SegmentID(i))
		if err != nil {
			return err
		}
		segs = append(segs, s.Data())
	}
	b, err := t.claim(wire.InlineSize(lengths))
	if err != nil {
		return err
	}
	if _, err := wire.PutInline(b, segs); err != nil {
		return err
	}
	t.stats.sentInline.Add(1)
	t.stats.bytesCopied.Add(uint64(total))
	t.countSent(total)
	return t.commit()
}

func (t *Transport) sendByReference(om *outMsg, segs []segalloc.Segment, lengths []int, total int) error {
	var rbuf [8]wire.SegRef
	refs := rbuf[:0]
	for i, n := range lengths {
		s := segs[i]
		if s.Loc != segalloc.LocPool {
			if err := t.ep.mine.mapper.announce(s.Mapping); err != nil {
				return err
			}
		}
		refs = append(refs, wire.SegRef{Loc: uint32(s.Loc), Offset: uint64(s.Offset), Length: uint64(n)})
	}
	id := t.held.add(om)
	om.arena.Retain() // the peer's reference, dropped by its FREE
	b, err := t.claim(wire.MsgSize(len(refs)))
	if err != nil {
		return err
	}
	if _, err := wire.PutMsg(b, id, refs); err != nil {
		return err
	}
	t.stats.sentByReference.Add(1)
	t.countSent(total)
	return t.commit()
}

func (t *Transport) sendOnSocket(msg *capnp.Message, total int) error {
	data, err := msg.Marshal()
	if err != nil {
		return fmt.Errorf("capnshm: marshalling a message for the socket: %w", err)
	}
	t.send.sockSeq++
	if err := t.ep.fc.WriteFrame(wire.FrameMsg, t.send.sockSeq, data, nil); err != nil {
		t.fail(fmt.Errorf("%w: writing to the socket: %w", ErrPeerGone, err))
		return t.cause()
	}
	b, err := t.claim(wire.SockSize)
	if err != nil {
		return err
	}
	if _, err := wire.PutSock(b, t.send.sockSeq); err != nil {
		return err
	}
	t.stats.sentOnSocket.Add(1)
	t.stats.bytesCopied.Add(uint64(len(data)))
	t.countSent(total)
	return t.commit()
}
