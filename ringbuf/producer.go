package ringbuf

import (
	"context"
	"encoding/binary"
	"fmt"
	"sync/atomic"
)

// A Producer writes records into a Ring. Take one with Ring.Producer; a ring
// has one producer at a time (across both processes), used by one goroutine
// at a time. The zero value is not usable.
type Producer struct {
	r     *Ring
	opts  Options
	tail  uint64 // end of the last claimed record (local)
	pub   uint64 // end of the last committed record (local); the terminator is here
	head  uint64 // head last read from the ring and validated
	first uint64 // header of the record at pub, stored by the next Commit
	err   error  // sticky corruption error
	st    ProducerStats
}

// ProducerStats are a Producer's counters.
type ProducerStats struct {
	Records uint64 // records claimed
	Bytes   uint64 // payload bytes claimed
	Commits uint64 // commits that published something
	Rings   uint64 // times the consumer's doorbell was rung
	Full    uint64 // claims refused with ErrFull
	Parks   uint64 // times WaitSpace parked (or slept, without a Waiter)
}

// Producer returns the ring's producer, starting after the last record
// published in the ring: it walks the published records from the ring's
// head to the zero word that ends them, validating them as a Consumer
// does. If head or those records are impossible, every method of the
// Producer returns an error wrapping ErrCorrupt.
func (r *Ring) Producer(opts Options) *Producer {
	head := atomic.LoadUint64(r.head)
	tail, err := r.findTail(head)
	return &Producer{
		r:    r,
		opts: opts.resolve(),
		tail: tail,
		pub:  tail,
		head: head,
		err:  err,
	}
}

// findTail returns the position of the terminator: the first zero header
// after the records published from head on.
func (r *Ring) findTail(head uint64) (uint64, error) {
	if head%8 != 0 {
		return head, corrupt("head %d is not 8-byte aligned", head)
	}
	pos := head
	for {
		h := atomic.LoadUint64(r.word(pos & (r.capacity - 1)))
		if h == 0 {
			break
		}
		// checkRecord bounds pos+size-head by the capacity, so this loop
		// ends after at most capacity/8 records.
		_, size, _, err := r.checkRecord(h, pos, head)
		if err != nil {
			return head, err
		}
		pos += size
	}
	if pos-head > r.capacity-recordHeaderSize {
		return head, corrupt("records published from head %d fill %d bytes, no room left for the terminator (capacity %d)", head, pos-head, r.capacity)
	}
	return pos, nil
}

// Stats returns the producer's counters.
func (p *Producer) Stats() ProducerStats { return p.st }

// Claim reserves a record with an n-byte payload and returns the payload to
// write into. The record reaches the consumer at the next Commit; until then
// later Claims stack up behind it (a batch). Claim returns ErrFull if the
// ring has no room for the record now (see WaitSpace), and an error
// wrapping ErrTooLarge if n is negative or over Ring.MaxPayload. The
// returned slice has capacity n and must not be used after Commit.
//
// A record takes 8 bytes of header plus n rounded up to a multiple of 8,
// and Claim also keeps 8 free bytes after the claimed records for the zero
// word (terminator) that Commit writes there.
func (p *Producer) Claim(n int) ([]byte, error) {
	if p.err != nil {
		return nil, p.err
	}
	if err := p.checkLen(n); err != nil {
		return nil, err
	}
	size := recordSize(uint64(n))
	need, pad := p.need(size)
	if !p.fits(need) {
		if err := p.loadHead(); err != nil {
			return nil, err
		}
		if !p.fits(need) {
			p.st.Full++
			return nil, ErrFull
		}
	}
	data := p.r.data
	off := p.tail & (p.r.capacity - 1)
	if pad {
		// Fill exactly to the end of the data area; the record goes at 0.
		p.putHeader(off, makeHeader(p.r.capacity-off-recordHeaderSize, flagPadding))
		p.tail += p.r.capacity - off
		off = 0
	}
	p.putHeader(off, makeHeader(uint64(n), 0))
	p.tail += size
	p.st.Records++
	p.st.Bytes += uint64(n)
	start := off + recordHeaderSize
	end := start + uint64(n)
	return data[start:end:end], nil
}

// need returns how many bytes a record of size bytes takes at the claim
// position, counting the padding record in front of it if it does not fit
// before the end of the data area.
func (p *Producer) need(size uint64) (need uint64, pad bool) {
	left := p.r.capacity - p.tail&(p.r.capacity-1)
	if size > left {
		return left + size, true
	}
	return size, false
}

// fits reports whether need more bytes, plus the 8 of the terminator after
// them, fit in the free space left by the cached head. The invariant
// tail+8 <= head+capacity keeps the subtraction from wrapping.
func (p *Producer) fits(need uint64) bool {
	return need+recordHeaderSize <= p.r.capacity-(p.tail-p.head)
}

// putHeader writes the header word h of the record at offset off, which is
// at position p.tail. The first header of a batch (at p.pub) is kept in
// p.first: its atomic store in Commit publishes the batch, and until then
// the zero word at p.pub keeps the consumer off the batch. The other
// headers are plain stores; that store in Commit orders them.
func (p *Producer) putHeader(off, h uint64) {
	if p.tail == p.pub {
		p.first = h
		return
	}
	binary.NativeEndian.PutUint64(p.r.data[off:], h)
}

func (p *Producer) checkLen(n int) error {
	if n < 0 || uint64(n) > p.r.maxPayload() {
		return fmt.Errorf("%w: %d-byte payload, max is %d", ErrTooLarge, n, p.r.maxPayload())
	}
	return nil
}

// loadHead reads the consumer's head once and validates it.
func (p *Producer) loadHead() error {
	h := atomic.LoadUint64(p.r.head)
	switch {
	case h < p.head:
		p.err = corrupt("head moved backwards from %d to %d", p.head, h)
	case h > p.pub:
		p.err = corrupt("head %d is ahead of tail %d", h, p.pub)
	case h%8 != 0:
		p.err = corrupt("head %d is not 8-byte aligned", h)
	default:
		p.head = h
		return nil
	}
	return p.err
}

// Commit publishes every record claimed since the last Commit, then rings
// Options.Ringer if the consumer announced that it is parked waiting for
// data. It writes a zero word (the terminator) after the last claimed
// record, then stores the header of the first claimed record atomically:
// that one store publishes the batch. Commit with nothing claimed does
// nothing. An error from the doorbell is returned wrapped, but the records
// are published regardless.
func (p *Producer) Commit() error {
	if p.err != nil {
		return p.err
	}
	if p.tail == p.pub {
		return nil
	}
	// The terminator: the consumer stops at this zero word after the
	// batch. Claim kept these 8 bytes free (fits), so they hold no record
	// the consumer has not released; when the batch ends at the end of the
	// data area, the word is at offset 0.
	capacity := p.r.capacity
	binary.NativeEndian.PutUint64(p.r.data[p.tail&(capacity-1):], 0)
	// Publication: the consumer waits at pub for a nonzero header. Its
	// atomic load that sees this store also sees every store before it
	// (payloads, the other headers, the terminator).
	storeFenced64(p.r.word(p.pub&(capacity-1)), p.first)
	p.pub = p.tail
	p.st.Commits++
	// Dekker, producer side: we stored the header above, now load
	// data_wanted; the consumer stores data_wanted=1, then loads the header
	// at its position (Options.park).
	// Both stores are fenced (storeFenced), so one of us sees the other's,
	// and a parked consumer is always rung. The CAS 1->0 makes the next
	// commits skip the doorbell until the consumer parks again.
	if p.opts.Ringer != nil && atomic.LoadUint32(p.r.dataWanted) == 1 &&
		atomic.CompareAndSwapUint32(p.r.dataWanted, 1, 0) {
		p.st.Rings++
		if err := p.opts.Ringer.Ring(); err != nil {
			return fmt.Errorf("ringbuf: ringing the consumer: %w", err)
		}
	}
	return nil
}

// ConsumerWaiting reports whether the consumer has announced that it sleeps
// on its doorbell, so that the next Commit rings it. It is a snapshot, for
// monitoring and tests.
func (p *Producer) ConsumerWaiting() bool { return atomic.LoadUint32(p.r.dataWanted) == 1 }

// Write publishes one record holding a copy of b: Claim, copy, Commit (so it
// also publishes records claimed before). It returns ErrFull without waiting
// if there is no room.
func (p *Producer) Write(b []byte) error {
	buf, err := p.Claim(len(b))
	if err != nil {
		return err
	}
	copy(buf, b)
	return p.Commit()
}

// WaitSpace waits, per Options.Strategy, until a record with an n-byte
// payload can be claimed, or ctx is done (the error then wraps ctx.Err()).
// Commit claimed records before waiting: space they hold is not freed by the
// consumer; if they leave no room for n bytes even in a drained ring,
// WaitSpace returns an error wrapping ErrFull at once.
func (p *Producer) WaitSpace(ctx context.Context, n int) error {
	if p.err != nil {
		return p.err
	}
	if err := p.checkLen(n); err != nil {
		return err
	}
	need, _ := p.need(recordSize(uint64(n)))
	if pending := p.tail - p.pub; need+recordHeaderSize > p.r.capacity-pending {
		return fmt.Errorf("%w: %d claimed bytes not committed leave no room for a %d-byte payload; Commit first", ErrFull, pending, n)
	}
	return p.opts.wait(ctx, p.r.spaceWanted, func() (bool, error) {
		if p.fits(need) {
			return true, nil
		}
		if err := p.loadHead(); err != nil {
			return false, err
		}
		return p.fits(need), nil
	}, &p.st.Parks)
}
