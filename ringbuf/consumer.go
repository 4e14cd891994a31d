package ringbuf

import (
	"context"
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
// If that head is impossible, every method of the Consumer returns an error
// wrapping ErrCorrupt.
func (r *Ring) Consumer(opts Options) *Consumer {
	head := atomic.LoadUint64(r.head)
	c := &Consumer{r: r, opts: opts.resolve(), pos: head, head: head}
	if head%8 != 0 {
		c.err = corrupt("head %d is not 8-byte aligned", head)
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
	length, size, err := c.next()
	if err != nil {
		return nil, err
	}
	if size == 0 {
		return nil, ErrEmpty
	}
	// checkRecord made sure that off+size <= capacity.
	start := c.pos&(c.r.capacity-1) + recordHeaderSize
	end := start + length
	c.pos += size
	c.st.Records++
	c.st.Bytes += length
	return c.r.data[start:end:end], nil
}

// next reads and validates the header at the consumer's position, skipping
// padding records. It returns the length and size of the record there, or
// size 0 if the header is zero: nothing is published there yet. The header
// word is loaded once, atomically (acquiring the producer's stores before
// its publication), and only the local copy is used.
func (c *Consumer) next() (length, size uint64, err error) {
	if c.err != nil {
		return 0, 0, c.err
	}
	for {
		h := atomic.LoadUint64(c.r.word(c.pos & (c.r.capacity - 1)))
		if h == 0 {
			return 0, 0, nil
		}
		length, size, pad, err := c.r.checkRecord(h, c.pos, c.head)
		if err != nil {
			return 0, 0, c.fail(err)
		}
		if !pad {
			return length, size, nil
		}
		// A padding record is published with the record after it (at
		// offset 0), in the same batch.
		c.pos += size
	}
}

func (c *Consumer) fail(err error) error {
	c.err = err
	return err
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
	storeFenced64(c.r.head, c.pos)
	c.st.Releases++
	// Dekker, consumer side: we stored head above, now load space_wanted;
	// the producer stores space_wanted=1, then loads head (Options.park).
	// Both stores are fenced (storeFenced), so one of us sees the other's,
	// and a parked producer is always rung; the CAS 1->0 rings once per
	// parking.
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
		_, size, err := c.next()
		return size != 0, err
	}, &c.st.Parks)
}
