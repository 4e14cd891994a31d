package wire

import (
	"errors"
	"fmt"
	"io"
	"math"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/windows"

	"github.com/capnshm/capnshm/internal/handles"
	"github.com/capnshm/capnshm/iocpwake"
	"github.com/capnshm/capnshm/shm"
)

// FD is a handle as frames carry it: on Windows a handle of this process,
// which travels as a handle value (see ParseHandleValues).
type FD = windows.Handle

// CloseFDs closes handles received with a frame (or about to be sent with
// one) that the caller does not keep.
func CloseFDs(fds []FD) { handles.CloseAll(fds) }

func closeFDs(fds []FD) { handles.CloseAll(fds) }

// payloadChunk bounds the first allocation for a payload: larger payloads
// grow (doubling) as their bytes arrive, so a peer announcing a large frame
// and sending nothing does not make us allocate it, and the buffer is never
// more than twice what arrived.
const payloadChunk = 64 << 10

// Access returns the access rights the receiver of handle i of a frame of
// type t needs, and no more: the peer's pool and dedicated mappings are
// mapped read-only, its ring read-write, its doorbells only rung. The
// side that duplicates a handle (into the peer, or out of it) asks for
// exactly these.
func Access(t FrameType, i int) uint32 {
	switch {
	case t == FrameHello && i == HelloFDRing:
		return shm.PeerAccess(shm.ReadWrite)
	case t == FrameHello && (i == HelloFDDataBell || i == HelloFDSpaceBell):
		return iocpwake.PeerAccess
	}
	return shm.PeerAccess(shm.ReadOnly) // HELLO's pool, MAP's mapping
}

// FrameConn sends and receives frames over a byte stream (a named pipe)
// between this process and the peer process. A frame's handles follow its
// header as handle values; one side duplicates them both ways:
//
//	duplicating side (the pipe's server end, holding the peer process
//	with PROCESS_DUP_HANDLE)
//	  WriteFrame: DuplicateHandle(ours -> peer, Access) and send the
//	              values, valid in the peer
//	  ReadFrame:  the values are the peer's own; DuplicateHandle(peer ->
//	              ours, Access) takes each
//	other side (the pipe's client end, which holds no handle to the
//	server's process that could duplicate)
//	  WriteFrame: send our own values; the peer takes them out, and they
//	              stay open here for as long as the peer may still do so
//	              (the regions and bells that own them outlive the frame)
//	  ReadFrame:  the values were duplicated into this process: they are
//	              handles of ours now, owned by the caller
//
// So the server never gives its peer a handle to its own process, and
// every handle it receives is one the peer could open itself, taken with
// no more access than the protocol needs. The client trusts the server
// with its process, which PROCESS_DUP_HANDLE amounts to; it checks who the
// server is (the pipe's server process and its user) before it speaks.
// A duplicating side that does not know the peer process (it could not
// open it, and refuses the handshake) takes no handle: the values it
// receives are dropped, and it sends none.
//
// Writers may call WriteFrame from several goroutines (a mutex keeps each
// frame whole); ReadFrame must be called from one goroutine at a time. The
// stream stays a byte stream: after a REFUSE it can carry a stream
// transport.
type FrameConn struct {
	c    io.ReadWriter
	dup  bool           // this side duplicates
	peer windows.Handle // the peer process (PROCESS_DUP_HANDLE) if dup; 0: unknown

	wmu  sync.Mutex
	wbuf [FrameHeaderSize + MaxFrameFDs*HandleValueSize]byte
	werr error // sticky: a frame was cut short, the stream is unusable

	rhdr [FrameHeaderSize + MaxFrameFDs*HandleValueSize]byte
	read atomic.Uint64 // bytes received, for BytesRead
}

// NewFrameConn returns a FrameConn over c. dup says that this side
// duplicates handles both ways (the pipe's server end); peer is then the
// peer process, opened with PROCESS_DUP_HANDLE, or 0 if it is not known.
// The FrameConn owns neither: closing c (which makes pending reads and
// writes fail) and peer is the caller's job.
func NewFrameConn(c io.ReadWriter, dup bool, peer windows.Handle) *FrameConn {
	if !dup {
		peer = 0
	}
	return &FrameConn{c: c, dup: dup, peer: peer}
}

// BytesRead returns how many bytes ReadFrame (or ReadHeader and
// ReadPayload) has received so far, headers, handle values and partial
// payloads included. It may be called from any goroutine.
func (fc *FrameConn) BytesRead() uint64 { return fc.read.Load() }

// WriteFrame writes one frame: the header and the handle values of fds,
// then the payload. fds stay open in this process. The header is checked
// as PutFrameHeader checks it, so the handle count must match what typ
// carries. If a write fails the frame may be cut short, so every later
// WriteFrame returns the same error.
func (fc *FrameConn) WriteFrame(typ FrameType, seq uint64, payload []byte, fds []FD) error {
	if len(payload) > math.MaxUint32 || len(fds) > MaxFrameFDs {
		return invalid("frame", "%d payload bytes and %d handles", len(payload), len(fds))
	}
	h := FrameHeader{Type: typ, NFDs: uint8(len(fds)), Length: uint32(len(payload)), Seq: seq}
	fc.wmu.Lock()
	defer fc.wmu.Unlock()
	if fc.werr != nil {
		return fc.werr
	}
	if _, err := PutFrameHeader(fc.wbuf[:], h); err != nil {
		return err
	}
	if fc.dup && fc.peer == 0 && len(fds) > 0 {
		return fmt.Errorf("wire: %v frame: cannot hand over handles: the peer process is not known", typ)
	}
	var vbuf [MaxFrameFDs]uint64
	vs := vbuf[:0]
	for i, fd := range fds {
		v := uint64(fd)
		if fc.dup {
			d, err := handles.DuplicateTo(fc.peer, fd, Access(typ, i))
			if err != nil {
				fc.closeInPeer(vs)
				return fmt.Errorf("wire: %v frame, %s: %w", typ, HandleRole(typ, i), err)
			}
			v = uint64(d)
		}
		vs = append(vs, v)
	}
	n, err := PutHandleValues(fc.wbuf[FrameHeaderSize:], typ, vs)
	if err != nil {
		fc.closeInPeer(vs)
		return err
	}
	head := fc.wbuf[:FrameHeaderSize+n]
	wrote, err := fc.c.Write(head)
	if err == nil && len(payload) > 0 {
		_, err = fc.c.Write(payload)
	}
	if err != nil {
		if wrote < len(head) {
			// The peer cannot have read every value, so it will use
			// none of them: take back the duplicates made for it.
			fc.closeInPeer(vs)
		}
		fc.werr = fmt.Errorf("wire: writing %v frame: %w", typ, err)
		return fc.werr
	}
	return nil
}

// closeInPeer closes the duplicates vs made in the peer for a frame that
// did not reach it.
func (fc *FrameConn) closeInPeer(vs []uint64) {
	if !fc.dup {
		return
	}
	for _, v := range vs {
		handles.CloseIn(fc.peer, windows.Handle(v))
	}
}

// ReadFrame reads one frame. It returns the header, the payload (a new
// slice the caller owns; nil when empty) and the handles that came with the
// header (the caller owns and closes them; nil when none).
//
// It checks the header with ParseFrameHeader(maxPayload) and the handle
// values with ParseHandleValues, takes the handles (see FrameConn), then
// reads the payload. On any error every handle taken is closed. The peer
// closing the stream between frames gives io.EOF (unwrapped); closing it
// inside a frame gives an error wrapping io.ErrUnexpectedEOF. Bad frames,
// and values that name no handle the peer can give, give errors wrapping
// ErrMalformed.
func (fc *FrameConn) ReadFrame(maxPayload int) (FrameHeader, []byte, []FD, error) {
	h, fds, err := fc.ReadHeader(maxPayload)
	if err != nil {
		return FrameHeader{}, nil, nil, err
	}
	payload, err := fc.ReadPayload(h)
	if err != nil {
		closeFDs(fds)
		return FrameHeader{}, nil, nil, err
	}
	return h, payload, fds, nil
}

// ReadHeader reads and checks one frame header and its handle values, as
// ReadFrame does, and returns it with the handles (the caller owns them;
// nil when none). The caller then reads the payload with ReadPayload (even
// an empty one), after deciding whether it has room for h.Length bytes.
func (fc *FrameConn) ReadHeader(maxPayload int) (FrameHeader, []FD, error) {
	got, err := fc.readFull(fc.rhdr[:FrameHeaderSize])
	if err != nil {
		if errors.Is(err, io.EOF) {
			if got == 0 {
				return FrameHeader{}, nil, io.EOF
			}
			return FrameHeader{}, nil, fmt.Errorf("wire: connection closed after %d of %d frame header bytes: %w", got, FrameHeaderSize, io.ErrUnexpectedEOF)
		}
		return FrameHeader{}, nil, fmt.Errorf("wire: reading frame header: %w", err)
	}
	h, err := ParseFrameHeader(fc.rhdr[:FrameHeaderSize], maxPayload)
	if err != nil {
		return FrameHeader{}, nil, err
	}
	if h.NFDs == 0 {
		return h, nil, nil
	}
	vb := fc.rhdr[FrameHeaderSize : FrameHeaderSize+int(h.NFDs)*HandleValueSize]
	got, err = fc.readFull(vb)
	if err != nil {
		if errors.Is(err, io.EOF) {
			return FrameHeader{}, nil, fmt.Errorf("wire: connection closed after %d of %d %v handle value bytes: %w", got, len(vb), h.Type, io.ErrUnexpectedEOF)
		}
		return FrameHeader{}, nil, fmt.Errorf("wire: reading %v handle values: %w", h.Type, err)
	}
	var vbuf [MaxFrameFDs]uint64
	vs, err := ParseHandleValues(vb, h, vbuf[:0])
	if err != nil {
		return FrameHeader{}, nil, err
	}
	if fc.dup && fc.peer == 0 {
		return h, nil, nil // not taken: the values name the peer's handles
	}
	fds := make([]FD, 0, len(vs))
	for i, v := range vs {
		if !fc.dup {
			fds = append(fds, FD(v))
			continue
		}
		d, err := handles.DuplicateFrom(fc.peer, windows.Handle(v), Access(h.Type, i))
		if err != nil {
			closeFDs(fds)
			return FrameHeader{}, nil, malformed("frame", "%v handle %d (%s): %v", h.Type, i, HandleRole(h.Type, i), err)
		}
		fds = append(fds, d)
	}
	return h, fds, nil
}

// ReadPayload reads the payload of the frame whose header ReadHeader just
// returned: a new slice the caller owns, nil when empty. The buffer grows
// as bytes arrive.
func (fc *FrameConn) ReadPayload(h FrameHeader) ([]byte, error) {
	length := int(h.Length)
	if length == 0 {
		return nil, nil
	}
	buf := make([]byte, min(length, payloadChunk))
	got := 0
	for got < length {
		if got == len(buf) {
			nb := make([]byte, min(length, 2*len(buf)))
			copy(nb, buf)
			buf = nb
		}
		n, err := fc.readFull(buf[got:])
		got += n
		if err != nil {
			if errors.Is(err, io.EOF) {
				return nil, fmt.Errorf("wire: connection closed after %d of %d %v payload bytes: %w", got, length, h.Type, io.ErrUnexpectedEOF)
			}
			return nil, fmt.Errorf("wire: reading %v payload: %w", h.Type, err)
		}
	}
	return buf, nil
}

// readFull reads len(b) bytes, counting them; the end of the stream is
// io.EOF, whatever was read before it.
func (fc *FrameConn) readFull(b []byte) (int, error) {
	got := 0
	for got < len(b) {
		n, err := fc.c.Read(b[got:])
		if n > 0 {
			got += n
			fc.read.Add(uint64(n))
		}
		if err != nil {
			if errors.Is(err, io.ErrUnexpectedEOF) {
				err = io.EOF
			}
			return got, err
		}
		if n == 0 {
			return got, io.EOF
		}
	}
	return got, nil
}
