package rpc

import (
	"errors"
	"time"

	"github.com/capnshm/capnshm/rpc/internal/wire"
)

// Close ends the connection: blocked Send and RecvMessage calls return, the
// peer sees the connection end. Shared memory is unmapped once no message
// refers to it any more (a received message held by user code keeps the
// peer's memory mapped until it is released).
func (t *Transport) Close() error {
	t.life.closeOnce.Do(func() {
		t.life.closed.Store(true)
		t.life.cancel(ErrClosed)
		// A peer that does not read cannot hold Close: the deadline ends
		// any write under way (a Send's frame, which holds the frame lock
		// BYE needs) and the BYE itself.
		_ = t.ep.rv.setWriteDeadline(time.Now().Add(byeTimeout))
		_ = t.ep.fc.WriteFrame(wire.FrameBye, 0, nil, nil)
		_ = t.ep.rv.shutdown()
		t.life.wg.Wait()
		// Send and RecvMessage return once the context is cancelled;
		// holding their locks keeps them out of the rings from here on.
		t.send.mu.Lock()
		defer t.send.mu.Unlock()
		t.recv.mu.Lock()
		defer t.recv.mu.Unlock()
		errs := t.ep.mine.closeBells()
		errs = append(errs, t.ep.theirs.closeForLink()...)
		t.peer.dropAll()
		_ = t.ep.rv.Close()
		t.life.closeErr = errors.Join(errs...)
		t.maybeFinalize()
	})
	return t.life.closeErr
}

// byeTimeout bounds how long Close tries to tell the peer (BYE) before it
// closes the socket regardless.
const byeTimeout = 250 * time.Millisecond

// maybeFinalize unmaps this side's memory once the transport is closed and
// go-capnp has released every message it built here.
func (t *Transport) maybeFinalize() {
	if !t.life.closed.Load() || t.life.liveLocal.Load() != 0 || t.life.finalLocal.Swap(true) {
		return
	}
	t.ep.mine.finalize()
}
