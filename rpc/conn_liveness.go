package rpc

import (
	"fmt"
	"time"
)

// WithLiveness turns on a check of the peer's liveness every d (at least a
// millisecond): when this side has calls waiting for the peer and nothing
// has arrived from it for d, it asks the peer something every Cap'n Proto
// peer answers at once (a Bootstrap, released as soon as it is answered);
// if still nothing arrives for another d, the connection ends with
// ErrUnresponsive and its calls fail as disconnected. A dead peer is seen
// at once without it (the socket closes); this is for one that is stopped
// or wedged, whose calls would otherwise wait for their own deadlines. Off
// by default; it applies to Dial, Listen and NewConn.
func WithLiveness(d time.Duration) Option {
	return func(c *config) {
		if d < time.Millisecond {
			c.bad("WithLiveness(%v): want at least 1ms", d)
			return
		}
		c.liveness = d
	}
}

// ErrUnresponsive: the liveness check (WithLiveness) found the peer silent
// with calls outstanding. It is an ErrDisconnected.
var ErrUnresponsive error = &kindOf{"capnshm: peer unresponsive", ErrDisconnected}

// watchLiveness is the goroutine of WithLiveness.
func (c *Conn) watchLiveness() {
	tick := time.NewTicker(c.liveness / 4)
	defer tick.Stop()
	var probed time.Time // when the last probe went out; zero: none pending
	for {
		select {
		case <-c.ctx.Done():
			return
		case now := <-tick.C:
			silent := now.Sub(c.lastRecv.load())
			if silent < c.liveness || !c.waiting() {
				probed = time.Time{}
				continue
			}
			if probed.IsZero() || c.lastRecv.load().After(probed) {
				probed = now
				c.bootstrap(c.ctx).Release()
				continue
			}
			if now.Sub(probed) >= c.liveness {
				c.end(fmt.Errorf("%w: nothing from the peer for %v with calls outstanding", ErrUnresponsive, silent.Round(time.Millisecond)), false)
				return
			}
		}
	}
}

// waiting reports whether this side has a question the peer has not
// answered.
func (c *Conn) waiting() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	found := false
	c.questions.each(func(_ uint32, q *question) { found = found || !q.returned })
	return found
}
