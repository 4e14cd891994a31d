package rpc

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	capnp "capnproto.org/go/capnp/v3"
	"capnproto.org/go/capnp/v3/rpc/transport"
	rpccp "capnproto.org/go/capnp/v3/std/capnp/rpc"
)

// Answers: the calls (and bootstraps) the peer sends to this side.
//
// An answer lives from its Call until both its Return has been sent and
// the peer's Finish has arrived; or, when its results hold no capability,
// until its Return is pushed: the Return says noFinishNeeded (rpc.capnp),
// which saves the peer a message and this side a wake-up per call. A peer
// that does not know the hint (C++ before 1.0, go-capnp) sends Finish
// anyway, and a Finish for an answer no longer in the table is ignored,
// as the specification and C++ do. Its handler runs through the target's
// ClientHook (a server.Server, most often, which runs its object's calls
// one at a time on its own goroutine): the answer is the call's
// capnp.Returner. The results are built in a transport message (over
// shared memory, in place in this side's pool) and kept after the Return
// for the calls the peer pipelines on them, until its Finish; results
// without capabilities are not kept, since nothing can be pipelined on
// them.
//
// Calls pipelined on an answer before its results exist wait in its
// pipeline and are delivered, in order, before the Return is sent, so that
// a call the peer makes later on the returned capability comes after them.
// A Finish that arrives before the Return cancels the handler's context
// only when no call waits on the answer.
type answer struct {
	c      *Conn
	id     uint32
	method capnp.Method
	ctx    context.Context
	cancel context.CancelFunc
	in     atomic.Pointer[incoming] // the Call's message (inBox), until ReleaseArgs
	inBox  incoming
	pipe   pipeline
	// redirect: sendResultsTo.yourself; the results wait for a Return of
	// this side's that takes them (takeFromOtherQuestion).
	redirect bool

	// Built by the handler's goroutine until Return; read-only after.
	rmu     sync.Mutex
	ret     transport.OutgoingMessage // the Return being built
	results capnp.Struct
	content capnp.Ptr // results' content, for pipelining and takers
	err     error     // the call failed
	exports []*export // made for the results' capabilities
	// retMsg is room for the Return in the answer itself (a Return
	// rebuilt, an exception after failed results, gets one of its own).
	retMsg embeddedMsg

	// onReader is set while the receiving goroutine runs code that may
	// call Return (a handler that fails at once, a bootstrap): Return then
	// hands the flusher role off instead of sending on that goroutine.
	onReader atomic.Bool

	// Under Conn.mu.
	returned   bool         // Return ran (the message is pushed, or not needed)
	finished   bool         // the peer's Finish arrived
	releaseRes bool         // that Finish released the results' capabilities
	kept       *retainedMsg // the results, while pipelined calls or a taker may need them
	taker      *question    // the question that takes these results
	tailQ      *question    // a tail call this answer's results come from
	abandoned  bool         // the connection ended
	waiters    []capWaiter  // promises of capabilities in the results, resolved at Return
}

// capWaiter is a promise of the capability at transform in an answer's
// results (the peer passed it back as receiverAnswer before the Return).
type capWaiter struct {
	resolver  capnp.Resolver[capnp.Client]
	transform []capnp.PipelineOp
	hook      *answerPipeHook // the promise's hook, told the target at Return
}

// errResultsGone is the error of a call that reaches an answer's results
// after the peer finished with them.
var errResultsGone = failed(errors.New("capnshm: call pipelined on results the peer has finished with"))

// incoming wraps an incoming message for atomic handover.
type incoming struct{ m transport.IncomingMessage }

// retainedMsg is an outgoing message with holders: the sender while it is
// queued, the answer until the peer's Finish, a taker until it releases
// its answer. The last Release releases the message.
type retainedMsg struct {
	transport.OutgoingMessage
	refs atomic.Int32
}

func (m *retainedMsg) retain() { m.refs.Add(1) }

func (m *retainedMsg) Release() {
	if m.refs.Add(-1) == 0 {
		m.OutgoingMessage.Release()
	}
}

// errNoCaps is the error of a call pipelined on results that hold no
// capability.
var errNoCaps = failed(errors.New("capnshm: call pipelined on results that hold no capability"))

// handleCall handles a Call: it records the answer and delivers the call
// to its target, or queues it on the answer it is pipelined on.
func (c *Conn) handleCall(e *envelope, in transport.IncomingMessage) {
	c.mu.Lock()
	if c.closing {
		c.mu.Unlock()
		in.Release()
		return
	}
	if c.answers[e.id] != nil {
		c.mu.Unlock()
		in.Release()
		c.abortf("call %d reuses the ID of question %d, which is still in use", e.id, e.id)
		return
	}
	caps, err := c.receiveCaps(e.payload.caps)
	if err != nil {
		c.mu.Unlock()
		releaseAll(caps)
		in.Release()
		c.abortErr(fmt.Errorf("call %d: %w", e.id, err))
		return
	}
	in.Message().Message().CapTable().Reset(caps...)
	a := c.newAnswerLocked(e.id, e.method)
	a.inBox.m = in
	a.in.Store(&a.inBox)
	a.redirect = e.resultsTo == rpccp.Call_sendResultsTo_Which_yourself
	r := capnp.Recv{Method: e.method, Args: e.payload.content.Struct(), ReleaseArgs: a.releaseArgs, Returner: a}
	if e.resultsTo == rpccp.Call_sendResultsTo_Which_thirdParty {
		c.mu.Unlock()
		r.Reject(unimplementedf("capnshm: sendResultsTo.thirdParty: three-party handoff is Level 3, and capnshm implements Level 1"))
		return
	}
	target, base, fwd, reject := c.callTargetLocked(e, a)
	c.mu.Unlock()
	a.onReader.Store(true)
	switch {
	case reject != nil:
		r.Reject(reject)
	case fwd != nil:
		c.forward(a.ctx, *fwd, r, nil)
	case base != nil:
		base.pipe.recv(a.ctx, e.target.transform, r)
	default:
		target.RecvCall(a.ctx, r)
	}
	a.onReader.Store(false)
}

// newAnswerLocked records a new answer. Called with mu held.
func (c *Conn) newAnswerLocked(id uint32, m capnp.Method) *answer {
	a := &answer{c: c, id: id, method: m}
	a.ctx, a.cancel = context.WithCancel(c.ctx)
	c.answers[id] = a
	return a
}

// callTargetLocked finds where a call goes: a capability (an export), the
// pipeline of the answer it is pipelined on (base), or the peer (fwd: the
// answer's results come from a tail call to it). reject is the error of a
// call on an unknown target, which fails that call alone (the protocol
// allows an abort; go-capnp v3.0.1-alpha.2 peers send calls on finished
// questions in a race, go-capnp #626). Called with mu held.
func (c *Conn) callTargetLocked(e *envelope, a *answer) (target capnp.Client, base *answer, fwd *callTarget, reject error) {
	if !e.target.promised {
		exp, ok := c.exports.get(e.target.id)
		if !ok {
			return capnp.Client{}, nil, nil, failed(fmt.Errorf("capnshm: call on export %d, which this side does not export (released, or never exported)", e.target.id))
		}
		return exp.client, nil, nil, nil
	}
	base = c.answers[e.target.id]
	switch {
	case base == nil || base == a:
		return capnp.Client{}, nil, nil, failed(fmt.Errorf("capnshm: call pipelined on question %d, which is finished or unknown here", e.target.id))
	case base.tailQ != nil:
		return capnp.Client{}, nil, &callTarget{q: base.tailQ, transform: e.target.transform}, nil
	}
	return capnp.Client{}, base, nil, nil
}

// releaseArgs is the Recv's ReleaseArgs: the params go back to the peer.
func (a *answer) releaseArgs() {
	if in := a.in.Swap(nil); in != nil {
		in.m.Release()
	}
}

// AllocResults allocates the results in a Return message of the
// transport: over shared memory, in this side's pool.
func (a *answer) AllocResults(sz capnp.ObjectSize) (capnp.Struct, error) {
	a.rmu.Lock()
	defer a.rmu.Unlock()
	if a.ret != nil {
		return capnp.Struct{}, errors.New("capnshm: AllocResults called twice")
	}
	if err := a.newReturn(); err != nil {
		return capnp.Struct{}, err
	}
	ret, _ := a.ret.Message().Return()
	pl, err := ret.NewResults()
	if err != nil {
		return capnp.Struct{}, err
	}
	st, err := capnp.NewStruct(pl.Segment(), sz)
	if err != nil {
		return capnp.Struct{}, err
	}
	if err := pl.SetContent(st.ToPtr()); err != nil {
		return capnp.Struct{}, err
	}
	a.results = st
	return st, nil
}

// newReturn starts a's Return message. Called with rmu held.
func (a *answer) newReturn() error {
	om, rm, err := a.c.newMessageIn(&a.retMsg)
	if err != nil {
		return disconnected(err)
	}
	ret, err := rm.NewReturn()
	if err != nil {
		om.Release()
		return err
	}
	ret.SetAnswerId(a.id)
	// This side releases the params' capabilities itself (each is an
	// import with its own count), as C++ does.
	ret.SetReleaseParamCaps(false)
	a.ret = om
	return nil
}

// PrepareReturn completes the Return: the results' capabilities are
// described (and exported), or, if the call failed (err) or the results
// are larger than the peer accepts, the Return carries an exception.
func (a *answer) PrepareReturn(err error) {
	a.rmu.Lock()
	defer a.rmu.Unlock()
	if err == nil {
		err = a.prepareResults()
	}
	if err == nil {
		return
	}
	a.err = err
	c := a.c
	c.dropExports(a.exports)
	a.exports = nil
	if a.ret != nil {
		a.ret.Release()
		a.ret = nil
	}
	a.results, a.content = capnp.Struct{}, capnp.Ptr{}
	if a.redirect {
		return
	}
	if nerr := a.newReturn(); nerr != nil {
		return
	}
	ret, _ := a.ret.Message().Return()
	x, nerr := ret.NewException()
	if nerr == nil {
		nerr = toException(x, err)
	}
	if nerr != nil {
		a.ret.Release()
		a.ret = nil
	}
}

// prepareResults describes the results' capabilities and checks the
// Return's size. Called with rmu held.
func (a *answer) prepareResults() error {
	if a.ret == nil {
		// No AllocResults: empty results.
		if err := a.newReturn(); err != nil {
			return err
		}
		ret, _ := a.ret.Message().Return()
		if _, err := ret.NewResults(); err != nil {
			return err
		}
	}
	rm := a.ret.Message()
	ret, _ := rm.Return()
	pl, _ := ret.Results()
	a.content = a.results.ToPtr()
	exps, err := a.c.describeCaps(pl, rm.Message().CapTable())
	a.exports = exps
	if err != nil {
		return failed(fmt.Errorf("capnshm: describing the capabilities in the results: %w", err))
	}
	if !a.redirect && a.c.peerMax != 0 {
		if total, err := rm.Message().TotalSize(); err == nil && total > a.c.peerMax {
			return failed(fmt.Errorf("%w: the results are %d bytes, over the %d bytes the caller accepts", ErrTooLarge, total, a.c.peerMax))
		}
	}
	return nil
}

// Return sends the Return, once the calls pipelined on the results have
// been delivered.
func (a *answer) Return() {
	a.rmu.Lock()
	content, err, om := a.content, a.err, a.ret
	a.ret = nil
	hasCaps := err == nil && om != nil && om.Message().Message().CapTable().Len() > 0
	a.rmu.Unlock()

	// Deliver what waited on the results, before the peer can see the
	// Return and call the returned capabilities directly. Results without
	// capabilities are not kept: nothing pipelined on them can succeed.
	switch {
	case err != nil:
		a.pipe.resolve(capnp.Ptr{}, err)
	case hasCaps || a.redirect:
		a.pipe.resolve(content, nil)
	default:
		a.pipe.resolve(capnp.Ptr{}, errNoCaps)
	}

	c := a.c
	c.mu.Lock()
	if a.abandoned || c.closing {
		c.mu.Unlock()
		if om != nil {
			om.Release()
		}
		a.rmu.Lock()
		exps := a.exports
		a.exports = nil
		a.rmu.Unlock()
		c.dropExports(exps)
		return
	}
	a.returned = true
	// The promises of capabilities in the results, resolved once the lock
	// is released; their targets are found now, while the results are
	// surely still there.
	waiters := a.waiters
	a.waiters = nil
	targets := make([]capnp.Client, len(waiters))
	werrs := make([]error, len(waiters))
	for i, w := range waiters {
		if werrs[i] = err; err == nil {
			targets[i], werrs[i] = capAt(content, w.transform)
		}
		w.hook.resolvedLocked(targets[i].AddRef(), werrs[i])
	}
	var flush bool
	var taker *question
	switch {
	case a.redirect:
		// The results wait for a taker; the peer learns they went
		// elsewhere.
		if om != nil {
			a.kept = &retainedMsg{OutgoingMessage: om}
			a.kept.refs.Store(1)
		}
		flush = c.pushReturnElsewhere(a.id)
		if taker = a.taker; taker != nil && a.kept != nil {
			a.kept.retain()
		}
	case om != nil && hasCaps && !a.finished:
		// Kept for the calls pipelined on the results until the Finish.
		a.kept = &retainedMsg{OutgoingMessage: om}
		a.kept.refs.Store(2) // this answer, and the sender
		flush = c.out.push(a.kept, nil)
	case om != nil:
		if err == nil && !hasCaps && !a.finished && a.tailQ == nil {
			if ret, rerr := om.Message().Return(); rerr == nil {
				ret.SetNoFinishNeeded(true)
				a.finished = true
			}
		}
		flush = c.out.push(om, nil)
	}
	var drop []*export
	var rel *retainedMsg
	kept := a.kept
	if a.finished {
		if a.releaseRes {
			drop, a.exports = a.exports, nil
		}
		c.forgetAnswerLocked(a)
		rel, a.kept = a.kept, nil
	}
	c.mu.Unlock()
	a.flushed(flush)
	for i, w := range waiters {
		if werrs[i] != nil {
			w.resolver.Reject(werrs[i])
			continue
		}
		w.resolver.Fulfill(targets[i])
		targets[i].Release()
	}
	if taker != nil {
		c.settleTaker(taker, kept, content, err)
	}
	if rel != nil {
		a.pipe.forget(errResultsGone)
	}
	c.dropExports(drop)
	if rel != nil {
		rel.Release()
	}
}

// flushed flushes if the caller took the flusher role, or hands it off
// when on the receiving goroutine.
func (a *answer) flushed(flush bool) {
	switch {
	case !flush:
	case a.onReader.Load():
		a.c.out.handOff()
	default:
		a.c.out.flush()
	}
}

// ReleaseResults does nothing: the results are kept until the Finish.
func (a *answer) ReleaseResults() {}

// takenLocked returns a redirected answer's results for its taker, with a
// reference to their message (nil when there are none), if the answer has
// returned (ok). Called with mu held.
func (a *answer) takenLocked() (*retainedMsg, capnp.Ptr, error, bool) {
	if !a.returned {
		return nil, capnp.Ptr{}, nil, false
	}
	if a.kept != nil {
		a.kept.retain()
	}
	// content and err were set before Return, which set returned under mu.
	return a.kept, a.content, a.err, true
}

// settleTaker resolves the question that took an answer's results; kept
// is its reference to their message.
func (c *Conn) settleTaker(q *question, kept *retainedMsg, content capnp.Ptr, err error) {
	c.mu.Lock()
	settle := !q.resolved
	q.resolved = true
	q.content = content
	if settle {
		q.takenMsg = kept
		q.settling = true
	}
	c.mu.Unlock()
	if settle {
		q.settle(content, err)
	} else if kept != nil {
		kept.Release()
	}
}

// pushReturnElsewhere pushes a Return saying resultsSentElsewhere. Called
// with mu held.
func (c *Conn) pushReturnElsewhere(id uint32) bool {
	om, rm, err := c.newMessage()
	if err != nil {
		return false
	}
	ret, err := rm.NewReturn()
	if err != nil {
		om.Release()
		return false
	}
	ret.SetAnswerId(id)
	ret.SetReleaseParamCaps(false)
	ret.SetResultsSentElsewhere()
	return c.out.push(om, nil)
}

// forgetAnswerLocked removes a from the table. Called with mu held.
func (c *Conn) forgetAnswerLocked(a *answer) {
	if c.answers[a.id] == a {
		delete(c.answers, a.id)
	}
	a.cancel()
}

// handleFinish handles the peer's Finish of one of its questions.
func (c *Conn) handleFinish(e *envelope) {
	c.mu.Lock()
	if c.closing {
		c.mu.Unlock()
		return
	}
	a := c.answers[e.id]
	if a == nil {
		// Most likely an answer whose Return said noFinishNeeded, from a
		// peer that does not know the hint (or whose Finish was already
		// on its way): ignored, as rpc.capnp says. Telling it from a
		// Finish for a question never asked would mean remembering every
		// such answer until its ID is reused, which may be never.
		c.mu.Unlock()
		return
	}
	if a.finished {
		c.mu.Unlock()
		c.abortf("a second Finish for question %d", e.id)
		return
	}
	a.finished = true
	a.releaseRes = e.releaseCaps
	var flush bool
	if q := a.tailQ; q != nil {
		// The peer is done with the tail call's results too.
		flush = c.finishLocked(q)
	}
	var drop []*export
	var rel *retainedMsg
	if a.returned {
		if a.releaseRes {
			drop, a.exports = a.exports, nil
		}
		c.forgetAnswerLocked(a)
		rel, a.kept = a.kept, nil
	} else if !a.pipe.waiting() {
		// Nothing depends on the answer: its handler may stop.
		a.cancel()
	}
	c.mu.Unlock()
	if flush {
		c.out.handOff()
	}
	c.dropExports(drop)
	if rel != nil {
		a.pipe.forget(errResultsGone)
		rel.Release()
	}
}

// abandon ends an answer of a connection that ended: its handler's context
// is cancelled, what waits on it fails, its kept results go.
func (a *answer) abandon() {
	c := a.c
	c.mu.Lock()
	a.abandoned = true
	rel := a.kept
	a.kept = nil
	returned := a.returned
	c.mu.Unlock()
	// The handler's goroutine owns the exports until Return; after it,
	// Return or Finish took them under mu.
	var exps []*export
	if returned {
		c.mu.Lock()
		exps, a.exports = a.exports, nil
		c.mu.Unlock()
	}
	a.cancel()
	dErr := disconnected(c.err)
	a.pipe.resolve(capnp.Ptr{}, dErr)
	a.pipe.forget(dErr)
	c.mu.Lock()
	waiters := a.waiters
	a.waiters = nil
	for _, w := range waiters {
		w.hook.resolvedLocked(capnp.Client{}, dErr)
	}
	c.mu.Unlock()
	for _, w := range waiters {
		w.resolver.Reject(dErr)
	}
	c.dropExports(exps)
	if rel != nil {
		rel.Release()
	}
	// The params stay: a handler still running reads them, and releases
	// them when it returns (a call still waiting in a pipeline was
	// rejected above, which released them).
}

// handleBootstrap answers the peer's Bootstrap with this side's bootstrap
// capability, or an exception if it has none.
func (c *Conn) handleBootstrap(e *envelope) {
	c.mu.Lock()
	if c.closing {
		c.mu.Unlock()
		return
	}
	if c.answers[e.id] != nil {
		c.mu.Unlock()
		c.abortf("bootstrap %d reuses the ID of question %d, which is still in use", e.id, e.id)
		return
	}
	a := c.newAnswerLocked(e.id, bootstrapMethod)
	// A reference of the answer's own, taken before the lock goes: the
	// connection's ending releases c.boot.
	boot := c.boot.AddRef()
	c.mu.Unlock()
	a.onReader.Store(true)
	defer a.onReader.Store(false)
	if !boot.IsValid() {
		a.PrepareReturn(failed(errors.New("capnshm: this side offers no bootstrap capability")))
		a.Return()
		return
	}
	a.rmu.Lock()
	err := a.newReturn()
	if err == nil {
		ret, _ := a.ret.Message().Return()
		var pl rpccp.Payload
		if pl, err = ret.NewResults(); err == nil {
			msg := pl.Message()
			iface := capnp.NewInterface(pl.Segment(), msg.CapTable().Add(boot))
			boot = capnp.Client{}
			err = pl.SetContent(iface.ToPtr())
			if err == nil {
				a.content = iface.ToPtr()
			}
		}
	}
	a.rmu.Unlock()
	boot.Release() // if it did not go into the results
	// The bootstrap's Return takes the same path as a call's, minus
	// AllocResults: its content is the capability.
	a.prepareBootstrap(err)
	a.Return()
}

// prepareBootstrap is PrepareReturn for a bootstrap's results.
func (a *answer) prepareBootstrap(err error) {
	a.rmu.Lock()
	if err == nil {
		rm := a.ret.Message()
		ret, _ := rm.Return()
		pl, _ := ret.Results()
		a.exports, err = a.c.describeCaps(pl, rm.Message().CapTable())
	}
	a.rmu.Unlock()
	if err != nil {
		a.PrepareReturn(failed(fmt.Errorf("capnshm: bootstrap: %w", err)))
	}
}

// unimplementedf is an unimplemented exception.
func unimplementedf(format string, args ...any) error {
	return capnp.Unimplemented(fmt.Sprintf(format, args...))
}
