package wire

// Handle values: how a frame's handles travel where the system cannot
// attach them to the bytes (Windows). The frame header's NFDs handles
// follow the header as 8-byte little-endian values, before the payload;
// Length still counts the payload only:
//
//	+--------------+---------------------+---------------------+
//	| frame header | NFDs handle values  | Length payload bytes |
//	| 16 bytes     | 8 bytes each        |                      |
//	+--------------+---------------------+---------------------+
//
// A value names a handle in one process's handle table: the receiver's,
// if the sender duplicated the handle into it (the listener, which opens
// its peer with PROCESS_DUP_HANDLE), or the sender's own, if the receiver
// duplicates it out of the sender (the dialer's handles, which the
// listener takes). Either way the value comes from the peer: ParseHandleValues
// refuses those that cannot name a handle at all (zero, a pseudo-handle,
// not a multiple of 4, beyond any handle table), and whoever uses a handle
// checks what it is first (its object type, a section's size).

// HandleValueSize is the size of one handle value in a frame.
const HandleValueSize = 8

// MaxHandleValue bounds a handle value: a process holds at most 2^24
// handles, and their values are multiples of 4.
const MaxHandleValue = 1 << 26

// HandleRole names handle i of a frame of type t, for errors.
func HandleRole(t FrameType, i int) string {
	switch t {
	case FrameHello:
		switch i {
		case HelloFDPool:
			return "pool"
		case HelloFDRing:
			return "ring"
		case HelloFDDataBell:
			return "data doorbell"
		case HelloFDSpaceBell:
			return "space doorbell"
		}
	case FrameMap:
		if i == 0 {
			return "mapping"
		}
	}
	return "handle"
}

func checkHandleValue(v uint64) string {
	switch {
	case v == 0:
		return "names no handle"
	case v >= MaxHandleValue:
		return "is beyond any process's handle table (a pseudo-handle?)"
	case v%4 != 0:
		return "is not a multiple of 4"
	}
	return ""
}

// PutHandleValues writes vs, the handle values of a frame of type t, into
// b and returns how many bytes it wrote. It refuses a value
// ParseHandleValues would reject.
func PutHandleValues(b []byte, t FrameType, vs []uint64) (int, error) {
	n := len(vs) * HandleValueSize
	if len(b) < n {
		return 0, short("handle values", len(b), n)
	}
	for i, v := range vs {
		if msg := checkHandleValue(v); msg != "" {
			return 0, invalid("handle values", "%v handle %d (%s) %#x %s", t, i, HandleRole(t, i), v, msg)
		}
		le.PutUint64(b[i*HandleValueSize:], v)
	}
	return n, nil
}

// ParseHandleValues parses the handle values of the frame whose header is
// h: b must hold exactly h.NFDs values. It appends them to out and
// returns the result; a value that cannot name a handle is an error
// wrapping ErrMalformed that says which handle it was.
func ParseHandleValues(b []byte, h FrameHeader, out []uint64) ([]uint64, error) {
	if want := int(h.NFDs) * HandleValueSize; len(b) != want {
		return out, malformed("frame", "%v frame with %d bytes of handle values, want %d for %d handles", h.Type, len(b), want, h.NFDs)
	}
	for i := 0; i < int(h.NFDs); i++ {
		v := le.Uint64(b[i*HandleValueSize:])
		if msg := checkHandleValue(v); msg != "" {
			return out, malformed("frame", "%v handle %d (%s) value %#x %s", h.Type, i, HandleRole(h.Type, i), v, msg)
		}
		out = append(out, v)
	}
	return out, nil
}
