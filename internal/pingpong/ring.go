package pingpong

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/capnshm/capnshm/ringbuf"
)

// RingOffset is where the request ring starts in a ping-pong region; the
// first page holds the spin word.
const RingOffset = 4096

// RegionSize returns the size of a region holding the spin word and two
// rings of the given capacity, and the offset of the response ring.
func RegionSize(capacity int) (size, respOffset int) {
	r := (ringbuf.SizeFor(capacity) + 4095) &^ 4095
	return RingOffset + 2*r, RingOffset + r
}

// Rings returns the request and response ring memory of a ping-pong region
// made for capacity.
func Rings(mem []byte, capacity int) (req, resp []byte) {
	_, off := RegionSize(capacity)
	n := ringbuf.SizeFor(capacity)
	return mem[RingOffset : RingOffset+n], mem[off : off+n]
}

// claim claims an n-byte record, waiting for space if the ring is full.
func claim(ctx context.Context, p *ringbuf.Producer, n int) ([]byte, error) {
	for {
		b, err := p.Claim(n)
		if !errors.Is(err, ringbuf.ErrFull) {
			return b, err
		}
		if err := p.WaitSpace(ctx, n); err != nil {
			return nil, err
		}
	}
}

// next returns the next record, waiting for one.
func next(ctx context.Context, c *ringbuf.Consumer) ([]byte, error) {
	for {
		b, err := c.Poll()
		if !errors.Is(err, ringbuf.ErrEmpty) {
			return b, err
		}
		if err := c.Wait(ctx); err != nil {
			return nil, err
		}
	}
}

// RingClient times n round trips of size-byte records (at least 8): a
// request carrying a sequence number, and the server's echo of it.
func RingClient(ctx context.Context, req *ringbuf.Producer, resp *ringbuf.Consumer, size, n int, samples []time.Duration) (time.Duration, error) {
	size = max(size, 8)
	start := time.Now()
	last := start
	for i := 0; i < n; i++ {
		b, err := claim(ctx, req, size)
		if err != nil {
			return 0, fmt.Errorf("round %d: %w", i, err)
		}
		binary.LittleEndian.PutUint64(b, uint64(i))
		if err := req.Commit(); err != nil {
			return 0, fmt.Errorf("round %d: %w", i, err)
		}
		r, err := next(ctx, resp)
		if err != nil {
			return 0, fmt.Errorf("round %d: %w", i, err)
		}
		if len(r) != size || binary.LittleEndian.Uint64(r) != uint64(i) {
			return 0, fmt.Errorf("round %d: bad echo (%d bytes)", i, len(r))
		}
		if err := resp.Release(); err != nil {
			return 0, fmt.Errorf("round %d: %w", i, err)
		}
		if samples != nil {
			now := time.Now()
			samples[i] = now.Sub(last)
			last = now
		}
	}
	return time.Since(start), nil
}

// RingServer echoes n records of RingClient.
func RingServer(ctx context.Context, req *ringbuf.Consumer, resp *ringbuf.Producer, n int) error {
	for i := 0; i < n; i++ {
		r, err := next(ctx, req)
		if err != nil {
			return fmt.Errorf("round %d: %w", i, err)
		}
		b, err := claim(ctx, resp, len(r))
		if err != nil {
			return fmt.Errorf("round %d: %w", i, err)
		}
		copy(b, r)
		if err := req.Release(); err != nil {
			return fmt.Errorf("round %d: %w", i, err)
		}
		if err := resp.Commit(); err != nil {
			return fmt.Errorf("round %d: %w", i, err)
		}
	}
	return nil
}
