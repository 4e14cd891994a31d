package ringbuf

import (
	"context"
	"encoding/binary"
	"fmt"
	"sync/atomic"
)

// A Consumer reads records from a Ring. Take one with Ring.Consumer; a ring
// has one consumer at a time (across both processes), used by one goroutine
// at a time. The zero value is not usable.
//
// Everything a Consumer reads from the ring is untrusted: see the package
// documentation.
type Consumer struct {
	r    *Ring
	opts Options
	pos  uint64 // position of the next record to read (local)
	head uint64 // head last published to the ring
	tail uint64 // tail last read from the ring and validated
	err  error  // sticky corruption error
	st   ConsumerStats
}

// ConsumerStats are a Consumer's counters.
type ConsumerStats struct {
	Records  uint64 // records returned by Poll
	Bytes    uint64 // payload bytes returned by Poll
	Releases uint64 // releases that published something
	Rings    uint64 // times the producer's doorbell was rung
	Parks    uint64 // times Wait parked (or slept, without a Waiter)
}

// Consumer returns the ring's consumer, starting at the ring's current head.
// If the ring's indices are already impossible, every method of the
// Consumer returns an error wrapping ErrCorrupt.
func (r *Ring) Consumer(opts Options) *Consumer {
	head := atomic.LoadUint64(r.head)
	tail := atomic.LoadUint64(r.tail)
	c := &Consumer{r: r, opts: opts.resolve(), pos: head, head: head, tail: tail}
	if c.err = checkIndices(head, tail, r.capacity); c.err != nil {
		c.tail = head
	}
	return c
}

// Stats returns the consumer's counters.
func (c *Consumer) Stats() ConsumerStats { return c.st }

// Poll returns the payload of the next published record, or ErrEmpty if
// there is none now (see Wait). The payload is a slice of the ring's memory:
// it stays valid until Release, and since the peer can write to it, it must
// be decoded defensively (or copied). Records returned by successive Polls
// stay valid together until Release. A zero-length record is returned as an
// empty, non-nil slice. An impossible index or record gives an error wrapping
// ErrCorrupt, and so does every call after it.
func (c *Consumer) Poll() ([]byte, error) {
	if c.err != nil {
		return nil, c.err
	}
	capacity := c.r.capacity
	for {
		if c.pos == c.tail {
			if err := c.loadTail(); err != nil {
				return nil, err
			}
			if c.pos == c.tail {
				return nil, ErrEmpty
			}
		}
		// pos and tail are 8-byte aligned and pos < tail, so at least one
		// record header is published, and off+8 <= capacity.
		avail := c.tail - c.pos
		off := c.pos & (capacity - 1)
		left := capacity - off
		hdr := c.r.data[off : off+recordHeaderSize]
		// Read each header word once; use only the locals from here on.
		length := uint64(binary.NativeEndian.Uint32(hdr))
		flags := binary.NativeEndian.Uint32(hdr[4:])
		if flags&^flagPadding != 0 {
			return nil, c.fail(corrupt("record at offset %d has unknown flags %#x", off, flags))
		}
		if flags&flagPadding != 0 {
			if length+recordHeaderSize != left {
				return nil, c.fail(corrupt("padding record at offset %d claims %d bytes, does not end at the end of the data area (%d bytes left)", off, length, left-recordHeaderSize))
			}
			if left > avail {
				return nil, c.fail(corrupt("padding record at offset %d claims %d bytes, only %d published", off, length, avail-recordHeaderSize))
			}
			c.pos += left
			continue
		}
		if length > c.r.maxPayload() {
			return nil, c.fail(corrupt("record at offset %d claims %d bytes, max is %d", off, length, c.r.maxPayload()))
		}
		size := recordSize(length)
		if size > left {
			return nil, c.fail(corrupt("record at offset %d claims %d bytes, crosses the end of the data area (%d bytes left)", off, length, left-recordHeaderSize))
		}
		if size > avail {
			return nil, c.fail(corrupt("record at offset %d claims %d bytes, only %d published", off, length, avail-recordHeaderSize))
		}
		c.pos += size
		c.st.Records++
		c.st.Bytes += length
		start := off + recordHeaderSize
		end := start + length
		return c.r.data[start:end:end], nil
	}
}

func (c *Consumer) fail(err error) error {
	c.err = err
	return err
}

// loadTail reads the producer's tail once and validates it.
func (c *Consumer) loadTail() error {
	t := atomic.LoadUint64(c.r.tail)
	switch {
	case t < c.tail:
		return c.fail(corrupt("tail moved backwards from %d to %d", c.tail, t))
	case t-c.head > c.r.capacity:
		return c.fail(corrupt("tail %d is %d bytes ahead of head %d, capacity is %d", t, t-c.head, c.head, c.r.capacity))
	case t%8 != 0:
		return c.fail(corrupt("tail %d is not 8-byte aligned", t))
	}
	c.tail = t
	return nil
}

// Release hands the space of every record returned by Poll so far back to
// the producer, with one atomic store of the ring's head; their payloads
// must not be used afterwards. It then rings Options.Ringer if the producer
// announced that it is parked waiting for space. Release with nothing to
// release does nothing. An error from the doorbell is returned wrapped, but
// the space is released regardless.
func (c *Consumer) Release() error {
	if c.err != nil {
		return c.err
	}
	if c.pos == c.head {
		return nil
	}
	c.head = c.pos
	atomic.StoreUint64(c.r.head, c.pos)
	c.st.Releases++
	// Dekker, consumer side: we stored head above, now load space_wanted;
	// the producer stores space_wanted=1, then loads head (Options.park).
	// Sequential consistency makes one of us see the other's store, so a
	// parked producer is always rung; the CAS 1->0 rings once per parking.
	if c.opts.Ringer != nil && atomic.LoadUint32(c.r.spaceWanted) == 1 &&
		atomic.CompareAndSwapUint32(c.r.spaceWanted, 1, 0) {
		c.st.Rings++
		if err := c.opts.Ringer.Ring(); err != nil {
			return fmt.Errorf("ringbuf: ringing the producer: %w", err)
		}
	}
	return nil
}

// Wait waits, per Options.Strategy, until Poll has a record to return (or,
// if the peer is corrupt, an error), or ctx is done (the error then wraps
// ctx.Err()). Wait does not release: call Release before waiting, or a
// producer waiting for space and this consumer can wait for each other.
func (c *Consumer) Wait(ctx context.Context) error {
	if c.err != nil {
		return c.err
	}
	return c.opts.wait(ctx, c.r.dataWanted, func() (bool, error) {
		if c.pos != c.tail {
			return true, nil
		}
		if err := c.loadTail(); err != nil {
			return false, err
		}
		return c.pos != c.tail, nil
	}, &c.st.Parks)
}
