package rpc

import (
	"context"
	"errors"
	"fmt"
	"math"

	capnp "capnproto.org/go/capnp/v3"
	"capnproto.org/go/capnp/v3/rpc/transport"
	rpccp "capnproto.org/go/capnp/v3/std/capnp/rpc"
)

// Questions: the calls (and bootstraps) this side sends.
//
// A question's ID is reusable once its Return has arrived and its Finish
// has been sent, or at once when the Return said noFinishNeeded (the
// callee has forgotten the answer already: its results hold no
// capability, so nothing can be pipelined on them; capnshm and C++ 1.0
// say so). Finish is sent when the application releases the answer
// (the ReleaseFunc of the call), when the call's context ends first (a
// cancellation), or, for a bootstrap, once it has resolved; never before
// the calls pipelined on the question have been pushed to the sender, so
// that no call on a finished question ever leaves (go-capnp #626). A call
// pipelined on a question that has returned goes straight to the resolved
// capability.
//
// State changes happen under Conn.mu; the answer's capnp.Promise is
// resolved outside it.
type question struct {
	c      *Conn
	id     uint32
	method capnp.Method
	p      *capnp.Promise // nil for an internal question (done is set)
	// done receives the result of an internal question (a call forwarded
	// for a local Recv) instead of p.
	done func(capnp.Ptr, error)
	kind questionKind

	// Under Conn.mu.
	returned   bool
	finished   bool                          // a Finish was pushed
	released   bool                          // the application released the answer
	resolved   bool                          // p is resolved, or being resolved
	settling   bool                          // p is being resolved: its results must stay
	paramExp   []*export                     // exports made for the params, one reference each
	paths      map[string][]capnp.PipelineOp // transforms calls were pipelined on, for embargoes
	results    transport.IncomingMessage     // the Return, until released
	content    capnp.Ptr                     // the results' content
	err        error                         // the call failed (its Return's exception)
	resolvedTo capnp.Client                  // a bootstrap's capability, for late pipelined calls
	takenMsg   *retainedMsg                  // takeFromOtherQuestion: the message of the results taken
	watch      *ctxWatch                     // the watch of the call's context, while it is on its list
	wprev      *question                     // the watch's list
	wnext      *question

	// callMsg is room for the Call message in the question itself (a
	// call rebuilt for a late target gets a message of its own).
	callMsg embeddedMsg
	// retIn is room for the Return, offered to the shared-memory
	// transport (link_rooms.go) while the call is in flight: a small
	// Return is built there, and kept as the results, without an
	// allocation of its own. Set by newCall over shared memory.
	retIn *inMsg
}

// newCall returns a question for a call of m: over shared memory one
// allocated with room for its Return (retIn), which a stream transport
// has no use for.
func (c *Conn) newCall(m capnp.Method) *question {
	if c.shm == nil {
		return &question{c: c, method: m}
	}
	qr := &struct {
		question
		ret inMsg
	}{question: question{c: c, method: m}}
	qr.retIn = &qr.ret
	return &qr.question
}

type questionKind uint8

const (
	kindCall      questionKind = iota
	kindBootstrap              // a Bootstrap: released once resolved
	kindTail                   // sendResultsTo.yourself: results go to the peer's answer
)

// callTarget is where a call goes: an import (importedCap) or a question's
// pipelined results (promisedAnswer).
type callTarget struct {
	importID  uint32
	q         *question // promisedAnswer when set
	transform []capnp.PipelineOp
}

// bootstrap sends a Bootstrap and returns the promised capability.
func (c *Conn) bootstrap(ctx context.Context) capnp.Client {
	om, rm, err := c.newMessage()
	if err != nil {
		return capnp.ErrorClient(disconnected(err))
	}
	b, err := rm.NewBootstrap()
	if err != nil {
		om.Release()
		return capnp.ErrorClient(failed(fmt.Errorf("capnshm: bootstrap: %w", err)))
	}
	q := &question{c: c, method: bootstrapMethod, kind: kindBootstrap}
	q.p = capnp.NewPromise(q.method, q, nil)
	client := q.p.Answer().Client().AddRef()
	c.mu.Lock()
	if c.closing {
		err := c.closedErrLocked()
		c.mu.Unlock()
		om.Release()
		client.Release()
		return capnp.ErrorClient(err)
	}
	q.id = c.questions.add(q)
	b.SetQuestionId(q.id)
	c.watchContext(ctx, q)
	flush := c.out.push(om, nil)
	c.mu.Unlock()
	if flush {
		c.out.flush()
	}
	return client
}

// bootstrapMethod names a bootstrap in errors.
var bootstrapMethod = capnp.Method{InterfaceName: "capnshm", MethodName: "bootstrap"}

// call sends a call of s to tgt and returns its answer.
func (c *Conn) call(ctx context.Context, tgt callTarget, s capnp.Send) (*capnp.Answer, capnp.ReleaseFunc) {
	if err := ctx.Err(); err != nil {
		// Nothing is sent for a call whose context has ended already.
		return capnp.ErrorAnswer(s.Method, failed(context.Cause(ctx))), func() {}
	}
	q := c.newCall(s.Method)
	q.p = capnp.NewPromise(s.Method, q, nil)
	if err := c.sendCall(ctx, q, tgt, s, &sendOpts{inline: true}); err != nil {
		return capnp.ErrorAnswer(s.Method, err), func() {}
	}
	return q.p.Answer(), q.release
}

// sendOpts are the variants of sendCall.
type sendOpts struct {
	// args, if set, is copied as the params instead of calling PlaceArgs
	// (a forwarded call).
	args *capnp.Struct
	// inline: the caller may send on its own goroutine (an application
	// call); else the sending goroutine does (a call forwarded while
	// receiving).
	inline bool
	// afterLocked runs under mu right after the call is pushed, and
	// reports whether it pushed onto an idle queue.
	afterLocked func() bool
	// late, if set, gets the params already built when the call's
	// question returned meanwhile (errLateTarget), before they are
	// released: a call must not run its PlaceArgs twice (it may have side
	// effects), so the caller sends a copy of these to the resolved
	// capability.
	late func(params capnp.Struct)
}

// sendCall builds the call of s to tgt in a transport message (the
// application's PlaceArgs writes the params there, with no lock held),
// records q and sends the call. It returns an error, and sends nothing,
// when the call cannot be made: errLateTarget if tgt's question returned
// meanwhile.
func (c *Conn) sendCall(ctx context.Context, q *question, tgt callTarget, s capnp.Send, o *sendOpts) error {
	om, rm, err := c.newMessageIn(&q.callMsg)
	if err != nil {
		return disconnected(err)
	}
	call, err := rm.NewCall()
	if err == nil {
		call.SetInterfaceId(s.Method.InterfaceID)
		call.SetMethodId(s.Method.MethodID)
		if q.kind == kindTail {
			call.SendResultsTo().SetYourself()
		}
		err = c.placeParams(call, s, o.args)
	}
	if err != nil {
		err = allocCause(om, err)
		om.Release()
		return failed(err)
	}
	params, _ := call.Params()
	exps, err := c.describeCaps(params, params.Message().CapTable())
	if err != nil {
		om.Release()
		c.dropExports(exps)
		return failed(err)
	}
	if err := c.checkSize(rm, q.method); err != nil {
		om.Release()
		c.dropExports(exps)
		return err
	}
	c.mu.Lock()
	if c.closing {
		err := c.closedErrLocked()
		c.mu.Unlock()
		om.Release()
		c.dropExports(exps)
		return err
	}
	var lateRef capnp.Client // released after mu is, on every path
	defer func() { lateRef.Release() }()
	if tgt.q != nil && (tgt.q.finished || tgt.q.returned) {
		// The question returned while these params were being built. When
		// the capability it resolved to is one of the peer's, the call
		// goes there as built, no copy; otherwise the caller sends it to
		// the resolved capability.
		id, ref, ok := c.lateImportLocked(tgt)
		lateRef = ref
		if ok {
			tgt = callTarget{importID: id}
		}
	}
	if tgt.q != nil && (tgt.q.finished || tgt.q.returned) {
		c.mu.Unlock()
		c.dropExports(exps)
		if o.late != nil {
			content, _ := params.Content()
			o.late(content.Struct())
		}
		om.Release()
		return errLateTarget
	}
	if err := c.writeTarget(call, tgt); err != nil {
		c.mu.Unlock()
		om.Release()
		c.dropExports(exps)
		return failed(err)
	}
	q.paramExp = exps
	q.id = c.questions.add(q)
	call.SetQuestionId(q.id)
	if q.retIn != nil {
		c.shm.offerRoom(q.id, q.retIn)
	}
	if tgt.q != nil {
		tgt.q.pipelined(tgt.transform)
	} else if ent := c.imports[tgt.importID]; ent != nil {
		ent.called = true
	}
	if q.p != nil {
		c.watchContext(ctx, q)
	}
	flush := c.out.push(om, q)
	if o.afterLocked != nil && o.afterLocked() {
		flush = true
	}
	c.mu.Unlock()
	switch {
	case flush && o.inline:
		c.out.flush()
	case flush:
		c.out.handOff()
	}
	return nil
}

// lateImportLocked returns, when tgt's question has returned and the
// capability at tgt's transform in its results is an import of this
// connection, that import's ID and a reference that keeps it (release it
// once mu is released). Called with mu held.
func (c *Conn) lateImportLocked(tgt callTarget) (uint32, capnp.Client, bool) {
	ref, err := tgt.q.resultCapLocked(tgt.transform)
	if err != nil || !ref.IsValid() {
		return 0, ref, false
	}
	snap := ref.Snapshot()
	ic, ok := snap.Brand().Value.(*importClient)
	snap.Release()
	if !ok || ic.c != c || c.imports[ic.ent.id] != ic.ent {
		return 0, ref, false
	}
	return ic.ent.id, ref, true
}

// errLateTarget: a pipelined call's question returned while the call was
// being built; sendCall sent nothing.
var errLateTarget = errors.New("capnshm: the question returned")

// placeParams fills the call's params: a copy of args, or what s.PlaceArgs
// writes into a struct of s.ArgsSize.
func (c *Conn) placeParams(call rpccp.Call, s capnp.Send, args *capnp.Struct) error {
	p, err := call.NewParams()
	if err != nil {
		return err
	}
	if args != nil {
		// The peer's params, forwarded: checked before go-capnp copies
		// them, in memory the peer cannot change in between.
		content, err := privateContent(args.ToPtr(), callParams)
		if err == nil {
			err = checkCopyable(content)
		}
		if err != nil {
			return fmt.Errorf("capnshm: the params cannot be forwarded: %w", err)
		}
		return p.SetContent(content)
	}
	st, err := capnp.NewStruct(p.Segment(), s.ArgsSize)
	if err != nil {
		return err
	}
	if err := p.SetContent(st.ToPtr()); err != nil {
		return err
	}
	if s.PlaceArgs != nil {
		if err := s.PlaceArgs(st); err != nil {
			return fmt.Errorf("place args: %w", err)
		}
	}
	return nil
}

// writeTarget writes tgt into the call. Called with mu held.
func (c *Conn) writeTarget(call rpccp.Call, tgt callTarget) error {
	t, err := call.NewTarget()
	if err != nil {
		return err
	}
	return writeMsgTarget(t, tgt)
}

func writeMsgTarget(t rpccp.MessageTarget, tgt callTarget) error {
	if tgt.q == nil {
		t.SetImportedCap(tgt.importID)
		return nil
	}
	pa, err := t.NewPromisedAnswer()
	if err != nil {
		return err
	}
	return writePromised(pa, tgt.q.id, tgt.transform)
}

func writePromised(pa rpccp.PromisedAnswer, id uint32, transform []capnp.PipelineOp) error {
	pa.SetQuestionId(id)
	if len(transform) == 0 {
		return nil
	}
	ops, err := pa.NewTransform(int32(len(transform)))
	if err != nil {
		return err
	}
	for i, op := range transform {
		ops.At(i).SetGetPointerField(op.Field)
	}
	return nil
}

// checkSize refuses a message larger than the peer accepts.
func (c *Conn) checkSize(rm rpccp.Message, m capnp.Method) error {
	if c.peerMax == 0 {
		return nil
	}
	total, err := rm.Message().TotalSize()
	if err != nil {
		return failed(err)
	}
	if total > c.peerMax {
		return failed(fmt.Errorf("%w: the call is %d bytes, over the %d bytes the peer accepts", ErrTooLarge, total, c.peerMax))
	}
	return nil
}

// methodName names a method in errors.
func methodName(m capnp.Method) string { return m.String() }

// pipelined records that a call was pipelined on transform. Called with mu
// held.
func (q *question) pipelined(transform []capnp.PipelineOp) {
	if q.paths == nil {
		q.paths = make(map[string][]capnp.PipelineOp, 1)
	}
	if _, ok := q.paths[pathOf(transform)]; !ok {
		q.paths[pathOf(transform)] = transform
	}
}

// cancel fails q with ctx's error, if it has not returned, and sends
// Finish: the callee may cancel the call.
func (q *question) cancel(ctx context.Context) {
	c := q.c
	c.mu.Lock()
	if q.returned || q.resolved || c.closing {
		c.mu.Unlock()
		return
	}
	q.resolved = true
	flush := c.finishLocked(q)
	c.mu.Unlock()
	if flush {
		c.out.flush()
	}
	q.settle(capnp.Ptr{}, failed(context.Cause(ctx)))
}

// sendFailed fails a call that the transport refused to send (it was over
// the peer's limit, or go-capnp's late-call guard refused it).
func (q *question) sendFailed(err error) {
	c := q.c
	c.mu.Lock()
	if q.resolved || c.closing {
		c.mu.Unlock()
		return
	}
	q.resolved, q.returned, q.finished = true, true, true
	c.questions.remove(q.id)
	exps := q.paramExp
	q.paramExp = nil
	c.mu.Unlock()
	c.dropExports(exps)
	q.settle(capnp.Ptr{}, failed(err))
}

// finishLocked pushes q's Finish, once, and frees q if it has returned. It
// reports whether the caller must flush. Called with mu held.
func (c *Conn) finishLocked(q *question) bool {
	if q.finished {
		return false
	}
	q.finished = true
	if q.returned {
		c.questions.remove(q.id)
	}
	om, rm, err := c.newMessage()
	if err != nil {
		return false // the connection is ending
	}
	f, err := rm.NewFinish()
	if err != nil {
		om.Release()
		return false
	}
	f.SetQuestionId(q.id)
	// This side releases the results' capabilities itself (each is an
	// import with its own count), as C++ does.
	f.SetReleaseResultCaps(false)
	f.SetRequireEarlyCancellationWorkaround(false)
	return c.out.push(om, nil)
}

// release is the application's ReleaseFunc of a call's answer: the results
// go back to the peer, the question's Finish is sent. Before the Return,
// it cancels the call.
func (q *question) release() { q.releaseOn(false) }

// releaseOn is release; on the receiving goroutine (reader), which must
// not send, the flusher role goes to the sending goroutine.
func (q *question) releaseOn(reader bool) {
	c := q.c
	c.mu.Lock()
	if q.released {
		c.mu.Unlock()
		return
	}
	q.released = true
	var in transport.IncomingMessage
	var taken *retainedMsg
	if !q.settling {
		// (While settling, settle releases them once it is done.)
		in, q.results = q.results, nil
		taken, q.takenMsg = q.takenMsg, nil
	}
	resolved := q.resolved
	flush := false
	if !c.closing {
		flush = c.finishLocked(q)
	}
	c.unwatchLocked(q)
	c.mu.Unlock()
	switch {
	case flush && reader:
		c.out.handOff()
	case flush:
		c.out.flush()
	}
	if in != nil {
		in.Release()
	}
	if taken != nil {
		taken.Release()
	}
	if resolved && q.p != nil {
		q.p.ReleaseClients()
	}
}

// settle resolves q with its result, outside mu, and finishes the release
// of an answer the application released before it resolved.
func (q *question) settle(ptr capnp.Ptr, err error) {
	if q.done != nil {
		q.done(ptr, err)
		return
	}
	q.p.Resolve(ptr, err)
	c := q.c
	c.mu.Lock()
	q.settling = false
	released := q.released
	in, taken := q.results, q.takenMsg
	if released {
		q.results, q.takenMsg = nil, nil
	}
	c.mu.Unlock()
	if released {
		if in != nil {
			in.Release()
		}
		if taken != nil {
			taken.Release()
		}
		q.p.ReleaseClients()
	}
}

// fail fails q because the connection ended (its tables are gone).
func (q *question) fail(err error) {
	c := q.c
	c.mu.Lock()
	c.unwatchLocked(q)
	settle := !q.resolved
	q.resolved = true
	rt := q.resolvedTo
	q.resolvedTo = capnp.Client{}
	c.mu.Unlock()
	rt.Release()
	if settle {
		q.settle(capnp.Ptr{}, err)
	}
}

// PipelineSend makes a call on a capability in q's results before (or
// while) they arrive: a Call on promisedAnswer(q, transform). Once q has
// returned, the call goes to the capability itself.
func (q *question) PipelineSend(ctx context.Context, transform []capnp.PipelineOp, s capnp.Send) (*capnp.Answer, capnp.ReleaseFunc) {
	c := q.c
	c.mu.Lock()
	returned := q.finished || q.returned
	c.mu.Unlock()
	if returned {
		// Nothing is pipelined on a question that has returned: the call
		// goes to the capability itself.
		target, err := q.resultCap(transform)
		if err != nil {
			return capnp.ErrorAnswer(s.Method, err), func() {}
		}
		defer target.Release()
		return target.SendCall(ctx, s)
	}
	nq := &question{c: c, method: s.Method}
	nq.p = capnp.NewPromise(s.Method, nq, nil)
	var lateAns *capnp.Answer
	var lateRel capnp.ReleaseFunc
	err := c.sendCall(ctx, nq, callTarget{q: q, transform: transform}, s, &sendOpts{inline: true, late: func(params capnp.Struct) {
		// q returned while PlaceArgs ran: the params it wrote go, copied,
		// to the resolved capability.
		target, err := q.resultCap(transform)
		if err != nil {
			lateAns, lateRel = capnp.ErrorAnswer(s.Method, err), func() {}
			return
		}
		defer target.Release()
		// Copying reads the params whole, however large: no read limit.
		params.Message().ResetReadLimit(math.MaxUint64)
		lateAns, lateRel = target.SendCall(ctx, capnp.Send{
			Method:    s.Method,
			ArgsSize:  params.Size(),
			PlaceArgs: func(dst capnp.Struct) error { return dst.CopyFrom(params) },
		})
	}})
	switch {
	case err == nil:
		return nq.p.Answer(), nq.release
	case errors.Is(err, errLateTarget) && lateAns != nil:
		nq.p.Reject(err) // never sent: nothing waits on it
		return lateAns, lateRel
	}
	return capnp.ErrorAnswer(s.Method, err), func() {}
}

// PipelineRecv delivers a call received here (r) to a capability in q's
// results: it is forwarded to the peer pipelined on q.
func (q *question) PipelineRecv(ctx context.Context, transform []capnp.PipelineOp, r capnp.Recv) capnp.PipelineCaller {
	return q.c.forward(ctx, callTarget{q: q, transform: transform}, r, func() (capnp.Client, error) { return q.resultCap(transform) })
}

// resultCap returns (a reference to) the capability at transform in q's
// results, for a call that was pipelined on q but reached it after its
// Return.
func (q *question) resultCap(transform []capnp.PipelineOp) (capnp.Client, error) {
	c := q.c
	c.mu.Lock()
	defer c.mu.Unlock()
	return q.resultCapLocked(transform)
}

// resultCapLocked is resultCap, with mu held.
func (q *question) resultCapLocked(transform []capnp.PipelineOp) (capnp.Client, error) {
	if q.resolvedTo.IsValid() && len(transform) == 0 {
		return q.resolvedTo.AddRef(), nil
	}
	if q.err != nil {
		return capnp.Client{}, q.err // the call failed: so does what was pipelined on it
	}
	if q.results == nil {
		return capnp.Client{}, failed(fmt.Errorf("capnshm: a call pipelined on the results of %s reached them after they were released", methodName(q.method)))
	}
	return capAt(q.content, transform)
}

// capAt returns a reference to the capability at transform in content.
func capAt(content capnp.Ptr, transform []capnp.PipelineOp) (capnp.Client, error) {
	p, err := capnp.Transform(content, transform)
	if err != nil {
		return capnp.Client{}, failed(err)
	}
	iface := p.Interface()
	if p.IsValid() && !iface.IsValid() {
		return capnp.Client{}, failed(errors.New("capnshm: pipelined call: the field is not a capability"))
	}
	return iface.Client().AddRef(), nil
}

// handleReturn handles the Return of one of this side's questions.
func (c *Conn) handleReturn(e *envelope, in transport.IncomingMessage) {
	c.mu.Lock()
	if c.closing {
		c.mu.Unlock()
		in.Release()
		return
	}
	q, ok := c.questions.get(e.id)
	if !ok {
		c.mu.Unlock()
		in.Release()
		c.abortf("Return for question %d, which this side never asked or has already finished", e.id)
		return
	}
	if q.returned {
		c.mu.Unlock()
		in.Release()
		c.abortf("a second Return for question %d", e.id)
		return
	}
	q.returned = true
	if q.retIn != nil {
		// Its room was used (in is there) or is no longer wanted.
		c.shm.withdrawRoom(q.id, q.retIn)
	}
	if e.noFinish {
		// The callee has forgotten the answer: no Finish will be sent,
		// and the ID is free once the Return is handled.
		q.finished = true
	}
	var relExp []*export
	if e.releaseCaps {
		relExp, q.paramExp = q.paramExp, nil
	}
	var (
		ptr      capnp.Ptr
		err      error
		keep     bool // in stays with q as its results
		flush    bool
		protoErr error
	)
	switch e.ret {
	case rpccp.Return_Which_results:
		if q.kind == kindTail {
			protoErr = fmt.Errorf("results in the Return of question %d, a tail call (sendResultsTo.yourself)", e.id)
			break
		}
		var caps []capnp.Client
		caps, protoErr = c.receiveCaps(e.payload.caps)
		if protoErr != nil {
			defer releaseAll(caps) // after the unlock below
			break
		}
		var f bool
		caps, f = c.embargoResults(q, e.payload.content, e.payload.caps, caps)
		flush = flush || f
		ct := in.Message().Message().CapTable()
		ct.Reset(caps...)
		ptr, keep = e.payload.content, true
		q.content = ptr
	case rpccp.Return_Which_exception:
		if q.kind == kindTail {
			protoErr = fmt.Errorf("an exception in the Return of question %d, a tail call (sendResultsTo.yourself)", e.id)
			break
		}
		err = e.exception
	case rpccp.Return_Which_canceled:
		err = failed(errors.New("capnshm: the peer canceled the call"))
	case rpccp.Return_Which_resultsSentElsewhere:
		if q.kind != kindTail {
			protoErr = fmt.Errorf("resultsSentElsewhere in the Return of question %d, which was not a tail call", e.id)
		}
	case rpccp.Return_Which_takeFromOtherQuestion:
		a := c.answers[e.takeFrom]
		switch {
		case a == nil:
			protoErr = fmt.Errorf("the Return of question %d takes the results of question %d, which this side was never asked", e.id, e.takeFrom)
		case !a.redirect:
			protoErr = fmt.Errorf("the Return of question %d takes the results of question %d, which did not ask for sendResultsTo.yourself", e.id, e.takeFrom)
		case a.taker != nil:
			protoErr = fmt.Errorf("the Return of question %d takes the results of question %d, which another question took already", e.id, e.takeFrom)
		default:
			// The results are that answer's, when it returns (perhaps
			// it has): it settles q then.
			a.taker = q
			var ok bool
			if q.takenMsg, ptr, err, ok = a.takenLocked(); !ok {
				if q.finished {
					c.questions.remove(q.id)
				}
				c.mu.Unlock()
				in.Release()
				c.dropExports(relExp)
				return
			}
		}
	}
	if protoErr != nil {
		c.mu.Unlock()
		in.Release()
		c.dropExports(relExp)
		c.abortErr(protoErr)
		return
	}
	if q.kind == kindBootstrap && keep {
		q.resolvedTo, err = capAt(ptr, nil)
		if err != nil {
			q.resolvedTo = capnp.Client{}
		}
	}
	if q.finished {
		c.questions.remove(q.id)
	}
	q.err = err
	settle := !q.resolved // not if its context ended first
	if keep && !q.released && settle {
		q.results = in
		in = nil
	}
	q.resolved = true
	q.settling = settle
	c.unwatchLocked(q)
	c.mu.Unlock()
	if flush {
		c.out.handOff()
	}
	c.dropExports(relExp)
	if settle {
		q.settle(ptr, err)
	}
	if in != nil {
		in.Release()
	}
	if q.kind == kindBootstrap {
		c.finishBootstrap(q)
	}
}

// finishBootstrap sends the Finish of a bootstrap once it has resolved:
// nothing else holds its answer. Its Return stays until the connection
// ends: go-capnp reads a resolved promise's results again whenever a call
// reaches it through its Answer, so releasing them would turn the
// capability into a null one under a late call.
func (c *Conn) finishBootstrap(q *question) {
	c.mu.Lock()
	q.released = true
	flush := false
	if !c.closing {
		flush = c.finishLocked(q)
		if q.results != nil {
			c.bootResults = append(c.bootResults, q.results)
			q.results = nil
		}
	}
	in := q.results
	q.results = nil
	c.mu.Unlock()
	if flush {
		c.out.handOff()
	}
	if in != nil {
		in.Release()
	}
}
