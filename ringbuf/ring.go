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
	Version = 1
	// Magic is the 4-byte tag at offset 0.
	Magic = "CSRB"

	offMagic       = 0
	offVersion     = 4
	offCapacity    = 8
	offTail        = 128
	offHead        = 256
	offDataWanted  = 384
	offSpaceWanted = 512

	recordHeaderSize = 8
	flagPadding      = 1
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
	tail        *uint64
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
// 8 bytes or more are). Init writes the whole header; the peer must not use
// the memory until Init has returned. Errors wrap ErrBadSize.
func Init(mem []byte) (*Ring, error) {
	capacity, err := checkMem(mem)
	if err != nil {
		return nil, err
	}
	clear(mem[:HeaderSize])
	copy(mem[offMagic:], Magic)
	binary.NativeEndian.PutUint32(mem[offVersion:], Version)
	binary.NativeEndian.PutUint64(mem[offCapacity:], capacity)
	r := newRing(mem, capacity)
	atomic.StoreUint64(r.tail, 0)
	atomic.StoreUint64(r.head, 0)
	atomic.StoreUint32(r.spaceWanted, 0)
	atomic.StoreUint32(r.dataWanted, 0)
	return r, nil
}

// Attach returns the ring that a peer formatted in mem with Init. It checks
// the length and alignment of mem as Init does (ErrBadSize), then the magic,
// the version and that the capacity in the header matches len(mem)
// (ErrBadHeader). The capacity is read once and kept; the indices are not
// checked here but by every Producer and Consumer operation.
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
		tail:        (*uint64)(unsafe.Pointer(&mem[offTail])),
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

// recordSize is the number of bytes a record with an n-byte payload takes.
func recordSize(n uint64) uint64 { return recordHeaderSize + (n+7)&^7 }

func corrupt(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrCorrupt}, args...)...)
}

// checkIndices validates a head and tail read together from shared memory.
func checkIndices(head, tail, capacity uint64) error {
	switch {
	case head%8 != 0:
		return corrupt("head %d is not 8-byte aligned", head)
	case tail%8 != 0:
		return corrupt("tail %d is not 8-byte aligned", tail)
	case head > tail:
		return corrupt("head %d is ahead of tail %d", head, tail)
	case tail-head > capacity:
		return corrupt("tail %d is %d bytes ahead of head %d, capacity is %d", tail, tail-head, head, capacity)
	}
	return nil
}
