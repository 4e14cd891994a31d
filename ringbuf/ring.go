package ringbuf

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync/atomic"
	"unsafe"
)

// Layout constants; see the package documentation for the picture.
const (
	// HeaderSize is the number of bytes before the data area.
	HeaderSize = 640
	// MinCapacity is the smallest data area capacity, in bytes.
	MinCapacity = 4096
	// MaxCapacity is the largest data area capacity, in bytes.
	MaxCapacity = 1 << 30
	// Version is the layout version written by Init and required by Attach.
	// Version 2: records are published by their own header (there is no
	// shared tail).
	Version = 2
	// Magic is the 4-byte tag at offset 0.
	Magic = "CSRB"

	offMagic       = 0
	offVersion     = 4
	offCapacity    = 8
	offReserved    = 128 // block 1: was tail in version 1; zero
	offHead        = 256
	offDataWanted  = 384
	offSpaceWanted = 512

	recordHeaderSize = 8
	// Record header flags (the high 32 bits of the header word).
	flagPadding = 1 // padding record: skip to the end of the data area
	flagPresent = 2 // set in every header, so that a zero header means "nothing here yet"
	flagsKnown  = flagPadding | flagPresent
)

// Errors, wrapped with details. Match them with errors.Is.
var (
	// ErrBadSize: the memory given to Init or Attach has an unusable length
	// or address (too small, capacity not a power of two, not 8-byte
	// aligned).
	ErrBadSize = errors.New("ringbuf: bad ring memory")
	// ErrBadHeader: Attach found no valid ring header (magic, version, or a
	// capacity that does not match the memory's length).
	ErrBadHeader = errors.New("ringbuf: bad ring header")
	// ErrCorrupt: the peer broke the ring protocol (impossible index or
	// record). The error text names what was wrong. The Producer or
	// Consumer that returned it is poisoned.
	ErrCorrupt = errors.New("ringbuf: corrupt ring")
	// ErrFull: there is not enough free space for the record now.
	ErrFull = errors.New("ringbuf: ring full")
	// ErrEmpty: there is no published record to read now.
	ErrEmpty = errors.New("ringbuf: ring empty")
	// ErrTooLarge: the payload is longer than Ring.MaxPayload (or negative).
	ErrTooLarge = errors.New("ringbuf: record too large")
)

// A Ring is a view of ring memory made by Init or Attach. It holds the
// capacity it validated, so a peer rewriting the header later changes
// nothing. A Ring is safe for concurrent use; each of its Producers and
// Consumers is not.
type Ring struct {
	data        []byte // the data area, len == capacity
	capacity    uint64 // power of two, validated, local (never re-read)
	head        *uint64
	spaceWanted *uint32
	dataWanted  *uint32
}

// SizeFor returns the length of ring memory with a data area of capacity
// bytes: HeaderSize + capacity. Init and Attach accept only such lengths
// with capacity a power of two in [MinCapacity, MaxCapacity].
func SizeFor(capacity int) int { return HeaderSize + capacity }

// Init formats mem as an empty ring and returns it. len(mem) must be
// SizeFor(c) for a power of two c in [MinCapacity, MaxCapacity], and mem
// must be 8-byte aligned (page-aligned shared memory and heap slices of
// 8 bytes or more are). Init writes the whole header and zeroes the data
// area; the peer must not use the memory until Init has returned. Errors
// wrap ErrBadSize.
func Init(mem []byte) (*Ring, error) {
	capacity, err := checkMem(mem)
	if err != nil {
		return nil, err
	}
	// The whole memory, data area included: a zero word at the producer's
	// position is what tells the consumer that nothing is published there.
	clear(mem)
	copy(mem[offMagic:], Magic)
	binary.NativeEndian.PutUint32(mem[offVersion:], Version)
	binary.NativeEndian.PutUint64(mem[offCapacity:], capacity)
	r := newRing(mem, capacity)
	atomic.StoreUint64(r.head, 0)
	atomic.StoreUint32(r.spaceWanted, 0)
	atomic.StoreUint32(r.dataWanted, 0)
	return r, nil
}

// Attach returns the ring that a peer formatted in mem with Init. It checks
// the length and alignment of mem as Init does (ErrBadSize), then the magic,
// the version and that the capacity in the header matches len(mem)
// (ErrBadHeader). The capacity is read once and kept; head and the records
// are not checked here but by every Producer and Consumer operation.
func Attach(mem []byte) (*Ring, error) {
	capacity, err := checkMem(mem)
	if err != nil {
		return nil, err
	}
	if string(mem[offMagic:offMagic+len(Magic)]) != Magic {
		return nil, fmt.Errorf("%w: magic %q, want %q", ErrBadHeader, mem[offMagic:offMagic+len(Magic)], Magic)
	}
	if v := binary.NativeEndian.Uint32(mem[offVersion:]); v != Version {
		return nil, fmt.Errorf("%w: version %d, want %d", ErrBadHeader, v, Version)
	}
	if c := binary.NativeEndian.Uint64(mem[offCapacity:]); c != capacity {
		return nil, fmt.Errorf("%w: header says capacity %d, memory of %d bytes has capacity %d", ErrBadHeader, c, len(mem), capacity)
	}
	return newRing(mem, capacity), nil
}

// checkMem validates the length and alignment of ring memory and returns
// the data capacity.
func checkMem(mem []byte) (uint64, error) {
	if len(mem) < SizeFor(MinCapacity) {
		return 0, fmt.Errorf("%w: %d bytes, need at least %d (SizeFor(MinCapacity))", ErrBadSize, len(mem), SizeFor(MinCapacity))
	}
	c := len(mem) - HeaderSize
	if c > MaxCapacity || c&(c-1) != 0 {
		return 0, fmt.Errorf("%w: %d bytes leave a data area of %d bytes, want a power of two in [%d, %d] (use SizeFor)", ErrBadSize, len(mem), c, MinCapacity, MaxCapacity)
	}
	if a := uintptr(unsafe.Pointer(&mem[0])) % 8; a != 0 {
		return 0, fmt.Errorf("%w: memory starts at an address %d bytes past an 8-byte boundary, want 8-byte alignment", ErrBadSize, a)
	}
	return uint64(c), nil
}

func newRing(mem []byte, capacity uint64) *Ring {
	return &Ring{
		data:        mem[HeaderSize : HeaderSize+int(capacity) : HeaderSize+int(capacity)],
		capacity:    capacity,
		head:        (*uint64)(unsafe.Pointer(&mem[offHead])),
		spaceWanted: (*uint32)(unsafe.Pointer(&mem[offSpaceWanted])),
		dataWanted:  (*uint32)(unsafe.Pointer(&mem[offDataWanted])),
	}
}

// Capacity returns the size of the data area in bytes.
func (r *Ring) Capacity() int { return int(r.capacity) }

// MaxPayload returns the largest payload a record can carry:
// Capacity()/2 - 8.
func (r *Ring) MaxPayload() int { return int(r.maxPayload()) }

func (r *Ring) maxPayload() uint64 { return r.capacity/2 - recordHeaderSize }

// MaxPayloadFor returns the largest payload of a record in a ring of the
// given capacity (a valid one: a power of two in [MinCapacity,
// MaxCapacity]), as Ring.MaxPayload does once the ring exists.
func MaxPayloadFor(capacity int) int { return capacity/2 - recordHeaderSize }

// recordSize is the number of bytes a record with an n-byte payload takes.
func recordSize(n uint64) uint64 { return recordHeaderSize + (n+7)&^7 }

func corrupt(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrCorrupt}, args...)...)
}

// word returns the 8-byte word at offset off of the data area. off must be a
// multiple of 8 below the capacity; the data area is 8-byte aligned because
// the memory is (checkMem) and HeaderSize is a multiple of 8.
func (r *Ring) word(off uint64) *uint64 { return (*uint64)(unsafe.Pointer(&r.data[off])) }

// makeHeader returns the header word of a record: the payload length in the
// low 32 bits, the flags, always with flagPresent, in the high 32 bits.
func makeHeader(length uint64, flags uint32) uint64 {
	return uint64(flags|flagPresent)<<32 | length
}

// checkRecord validates the nonzero header word h read (once) at position
// pos, where head is the consumer's last released position (pos >= head).
// It returns the payload length, the bytes the record takes (header,
// payload and alignment; for a padding record, up to the end of the data
// area), and whether it is a padding record.
func (r *Ring) checkRecord(h, pos, head uint64) (length, size uint64, pad bool, err error) {
	off := pos & (r.capacity - 1)
	left := r.capacity - off
	length = h & (1<<32 - 1)
	flags := uint32(h >> 32)
	switch {
	case flags&flagPresent == 0:
		return 0, 0, false, corrupt("record at offset %d has header %#x without the present bit", off, h)
	case flags&^flagsKnown != 0:
		return 0, 0, false, corrupt("record at offset %d has unknown flags %#x", off, flags)
	case flags&flagPadding != 0:
		if length+recordHeaderSize != left {
			return 0, 0, false, corrupt("padding record at offset %d claims %d bytes, does not end at the end of the data area (%d bytes left)", off, length, left-recordHeaderSize)
		}
		size, pad = left, true
	case length > r.maxPayload():
		return 0, 0, false, corrupt("record at offset %d claims %d bytes, max is %d", off, length, r.maxPayload())
	default:
		size = recordSize(length)
		if size > left {
			return 0, 0, false, corrupt("record at offset %d claims %d bytes, crosses the end of the data area (%d bytes left)", off, length, left-recordHeaderSize)
		}
	}
	if end := pos + size - head; end > r.capacity {
		return 0, 0, false, corrupt("record at offset %d (position %d) ends %d bytes past the released head %d, more than the capacity %d", off, pos, end, head, r.capacity)
	}
	return length, size, pad, nil
}
