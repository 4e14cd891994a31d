package rpc

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"

	capnp "capnproto.org/go/capnp/v3"
	rpccp "capnproto.org/go/capnp/v3/std/capnp/rpc"
)

// Imports: the capabilities the peer exports to this side.
//
// Each import is one capnp.Client over an importClient hook, shared by every
// descriptor the peer sends for it: the entry counts those descriptors
// (wireRefs), and when the application has released every reference to
// the Client, go-capnp shuts the hook down and this side sends one Release
// for all of them. A descriptor that arrives while the old Client is
// shutting down starts a new entry with its own count; the old hook still
// releases its own.
type importEntry struct {
	id       uint32
	wireRefs uint32
	weak     capnp.WeakClient
	hook     *importClient
	// resolver is set for a promise (senderPromise) until its Resolve.
	resolver capnp.Resolver[capnp.Client]
	// called: a call was sent to this import; a promise that resolves
	// to a capability of this side then needs an embargo.
	called bool
}

// importClient is the hook of an imported capability: calls on it go to
// the peer as Calls on importedCap(id).
type importClient struct {
	c   *Conn
	ent *importEntry
}

// importLocked returns a reference to the import id, counting one more
// descriptor for it. Called with mu held.
func (c *Conn) importLocked(id uint32, promise bool) capnp.Client {
	if ent := c.imports[id]; ent != nil {
		if client, ok := ent.weak.AddRef(); ok {
			ent.wireRefs++
			return client
		}
		// Shutting down: its hook sends its own Release.
	}
	ent := &importEntry{id: id, wireRefs: 1}
	ent.hook = &importClient{c: c, ent: ent}
	var client capnp.Client
	if promise {
		client, ent.resolver = capnp.NewPromisedClient(ent.hook)
	} else {
		client = capnp.NewClient(ent.hook)
	}
	ent.weak = client.WeakRef()
	c.imports[id] = ent
	return client
}

// receiveCaps turns the descriptors of a payload into clients, references
// the caller owns. On error, the caller releases the clients returned
// (those made before the bad descriptor) once it has released mu. Called
// with mu held.
func (c *Conn) receiveCaps(ds []capDesc) ([]capnp.Client, error) {
	if len(ds) == 0 {
		return nil, nil
	}
	caps := make([]capnp.Client, len(ds))
	for i, d := range ds {
		client, err := c.receiveCapLocked(d)
		if err != nil {
			return caps[:i], fmt.Errorf("cap %d: %w", i, err)
		}
		caps[i] = client
	}
	return caps, nil
}

// releaseAll releases clients (not with mu held).
func releaseAll(cs []capnp.Client) {
	for _, c := range cs {
		c.Release()
	}
}

// receiveCapLocked turns one descriptor into a client. Called with mu held.
func (c *Conn) receiveCapLocked(d capDesc) (capnp.Client, error) {
	switch d.which {
	case rpccp.CapDescriptor_Which_none:
		return capnp.Client{}, nil
	case rpccp.CapDescriptor_Which_senderHosted:
		return c.importLocked(d.id, false), nil
	case rpccp.CapDescriptor_Which_senderPromise:
		return c.importLocked(d.id, true), nil
	case rpccp.CapDescriptor_Which_receiverHosted:
		e, ok := c.exports.get(d.id)
		if !ok {
			return capnp.Client{}, fmt.Errorf("receiverHosted %d: this side has no export %d", d.id, d.id)
		}
		return e.client.AddRef(), nil
	case rpccp.CapDescriptor_Which_receiverAnswer:
		a := c.answers[d.ans.id]
		if a == nil {
			return capnp.Client{}, fmt.Errorf("receiverAnswer: this side has no answer %d", d.ans.id)
		}
		return c.answerCapLocked(a, d.ans.transform), nil
	}
	return capnp.Client{}, fmt.Errorf("cap descriptor of kind %d", d.which)
}

// answerCapLocked returns the capability at transform in a's results: the
// capability itself if a has returned, else a promise that calls wait on
// in a's pipeline. Called with mu held.
func (c *Conn) answerCapLocked(a *answer, transform []capnp.PipelineOp) capnp.Client {
	if a.tailQ != nil {
		return capnp.NewClient(&questionPipeHook{q: a.tailQ, transform: transform})
	}
	if a.returned {
		if a.err != nil {
			return capnp.ErrorClient(a.err)
		}
		if a.kept == nil && !a.redirect {
			return capnp.ErrorClient(errNoCaps)
		}
		client, err := capAt(a.content, transform)
		if err != nil {
			return capnp.ErrorClient(err)
		}
		return client
	}
	h := &answerPipeHook{a: a, transform: transform}
	client, resolver := capnp.NewPromisedClient(h)
	a.waiters = append(a.waiters, capWaiter{resolver: resolver, transform: transform, hook: h})
	return client
}

// answerPipeHook is a capability in the results of an answer of this side
// that has not returned: calls wait in the answer's pipeline. Once the
// answer returns, before its promise is fulfilled, calls go straight to
// the capability the results hold (or fail with the call's error): the
// peer may finish with the answer as soon as it has the Return, and a
// call made meanwhile must not find the results gone (as C++, the
// capability outlives the answer's table entry).
type answerPipeHook struct {
	a         *answer
	transform []capnp.PipelineOp
	// Under Conn.mu: set by the answer's Return.
	returned bool
	target   capnp.Client // a reference of the hook's, released by Shutdown
	err      error
}

// resolvedLocked records what the capability resolved to. Called with mu
// held; target is a reference the hook takes over.
func (h *answerPipeHook) resolvedLocked(target capnp.Client, err error) {
	h.returned, h.target, h.err = true, target, err
}

// resolution returns the capability's target once its answer returned (a
// new reference), or ok false while it has not.
func (h *answerPipeHook) resolution() (target capnp.Client, err error, ok bool) {
	c := h.a.c
	c.mu.Lock()
	defer c.mu.Unlock()
	if !h.returned {
		return capnp.Client{}, nil, false
	}
	if h.err != nil {
		return capnp.Client{}, h.err, true
	}
	return h.target.AddRef(), nil, true
}

func (h *answerPipeHook) Send(ctx context.Context, s capnp.Send) (*capnp.Answer, capnp.ReleaseFunc) {
	if target, err, ok := h.resolution(); ok {
		if err != nil {
			return capnp.ErrorAnswer(s.Method, err), func() {}
		}
		defer target.Release()
		return target.SendCall(ctx, s)
	}
	lc, err := newLocalCall(s)
	if err != nil {
		return capnp.ErrorAnswer(s.Method, failed(err)), func() {}
	}
	h.recv(ctx, lc.recv())
	return lc.p.Answer(), lc.release
}

func (h *answerPipeHook) Recv(ctx context.Context, r capnp.Recv) capnp.PipelineCaller {
	if target, err, ok := h.resolution(); ok {
		if err != nil {
			r.Reject(err)
			return nil
		}
		defer target.Release()
		return target.RecvCall(ctx, r)
	}
	h.recv(ctx, r)
	return unpipelinable{}
}

// recv delivers r through the answer's pipeline, or, if the results went
// between the caller's look at the resolution and now (the answer returned
// and the peer finished with it), to what the capability resolved to.
func (h *answerPipeHook) recv(ctx context.Context, r capnp.Recv) {
	if h.a.pipe.recvUnlessForgotten(ctx, h.transform, r) {
		return
	}
	// forget runs after the Return, which recorded the resolution.
	target, err, _ := h.resolution()
	if err != nil {
		r.Reject(err)
		return
	}
	if !target.IsValid() {
		r.Reject(errResultsGone)
		return
	}
	target.RecvCall(ctx, r)
	target.Release()
}

func (h *answerPipeHook) Brand() capnp.Brand { return capnp.Brand{Value: h} }

// Shutdown releases the hook's reference to its target.
func (h *answerPipeHook) Shutdown() {
	c := h.a.c
	c.mu.Lock()
	t := h.target
	h.target = capnp.Client{}
	c.mu.Unlock()
	t.Release()
}
func (h *answerPipeHook) String() string {
	return fmt.Sprintf("capnshm: results of answer %d", h.a.id)
}

// questionPipeHook is a capability in the results of one of this side's
// questions: calls are pipelined on it.
type questionPipeHook struct {
	q         *question
	transform []capnp.PipelineOp
}

func (h *questionPipeHook) Send(ctx context.Context, s capnp.Send) (*capnp.Answer, capnp.ReleaseFunc) {
	return h.q.PipelineSend(ctx, h.transform, s)
}

func (h *questionPipeHook) Recv(ctx context.Context, r capnp.Recv) capnp.PipelineCaller {
	return h.q.PipelineRecv(ctx, h.transform, r)
}

func (h *questionPipeHook) Brand() capnp.Brand { return capnp.Brand{Value: h} }
func (h *questionPipeHook) Shutdown()          {}
func (h *questionPipeHook) String() string {
	return fmt.Sprintf("capnshm: results of question %d", h.q.id)
}

// Send makes a call on the imported capability.
func (ic *importClient) Send(ctx context.Context, s capnp.Send) (*capnp.Answer, capnp.ReleaseFunc) {
	return ic.c.call(ctx, callTarget{importID: ic.ent.id}, s)
}

// Recv forwards a call received here to the imported capability: a tail
// call when it came from the peer itself (see forward).
func (ic *importClient) Recv(ctx context.Context, r capnp.Recv) capnp.PipelineCaller {
	return ic.c.forward(ctx, callTarget{importID: ic.ent.id}, r, nil)
}

// Brand identifies the hook as this connection's import.
func (ic *importClient) Brand() capnp.Brand { return capnp.Brand{Value: ic} }

// Shutdown releases the import: one Release for every descriptor counted.
func (ic *importClient) Shutdown() {
	c := ic.c
	c.mu.Lock()
	ent := ic.ent
	if c.imports[ent.id] == ent {
		delete(c.imports, ent.id)
	}
	n := ent.wireRefs
	ent.wireRefs = 0
	if c.closing || n == 0 {
		c.mu.Unlock()
		return
	}
	flush := false
	if om, rm, err := c.newMessage(); err == nil {
		if rel, err := rm.NewRelease(); err == nil {
			rel.SetId(ent.id)
			rel.SetReferenceCount(n)
			flush = c.out.push(om, nil)
		} else {
			om.Release()
		}
	}
	c.mu.Unlock()
	if flush {
		c.out.handOff()
	}
}

func (ic *importClient) String() string { return fmt.Sprintf("capnshm import %d", ic.ent.id) }

// fail ends an import of a connection that ended: a promise fails.
func (ent *importEntry) fail() {
	if ent.resolver != nil {
		ent.resolver.Reject(disconnected(ent.hook.c.err))
	}
}

// forward sends the peer a call received here (r) for tgt, one of its
// capabilities, and returns the PipelineCaller for calls pipelined on it.
// When r's Returner is an answer of this connection (the peer called a
// capability of this side that is, or resolved to, one of its own) and the
// peer takes tail calls (peerTakesTailCalls), the call is one: it goes
// back with sendResultsTo.yourself and the answer's Return says
// takeFromOtherQuestion, so the results stay with the peer. Otherwise the
// results come back here and are copied into r's Returner. late, when a
// question in tgt has returned meanwhile, gives the capability to deliver
// r to instead.
func (c *Conn) forward(ctx context.Context, tgt callTarget, r capnp.Recv, late func() (capnp.Client, error)) capnp.PipelineCaller {
	if late == nil && tgt.q != nil {
		q, transform := tgt.q, tgt.transform
		late = func() (capnp.Client, error) { return q.resultCap(transform) }
	}
	if a, ok := r.Returner.(*answer); ok && a.c == c && !a.redirect && c.peerTakesTailCalls() {
		return c.tailCall(ctx, tgt, a, r, late)
	}
	q := &question{c: c, method: r.Method}
	q.done = func(ptr capnp.Ptr, err error) { copyResults(r, ptr, err, q) }
	args := r.Args
	err := c.sendCall(ctx, q, tgt, capnp.Send{Method: r.Method}, &sendOpts{args: &args})
	if err != nil {
		if late != nil && errors.Is(err, errLateTarget) {
			if target, lerr := late(); lerr == nil {
				// r goes there whole, its params still held.
				defer target.Release()
				return target.RecvCall(ctx, r)
			}
		}
		r.ReleaseArgs()
		r.Returner.PrepareReturn(err)
		r.Returner.Return()
		r.Returner.ReleaseResults()
		return nil
	}
	r.ReleaseArgs() // copied into the call
	forwarded.back.Add(1)
	return q
}

// peerTakesTailCalls reports whether the peer said in its HELLO that it
// takes tail calls (FeatureTailCalls: capnshm's engine over shared
// memory). No other peer gets one: go-capnp v3.0.1-alpha.2 ends the
// connection on takeFromOtherQuestion, and over a socket this side cannot
// tell it from C++, which takes either.
func (c *Conn) peerTakesTailCalls() bool { return c.shm != nil && c.shm.ep.peerTailCalls }

// forwarded counts the calls forward sent, for tests: tail calls, and
// calls whose results come back here.
var forwarded struct{ tail, back atomic.Uint64 }

// copyResults completes a forwarded call: the results (or error) of q go
// into r's Returner, then q is released.
func copyResults(r capnp.Recv, ptr capnp.Ptr, err error, q *question) {
	if err == nil {
		// The peer's results: checked before go-capnp copies them, in
		// memory the peer cannot change in between.
		var cerr error
		if ptr, cerr = privateContent(ptr, returnResults); cerr == nil {
			cerr = checkCopyable(ptr)
		}
		if cerr != nil {
			err = failed(fmt.Errorf("capnshm: the results cannot be copied to the caller: %w", cerr))
		}
	}
	if err == nil {
		src := ptr.Struct()
		var dst capnp.Struct
		if dst, err = r.Returner.AllocResults(src.Size()); err == nil {
			err = dst.CopyFrom(src)
		}
	}
	r.Returner.PrepareReturn(err)
	r.Returner.Return()
	r.Returner.ReleaseResults()
	q.release()
}

// tailCall forwards the peer's call a (r) back to the peer's own capability
// tgt: a Call with sendResultsTo.yourself, then a's Return with
// takeFromOtherQuestion naming that call.
func (c *Conn) tailCall(ctx context.Context, tgt callTarget, a *answer, r capnp.Recv, late func() (capnp.Client, error)) capnp.PipelineCaller {
	q := &question{c: c, method: r.Method, kind: kindTail}
	q.done = func(capnp.Ptr, error) { q.release() }
	args := r.Args
	err := c.sendCall(ctx, q, tgt, capnp.Send{Method: r.Method}, &sendOpts{
		args: &args,
		afterLocked: func() bool {
			// Under mu, right after the call is pushed: the Return that
			// hands its results over.
			a.tailQ = q
			a.returned = true
			om, rm, err := c.newMessage()
			if err != nil {
				return false
			}
			ret, err := rm.NewReturn()
			if err != nil {
				om.Release()
				return false
			}
			ret.SetAnswerId(a.id)
			ret.SetReleaseParamCaps(false)
			ret.SetTakeFromOtherQuestion(q.id)
			if a.finished {
				c.forgetAnswerLocked(a)
				c.finishLocked(q)
			}
			return c.out.push(om, nil)
		},
	})
	if err != nil {
		if late != nil && errors.Is(err, errLateTarget) {
			if target, lerr := late(); lerr == nil {
				// r goes there whole, its params still held.
				defer target.Release()
				return target.RecvCall(ctx, r)
			}
		}
		r.ReleaseArgs()
		r.Returner.PrepareReturn(err)
		r.Returner.Return()
		r.Returner.ReleaseResults()
		return nil
	}
	r.ReleaseArgs() // copied into the call
	forwarded.tail.Add(1)
	// The pipeline of a now is the tail call's: calls pipelined on a before
	// the peer saw the Return, and later ones, follow it there.
	a.pipe.redirect(func(ctx context.Context, transform []capnp.PipelineOp, r capnp.Recv) {
		c.forward(ctx, callTarget{q: q, transform: transform}, r, nil)
	})
	return q
}
