package rpc

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	capnp "capnproto.org/go/capnp/v3"

	"github.com/capnshm/capnshm/rpc/internal/wire"
	"github.com/capnshm/capnshm/shm"
)

// peerState is what the socket reader (readSocket, its own goroutine)
// receives for RecvMessage: the peer's dedicated mappings, mapped here, and
// its socket messages, held until the SOCK record that takes each. mu is a
// leaf; changed is closed (and replaced) whenever either table changes, so
// that RecvMessage, waiting for a frame a record depends on, and the
// reader, waiting for room, wake up.
type peerState struct {
	mu        sync.Mutex
	maps      map[uint32]*mapped // under mu
	sockMsgs  map[uint64]*sockMsg
	sockBytes int64         // under mu: what sockMsgs count against WithMaxSocketBytes
	changed   chan struct{} // under mu
	// recvCtx is what RecvMessage waits on while nothing is held;
	// recvWake ends it (a socket message arrived). Both under mu.
	recvCtx  context.Context
	recvWake context.CancelFunc

	frameSeq uint64 // used by readSocket only: socket messages read
	// The peer's dedicated mappings mapped here, and their bytes, for the
	// limits and Stats.
	mapsLive, mapBytesLive atomic.Int64
}

func (p *peerState) init() {
	p.maps = make(map[uint32]*mapped)
	p.sockMsgs = make(map[uint64]*sockMsg)
	p.changed = make(chan struct{})
}

// changedLocked wakes whoever waits for a change. Called with mu held.
func (p *peerState) changedLocked() {
	close(p.changed)
	p.changed = make(chan struct{})
}

// mapped is a peer's region mapped read-only here, shared by the messages
// that refer to it: unmapped when the last reference goes. A dedicated
// mapping counts against its transport's limits until then.
type mapped struct {
	r    *shm.Region
	refs atomic.Int64
	peer *peerState // for a dedicated mapping: whose limits it counts against
}

func (m *mapped) ref() { m.refs.Add(1) }
func (m *mapped) unref() {
	if m.refs.Add(-1) == 0 {
		size := int64(m.r.Len())
		m.r.Close()
		if m.peer != nil {
			m.peer.mapsLive.Add(-1)
			m.peer.mapBytesLive.Add(-size)
		}
	}
}

// sockMsg is a socket message received ahead of the SOCK record that takes
// it.
type sockMsg struct {
	msg  *capnp.Message
	size int64 // what it counts against WithMaxSocketBytes
}

// sockMsgOverhead is what a held socket message counts against
// WithMaxSocketBytes beyond its payload: the message and map entry
// that hold it, so that many tiny messages are bounded too.
const sockMsgOverhead = 1 << 10

// idleWait tells RecvMessage, finding the ring empty, whether socket
// messages are held (then it waits with a deadline), and otherwise returns
// the context to wait on: it ends when one arrives, and lives until then,
// so that the doorbell's wait does not register a new one each time.
func (p *peerState) idleWait(parent context.Context) (held bool, ctx context.Context) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.sockMsgs) > 0 {
		return true, nil
	}
	if p.recvCtx == nil || p.recvCtx.Err() != nil {
		p.recvCtx, p.recvWake = context.WithCancel(parent)
	}
	return false, p.recvCtx
}

// unmap handles an UNMAP record: the peer dropped its mapping id.
func (p *peerState) unmap(id uint32) error {
	p.mu.Lock()
	m := p.maps[id]
	delete(p.maps, id)
	p.mu.Unlock()
	if m == nil {
		return fmt.Errorf("%w: UNMAP of mapping %d, which the peer never announced", ErrProtocol, id)
	}
	m.unref()
	return nil
}

// dropAll releases the link's reference to every mapping (Close).
func (p *peerState) dropAll() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for id, m := range p.maps {
		delete(p.maps, id)
		m.unref()
	}
}

// peerMapping waits until the socket reader has mapped the peer's
// dedicated mapping id (the peer sends it before any record that uses it).
func (t *Transport) peerMapping(id uint32) (*mapped, error) {
	var m *mapped
	err := t.awaitFrame(func() bool {
		m = t.peer.maps[id]
		return m != nil
	}, func() string {
		return fmt.Sprintf("a MSG record names dedicated mapping %d, which the peer never sent", id)
	})
	return m, err
}

// socketMessage waits until the socket reader holds socket message seq,
// and takes it.
func (t *Transport) socketMessage(seq uint64) (*sockMsg, error) {
	var msg *sockMsg
	err := t.awaitFrame(func() bool {
		msg = t.peer.sockMsgs[seq]
		if msg == nil {
			return false
		}
		delete(t.peer.sockMsgs, seq)
		t.peer.sockBytes -= msg.size
		t.peer.changedLocked() // the reader may be waiting for room
		return true
	}, func() string {
		return fmt.Sprintf("a SOCK record announces socket message %d, which the peer never sent", seq)
	})
	return msg, err
}

// awaitFrame waits until ready, called with peer.mu held, reports that the
// socket reader has received what a record depends on. It fails the wait
// (the caller ends the connection) with ErrProtocol and what() when
// nothing at all has arrived on the socket for WithFrameTimeout: the
// peer writes a frame before the record that refers to it, so a frame that
// does not come was never sent. A large frame still arriving restarts the
// clock.
func (t *Transport) awaitFrame(ready func() bool, what func() string) error {
	var timer *time.Timer
	var seen uint64
	for {
		t.peer.mu.Lock()
		ok, ch := ready(), t.peer.changed
		t.peer.mu.Unlock()
		if ok {
			if timer != nil {
				timer.Stop()
			}
			return nil
		}
		if t.life.ctx.Err() != nil {
			return t.cause()
		}
		if timer == nil {
			seen = t.ep.fc.BytesRead()
			timer = time.NewTimer(t.opts.FrameTimeout)
			defer timer.Stop()
		}
		select {
		case <-ch:
		case <-t.life.ctx.Done():
			return t.cause()
		case <-timer.C:
			if now := t.ep.fc.BytesRead(); now != seen {
				seen = now
				timer.Reset(t.opts.FrameTimeout)
				continue
			}
			return fmt.Errorf("%w: %s: nothing arrived on the socket for %v (WithFrameTimeout)", ErrProtocol, what(), t.opts.FrameTimeout)
		}
	}
}

// readSocket reads frames from the rendezvous socket: the peer's dedicated
// mappings and fallback messages. EOF means the peer is gone. Once the
// link has stopped it drains what comes until the rendezvous's shutdown
// ends the stream.
func (t *Transport) readSocket() {
	defer t.life.wg.Done()
	fc := t.ep.fc
	for {
		hdr, fds, err := fc.ReadHeader(int(min(t.opts.MaxMessage, 1<<31-1)))
		if err == nil && hdr.Type == wire.FrameMsg {
			err = t.admit(int64(hdr.Length) + sockMsgOverhead)
		}
		var payload []byte
		if err == nil {
			payload, err = fc.ReadPayload(hdr)
		}
		if err != nil {
			wire.CloseFDs(fds)
			if t.stopped() {
				return
			}
			if errors.Is(err, wire.ErrMalformed) {
				t.fail(fmt.Errorf("%w: %w", ErrProtocol, err))
				return
			}
			t.fail(fmt.Errorf("%w: %w", ErrPeerGone, err))
			return
		}
		if t.stopped() {
			// Closing or failed: what still arrives is not used, and
			// the handles it carries are closed, not left behind.
			wire.CloseFDs(fds)
			continue
		}
		if err := t.handleFrame(hdr, payload, fds); err != nil {
			t.fail(err)
			return
		}
	}
}

// admit waits until the socket messages held ahead of the ring leave room
// for n more bytes (WithMaxSocketBytes; one message alone may be
// larger), so that a peer cannot pile them up here: the socket is not read
// meanwhile, which holds an honest sender back until its SOCK records are
// taken (they are ahead of anything else it is waiting for).
func (t *Transport) admit(n int64) error {
	for {
		t.peer.mu.Lock()
		held, ch := t.peer.sockBytes, t.peer.changed
		t.peer.mu.Unlock()
		if held == 0 || held+n <= t.opts.MaxSocketBytes {
			return nil
		}
		select {
		case <-ch:
		case <-t.life.ctx.Done():
			return t.cause()
		}
	}
}

func (t *Transport) handleFrame(hdr wire.FrameHeader, payload []byte, fds []wire.FD) error {
	p := &t.peer
	switch hdr.Type {
	case wire.FrameMap:
		mp, err := wire.ParseMapping(payload)
		id, size := mp.ID, mp.Size
		if err != nil {
			wire.CloseFDs(fds)
			return fmt.Errorf("%w: %w", ErrProtocol, err)
		}
		if size > uint64(t.opts.MaxMessage)+1<<20 {
			wire.CloseFDs(fds)
			return fmt.Errorf("%w: dedicated mapping %d of %d bytes is over the largest message accepted (WithMaxMessage)", ErrTooLarge, id, size)
		}
		if n := p.mapsLive.Load(); n >= int64(t.opts.MaxPeerMappings) {
			wire.CloseFDs(fds)
			return fmt.Errorf("%w: dedicated mapping %d would be the peer's %d-th mapped here; the limit is %d (WithMaxPeerMappings)", ErrLimit, id, n+1, t.opts.MaxPeerMappings)
		}
		if b := p.mapBytesLive.Load(); b+int64(size) > t.opts.MaxPeerMappingBytes {
			wire.CloseFDs(fds)
			return fmt.Errorf("%w: dedicated mapping %d of %d bytes would bring the peer's mappings here to %d bytes; the limit is %d (WithMaxPeerMappingBytes)", ErrLimit, id, size, b+int64(size), t.opts.MaxPeerMappingBytes)
		}
		r, err := shm.Open(shm.Handle(fds[0]), int64(size), shm.ReadOnly, nil)
		if err != nil {
			return fmt.Errorf("%w: dedicated mapping %d: %w", ErrProtocol, id, err)
		}
		p.mapsLive.Add(1)
		p.mapBytesLive.Add(int64(size))
		m := &mapped{r: r, peer: p}
		m.ref()
		p.mu.Lock()
		dup := p.maps[id] != nil
		if !dup {
			p.maps[id] = m
			p.changedLocked()
		}
		p.mu.Unlock()
		if dup {
			m.unref()
			return fmt.Errorf("%w: dedicated mapping %d announced twice", ErrProtocol, id)
		}
		return nil
	case wire.FrameMsg:
		wire.CloseFDs(fds)
		if hdr.Seq != p.frameSeq+1 {
			return fmt.Errorf("%w: socket message %d, expected %d (they are numbered in order)", ErrProtocol, hdr.Seq, p.frameSeq+1)
		}
		p.frameSeq = hdr.Seq
		msg, err := capnp.Unmarshal(payload)
		if err != nil {
			return fmt.Errorf("%w: socket message %d: %w", ErrProtocol, hdr.Seq, err)
		}
		msg.TraverseLimit = t.readLimit(len(payload))
		p.mu.Lock()
		m := &sockMsg{msg: msg, size: int64(len(payload)) + sockMsgOverhead}
		p.sockMsgs[hdr.Seq] = m
		p.sockBytes += m.size
		if p.recvWake != nil {
			p.recvWake() // RecvMessage starts the clock for its record
		}
		p.changedLocked()
		p.mu.Unlock()
		return nil
	case wire.FrameBye:
		wire.CloseFDs(fds)
		return fmt.Errorf("%w: %w", ErrPeerGone, errPeerBye)
	}
	wire.CloseFDs(fds)
	return fmt.Errorf("%w: unexpected frame type %d", ErrProtocol, hdr.Type)
}
