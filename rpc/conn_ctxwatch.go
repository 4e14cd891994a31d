package rpc

import (
	"context"
	"reflect"
)

// Context watches: a call whose context ends before its Return fails with
// the context's error and sends Finish (question.cancel).
//
// A program usually makes many calls under one context (a request's, a
// client's lifetime), so a Conn watches each context once, not each call:
// one context.AfterFunc per ctxWatch, and the questions under that context
// on an intrusive list through question.wprev/wnext. Joining and leaving
// the list cost no allocation, where an AfterFunc per call cost three and
// a lock of the context's parent. The Conn keeps its most recent watch
// while it has no question, so that the next call under the same context
// finds it; any other watch stops once its list is empty. Only contexts of
// a comparable type are kept (the cache compares contexts with ==).
//
// Everything here runs under Conn.mu, except the AfterFunc's callback,
// which takes it.
type ctxWatch struct {
	ctx   context.Context
	stop  func() bool
	head  *question
	n     int
	ended bool // the callback ran: the context is done
}

// watchContext makes q fail when ctx ends first. Called with mu held.
func (c *Conn) watchContext(ctx context.Context, q *question) {
	if ctx.Done() == nil {
		return
	}
	w := c.watch
	if w == nil || w.ctx != ctx { // c.watch holds only comparable contexts
		w = &ctxWatch{ctx: ctx}
		w.stop = context.AfterFunc(ctx, func() { c.contextEnded(w) })
		if reflect.TypeOf(ctx).Comparable() {
			if old := c.watch; old != nil && old.n == 0 {
				old.stop()
			}
			c.watch = w
		}
	}
	q.watch = w
	q.wprev, q.wnext = nil, w.head
	if w.head != nil {
		w.head.wprev = q
	}
	w.head = q
	w.n++
}

// unwatchLocked takes q off its context's watch, and stops the watch if
// nothing needs it any more. Called with mu held.
func (c *Conn) unwatchLocked(q *question) {
	w := q.watch
	if w == nil {
		return
	}
	if q.wprev != nil {
		q.wprev.wnext = q.wnext
	} else {
		w.head = q.wnext
	}
	if q.wnext != nil {
		q.wnext.wprev = q.wprev
	}
	q.watch, q.wprev, q.wnext = nil, nil, nil
	w.n--
	if w.n == 0 && c.watch != w && !w.ended {
		w.stop()
	}
}

// contextEnded fails the questions still on w: its context is done.
func (c *Conn) contextEnded(w *ctxWatch) {
	c.mu.Lock()
	w.ended = true
	if c.watch == w {
		c.watch = nil
	}
	qs := make([]*question, 0, w.n)
	for q := w.head; q != nil; {
		next := q.wnext
		q.watch, q.wprev, q.wnext = nil, nil, nil
		qs = append(qs, q)
		q = next
	}
	w.head, w.n = nil, 0
	c.mu.Unlock()
	for _, q := range qs {
		q.cancel(w.ctx)
	}
}

// stopWatchLocked stops the kept watch: the connection is ending. Called
// with mu held.
func (c *Conn) stopWatchLocked() {
	if w := c.watch; w != nil {
		c.watch = nil
		if w.n == 0 && !w.ended {
			w.stop()
		}
	}
}
