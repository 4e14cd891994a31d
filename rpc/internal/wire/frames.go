package wire

import (
	"fmt"
	"math"
)

// FrameType is the type byte of a socket frame.
type FrameType uint8

// Frame types.
const (
	FrameHello  FrameType = 1 // payload: Hello; 4 descriptors: pool, ring region, data bell, space bell
	FrameRefuse FrameType = 2 // payload: Refuse
	FrameMap    FrameType = 3 // payload: Mapping; 1 descriptor: the dedicated mapping
	FrameMsg    FrameType = 4 // payload: a Cap'n Proto message in unpacked stream framing
	FrameBye    FrameType = 5 // no payload: orderly close
)

func (t FrameType) String() string {
	switch t {
	case FrameHello:
		return "HELLO"
	case FrameRefuse:
		return "REFUSE"
	case FrameMap:
		return "MAP"
	case FrameMsg:
		return "MSG"
	case FrameBye:
		return "BYE"
	}
	return fmt.Sprintf("FrameType(%d)", uint8(t))
}

// FDs returns the number of descriptors a frame of type t carries, or -1
// for an unknown type.
func (t FrameType) FDs() int {
	switch t {
	case FrameHello:
		return HelloFDs
	case FrameMap:
		return 1
	case FrameRefuse, FrameMsg, FrameBye:
		return 0
	}
	return -1
}

// Frame header layout and limits.
const (
	// FrameHeaderSize is the size of a frame header.
	FrameHeaderSize = 16
	// FrameMagic starts every frame header (little-endian: bytes 5E CA).
	// Read as the first word of a Cap'n Proto stream message (segment
	// count - 1), a frame header claims over 0xCA5E segments, which no
	// Cap'n Proto implementation accepts: the first 4 bytes tell a HELLO
	// frame from a plain Cap'n Proto client.
	FrameMagic uint16 = 0xCA5E
	// MaxFrameFDs is the most descriptors any frame type carries.
	MaxFrameFDs = HelloFDs
	// MinMsgFrame is the shortest FrameMsg payload: a Cap'n Proto stream
	// header for one empty segment.
	MinMsgFrame = 8
)

// FrameHeader is a parsed frame header.
type FrameHeader struct {
	Type   FrameType
	NFDs   uint8  // descriptors sent with the header's bytes (SCM_RIGHTS)
	Length uint32 // payload bytes after the header
	// Seq numbers the sender's FrameMsg frames from 1, matching the SOCK
	// record that announced the message; 0 in every other type (reserved).
	Seq uint64
}

// checkFrame applies the per-type rules to h: known type, descriptor
// count, payload length (maxPayload bounds FrameMsg only; the other types
// have fixed sizes), sequence number. It returns a description of the
// violation, or "".
func checkFrame(h FrameHeader, maxPayload int) string {
	want := h.Type.FDs()
	if want < 0 {
		return fmt.Sprintf("unknown type %d", uint8(h.Type))
	}
	if int(h.NFDs) != want {
		return fmt.Sprintf("%v frame with %d descriptors, want %d", h.Type, h.NFDs, want)
	}
	n := uint64(h.Length)
	switch h.Type {
	case FrameHello:
		if n != HelloSize {
			return fmt.Sprintf("HELLO payload length %d, want %d", n, HelloSize)
		}
	case FrameRefuse:
		if n < RefuseHeaderSize || n > RefuseHeaderSize+MaxRefuseReason {
			return fmt.Sprintf("REFUSE payload length %d is outside [%d, %d]", n, RefuseHeaderSize, RefuseHeaderSize+MaxRefuseReason)
		}
	case FrameMap:
		if n != MappingSize {
			return fmt.Sprintf("MAP payload length %d, want %d", n, MappingSize)
		}
	case FrameMsg:
		if n < MinMsgFrame || n%8 != 0 {
			return fmt.Sprintf("MSG payload length %d is not a Cap'n Proto stream message (a multiple of 8, at least %d)", n, MinMsgFrame)
		}
		if maxPayload < 0 || n > uint64(maxPayload) {
			return fmt.Sprintf("MSG payload length %d exceeds the limit of %d", n, maxPayload)
		}
	case FrameBye:
		if n != 0 {
			return fmt.Sprintf("BYE payload length %d, want 0", n)
		}
	}
	if h.Type == FrameMsg {
		if h.Seq == 0 {
			return "MSG frame with sequence number 0 (socket messages are numbered from 1)"
		}
	} else if h.Seq != 0 {
		return fmt.Sprintf("%v frame with sequence number %d, want 0", h.Type, h.Seq)
	}
	return ""
}

// PutFrameHeader writes h into b and returns FrameHeaderSize. It refuses a
// header ParseFrameHeader would reject (with no limit on FrameMsg
// payloads).
func PutFrameHeader(b []byte, h FrameHeader) (int, error) {
	if msg := checkFrame(h, math.MaxUint32); msg != "" {
		return 0, invalid("frame header", "%s", msg)
	}
	if len(b) < FrameHeaderSize {
		return 0, short("frame header", len(b), FrameHeaderSize)
	}
	le.PutUint16(b[0:2], FrameMagic)
	b[2] = byte(h.Type)
	b[3] = h.NFDs
	le.PutUint32(b[4:8], h.Length)
	le.PutUint64(b[8:16], h.Seq)
	return FrameHeaderSize, nil
}

// ParseFrameHeader parses the frame header at the start of b (which must
// hold at least FrameHeaderSize bytes). It checks the magic, the type, the
// descriptor count the type requires (HELLO 4, MAP 1, others 0), the
// payload length (exact for HELLO, MAP and BYE; bounded for REFUSE; for
// MSG a multiple of 8 between MinMsgFrame and maxPayload) and the
// sequence number (non-zero for MSG, zero otherwise). Whether the
// descriptors actually received match NFDs is the reader's check.
func ParseFrameHeader(b []byte, maxPayload int) (FrameHeader, error) {
	if len(b) < FrameHeaderSize {
		return FrameHeader{}, malformed("frame header", "%d bytes, want %d", len(b), FrameHeaderSize)
	}
	if m := le.Uint16(b[0:2]); m != FrameMagic {
		return FrameHeader{}, malformed("frame header", "magic %#04x, want %#04x", m, FrameMagic)
	}
	h := FrameHeader{
		Type:   FrameType(b[2]),
		NFDs:   b[3],
		Length: le.Uint32(b[4:8]),
		Seq:    le.Uint64(b[8:16]),
	}
	if msg := checkFrame(h, maxPayload); msg != "" {
		return FrameHeader{}, malformed("frame header", "%s", msg)
	}
	return h, nil
}

// ---- MAP payload ----

// MappingSize is the size of a MAP frame's payload.
const MappingSize = 16

// Mapping is the payload of a MAP frame: the sender's dedicated mapping
// ID (> 0, the Loc of the SegRefs that use it) is Size bytes; its
// descriptor travels with the frame.
type Mapping struct {
	ID   uint32
	Size uint64
}

func checkMapping(m Mapping) string {
	switch {
	case m.ID == 0:
		return "mapping id 0 (0 is the pool)"
	case m.Size == 0:
		return fmt.Sprintf("mapping %d has size 0", m.ID)
	case m.Size > math.MaxInt64:
		return fmt.Sprintf("mapping %d size %d does not fit int64", m.ID, m.Size)
	}
	return ""
}

// PutMapping writes m into b and returns MappingSize.
func PutMapping(b []byte, m Mapping) (int, error) {
	if msg := checkMapping(m); msg != "" {
		return 0, invalid("MAP payload", "%s", msg)
	}
	if len(b) < MappingSize {
		return 0, short("MAP payload", len(b), MappingSize)
	}
	le.PutUint32(b[0:4], m.ID)
	le.PutUint32(b[4:8], 0)
	le.PutUint64(b[8:16], m.Size)
	return MappingSize, nil
}

// ParseMapping parses a MAP frame's payload: exact length, id > 0, zero
// pad, size in [1, MaxInt64]. The mapping's actual size is checked when it
// is opened (shm.Open).
func ParseMapping(b []byte) (Mapping, error) {
	if len(b) != MappingSize {
		return Mapping{}, malformed("MAP payload", "%d bytes, want %d", len(b), MappingSize)
	}
	m := Mapping{ID: le.Uint32(b[0:4]), Size: le.Uint64(b[8:16])}
	if pad := le.Uint32(b[4:8]); pad != 0 {
		return Mapping{}, malformed("MAP payload", "pad field is %#x, want zero", pad)
	}
	if msg := checkMapping(m); msg != "" {
		return Mapping{}, malformed("MAP payload", "%s", msg)
	}
	return m, nil
}
