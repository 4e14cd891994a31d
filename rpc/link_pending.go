package rpc

import (
	"errors"
	"sync"

	"github.com/capnshm/capnshm/ringbuf"
	"github.com/capnshm/capnshm/rpc/internal/wire"
)

// pendState holds the records this side owes the peer: FREE of the peer's
// messages released here, UNMAP of this side's dedicated mappings dropped.
// They are queued under mu (a leaf) by whoever releases, and written into
// the ring under send.mu: at once if it is free (TryLock), else by the
// next Send or by the flush goroutine, which kick wakes.
type pendState struct {
	mu     sync.Mutex
	frees  []uint64
	unmaps []uint32
	kick   chan struct{}
}

func (p *pendState) init() { p.kick = make(chan struct{}, 1) }

// queueFree schedules a FREE of the peer's message id.
func (t *Transport) queueFree(id uint64) {
	t.pend.mu.Lock()
	t.pend.frees = append(t.pend.frees, id)
	t.pend.mu.Unlock()
	t.flushPending()
}

// queueUnmap schedules an UNMAP of our dedicated mapping id.
func (t *Transport) queueUnmap(id uint32) {
	t.pend.mu.Lock()
	t.pend.unmaps = append(t.pend.unmaps, id)
	t.pend.mu.Unlock()
	t.flushPending()
}

// flushPending writes pending FREE and UNMAP records if the ring is free
// now, else leaves them to the flush goroutine. It never blocks.
func (t *Transport) flushPending() {
	if t.life.closed.Load() {
		return
	}
	if !t.send.mu.TryLock() {
		t.kickFlusher()
		return
	}
	defer t.send.mu.Unlock()
	if t.life.ctx.Err() != nil {
		return
	}
	if !t.flushPendingLocked(false) {
		t.kickFlusher()
	}
}

func (t *Transport) kickFlusher() {
	select {
	case t.pend.kick <- struct{}{}:
	default:
	}
}

// flushPendingLocked writes pending records; with wait it waits for ring
// space, else it stops at the first full claim. It reports whether nothing
// is left pending. Called with send.mu held.
func (t *Transport) flushPendingLocked(wait bool) bool {
	t.pend.mu.Lock()
	frees, unmaps := t.pend.frees, t.pend.unmaps
	t.pend.frees, t.pend.unmaps = nil, nil
	t.pend.mu.Unlock()
	if len(frees) == 0 && len(unmaps) == 0 {
		return true
	}
	claim := func(n int) ([]byte, error) {
		if wait {
			return t.claim(n)
		}
		b, err := t.send.out.Claim(n)
		if err != nil && !errors.Is(err, ringbuf.ErrFull) {
			return nil, t.claimError(err)
		}
		return b, err
	}
	putBack := func() bool {
		t.pend.mu.Lock()
		t.pend.frees = append(frees, t.pend.frees...)
		t.pend.unmaps = append(unmaps, t.pend.unmaps...)
		t.pend.mu.Unlock()
		return false
	}
	for len(frees) > 0 {
		n := min(len(frees), wire.MaxFreeIDs, (t.ep.mine.ringView.MaxPayload()-8)/8)
		b, err := claim(wire.FreeSize(n))
		if err != nil {
			t.commit()
			return putBack()
		}
		if _, err := wire.PutFree(b, frees[:n]); err != nil {
			t.fail(err)
			return false
		}
		frees = frees[n:]
		t.stats.freesSent.Add(uint64(n))
	}
	for len(unmaps) > 0 {
		b, err := claim(wire.UnmapSize)
		if err != nil {
			t.commit()
			return putBack()
		}
		if _, err := wire.PutUnmap(b, unmaps[0]); err != nil {
			t.fail(err)
			return false
		}
		unmaps = unmaps[1:]
	}
	return t.commit() == nil
}

// flushLoop writes pending records that found the ring full.
func (t *Transport) flushLoop() {
	defer t.life.wg.Done()
	for {
		select {
		case <-t.life.ctx.Done():
			return
		case <-t.pend.kick:
		}
		t.send.mu.Lock()
		if t.life.ctx.Err() == nil {
			t.flushPendingLocked(true)
		}
		t.send.mu.Unlock()
	}
}
