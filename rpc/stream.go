package rpc

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"

	capnp "capnproto.org/go/capnp/v3"
	"capnproto.org/go/capnp/v3/rpc/transport"
	rpccp "capnproto.org/go/capnp/v3/std/capnp/rpc"
)

// StreamTransport carries Cap'n Proto RPC messages on a byte stream in the
// standard unpacked framing (a segment table, then the segments), which is
// what C++ EZ-RPC and go-capnp's stream transport speak. It implements
// go-capnp's transport.Transport, so that both capnshm's Conn and
// go-capnp's rpc.Conn run on it.
//
// What it adds to a plain codec:
//
//   - Receiving: the segment table is checked (at most 512 segments, the
//     total at most WithMaxMessage, default DefaultMaxMessage), and the
//     body is read into memory that grows as its bytes arrive, so a peer
//     that announces a huge message and sends nothing costs nothing. Every
//     message's traversal limit follows its size.
//   - Sending: segments go out with one writev, without being copied. A
//     message larger than the peer accepts is not sent: a call fails alone
//     with ErrTooLarge; results that large are replaced by an exception
//     Return, so that the caller learns why and the connection goes on.
//   - The checks of NewStreamTransport's doc (go-capnp v3.0.1-alpha.2's
//     late calls and self-pipelined calls).
//   - Errors: a closed or broken stream is ErrPeerGone, Close here is
//     ErrClosed; both are ErrDisconnected exceptions.
//
// Send is serialised by a mutex; RecvMessage is called by one goroutine.
type StreamTransport struct {
	c       io.ReadWriteCloser
	r       *bufio.Reader
	max     uint64 // the largest message accepted
	peerMax uint64 // the largest message sent

	wmu       sync.Mutex
	hdr       []byte      // the segment table being written; under wmu
	bufs      net.Buffers // the writev list; under wmu
	questions questionGuard
	// noGuards: capnshm's engine runs on this transport (ownedByEngine),
	// so go-capnp's guards are off. Set before the first message.
	noGuards bool

	closed    atomic.Bool
	closeOnce sync.Once
	closeErr  error
	// failure is why the transport closed itself (a write failed), if it
	// did: what both directions report from then on, rather than "closed
	// here".
	failure atomic.Pointer[error]
	stats   streamStats
}

// NewStreamTransport returns the stream transport on c. Options that apply:
// WithMaxMessage (the largest message accepted, and the largest sent to a
// peer that did not say its own) and WithYieldTime (on Linux, how long it
// polls a socket c before it blocks in c's Read). It checks every
// incoming message for what would crash a go-capnp v3.0.1-alpha.2
// rpc.Conn (a message that does so ends the connection with an error
// wrapping ErrProtocol instead), and does not send calls that go-capnp's
// rpc.Conn pipelines on questions it has already finished (they fail with
// ErrLateCall). It is what Listen and Dial run on stream addresses; use it
// for connections built by hand.
func NewStreamTransport(c io.ReadWriteCloser, opts ...Option) (*StreamTransport, error) {
	cfg, err := newConfig(nil, opts)
	if err != nil {
		return nil, err
	}
	return newStreamTransport(c, &cfg.opts, 0), nil
}

// newStreamTransport returns the stream transport on c accepting messages
// up to o.MaxMessage bytes (0: DefaultMaxMessage) and sending up to peerMax
// (0: as many as it accepts), polling c for o's yield time before it
// blocks (yieldingReader).
func newStreamTransport(c io.ReadWriteCloser, o *transportConfig, peerMax uint64) *StreamTransport {
	maxMessage := o.MaxMessage
	max := uint64(DefaultMaxMessage)
	if maxMessage > 0 {
		max = uint64(maxMessage)
	}
	if peerMax == 0 {
		peerMax = max
	}
	return &StreamTransport{c: c, r: bufio.NewReaderSize(yieldingReader(c, o.yieldTime()), 64<<10), max: max, peerMax: peerMax}
}

func (t *StreamTransport) ownedByEngine() { t.noGuards = true }

// PeerMaxMessage returns the largest message the peer accepts (or is taken
// to accept).
func (t *StreamTransport) PeerMaxMessage() uint64 { return t.peerMax }

// Stats returns the transport's message and byte counts.
func (t *StreamTransport) Stats() Stats { return t.stats.stats() }

// NewMessage returns a message to build on the heap.
func (t *StreamTransport) NewMessage() (transport.OutgoingMessage, error) {
	return t.newMessageIn(new(streamOut))
}

// newMessageIn is NewMessage in o, a zero streamOut that the caller has
// embedded in a longer-lived struct of its own (the engine's question or
// answer); o must not be reused.
func (t *StreamTransport) newMessageIn(o *streamOut) (transport.OutgoingMessage, error) {
	msg := outMessages.Get().(*capnp.Message)
	seg, err := msg.Reset(capnp.MultiSegment(nil))
	if err == nil {
		var rm rpccp.Message
		if rm, err = rpccp.NewRootMessage(seg); err == nil {
			*o = streamOut{t: t, msg: msg, rm: rm}
			return o, nil
		}
	}
	msg.Release()
	outMessages.Put(msg)
	// go-capnp's rpc.Conn needs a message even with an error.
	m, s := capnp.NewSingleSegmentMessage(nil)
	rm, _ := rpccp.NewRootMessage(s)
	return &streamOut{t: t, msg: m, rm: rm, outState: outState{err: err}}, fmt.Errorf("capnshm: new message: %w", err)
}

// outMessages recycles the capnp.Messages of sent messages: a Message
// keeps its segment map across Reset, which a new one allocates. Only the
// Message goes back, once its streamOut is released (a streamOut is never
// reused, so a second Release cannot reach another message).
var outMessages = sync.Pool{New: func() any { return new(capnp.Message) }}

// streamOut is a message being built for the stream.
type streamOut struct {
	t   *StreamTransport
	msg *capnp.Message
	rm  rpccp.Message
	outState
}

// outState is the life of an outgoing message of the stream transport or
// a Pipe: sent at most once, never after its Release, not at all if it
// could not be made (err).
type outState struct {
	err      error
	sent     bool
	released bool
}

// startSend marks the message sent, or says why it cannot be.
func (s *outState) startSend() error {
	switch {
	case s.released:
		panic("capnshm: Send after Release")
	case s.err != nil:
		return s.err
	case s.sent:
		return errors.New("capnshm: message sent twice")
	}
	s.sent = true
	return nil
}

func (o *streamOut) Message() rpccp.Message { return o.rm }

func (o *streamOut) Release() {
	if !o.released {
		o.released = true
		o.msg.Release()
		if o.err == nil {
			outMessages.Put(o.msg)
		}
		o.msg, o.rm = nil, rpccp.Message{}
	}
}

// Send writes the message, or refuses it (see StreamTransport).
func (o *streamOut) Send() error {
	if err := o.startSend(); err != nil {
		return err
	}
	return o.t.send(o.msg, o.rm)
}

func (t *StreamTransport) send(msg *capnp.Message, rm rpccp.Message) error {
	if t.closed.Load() {
		return t.closedErr()
	}
	total, err := msg.TotalSize()
	if err != nil {
		return fmt.Errorf("capnshm: sizing a message: %w", err)
	}
	if total > t.peerMax {
		repl, err := tooLarge(rm, total, t.peerMax)
		if repl == nil {
			return err
		}
		defer repl.Release()
		msg, total = repl, 0
		if total, err = msg.TotalSize(); err != nil {
			return err
		}
	}
	t.wmu.Lock()
	defer t.wmu.Unlock()
	if !t.noGuards {
		if err := t.questions.check(rm); err != nil {
			return err
		}
	}
	if err := t.writeLocked(msg); err != nil {
		if t.closed.Load() && !errors.Is(err, ErrPeerGone) {
			return t.closedErr()
		}
		var derr error = disconnected(err)
		t.failure.CompareAndSwap(nil, &derr)
		t.Close()
		return t.closedErr()
	}
	// Counted after the write: the peer cannot have answered a message
	// before all of it left, and Stats after a call that returned covers
	// the call.
	t.stats.msgsSent.Add(1)
	t.stats.bytesSent.Add(total)
	return nil
}

// writeLocked writes msg's segment table and segments with one writev.
func (t *StreamTransport) writeLocked(msg *capnp.Message) error {
	n := int(msg.NumSegments())
	if n == 0 || n > maxStreamSegments {
		return fmt.Errorf("capnshm: a message of %d segments cannot be framed", n)
	}
	hdrLen := (n/2 + 1) * 8
	t.hdr = append(t.hdr[:0], make([]byte, hdrLen)...)
	binary.LittleEndian.PutUint32(t.hdr, uint32(n-1))
	t.bufs = append(t.bufs[:0], t.hdr)
	for i := 0; i < n; i++ {
		s, err := msg.Segment(capnp.SegmentID(i))
		if err != nil {
			return err
		}
		d := s.Data()
		binary.LittleEndian.PutUint32(t.hdr[4+4*i:], uint32(len(d)/8))
		t.bufs = append(t.bufs, d)
	}
	bufs := t.bufs // WriteTo consumes its receiver
	_, err := bufs.WriteTo(t.c)
	clear(t.bufs) // do not pin the message's segments
	if err != nil {
		return streamError(err)
	}
	return nil
}

// maxStreamSegments is the most segments of one message, in either
// direction (as go-capnp's and C++'s readers accept).
const maxStreamSegments = 512

// RecvMessage reads the next message.
func (t *StreamTransport) RecvMessage() (transport.IncomingMessage, error) {
	in, total, err := t.read()
	if err != nil {
		if t.closed.Load() {
			return nil, t.closedErr()
		}
		return nil, err
	}
	rm, err := readRootGuarded(&in.msg, !t.noGuards)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrProtocol, err)
	}
	in.rm = rm
	t.stats.msgsRecv.Add(1)
	t.stats.bytesRecv.Add(total)
	return in, nil
}

// smallMessage is the size up to which a message's segments are read into
// one buffer sized from the segment table at once: announcing that much
// costs the peer little, and one allocation serves the whole message.
const smallMessage = 64 << 10

// read reads one message: its segment table (checked), then its segments
// into memory that grows as the bytes arrive. A message of one segment (the
// usual kind) costs two allocations: the streamIn and its bytes.
func (t *StreamTransport) read() (*streamIn, uint64, error) {
	var first [4]byte
	if _, err := io.ReadFull(t.r, first[:]); err != nil {
		return nil, 0, streamError(err)
	}
	n := uint64(binary.LittleEndian.Uint32(first[:])) + 1
	if n > maxStreamSegments {
		return nil, 0, fmt.Errorf("%w: a message of %d segments, over the limit of %d", ErrProtocol, n, maxStreamSegments)
	}
	// The rest of the table: the segment sizes and padding to a word.
	var small [4 * 4]byte
	var table []byte
	if tl := (n/2+1)*8 - 4; tl <= uint64(len(small)) {
		table = small[:tl]
	} else {
		table = make([]byte, tl)
	}
	if _, err := io.ReadFull(t.r, table); err != nil {
		return nil, 0, streamError(unexpected(err))
	}
	var total uint64
	for i := range n {
		size := uint64(binary.LittleEndian.Uint32(table[4*i:])) * 8
		if i == 0 && size == 0 {
			return nil, 0, fmt.Errorf("%w: a message whose first segment is empty", ErrProtocol)
		}
		total += size
	}
	if total > t.max {
		return nil, 0, fmt.Errorf("%w: the peer sent a message of %d bytes, over the %d bytes this side accepts (WithMaxMessage)", ErrTooLarge, total, t.max)
	}
	in := &streamIn{}
	segs := in.one[:]
	if n > 1 {
		segs = make([][]byte, n)
	}
	if total <= smallMessage {
		body := make([]byte, total)
		if _, err := io.ReadFull(t.r, body); err != nil {
			return nil, 0, streamError(unexpected(err))
		}
		for i := range segs {
			size := uint64(binary.LittleEndian.Uint32(table[4*i:])) * 8
			segs[i], body = body[:size:size], body[size:]
		}
	} else {
		for i := range segs {
			size := uint64(binary.LittleEndian.Uint32(table[4*i:])) * 8
			b, err := readGrowing(t.r, size)
			if err != nil {
				return nil, 0, streamError(unexpected(err))
			}
			segs[i] = b[:len(b):len(b)]
		}
	}
	in.arena.segs = segs
	in.msg.Arena = &in.arena
	in.msg.TraverseLimit = traverseLimit(total, t.max)
	return in, total, nil
}

// readGrowing reads size bytes into a buffer that grows as bytes arrive:
// it starts at up to growStart bytes, and each time it is full grows to at
// most growFactor times what has arrived (and at most size). Announcing a
// size costs the peer nothing, so the announcement alone must cost us
// little: memory held stays within growFactor times the bytes received.
// A 16 MiB segment is copied once while growing (256 KiB), a 1 GiB one
// twice (16.25 MiB, 1.6%).
func readGrowing(r io.Reader, size uint64) ([]byte, error) {
	const (
		growStart  = 256 << 10
		growFactor = 64
	)
	b := make([]byte, min(size, growStart))
	got := 0
	for {
		n, err := io.ReadFull(r, b[got:])
		got += n
		if err != nil {
			return nil, err
		}
		if uint64(got) == size {
			return b, nil
		}
		nb := make([]byte, min(size, growFactor*uint64(len(b))))
		copy(nb, b)
		b = nb
	}
}

// unexpected turns an EOF in the middle of a message into ErrUnexpectedEOF.
func unexpected(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

// streamError classifies an error of the stream: the peer is gone (EOF,
// reset, broken pipe), or something else failed.
func streamError(err error) error {
	switch {
	case errors.Is(err, io.EOF):
		return fmt.Errorf("%w: the peer closed the connection", ErrPeerGone)
	case errors.Is(err, io.ErrUnexpectedEOF):
		return fmt.Errorf("%w: the connection closed in the middle of a message", ErrPeerGone)
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE), errors.Is(err, syscall.ECONNABORTED):
		return fmt.Errorf("%w: %w", ErrPeerGone, err)
	case errors.Is(err, net.ErrClosed), errors.Is(err, os.ErrClosed):
		return ErrClosed
	}
	return fmt.Errorf("%w: %w", ErrPeerGone, err)
}

// streamIn is a received message, in one allocation with its Message and
// arena: read from the stream, or handed over by a Pipe's other end.
type streamIn struct {
	msg      capnp.Message
	arena    roArena
	one      [1][]byte // the segment list of a one-segment message
	rm       rpccp.Message
	released atomic.Bool
}

func (m *streamIn) Message() rpccp.Message { return m.rm }

// Release releases the capabilities in the message's cap table; the memory
// goes with the garbage collector.
func (m *streamIn) Release() {
	if !m.released.Swap(true) {
		m.msg.Release()
	}
}

// closedErr is the error of an operation on the closed transport: the
// failure that closed it, or ErrClosed when Close did.
func (t *StreamTransport) closedErr() error {
	if f := t.failure.Load(); f != nil {
		return *f
	}
	return disconnected(ErrClosed)
}

// Close closes the stream: a blocked RecvMessage or Send returns.
func (t *StreamTransport) Close() error {
	t.closeOnce.Do(func() {
		t.closed.Store(true)
		t.closeErr = t.c.Close()
	})
	return t.closeErr
}

// streamStats counts a stream transport's messages.
type streamStats struct {
	msgsSent, msgsRecv   atomic.Uint64
	bytesSent, bytesRecv atomic.Uint64
}

func (s *streamStats) stats() Stats {
	st := Stats{
		MessagesSent:     s.msgsSent.Load(),
		MessagesReceived: s.msgsRecv.Load(),
		BytesSent:        s.bytesSent.Load(),
		BytesReceived:    s.bytesRecv.Load(),
	}
	st.BytesCopied = st.BytesSent + st.BytesReceived // through the socket, both ways
	return st
}

// traverseLimit is the traversal limit of a message of total bytes:
// generous for a message read several times, capped by four times the
// largest message.
func traverseLimit(total, max uint64) uint64 {
	return min(total*8+64<<10, max*4)
}

// tooLarge handles rm, a total-byte message over the limit of the peer:
// a Return with results becomes an exception Return that says why, which
// it returns to send instead (the caller releases it); anything else is
// not sent, with an error wrapping ErrTooLarge naming both sizes (a call
// fails alone).
func tooLarge(rm rpccp.Message, total, limit uint64) (*capnp.Message, error) {
	err := fmt.Errorf("%w: a %d-byte %s, over the %d bytes the peer accepts", ErrTooLarge, total, rm.Which(), limit)
	if rm.Which() != rpccp.Message_Which_return {
		return nil, err
	}
	ret, rerr := rm.Return()
	if rerr != nil || ret.Which() != rpccp.Return_Which_results {
		return nil, err
	}
	msg, seg := capnp.NewSingleSegmentMessage(nil)
	repl, rerr := rpccp.NewRootMessage(seg)
	if rerr == nil {
		var r rpccp.Return
		if r, rerr = repl.NewReturn(); rerr == nil {
			r.SetAnswerId(ret.AnswerId())
			r.SetReleaseParamCaps(ret.ReleaseParamCaps())
			var e rpccp.Exception
			if e, rerr = r.NewException(); rerr == nil {
				rerr = toException(e, fmt.Errorf("%w: the results are %d bytes, over the %d bytes the caller accepts", ErrTooLarge, total, limit))
			}
		}
	}
	if rerr != nil {
		msg.Release()
		return nil, fmt.Errorf("%w (and building the exception in its place failed: %v)", err, rerr)
	}
	return msg, nil
}
