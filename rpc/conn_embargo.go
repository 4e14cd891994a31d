package rpc

import (
	"fmt"

	capnp "capnproto.org/go/capnp/v3"
	rpccp "capnproto.org/go/capnp/v3/std/capnp/rpc"
)

// Embargoes keep E-order when a promise this side called through the peer
// turns out to be a capability of this side's own (rpc.capnp, Disembargo).
//
// The calls made on the promise before it resolved went to the peer, which
// sends them back; calls made after would go to the local capability
// directly and could overtake them. So the resolution is embargoed: this
// side hands out a promise (a promiseHook) in place of the local
// capability, and sends the peer a Disembargo (senderLoopback) along the
// path the earlier calls took. The peer echoes it back (receiverLoopback)
// after it has reflected them; only then does the promise deliver the
// calls that waited on it, and resolve to the capability.
//
// Two kinds of resolution call for it: the Return of a question on whose
// results calls were pipelined, for each such path that leads to a
// capability of this side; and the Resolve of an imported promise that
// this side made calls on, to a capability of this side.
type embargo struct {
	hook   *promiseHook
	target capnp.Client // the local capability, owned until fulfilled
}

// embargoLocked embargoes target: it returns the promise to hand out
// instead, and pushes a Disembargo to tgt, reporting whether the caller
// must flush. Called with mu held.
func (c *Conn) embargoLocked(target capnp.Client, tgt callTarget) (capnp.Client, bool) {
	om, rm, err := c.newMessage()
	if err != nil {
		return target, false
	}
	d, err := rm.NewDisembargo()
	var t rpccp.MessageTarget
	if err == nil {
		t, err = d.NewTarget()
	}
	if err == nil {
		err = writeMsgTarget(t, tgt)
	}
	if err != nil {
		om.Release()
		return target, false
	}
	p, hook := newPromise("embargoed")
	id := c.embargoes.add(&embargo{hook: hook, target: target})
	d.Context().SetSenderLoopback(id)
	return p, c.out.push(om, nil)
}

// embargoResults embargoes the capabilities of this side's own among a
// Return's results, at each path calls were pipelined on: caps are the
// received clients (by cap table index), ds their descriptors. It returns
// the clients to put in the cap table. Called with mu held.
func (c *Conn) embargoResults(q *question, content capnp.Ptr, ds []capDesc, caps []capnp.Client) ([]capnp.Client, bool) {
	flush := false
	var done map[uint32]bool
	for _, transform := range q.paths {
		p, err := capnp.Transform(content, transform)
		if err != nil {
			continue
		}
		iface := p.Interface()
		if !iface.IsValid() {
			continue
		}
		i := iface.Capability()
		if uint64(i) >= uint64(len(ds)) || done[uint32(i)] {
			continue
		}
		switch ds[i].which {
		case rpccp.CapDescriptor_Which_receiverHosted, rpccp.CapDescriptor_Which_receiverAnswer:
		default:
			continue // the peer's: calls keep taking the same path
		}
		if done == nil {
			done = make(map[uint32]bool)
		}
		done[uint32(i)] = true
		var f bool
		caps[i], f = c.embargoLocked(caps[i], callTarget{q: q, transform: transform})
		flush = flush || f
	}
	return caps, flush
}

// handleResolve handles the Resolve of a promise the peer exported.
func (c *Conn) handleResolve(e *envelope, in interface{ Release() }) {
	defer in.Release()
	c.mu.Lock()
	if c.closing {
		c.mu.Unlock()
		return
	}
	var client capnp.Client
	if e.exception == nil {
		var err error
		client, err = c.receiveCapLocked(e.resolveTo)
		if err != nil {
			c.mu.Unlock()
			c.abortErr(fmt.Errorf("resolve of import %d: %w", e.id, err))
			return
		}
	} else {
		client = capnp.ErrorClient(e.exception)
	}
	ent := c.imports[e.id]
	switch {
	case ent == nil:
		// Released before the Resolve came: drop what it resolved to.
		c.mu.Unlock()
		client.Release()
		return
	case ent.resolver == nil:
		c.mu.Unlock()
		client.Release()
		c.abortf("Resolve of import %d, which is not an unresolved promise", e.id)
		return
	}
	resolver := ent.resolver
	ent.resolver = nil
	flush := false
	local := e.exception == nil && (e.resolveTo.which == rpccp.CapDescriptor_Which_receiverHosted || e.resolveTo.which == rpccp.CapDescriptor_Which_receiverAnswer)
	if local && ent.called {
		client, flush = c.embargoLocked(client, callTarget{importID: e.id})
	}
	c.mu.Unlock()
	if flush {
		c.out.handOff()
	}
	resolver.Fulfill(client)
	client.Release()
}

// handleDisembargo handles the peer's Disembargo: echoes a senderLoopback
// back, or lifts one of this side's embargoes.
func (c *Conn) handleDisembargo(e *envelope) {
	switch e.embargo {
	case rpccp.Disembargo_context_Which_receiverLoopback:
		c.mu.Lock()
		emb, ok := c.embargoes.get(e.embargoID)
		if ok {
			c.embargoes.remove(e.embargoID)
		}
		c.mu.Unlock()
		if !ok {
			c.abortf("Disembargo receiverLoopback %d, which this side never sent", e.embargoID)
			return
		}
		emb.hook.fulfill(emb.target)
	case rpccp.Disembargo_context_Which_senderLoopback:
		c.reflectDisembargo(e)
	default:
		c.abortf("Disembargo of kind %d, a Level 3 message this side does not implement", e.embargo)
	}
}

// reflectDisembargo echoes a senderLoopback Disembargo: its target must be
// a capability of this side's that resolved to one of the peer's, and the
// echo goes to that capability, after every call this side has reflected
// to it (they were pushed before this message was read).
func (c *Conn) reflectDisembargo(e *envelope) {
	c.mu.Lock()
	if c.closing {
		c.mu.Unlock()
		return
	}
	var client capnp.Client
	var tgt callTarget
	var resolved bool
	if !e.target.promised {
		x, ok := c.exports.get(e.target.id)
		if !ok {
			c.mu.Unlock()
			c.abortf("Disembargo to export %d, which this side does not export", e.target.id)
			return
		}
		client = x.client.AddRef()
	} else {
		a := c.answers[e.target.id]
		switch {
		case a == nil || !a.returned:
			c.mu.Unlock()
			c.abortf("Disembargo to question %d, which has not returned here", e.target.id)
			return
		case a.tailQ != nil:
			tgt, resolved = callTarget{q: a.tailQ, transform: e.target.transform}, true
		default:
			client = c.answerCapLocked(a, e.target.transform)
		}
	}
	c.mu.Unlock()
	if !resolved {
		snap := client.Snapshot()
		switch v := snap.Brand().Value.(type) {
		case *importClient:
			if v.c == c {
				tgt, resolved = callTarget{importID: v.ent.id}, true
			}
		case capnp.PipelineClient:
			if q := c.questionOf(v.Answer()); q != nil {
				tgt, resolved = callTarget{q: q, transform: v.Transform()}, true
			}
		case *questionPipeHook:
			if v.q.c == c {
				tgt, resolved = callTarget{q: v.q, transform: v.transform}, true
			}
		}
		snap.Release()
		client.Release()
	}
	if !resolved {
		c.abortf("Disembargo senderLoopback to a capability that does not point back to the peer")
		return
	}
	om, rm, err := c.newMessage()
	if err != nil {
		return
	}
	d, err := rm.NewDisembargo()
	var t rpccp.MessageTarget
	if err == nil {
		t, err = d.NewTarget()
	}
	if err == nil {
		c.mu.Lock()
		err = writeMsgTarget(t, tgt)
		c.mu.Unlock()
	}
	if err != nil {
		om.Release()
		return
	}
	d.Context().SetReceiverLoopback(e.embargoID)
	c.mu.Lock()
	flush := !c.closing && c.out.push(om, nil)
	c.mu.Unlock()
	if flush {
		c.out.handOff()
	}
}

// fail fails an embargo of a connection that ended.
func (emb *embargo) fail(err error) {
	emb.hook.reject(err)
	emb.target.Release()
}
