package rpc

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	capnp "capnproto.org/go/capnp/v3"
	"capnproto.org/go/capnp/v3/rpc/transport"
	rpccp "capnproto.org/go/capnp/v3/std/capnp/rpc"

	"github.com/capnshm/capnshm/ringbuf"
	"github.com/capnshm/capnshm/rpc/internal/wire"
)

// recvState is the receiving side: the peer's ring, read by RecvMessage
// under mu (taken by one caller at a time, and by Close to keep it out of
// the ring from then on).
type recvState struct {
	mu  sync.Mutex
	in  *ringbuf.Consumer
	seq uint64 // socket messages taken (by SOCK records)
	// aheadSince: since when the ring is idle with socket messages held
	// that no SOCK record has taken yet.
	aheadSince time.Time
	rec        wire.Msg // the MSG record being parsed, reused
}

// inMsg is a message received from the peer. A message that came through
// the ring has its capnp.Message, arena and segment list inside (one
// allocation for a message of one segment in one region; a copy adds its
// buffer); one that came on the socket has the socket reader's.
type inMsg struct {
	t        *Transport
	msg      *capnp.Message
	rm       rpccp.Message
	id       uint64 // peer's message id to FREE, 0 if copied
	maps     []*mapped
	released atomic.Bool

	own    capnp.Message
	arena  roArena
	one    [1][]byte  // segs of a one-segment message
	oneMap [1]*mapped // maps of a message in one region
	// small holds the copy of a message of up to its size (a Return
	// without capabilities, a Finish, a Release): no buffer of its own.
	small [smallCopy]byte
}

// smallCopy is the size of the messages an inMsg copies into itself.
const smallCopy = 128

// newInMsg returns an inMsg for a message of n segments, its segment list
// and mapping list ready to fill.
func newInMsg(t *Transport, n int) *inMsg {
	im := &inMsg{t: t}
	if n == 1 {
		im.arena.segs = im.one[:]
	} else {
		im.arena.segs = make([][]byte, n)
	}
	im.maps = im.oneMap[:0]
	return im
}

func (im *inMsg) Message() rpccp.Message { return im.rm }

// Release gives the message's memory back to the peer, and releases the
// capabilities go-capnp put in its cap table (the RPC layer relies on
// Release for that, as the transport.IncomingMessage interface says).
func (im *inMsg) Release() {
	if im.released.Swap(true) {
		return
	}
	im.msg.Release() // the cap table's clients; roArena's Release is a no-op
	t := im.t
	if im.id != 0 {
		t.queueFree(im.id)
	}
	for _, m := range im.maps {
		m.unref()
	}
	t.life.liveIn.Add(-1)
	t.maybeFinalize()
}

// RecvMessage returns the next message from the peer. Its segments are the
// peer's shared memory (mapped read-only), not a copy, unless the message is
// small. When the peer closes the connection or dies, the messages it
// published before are returned first, then an error wrapping ErrPeerGone.
func (t *Transport) RecvMessage() (transport.IncomingMessage, error) {
	t.recv.mu.Lock()
	defer t.recv.mu.Unlock()
	in := t.recv.in
	for {
		if t.life.closed.Load() || (t.life.ctx.Err() != nil && !t.peerGone()) {
			return nil, t.cause()
		}
		// Once the peer is gone, what it published before it left is
		// still delivered: the ring is drained before the cause is
		// reported (a closing go-capnp's last message is its Abort).
		rec, err := in.Poll()
		if errors.Is(err, ringbuf.ErrEmpty) {
			if err := in.Release(); err != nil {
				return nil, t.recvFail(err)
			}
			if t.life.ctx.Err() != nil {
				return nil, t.cause()
			}
			wctx, cancel, err := t.idleContext()
			if err != nil {
				return nil, t.recvFail(err)
			}
			err = in.Wait(wctx)
			cancel()
			if err != nil && !t.peerGone() && (t.life.ctx.Err() != nil || wctx.Err() == nil) {
				return nil, t.recvFail(err)
			}
			continue
		}
		t.recv.aheadSince = time.Time{}
		if err != nil {
			return nil, t.recvFail(err)
		}
		m, err := t.handleRecord(rec)
		if rerr := in.Release(); rerr != nil && err == nil {
			err = rerr
		}
		if err != nil {
			return nil, t.recvFail(err)
		}
		if m != nil {
			t.stats.messagesReceived.Add(1)
			return m, nil
		}
	}
}

// idleContext returns the context RecvMessage waits on when the ring is
// empty: the transport's, or, while socket messages are held that no SOCK
// record has taken, one that ends when they have waited WithFrameTimeout
// since the ring went idle. A sender publishes the SOCK record right after
// the frame, so by then it never will: the error says so. Called with
// recv.mu held.
func (t *Transport) idleContext() (context.Context, context.CancelFunc, error) {
	// Socket messages come numbered in order, and each is taken by the
	// SOCK record of its number, in order: those held are the next ones.
	held, ctx := t.peer.idleWait(t.life.ctx)
	if !held {
		t.recv.aheadSince = time.Time{}
		return ctx, func() {}, nil
	}
	oldest := t.recv.seq + 1
	if t.recv.aheadSince.IsZero() {
		t.recv.aheadSince = time.Now()
	}
	left := t.opts.FrameTimeout - time.Since(t.recv.aheadSince)
	if left <= 0 {
		return nil, nil, fmt.Errorf("%w: socket message %d arrived, and the ring has been idle for %v without the SOCK record that takes it (WithFrameTimeout)", ErrProtocol, oldest, t.opts.FrameTimeout)
	}
	ctx, cancel := context.WithTimeout(t.life.ctx, left)
	return ctx, cancel, nil
}

// recvFail ends the connection because of err met while receiving; a
// refused message (see checkIncoming) leaves it to go-capnp to end it.
func (t *Transport) recvFail(err error) error {
	if t.life.ctx.Err() != nil {
		return t.cause()
	}
	if refused(err) {
		t.log.Warn("capnshm: refused a message from the peer", "err", err)
		return err
	}
	if errors.Is(err, ringbuf.ErrCorrupt) {
		err = fmt.Errorf("%w: %w", ErrProtocol, err)
	}
	t.fail(err)
	return err
}

// handleRecord processes one record; it returns a message for go-capnp, or
// nil for records that carry none.
func (t *Transport) handleRecord(rec []byte) (*inMsg, error) {
	kind, err := wire.Peek(rec)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrProtocol, err)
	}
	switch kind {
	case wire.KindInline:
		return t.recvInline(rec)
	case wire.KindMsg:
		return t.recvByReference(rec)
	case wire.KindFree:
		return nil, t.recvFree(rec)
	case wire.KindSock:
		return t.recvFromSocket(rec)
	case wire.KindUnmap:
		id, err := wire.ParseUnmap(rec)
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrProtocol, err)
		}
		return nil, t.peer.unmap(id)
	}
	return nil, fmt.Errorf("%w: record kind %d", ErrProtocol, kind)
}

func (t *Transport) recvInline(rec []byte) (*inMsg, error) {
	var sbuf [8][]byte
	segs, err := wire.ParseInline(rec, sbuf[:0])
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrProtocol, err)
	}
	if room := t.intoRoom(segs); room != nil {
		return t.finishIn(room, len(room.one[0]))
	}
	im := newInMsg(t, len(segs))
	copy(im.arena.segs, segs)
	return t.copyOut(im)
}

// copyOut replaces im's segments, which the peer may change at any time,
// with a private copy; the peer's message (im.id, if not zero) is freed
// and its mappings let go at once.
func (t *Transport) copyOut(im *inMsg) (*inMsg, error) {
	var total int
	for _, s := range im.arena.segs {
		total += len(s)
	}
	var buf []byte
	if total <= len(im.small) {
		buf = im.small[:total]
	} else {
		buf = make([]byte, total)
	}
	off := 0
	for i, s := range im.arena.segs {
		own := buf[off : off+len(s) : off+len(s)]
		off += copy(own, s)
		im.arena.segs[i] = own
	}
	t.stats.bytesCopied.Add(uint64(total))
	if im.id != 0 {
		t.queueFree(im.id)
		im.id = 0
	}
	for _, m := range im.maps {
		m.unref()
	}
	clear(im.maps)
	im.maps = im.maps[:0]
	return t.finishIn(im, total)
}

// finishIn makes im's Message over its segments and reads its root. On
// error the peer's message is freed and im's mappings let go.
func (t *Transport) finishIn(im *inMsg, total int) (*inMsg, error) {
	im.own.Arena = &im.arena
	im.own.TraverseLimit = t.readLimit(total)
	im.msg = &im.own
	rm, err := readRootGuarded(im.msg, !t.send.noGuards.Load())
	if err != nil {
		if im.id != 0 {
			t.queueFree(im.id)
		}
		for _, m := range im.maps {
			m.unref()
		}
		return nil, fmt.Errorf("%w: %w", ErrProtocol, err)
	}
	im.rm = rm
	t.stats.bytesReceived.Add(uint64(total))
	t.life.liveIn.Add(1)
	return im, nil
}

// readLimit is the traversal limit of a total-byte message: generous for
// a message read a few times, capped by MaxMessage.
func (t *Transport) readLimit(total int) uint64 {
	return min(uint64(total)*8+64<<10, uint64(t.opts.MaxMessage)*4)
}

func (t *Transport) recvByReference(rec []byte) (*inMsg, error) {
	if err := wire.ParseMsg(rec, &t.recv.rec); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrProtocol, err)
	}
	m := &t.recv.rec
	var total uint64
	im := newInMsg(t, len(m.Segs))
	fail := func(err error) (*inMsg, error) {
		for _, mm := range im.maps {
			mm.unref()
		}
		return nil, err
	}
	for i, s := range m.Segs {
		var region *mapped
		if s.Loc == 0 {
			region = t.ep.theirs.pool
		} else {
			r, err := t.peerMapping(s.Loc)
			if err != nil {
				return fail(err)
			}
			region = r
		}
		b := region.r.Bytes()
		if !s.Within(uint64(len(b))) {
			return fail(fmt.Errorf("%w: message %d segment %d at %d+%d lies outside %s of %d bytes", ErrProtocol, m.ID, i, s.Offset, s.Length, locName(s.Loc), len(b)))
		}
		total += s.Length
		if total > uint64(t.opts.MaxMessage) {
			return fail(fmt.Errorf("%w: message %d is over %d bytes (WithMaxMessage)", ErrTooLarge, m.ID, t.opts.MaxMessage))
		}
		im.arena.segs[i] = b[s.Offset : s.Offset+s.Length : s.Offset+s.Length]
		region.ref()
		im.maps = append(im.maps, region)
	}
	im.id = m.ID
	if int(total) <= t.opts.InlineMax || t.opts.CopyOnReceive {
		return t.copyOut(im)
	}
	im.arena.shared = true
	return t.finishIn(im, int(total))
}

func locName(loc uint32) string {
	if loc == 0 {
		return "the peer's pool"
	}
	return fmt.Sprintf("dedicated mapping %d", loc)
}

// recvFromSocket handles a SOCK record: the next socket message, which
// the socket reader holds (or will), is the next message. Called with
// recv.mu held.
func (t *Transport) recvFromSocket(rec []byte) (*inMsg, error) {
	seq, err := wire.ParseSock(rec)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrProtocol, err)
	}
	if seq != t.recv.seq+1 {
		return nil, fmt.Errorf("%w: socket message %d announced, expected %d", ErrProtocol, seq, t.recv.seq+1)
	}
	t.recv.seq = seq
	msg, err := t.socketMessage(seq)
	if err != nil {
		return nil, err
	}
	rm, err := readRootGuarded(msg.msg, !t.send.noGuards.Load())
	if err != nil {
		return nil, fmt.Errorf("%w: socket message: %w", ErrProtocol, err)
	}
	size, _ := msg.msg.TotalSize()
	t.stats.bytesReceived.Add(size)
	t.stats.bytesCopied.Add(size)
	t.life.liveIn.Add(1)
	return &inMsg{t: t, msg: msg.msg, rm: rm}, nil
}
