package wire

import (
	"fmt"
	"math"
	"unicode/utf8"
)

// Handshake constants.
const (
	// Magic starts HELLO and REFUSE payloads.
	Magic = "CSHM"
	// Version is the protocol version this package speaks.
	Version = 1
	// HelloSize is the size of a HELLO payload (version 1).
	HelloSize = 40
	// HelloFDs is the number of descriptors sent with a HELLO frame, in
	// the order HelloFDPool, HelloFDRing, HelloFDDataBell, HelloFDSpaceBell.
	HelloFDs = 4
	// RefuseHeaderSize is the size of a REFUSE payload before the reason.
	RefuseHeaderSize = 8
	// MaxRefuseReason is the longest REFUSE reason, in bytes.
	MaxRefuseReason = 1024
)

// Indices of the descriptors of a HELLO frame.
const (
	HelloFDPool = 0 // the sender's pool (the receiver maps it read-only)
	HelloFDRing = 1 // the sender's ring region (read-write)
	// HelloFDDataBell is the sender's doorbell for "records published in
	// your outbound ring" (the receiver's producer rings it).
	HelloFDDataBell = 2
	// HelloFDSpaceBell is the sender's doorbell for "space freed in your
	// outbound ring" (the receiver's consumer rings it). Two bells, not
	// one: a sender may wait for space while its receiver waits for data,
	// and a ring wakes only one waiter.
	HelloFDSpaceBell = 3
)

// Feature bits of Hello.Features. Unknown bits are ignored.
const (
	// FeatureDedicated: the sender accepts MAP frames (dedicated mappings).
	FeatureDedicated uint32 = 1 << 0
	// FeatureTailCalls: the sender's RPC layer takes a Return that says
	// takeFromOtherQuestion, so the receiver may make tail calls to it
	// (capnshm's engine says so; go-capnp v3.0.1-alpha.2's Conn, which
	// a program can run on a transport of its own making, ends the
	// connection on one).
	FeatureTailCalls uint32 = 1 << 1
)

// Hello is the payload of a HELLO frame.
type Hello struct {
	Version    uint16 // Version when this package sends it
	Features   uint32 // Feature* bits; unknown bits are ignored
	PoolSize   uint64 // bytes of the sender's pool
	RingSize   uint64 // bytes of the sender's ring region (ringbuf.SizeFor(capacity))
	MaxMessage uint64 // largest message the sender accepts
	PID        uint32 // the sender's process id
}

func checkHello(h Hello) string {
	for _, f := range [...]struct {
		name string
		v    uint64
	}{{"pool size", h.PoolSize}, {"ring size", h.RingSize}, {"max message", h.MaxMessage}} {
		if f.v == 0 {
			return f.name + " is 0"
		}
		if f.v > math.MaxInt64 {
			return fmt.Sprintf("%s %d does not fit int64", f.name, f.v)
		}
	}
	if h.PID == 0 {
		return "pid is 0"
	}
	return ""
}

// PutHello writes h into b and returns HelloSize. It writes h.Version as
// given (set it to Version) and refuses a Hello ParseHello would reject for
// its structure.
func PutHello(b []byte, h Hello) (int, error) {
	if h.Version != Version {
		return 0, invalid("HELLO", "version %d, this package encodes version %d", h.Version, Version)
	}
	if msg := checkHello(h); msg != "" {
		return 0, invalid("HELLO", "%s", msg)
	}
	if len(b) < HelloSize {
		return 0, short("HELLO", len(b), HelloSize)
	}
	b = b[:HelloSize]
	copy(b[0:4], Magic)
	le.PutUint16(b[4:6], h.Version)
	le.PutUint16(b[6:8], 0)
	le.PutUint32(b[8:12], h.Features)
	le.PutUint32(b[12:16], h.PID)
	le.PutUint64(b[16:24], h.PoolSize)
	le.PutUint64(b[24:32], h.RingSize)
	le.PutUint64(b[32:40], h.MaxMessage)
	return HelloSize, nil
}

// ParseHello parses a HELLO payload. It checks the magic, then the
// version (another version: an error wrapping ErrVersion that names both,
// whatever the rest holds, since another version may lay it out
// differently), then the exact length, the zero pad, sizes in [1,
// MaxInt64] and a non-zero pid. Unknown feature bits are kept, not
// rejected. Sizes against this side's limits are the caller's policy.
func ParseHello(b []byte) (Hello, error) {
	if len(b) < 6 {
		return Hello{}, malformed("HELLO", "%d bytes, too short for magic and version", len(b))
	}
	if m := b[0:4]; string(m) != Magic {
		return Hello{}, malformed("HELLO", "magic %q, want %q", m, Magic)
	}
	v := le.Uint16(b[4:6])
	if v != Version {
		return Hello{}, fmt.Errorf("%w: peer speaks version %d, this side speaks version %d", ErrVersion, v, Version)
	}
	if len(b) != HelloSize {
		return Hello{}, malformed("HELLO", "%d bytes, want %d for version %d", len(b), HelloSize, v)
	}
	if pad := le.Uint16(b[6:8]); pad != 0 {
		return Hello{}, malformed("HELLO", "pad field is %#x, want zero", pad)
	}
	h := Hello{
		Version:    v,
		Features:   le.Uint32(b[8:12]),
		PID:        le.Uint32(b[12:16]),
		PoolSize:   le.Uint64(b[16:24]),
		RingSize:   le.Uint64(b[24:32]),
		MaxMessage: le.Uint64(b[32:40]),
	}
	if msg := checkHello(h); msg != "" {
		return Hello{}, malformed("HELLO", "%s", msg)
	}
	return h, nil
}

// Refuse is the payload of a REFUSE frame: the handshake failed, the
// connection falls back or closes.
type Refuse struct {
	Version uint16 // the protocol version the refusing side speaks
	Reason  string // valid UTF-8, at most MaxRefuseReason bytes; print it with %q
	// Flags are RefuseNoFallback and future bits (unknown ones are kept).
	Flags uint32
	// MaxMessage is the largest message the refusing side accepts on the
	// stream transport that follows; 0: not said.
	MaxMessage uint64
}

// RefuseNoFallback: the refusing side closes the connection instead of
// running the stream transport on it (its policy requires shared memory):
// the receiver must not fall back.
const RefuseNoFallback uint32 = 1 << 0

// RefuseTailSize is the size of the optional tail of a REFUSE payload,
// after the reason: flags (4), zero pad (4), max message (8).
const RefuseTailSize = 16

// RefuseSize returns the length of the REFUSE payload for r: the tail is
// written when Flags or MaxMessage is set.
func RefuseSize(r Refuse) int {
	n := RefuseHeaderSize + len(r.Reason)
	if r.Flags != 0 || r.MaxMessage != 0 {
		n += RefuseTailSize
	}
	return n
}

// PutRefuse writes r into b and returns RefuseSize(r).
func PutRefuse(b []byte, r Refuse) (int, error) {
	if len(r.Reason) > MaxRefuseReason {
		return 0, invalid("REFUSE", "reason of %d bytes, at most %d", len(r.Reason), MaxRefuseReason)
	}
	if !utf8.ValidString(r.Reason) {
		return 0, invalid("REFUSE", "reason is not valid UTF-8")
	}
	if r.MaxMessage > math.MaxInt64 {
		return 0, invalid("REFUSE", "max message %d does not fit int64", r.MaxMessage)
	}
	n := RefuseSize(r)
	if len(b) < n {
		return 0, short("REFUSE", len(b), n)
	}
	copy(b[0:4], Magic)
	le.PutUint16(b[4:6], r.Version)
	le.PutUint16(b[6:8], uint16(len(r.Reason)))
	end := RefuseHeaderSize + len(r.Reason)
	copy(b[RefuseHeaderSize:end], r.Reason)
	if n > end {
		le.PutUint32(b[end:end+4], r.Flags)
		le.PutUint32(b[end+4:end+8], 0)
		le.PutUint64(b[end+8:end+16], r.MaxMessage)
	}
	return n, nil
}

// ParseRefuse parses a REFUSE payload: magic, reason length at most
// MaxRefuseReason, reason valid UTF-8, then either nothing or exactly the
// RefuseTailSize-byte tail (zero pad, max message at most MaxInt64, not
// all zero).
// Any version is accepted: the REFUSE layout is the same in every version.
func ParseRefuse(b []byte) (Refuse, error) {
	if len(b) < RefuseHeaderSize {
		return Refuse{}, malformed("REFUSE", "%d bytes, shorter than the %d-byte header", len(b), RefuseHeaderSize)
	}
	if m := b[0:4]; string(m) != Magic {
		return Refuse{}, malformed("REFUSE", "magic %q, want %q", m, Magic)
	}
	v := le.Uint16(b[4:6])
	n := int(le.Uint16(b[6:8]))
	if n > MaxRefuseReason {
		return Refuse{}, malformed("REFUSE", "reason length %d exceeds %d", n, MaxRefuseReason)
	}
	end := RefuseHeaderSize + n
	if len(b) != end && len(b) != end+RefuseTailSize {
		return Refuse{}, malformed("REFUSE", "%d bytes, want %d or %d for a %d-byte reason", len(b), end, end+RefuseTailSize, n)
	}
	r := Refuse{Version: v, Reason: string(b[RefuseHeaderSize:end])} // one copy, then checked
	if !utf8.ValidString(r.Reason) {
		return Refuse{}, malformed("REFUSE", "reason %q is not valid UTF-8", r.Reason)
	}
	if len(b) == end {
		return r, nil
	}
	var tail [RefuseTailSize]byte
	copy(tail[:], b[end:]) // read once
	r.Flags = le.Uint32(tail[0:4])
	if pad := le.Uint32(tail[4:8]); pad != 0 {
		return Refuse{}, malformed("REFUSE", "tail pad is %#x, want 0", pad)
	}
	r.MaxMessage = le.Uint64(tail[8:16])
	if r.MaxMessage > math.MaxInt64 {
		return Refuse{}, malformed("REFUSE", "max message %d does not fit int64", r.MaxMessage)
	}
	if r.Flags == 0 && r.MaxMessage == 0 {
		// One encoding per value: a tail that says nothing is left out.
		return Refuse{}, malformed("REFUSE", "tail with no flags and no max message, which is sent without a tail")
	}
	return r, nil
}
