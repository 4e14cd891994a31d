package wire

import (
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"github.com/capnshm/capnshm/internal/handles"
)

// recvFDRoom is how many descriptors one receive has room for: more than
// any frame carries, so that a peer sending too many is reported as a
// count mismatch rather than as truncation.
const recvFDRoom = 2 * MaxFrameFDs

// payloadChunk bounds the first allocation for a payload: larger payloads
// grow (doubling) as their bytes arrive, so a peer announcing a large frame
// and sending nothing does not make us allocate it, and the buffer is never
// more than twice what arrived.
const payloadChunk = 64 << 10

// FrameConn sends and receives frames, with descriptors, over a connected
// SOCK_STREAM unix socket. Writers may call WriteFrame from several
// goroutines (a mutex keeps each frame whole); ReadFrame must be called
// from one goroutine at a time. The socket stays a byte stream: the bytes
// on it are exactly the frames, so it can be handed to a stream transport
// after a REFUSE.
type FrameConn struct {
	c *net.UnixConn

	wmu  sync.Mutex
	whdr [FrameHeaderSize]byte
	werr error // sticky: a frame was cut short, the stream is unusable

	rhdr [FrameHeaderSize]byte
	roob []byte
	read atomic.Uint64 // bytes received, for BytesRead
}

// BytesRead returns how many bytes ReadFrame (or ReadHeader and
// ReadPayload) has received so far, headers and partial payloads included:
// a caller waiting for a frame tells a slow frame from none with it. It may
// be called from any goroutine.
func (fc *FrameConn) BytesRead() uint64 { return fc.read.Load() }

// NewFrameConn returns a FrameConn over c. It does not own c: closing c
// is the caller's job (and makes pending reads and writes fail).
func NewFrameConn(c *net.UnixConn) *FrameConn {
	return &FrameConn{c: c, roob: make([]byte, unix.CmsgSpace(4*recvFDRoom))}
}

// WriteFrame writes one frame: the header with fds attached (SCM_RIGHTS,
// one sendmsg), then the payload. fds stay open in this process. The
// header is checked as PutFrameHeader checks it, so the descriptor count
// must match what typ carries. If a write fails the frame may be cut
// short, so every later WriteFrame returns the same error.
func (fc *FrameConn) WriteFrame(typ FrameType, seq uint64, payload []byte, fds []int) error {
	if len(payload) > math.MaxUint32 || len(fds) > math.MaxUint8 {
		return invalid("frame", "%d payload bytes and %d descriptors", len(payload), len(fds))
	}
	h := FrameHeader{Type: typ, NFDs: uint8(len(fds)), Length: uint32(len(payload)), Seq: seq}
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	fc.wmu.Lock()
	defer fc.wmu.Unlock()
	if fc.werr != nil {
		return fc.werr
	}
	if _, err := PutFrameHeader(fc.whdr[:], h); err != nil {
		return err
	}
	n, oobn, err := fc.c.WriteMsgUnix(fc.whdr[:], oob, nil)
	if err == nil && oobn != len(oob) {
		err = fmt.Errorf("sent %d of %d control bytes", oobn, len(oob))
	}
	if err == nil && n < FrameHeaderSize {
		// The descriptors went with the first byte; the rest of the header
		// follows as plain bytes.
		_, err = fc.c.Write(fc.whdr[n:])
	}
	if err == nil && len(payload) > 0 {
		_, err = fc.c.Write(payload)
	}
	if err != nil {
		fc.werr = fmt.Errorf("wire: writing %v frame: %w", typ, err)
		return fc.werr
	}
	return nil
}

// ReadFrame reads one frame. It returns the header, the payload (a new
// slice the caller owns; nil when empty) and the descriptors that came
// with the header (the caller owns and closes them; nil when none).
//
// It reads the header with recvmsg, piece by piece if it arrives in
// pieces, collecting descriptors from every piece; checks it with
// ParseFrameHeader(maxPayload); checks that the number of descriptors
// received equals the header's; then reads the payload, refusing
// descriptors attached to payload bytes. On any error every descriptor
// received is closed. The peer closing the socket between frames gives
// io.EOF (unwrapped); closing it inside a frame gives an error wrapping
// io.ErrUnexpectedEOF. Bad frames give errors wrapping ErrMalformed.
func (fc *FrameConn) ReadFrame(maxPayload int) (FrameHeader, []byte, []int, error) {
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

// ReadHeader reads and checks one frame header, as ReadFrame does, and
// returns it with the descriptors that came with it (the caller owns them;
// nil when none). The caller then reads the payload with ReadPayload (even
// an empty one), after deciding whether it has room for h.Length bytes.
func (fc *FrameConn) ReadHeader(maxPayload int) (FrameHeader, []int, error) {
	var fds []int
	fail := func(err error) (FrameHeader, []int, error) {
		closeFDs(fds)
		return FrameHeader{}, nil, err
	}
	got := 0
	for got < FrameHeaderSize {
		n, more, err := fc.recv(fc.rhdr[got:])
		fds = append(fds, more...)
		got += n
		if err != nil {
			if errors.Is(err, io.EOF) {
				if got == 0 && len(fds) == 0 {
					return FrameHeader{}, nil, io.EOF
				}
				return fail(fmt.Errorf("wire: connection closed after %d of %d frame header bytes: %w", got, FrameHeaderSize, io.ErrUnexpectedEOF))
			}
			return fail(fmt.Errorf("wire: reading frame header: %w", err))
		}
		if len(fds) > MaxFrameFDs {
			return fail(malformed("frame header", "%d descriptors received, no frame carries more than %d", len(fds), MaxFrameFDs))
		}
	}
	h, err := ParseFrameHeader(fc.rhdr[:], maxPayload)
	if err != nil {
		return fail(err)
	}
	if len(fds) != int(h.NFDs) {
		return fail(malformed("frame header", "%v frame with %d descriptors received, header says %d", h.Type, len(fds), h.NFDs))
	}
	return h, nilIfEmpty(fds), nil
}

// ReadPayload reads the payload of the frame whose header ReadHeader just
// returned: a new slice the caller owns, nil when empty. The buffer grows
// as bytes arrive. Descriptors attached to payload bytes are closed and
// refused (ErrMalformed).
func (fc *FrameConn) ReadPayload(h FrameHeader) ([]byte, error) {
	fail := func(err error) ([]byte, error) { return nil, err }
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
		n, stray, err := fc.recv(buf[got:])
		got += n
		if len(stray) > 0 {
			closeFDs(stray)
			return fail(malformed("frame", "%d descriptors attached to %v payload bytes", len(stray), h.Type))
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				return fail(fmt.Errorf("wire: connection closed after %d of %d %v payload bytes: %w", got, length, h.Type, io.ErrUnexpectedEOF))
			}
			return fail(fmt.Errorf("wire: reading %v payload: %w", h.Type, err))
		}
	}
	return buf, nil
}

// recv reads once into b with recvmsg and returns the byte count and the
// descriptors received. It returns the descriptors even with an error, so
// that the caller closes them. End of stream is an error wrapping io.EOF.
func (fc *FrameConn) recv(b []byte) (int, []int, error) {
	n, oobn, flags, _, err := fc.c.ReadMsgUnix(b, fc.roob)
	if n > 0 {
		fc.read.Add(uint64(n))
	}
	var fds []int
	if oobn > 0 {
		var perr error
		fds, perr = parseRights(fc.roob[:oobn])
		if perr != nil && err == nil {
			err = perr
		}
	}
	if err == nil && flags&unix.MSG_CTRUNC != 0 {
		err = fmt.Errorf("%w frame: control data truncated (the peer sent more than %d descriptors at once, or this process is out of descriptors)", ErrMalformed, recvFDRoom)
	}
	if err == nil && n == 0 {
		err = io.EOF
	}
	return n, fds, err
}

// FD is a descriptor as frames carry it: on Linux a file descriptor,
// attached to the frame header with SCM_RIGHTS.
type FD = int

// CloseFDs closes descriptors received with a frame (or about to be sent
// with one) that the caller does not keep.
func CloseFDs(fds []FD) { handles.CloseFDs(fds) }

func closeFDs(fds []int) { handles.CloseFDs(fds) }

// parseRights extracts the descriptors of every SCM_RIGHTS message in
// oob (see handles.ParseRights), as a malformed frame's error.
func parseRights(oob []byte) ([]int, error) {
	fds, err := handles.ParseRights(oob)
	if err != nil {
		return fds, malformed("frame", "%v", err)
	}
	return fds, nil
}

func nilIfEmpty(fds []int) []int {
	if len(fds) == 0 {
		return nil
	}
	return fds
}
