package rpc

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	capnp "capnproto.org/go/capnp/v3"
	"capnproto.org/go/capnp/v3/rpc/transport"
	rpccp "capnproto.org/go/capnp/v3/std/capnp/rpc"
)

// PipeTransport is one end of an in-process connection made by Pipe: both
// ends in this process, messages handed from one to the other by
// reference. A message is built on the Go heap, in memory of its own; Send
// gives its segments to the other end, which reads them where they are
// (no copy, no encoding) and lets the garbage collector have them when it
// releases the message.
//
//	end A                                    end B
//	NewMessage: a message in heap segments
//	Send ------ segments (by reference) ---> in: a queue of pipeDepth
//	                                         RecvMessage: read in place
//	RecvMessage <--------------------------- Send
//
// It implements go-capnp's transport.Transport, so that capnshm's Conn
// (NewConn) runs on it, or go-capnp's rpc.Conn; on an end that go-capnp's
// Conn runs, the checks of NewStreamTransport's doc apply to what it
// receives and sends.
//
// Send blocks while the other end's queue is full (its receiver has not
// read pipeDepth messages), until the other end reads, or either end
// closes. Sends are serialised by a mutex; RecvMessage is called by one
// goroutine. Close ends this end: what it sent before is still received by
// the other end, which then gets ErrPeerGone; a blocked Send or
// RecvMessage of this end returns ErrClosed.
type PipeTransport struct {
	peer *PipeTransport
	in   chan *streamIn // the messages sent to this end
	// closed: Close was called on this end. ended is the pair's: closed
	// when either end closes, and what blocked operations wait on.
	closed atomic.Bool
	ended  *pipeEnded

	wmu       sync.Mutex
	questions questionGuard // under wmu
	// noGuards: capnshm's engine runs on this end (ownedByEngine). Set
	// before the first message.
	noGuards bool
	stats    streamStats
}

// pipeDepth is how many messages one end of a Pipe holds for its receiver
// before Send waits.
const pipeDepth = 256

// Pipe returns the two ends of a new in-process connection. Run a Conn on
// each with NewConn; closing the Conns closes the ends.
func Pipe() (*PipeTransport, *PipeTransport) {
	e := &pipeEnded{c: make(chan struct{})}
	a := &PipeTransport{in: make(chan *streamIn, pipeDepth), ended: e}
	b := &PipeTransport{in: make(chan *streamIn, pipeDepth), ended: e, peer: a}
	a.peer = b
	return a, b
}

// pipeEnded is closed when either end of a Pipe closes.
type pipeEnded struct {
	c    chan struct{}
	once sync.Once
}

// endErr is the error of an operation on t once the pair has ended.
func (t *PipeTransport) endErr() error {
	if t.closed.Load() {
		return disconnected(ErrClosed)
	}
	return disconnected(fmt.Errorf("%w: the other end of the pipe closed", ErrPeerGone))
}

func (t *PipeTransport) ownedByEngine() { t.noGuards = true }

// Stats returns the end's message and byte counts. Nothing is copied:
// BytesCopied is 0.
func (t *PipeTransport) Stats() Stats {
	st := t.stats.stats()
	st.BytesCopied = 0
	return st
}

// NewMessage returns a message to build on the heap.
func (t *PipeTransport) NewMessage() (transport.OutgoingMessage, error) {
	return t.newMessageIn(new(pipeOut))
}

// newMessageIn is NewMessage in o, a zero pipeOut that the caller has
// embedded in a longer-lived struct of its own; o must not be reused.
func (t *PipeTransport) newMessageIn(o *pipeOut) (transport.OutgoingMessage, error) {
	*o = pipeOut{t: t, msg: outMessages.Get().(*capnp.Message)}
	seg, err := o.msg.Reset(&o.arena)
	if err == nil {
		if o.rm, err = rpccp.NewRootMessage(seg); err == nil {
			return o, nil
		}
	}
	// go-capnp's rpc.Conn needs a message even with an error.
	o.err = fmt.Errorf("capnshm: new message: %w", err)
	return o, o.err
}

// pipeOut is a message being built for the other end.
type pipeOut struct {
	t     *PipeTransport
	msg   *capnp.Message
	arena heapArena
	rm    rpccp.Message
	outState
}

func (o *pipeOut) Message() rpccp.Message { return o.rm }

func (o *pipeOut) Release() {
	if o.released {
		return
	}
	o.released = true
	// The arena's segments are the other end's once sent (heapArena's
	// Release drops them): only the Message is recycled.
	o.msg.Release()
	outMessages.Put(o.msg)
	o.msg, o.rm = nil, rpccp.Message{}
}

// Send hands the message to the other end.
func (o *pipeOut) Send() error {
	if err := o.startSend(); err != nil {
		return err
	}
	return o.t.send(o.msg, o.rm)
}

func (t *PipeTransport) send(msg *capnp.Message, rm rpccp.Message) error {
	n := int(msg.NumSegments())
	if n == 0 {
		return errors.New("capnshm: sending a message of no segments")
	}
	in := &streamIn{}
	in.arena.segs = in.one[:]
	if n > 1 {
		in.arena.segs = make([][]byte, n)
	}
	var total uint64
	for i := range in.arena.segs {
		s, err := msg.Segment(capnp.SegmentID(i))
		if err != nil {
			return fmt.Errorf("capnshm: sending a message: %w", err)
		}
		d := s.Data()
		in.arena.segs[i] = d[:len(d):len(d)]
		total += uint64(len(d))
	}
	in.msg.Arena = &in.arena
	in.msg.TraverseLimit = total*8 + 64<<10
	t.wmu.Lock()
	defer t.wmu.Unlock()
	if !t.noGuards {
		if err := t.questions.check(rm); err != nil {
			return err
		}
	}
	if t.closed.Load() || t.peer.closed.Load() {
		return t.endErr()
	}
	select {
	case t.peer.in <- in:
	default:
		// The other end's queue is full: wait for its receiver.
		select {
		case t.peer.in <- in:
		case <-t.ended.c:
			return t.endErr()
		}
	}
	t.stats.msgsSent.Add(1)
	t.stats.bytesSent.Add(total)
	return nil
}

// RecvMessage returns the next message the other end sent, to be read in
// place.
func (t *PipeTransport) RecvMessage() (transport.IncomingMessage, error) {
	if t.closed.Load() {
		return nil, t.endErr()
	}
	var in *streamIn
	select {
	case in = <-t.in:
	default:
		select {
		case in = <-t.in:
		case <-t.ended.c:
			if t.closed.Load() {
				return nil, t.endErr()
			}
			// What the other end sent before it closed comes first.
			select {
			case in = <-t.in:
			default:
				return nil, t.endErr()
			}
		}
	}
	rm, err := readRootGuarded(&in.msg, !t.noGuards)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrProtocol, err)
	}
	in.rm = rm
	t.stats.msgsRecv.Add(1)
	var total uint64
	for _, seg := range in.arena.segs {
		total += uint64(len(seg))
	}
	t.stats.bytesRecv.Add(total)
	return in, nil
}

// Close closes this end: its blocked Send and RecvMessage return, and the
// other end receives what was sent before, then ErrPeerGone.
func (t *PipeTransport) Close() error {
	t.closed.Store(true)
	t.ended.once.Do(func() { close(t.ended.c) })
	return nil
}

// heapArena is the arena of a message built for a Pipe: segments on the Go
// heap that it never recycles, because once sent they are the receiver's.
type heapArena struct {
	segs [][]byte
	one  [1][]byte
}

// heapFirstSegment is the size of a message's first segment: room for a
// call or a return with small params, in one allocation.
const heapFirstSegment = 256

func (a *heapArena) NumSegments() int64 { return int64(len(a.segs)) }

func (a *heapArena) Data(id capnp.SegmentID) ([]byte, error) {
	if int64(id) >= int64(len(a.segs)) {
		return nil, errors.New("capnshm: segment id out of range")
	}
	return a.segs[id], nil
}

func (a *heapArena) Allocate(sz capnp.Size, segs map[capnp.SegmentID]*capnp.Segment) (capnp.SegmentID, []byte, error) {
	var total int
	for i, data := range a.segs {
		id := capnp.SegmentID(i)
		if s := segs[id]; s != nil {
			data = s.Data()
		}
		if cap(data)-len(data) >= int(sz) {
			return id, data, nil
		}
		total += cap(data)
	}
	n := max(heapFirstSegment, total, int(sz+7)&^7)
	if uint64(n) > maxSegment {
		return 0, nil, fmt.Errorf("capnshm: a message segment of %d bytes, over the limit of %d", n, uint64(maxSegment))
	}
	if a.segs == nil {
		a.segs = a.one[:0]
	}
	a.segs = append(a.segs, make([]byte, 0, n))
	return capnp.SegmentID(len(a.segs) - 1), a.segs[len(a.segs)-1], nil
}

// Release drops the arena's segments (the receiver's, if sent).
func (a *heapArena) Release() { *a = heapArena{} }

// maxSegment is the largest segment a heapArena makes: a segment's size
// is a count of words in 32 bits.
const maxSegment = (1<<32 - 1) * 8
