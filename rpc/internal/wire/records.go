package wire

import (
	"encoding/binary"
	"fmt"
	"math"
)

var le = binary.LittleEndian

// Kind is the first byte of a ring record.
type Kind uint8

// Record kinds.
const (
	KindMsg    Kind = 1 // a message whose segments are in the sender's memory
	KindInline Kind = 2 // a small message copied into the record
	KindFree   Kind = 3 // ids of the receiver's messages the sender released
	KindSock   Kind = 4 // the next message travels on the socket
	KindUnmap  Kind = 5 // the sender no longer uses a dedicated mapping
)

func (k Kind) String() string {
	switch k {
	case KindMsg:
		return "MSG"
	case KindInline:
		return "INLINE"
	case KindFree:
		return "FREE"
	case KindSock:
		return "SOCK"
	case KindUnmap:
		return "UNMAP"
	}
	return fmt.Sprintf("Kind(%d)", uint8(k))
}

// Limits and fixed sizes of ring records.
const (
	// RecordHeaderSize is the size of the header every record starts
	// with: kind, 3 zero bytes, a 32-bit field (count or id).
	RecordHeaderSize = 8
	// MaxSegments is the most segments of one message (MSG or INLINE),
	// as go-capnp's decoder accepts.
	MaxSegments = 512
	// MaxFreeIDs is the most message ids in one FREE record.
	MaxFreeIDs = 4096
	// SockSize is the size of a SOCK record.
	SockSize = 16
	// UnmapSize is the size of an UNMAP record.
	UnmapSize = 8

	msgHeaderSize = 16
	msgSegSize    = 24
	// maxInlineSegLen is the largest multiple of 8 that fits a u32.
	maxInlineSegLen = math.MaxUint32 &^ 7
)

// recordWhat names a record kind in errors ("MSG record"). The names are
// constants, so that the success path does not allocate.
func recordWhat(k Kind) string {
	switch k {
	case KindMsg:
		return "MSG record"
	case KindInline:
		return "INLINE record"
	case KindFree:
		return "FREE record"
	case KindSock:
		return "SOCK record"
	case KindUnmap:
		return "UNMAP record"
	}
	return "record"
}

// Peek returns the kind of the record b after checking that b is at least
// RecordHeaderSize bytes long and that the kind is known. The parser of
// that kind checks the rest.
func Peek(b []byte) (Kind, error) {
	if len(b) < RecordHeaderSize {
		return 0, malformed("record", "%d bytes, shorter than the %d-byte record header", len(b), RecordHeaderSize)
	}
	k := Kind(b[0])
	switch k {
	case KindMsg, KindInline, KindFree, KindSock, KindUnmap:
		return k, nil
	}
	return 0, malformed("record", "unknown kind %d", uint8(k))
}

// parseHeader checks the 8-byte header shared by every kind but SOCK: the
// length is at least min, the kind is want, bytes 1..3 are zero. It
// returns the 32-bit field at offset 4. Every byte is read once.
func parseHeader(b []byte, want Kind, min int) (uint32, error) {
	what := recordWhat(want)
	if len(b) < min {
		return 0, malformed(what, "%d bytes, shorter than the %d-byte minimum", len(b), min)
	}
	if k := Kind(b[0]); k != want {
		return 0, malformed(what, "kind byte is %d, want %d", uint8(k), uint8(want))
	}
	if p1, p2, p3 := b[1], b[2], b[3]; p1|p2|p3 != 0 {
		return 0, malformed(what, "pad bytes 1..3 are %02x %02x %02x, want zero", p1, p2, p3)
	}
	return le.Uint32(b[4:8]), nil
}

// putHeader writes the 8-byte header shared by every kind but SOCK.
func putHeader(b []byte, k Kind, v uint32) {
	b[0], b[1], b[2], b[3] = byte(k), 0, 0, 0
	le.PutUint32(b[4:8], v)
}

// ---- MSG ----

// SegRef locates one segment of a MSG message in the sender's memory.
type SegRef struct {
	// Loc is 0 for the sender's pool, k > 0 for the sender's dedicated
	// mapping k (announced by a MAP frame).
	Loc uint32
	// Offset is the segment's byte offset in that location, a multiple
	// of 8.
	Offset uint64
	// Length is the segment's byte length, a multiple of 8.
	Length uint64
}

// Within reports whether the segment lies inside a location of size
// bytes: Offset+Length <= size, computed without overflow.
func (s SegRef) Within(size uint64) bool {
	return s.Offset <= size && s.Length <= size-s.Offset
}

// Msg is a parsed MSG record.
type Msg struct {
	ID   uint64
	Segs []SegRef
}

// Size returns the total length of the message's segments, or
// math.MaxUint64 if the sum overflows.
func (m *Msg) Size() uint64 {
	var n uint64
	for _, s := range m.Segs {
		if s.Length > math.MaxUint64-n {
			return math.MaxUint64
		}
		n += s.Length
	}
	return n
}

// MsgSize returns the length of a MSG record with nseg segments, or -1 if
// nseg is outside [1, MaxSegments].
func MsgSize(nseg int) int {
	if nseg < 1 || nseg > MaxSegments {
		return -1
	}
	return msgHeaderSize + msgSegSize*nseg
}

// checkSeg applies the per-segment rules shared by PutMsg and ParseMsg.
// It returns a description of the violation, or "".
func checkSeg(i, nseg int, off, length uint64) string {
	switch {
	case off%8 != 0:
		return fmt.Sprintf("segment %d offset %d is not a multiple of 8", i, off)
	case length%8 != 0:
		return fmt.Sprintf("segment %d length %d is not a multiple of 8", i, length)
	case length == 0 && nseg > 1:
		return fmt.Sprintf("segment %d is empty in a %d-segment message (only a 1-segment message may be empty)", i, nseg)
	case length > math.MaxUint64-off:
		return fmt.Sprintf("segment %d offset %d + length %d overflows 64 bits", i, off, length)
	}
	return ""
}

// PutMsg writes a MSG record for message id with segments segs into b and
// returns its length, MsgSize(len(segs)). It does not allocate unless it
// fails.
func PutMsg(b []byte, id uint64, segs []SegRef) (int, error) {
	n := MsgSize(len(segs))
	if n < 0 {
		return 0, invalid("MSG record", "segment count %d is outside [1, %d]", len(segs), MaxSegments)
	}
	for i, s := range segs {
		if msg := checkSeg(i, len(segs), s.Offset, s.Length); msg != "" {
			return 0, invalid("MSG record", "%s", msg)
		}
	}
	if len(b) < n {
		return 0, short("MSG record", len(b), n)
	}
	b = b[:n]
	putHeader(b, KindMsg, uint32(len(segs)))
	le.PutUint64(b[8:16], id)
	for i, s := range segs {
		p := b[msgHeaderSize+msgSegSize*i:][:msgSegSize]
		le.PutUint32(p[0:4], s.Loc)
		le.PutUint32(p[4:8], 0)
		le.PutUint64(p[8:16], s.Offset)
		le.PutUint64(p[16:24], s.Length)
	}
	return n, nil
}

// ParseMsg parses the MSG record b into m, reusing the capacity of m.Segs.
// It checks the kind, the zero pad fields, the segment count (1 to
// MaxSegments), the exact length, and each segment: offset and length
// multiples of 8, offset+length without overflow, length 0 only in a
// 1-segment message. It does not check segments against the sizes of the
// locations they name: see SegRef.Within. Every byte of b is read once, so
// a peer rewriting b during the parse cannot change a value after it was
// checked. On error m holds no segments. It does not allocate once m.Segs
// has grown to the largest count seen.
func ParseMsg(b []byte, m *Msg) error {
	segs := m.Segs[:0]
	m.ID, m.Segs = 0, segs
	nseg32, err := parseHeader(b, KindMsg, msgHeaderSize)
	if err != nil {
		return err
	}
	if nseg32 < 1 || nseg32 > MaxSegments {
		return malformed("MSG record", "segment count %d is outside [1, %d]", nseg32, MaxSegments)
	}
	nseg := int(nseg32)
	if want := MsgSize(nseg); len(b) != want {
		return malformed("MSG record", "%d bytes, want %d for %d segments", len(b), want, nseg)
	}
	id := le.Uint64(b[8:16])
	for i := 0; i < nseg; i++ {
		p := b[msgHeaderSize+msgSegSize*i:][:msgSegSize]
		loc := le.Uint32(p[0:4])
		pad := le.Uint32(p[4:8])
		off := le.Uint64(p[8:16])
		length := le.Uint64(p[16:24])
		if pad != 0 {
			m.Segs = segs[:0]
			return malformed("MSG record", "segment %d pad field is %#x, want zero", i, pad)
		}
		if msg := checkSeg(i, nseg, off, length); msg != "" {
			m.Segs = segs[:0]
			return malformed("MSG record", "%s", msg)
		}
		segs = append(segs, SegRef{Loc: loc, Offset: off, Length: length})
	}
	m.ID, m.Segs = id, segs
	return nil
}

// ---- INLINE ----

// inlineTable returns the length of the header and the lengths table of an
// INLINE record with nseg segments: 8 + 4*nseg rounded up to 8.
func inlineTable(nseg int) int { return RecordHeaderSize + (4*nseg+7)&^7 }

// checkInlineLen applies the per-segment rules shared by the INLINE
// encoder and parser. It returns a description of the violation, or "".
func checkInlineLen(i, nseg int, length uint64) string {
	switch {
	case length%8 != 0:
		return fmt.Sprintf("segment %d length %d is not a multiple of 8", i, length)
	case length == 0 && nseg > 1:
		return fmt.Sprintf("segment %d is empty in a %d-segment message (only a 1-segment message may be empty)", i, nseg)
	case length > maxInlineSegLen:
		return fmt.Sprintf("segment %d length %d does not fit 32 bits", i, length)
	}
	return ""
}

// InlineSize returns the length of an INLINE record whose segments have
// the given byte lengths, or -1 if they cannot be encoded (count outside
// [1, MaxSegments], a length negative, over 32 bits or not a multiple of
// 8, an empty segment in a multi-segment message, or a total over the
// platform's int).
func InlineSize(lengths []int) int {
	if len(lengths) < 1 || len(lengths) > MaxSegments {
		return -1
	}
	n := inlineTable(len(lengths))
	for i, l := range lengths {
		if l < 0 || checkInlineLen(i, len(lengths), uint64(l)) != "" || l > math.MaxInt-n {
			return -1
		}
		n += l
	}
	return n
}

// InlineSizeOf is InlineSize of the lengths of segs.
func InlineSizeOf(segs [][]byte) int {
	if len(segs) < 1 || len(segs) > MaxSegments {
		return -1
	}
	n := inlineTable(len(segs))
	for i, s := range segs {
		l := len(s)
		if checkInlineLen(i, len(segs), uint64(l)) != "" || l > math.MaxInt-n {
			return -1
		}
		n += l
	}
	return n
}

// PutInline writes an INLINE record holding a copy of segs into b and
// returns its length, InlineSizeOf(segs). It does not allocate unless it
// fails.
func PutInline(b []byte, segs [][]byte) (int, error) {
	n := InlineSizeOf(segs)
	if n < 0 {
		if len(segs) < 1 || len(segs) > MaxSegments {
			return 0, invalid("INLINE record", "segment count %d is outside [1, %d]", len(segs), MaxSegments)
		}
		for i, s := range segs {
			if msg := checkInlineLen(i, len(segs), uint64(len(s))); msg != "" {
				return 0, invalid("INLINE record", "%s", msg)
			}
		}
		return 0, invalid("INLINE record", "total length overflows int")
	}
	if len(b) < n {
		return 0, short("INLINE record", len(b), n)
	}
	b = b[:n]
	putHeader(b, KindInline, uint32(len(segs)))
	for i, s := range segs {
		le.PutUint32(b[RecordHeaderSize+4*i:], uint32(len(s)))
	}
	off := RecordHeaderSize + 4*len(segs)
	table := inlineTable(len(segs))
	clear(b[off:table])
	off = table
	for _, s := range segs {
		off += copy(b[off:], s)
	}
	return n, nil
}

// ParseInline parses the INLINE record b and returns its segments as
// subslices of b (capacity clipped to each segment), appended to segs[:0]
// so that a caller can reuse the slice. It checks the kind, the zero pad
// fields (header and the padding after the lengths table), the segment
// count (1 to MaxSegments), each length (multiple of 8, 0 only in a
// 1-segment message) and that the segments fill the rest of b exactly.
// The returned subslices alias b: a caller reading shared memory copies
// them out before releasing the record, and must not trust their contents
// to stay put while it copies (their lengths, parsed once, are safe). It
// does not allocate once segs has grown to the largest count seen.
func ParseInline(b []byte, segs [][]byte) ([][]byte, error) {
	segs = segs[:0]
	nseg32, err := parseHeader(b, KindInline, RecordHeaderSize)
	if err != nil {
		return segs, err
	}
	if nseg32 < 1 || nseg32 > MaxSegments {
		return segs, malformed("INLINE record", "segment count %d is outside [1, %d]", nseg32, MaxSegments)
	}
	nseg := int(nseg32)
	table := inlineTable(nseg)
	if len(b) < table {
		return segs, malformed("INLINE record", "%d bytes, shorter than the %d-byte lengths table of %d segments", len(b), table, nseg)
	}
	if end := RecordHeaderSize + 4*nseg; end < table {
		if pad := le.Uint32(b[end:table]); pad != 0 {
			return segs, malformed("INLINE record", "pad after the lengths table is %#x, want zero", pad)
		}
	}
	off := table
	for i := 0; i < nseg; i++ {
		l := le.Uint32(b[RecordHeaderSize+4*i:])
		if msg := checkInlineLen(i, nseg, uint64(l)); msg != "" {
			return segs[:0], malformed("INLINE record", "%s", msg)
		}
		if uint64(l) > uint64(len(b)-off) {
			return segs[:0], malformed("INLINE record", "segment %d length %d overruns the record: %d bytes left", i, l, len(b)-off)
		}
		end := off + int(l)
		segs = append(segs, b[off:end:end])
		off = end
	}
	if off != len(b) {
		return segs[:0], malformed("INLINE record", "%d trailing bytes after %d segments", len(b)-off, nseg)
	}
	return segs, nil
}

// ---- FREE ----

// FreeSize returns the length of a FREE record with n ids, or -1 if n is
// outside [1, MaxFreeIDs].
func FreeSize(n int) int {
	if n < 1 || n > MaxFreeIDs {
		return -1
	}
	return RecordHeaderSize + 8*n
}

// PutFree writes a FREE record of ids into b and returns its length,
// FreeSize(len(ids)). Callers with more than MaxFreeIDs ids (or less room)
// write several records.
func PutFree(b []byte, ids []uint64) (int, error) {
	n := FreeSize(len(ids))
	if n < 0 {
		return 0, invalid("FREE record", "id count %d is outside [1, %d]", len(ids), MaxFreeIDs)
	}
	if len(b) < n {
		return 0, short("FREE record", len(b), n)
	}
	putHeader(b, KindFree, uint32(len(ids)))
	for i, id := range ids {
		le.PutUint64(b[RecordHeaderSize+8*i:], id)
	}
	return n, nil
}

// ParseFree parses the FREE record b and returns its ids appended to
// ids[:0]. It checks the kind, the zero pad bytes, the count (1 to
// MaxFreeIDs) and the exact length. Whether each id is outstanding is the
// caller's check.
func ParseFree(b []byte, ids []uint64) ([]uint64, error) {
	ids = ids[:0]
	n32, err := parseHeader(b, KindFree, RecordHeaderSize)
	if err != nil {
		return ids, err
	}
	if n32 < 1 || n32 > MaxFreeIDs {
		return ids, malformed("FREE record", "id count %d is outside [1, %d]", n32, MaxFreeIDs)
	}
	n := int(n32)
	if want := FreeSize(n); len(b) != want {
		return ids, malformed("FREE record", "%d bytes, want %d for %d ids", len(b), want, n)
	}
	for i := 0; i < n; i++ {
		ids = append(ids, le.Uint64(b[RecordHeaderSize+8*i:]))
	}
	return ids, nil
}

// ---- SOCK ----

// PutSock writes a SOCK record announcing socket message seq (> 0) into b
// and returns SockSize.
func PutSock(b []byte, seq uint64) (int, error) {
	if seq == 0 {
		return 0, invalid("SOCK record", "sequence number 0 (socket messages are numbered from 1)")
	}
	if len(b) < SockSize {
		return 0, short("SOCK record", len(b), SockSize)
	}
	b = b[:SockSize]
	b[0] = byte(KindSock)
	clear(b[1:8])
	le.PutUint64(b[8:16], seq)
	return SockSize, nil
}

// ParseSock parses the SOCK record b and returns the sequence number of
// the socket message it announces. It checks the kind, the 7 zero pad
// bytes, the exact length and that the sequence number is not 0; matching
// it against the next FrameMsg is the caller's check.
func ParseSock(b []byte) (uint64, error) {
	if len(b) != SockSize {
		return 0, malformed("SOCK record", "%d bytes, want %d", len(b), SockSize)
	}
	if k := Kind(b[0]); k != KindSock {
		return 0, malformed("SOCK record", "kind byte is %d, want %d", uint8(k), uint8(KindSock))
	}
	if pad := le.Uint64(b[0:8]) >> 8; pad != 0 {
		return 0, malformed("SOCK record", "pad bytes 1..7 are %#x, want zero", pad)
	}
	seq := le.Uint64(b[8:16])
	if seq == 0 {
		return 0, malformed("SOCK record", "sequence number 0 (socket messages are numbered from 1)")
	}
	return seq, nil
}

// ---- UNMAP ----

// PutUnmap writes an UNMAP record for dedicated mapping id (> 0) into b
// and returns UnmapSize.
func PutUnmap(b []byte, id uint32) (int, error) {
	if id == 0 {
		return 0, invalid("UNMAP record", "mapping id 0 (0 is the pool)")
	}
	if len(b) < UnmapSize {
		return 0, short("UNMAP record", len(b), UnmapSize)
	}
	putHeader(b, KindUnmap, id)
	return UnmapSize, nil
}

// ParseUnmap parses the UNMAP record b and returns the mapping id. It
// checks the kind, the zero pad bytes, the exact length and that the id is
// not 0 (the pool); whether the mapping exists is the caller's check.
func ParseUnmap(b []byte) (uint32, error) {
	id, err := parseHeader(b, KindUnmap, UnmapSize)
	if err != nil {
		return 0, err
	}
	if len(b) != UnmapSize {
		return 0, malformed("UNMAP record", "%d bytes, want %d", len(b), UnmapSize)
	}
	if id == 0 {
		return 0, malformed("UNMAP record", "mapping id 0 (0 is the pool, which is never unmapped)")
	}
	return id, nil
}
