package rpc

import (
	"context"
	"errors"
	"sync"

	capnp "capnproto.org/go/capnp/v3"
)

// Promise pipelining on this side: calls made on capabilities in results
// that do not exist yet.
//
// A pipeline holds such calls, each a capnp.Recv with the path (transform)
// of its target in the results, and delivers them in order once the
// results exist; a call that arrives while they are being delivered waits
// behind them, and one that arrives after goes at once. Every queued call
// brings its own Returner, and a call made on this side (Send) brings a
// localCall, which has a pipeline of its own: calls pipelined on a queued
// call wait in its pipeline, so pipelining works to any depth. (go-capnp's
// capnp.AnswerQueue, which server.Server and capnp.NewLocalPromise use,
// delivers a call pipelined on a queued call to the first call's target
// instead: capnshm does not use it.)
type pipeline struct {
	mu      sync.Mutex
	state   pipeState
	content capnp.Ptr // the results, once they exist
	err     error     // or why there are none
	q       []pipelined
	// to, when set, receives the calls instead (the results come from a
	// tail call: calls follow it).
	to func(context.Context, []capnp.PipelineOp, capnp.Recv)
	// forgotten: forget ran (the results are gone).
	forgotten bool
}

type pipeState uint8

const (
	pipePending  pipeState = iota // no results yet: calls wait
	pipeDraining                  // delivering the calls that waited
	pipeDone                      // calls go at once
)

// pipelined is a call waiting in a pipeline.
type pipelined struct {
	ctx       context.Context
	transform []capnp.PipelineOp
	r         capnp.Recv
}

// recv delivers r to the capability at transform in the results, now or
// once they exist.
func (p *pipeline) recv(ctx context.Context, transform []capnp.PipelineOp, r capnp.Recv) {
	p.take(ctx, transform, r, false)
}

// recvUnlessForgotten is recv, except that once forget has run it leaves r
// alone and reports false: a capability that outlives the results (an
// answerPipeHook) then delivers r to what it resolved to.
func (p *pipeline) recvUnlessForgotten(ctx context.Context, transform []capnp.PipelineOp, r capnp.Recv) bool {
	return p.take(ctx, transform, r, true)
}

// take is recv; with unlessForgotten it returns false, r untouched, if
// forget has run (checked under the same lock as the delivery).
func (p *pipeline) take(ctx context.Context, transform []capnp.PipelineOp, r capnp.Recv, unlessForgotten bool) bool {
	p.mu.Lock()
	if p.state != pipeDone {
		p.q = append(p.q, pipelined{ctx, transform, r})
		p.mu.Unlock()
		return true
	}
	if to := p.to; to != nil {
		p.mu.Unlock()
		to(ctx, transform, r)
		return true
	}
	if unlessForgotten && p.forgotten {
		p.mu.Unlock()
		return false
	}
	// The target is found under mu: forget may release the results as
	// soon as mu is released.
	target, err := p.err, error(nil)
	var client capnp.Client
	if target == nil {
		client, err = capAt(p.content, transform)
	} else {
		err = target
	}
	p.mu.Unlock()
	if err != nil {
		r.Reject(err)
		return true
	}
	client.RecvCall(ctx, r)
	client.Release()
	return true
}

// forget is called before the results are released: later calls fail
// with err.
func (p *pipeline) forget(err error) {
	p.mu.Lock()
	p.forgotten = true
	p.content = capnp.Ptr{}
	if p.err == nil {
		p.err = err
	}
	p.mu.Unlock()
}

// redirect sends the waiting calls, and every later one, to to.
func (p *pipeline) redirect(to func(context.Context, []capnp.PipelineOp, capnp.Recv)) {
	p.mu.Lock()
	if p.state != pipePending {
		p.mu.Unlock()
		return
	}
	p.to, p.state = to, pipeDraining
	for {
		q := p.q
		p.q = nil
		if len(q) == 0 {
			p.state = pipeDone
			p.mu.Unlock()
			return
		}
		p.mu.Unlock()
		for _, c := range q {
			to(c.ctx, c.transform, c.r)
		}
		p.mu.Lock()
	}
}

// resolve sets the results (or their error) and delivers the waiting
// calls, in order, before any that come later. It returns once every call
// that waited has been delivered.
func (p *pipeline) resolve(content capnp.Ptr, err error) {
	p.mu.Lock()
	if p.state != pipePending {
		p.mu.Unlock()
		return
	}
	p.content, p.err, p.state = content, err, pipeDraining
	for {
		q := p.q
		p.q = nil
		if len(q) == 0 {
			p.state = pipeDone
			p.mu.Unlock()
			return
		}
		p.mu.Unlock()
		for _, c := range q {
			deliver(c.ctx, content, err, c.transform, c.r)
		}
		p.mu.Lock()
	}
}

// waiting reports whether calls are waiting for the results.
func (p *pipeline) waiting() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.q) > 0 || p.state == pipeDraining
}

// deliver delivers r to the capability at transform in content.
func deliver(ctx context.Context, content capnp.Ptr, err error, transform []capnp.PipelineOp, r capnp.Recv) {
	if err != nil {
		r.Reject(err)
		return
	}
	target, err := capAt(content, transform)
	if err != nil {
		r.Reject(err)
		return
	}
	target.RecvCall(ctx, r)
	target.Release()
}

// localCall is a call made on this side (a Send) that has to wait: it holds
// the params (copied from PlaceArgs, which must run before Send returns),
// the results once the target returns them, the caller's answer, and a
// pipeline of the calls pipelined on it meanwhile. It is the call's
// Returner and its answer's PipelineCaller.
type localCall struct {
	method   capnp.Method
	args     capnp.Struct
	p        *capnp.Promise
	pipe     pipeline
	mu       sync.Mutex
	results  capnp.Struct
	err      error
	done     bool // Return has run
	released bool // the caller released its answer
}

// newLocalCall copies s's params into a message of its own and returns
// the call, with its answer.
func newLocalCall(s capnp.Send) (*localCall, error) {
	lc := &localCall{method: s.Method}
	_, seg := capnp.NewMultiSegmentMessage(nil)
	args, err := capnp.NewRootStruct(seg, s.ArgsSize)
	if err != nil {
		return nil, err
	}
	if s.PlaceArgs != nil {
		if err := s.PlaceArgs(args); err != nil {
			args.Message().Release()
			return nil, err
		}
	}
	lc.args = args
	lc.p = capnp.NewPromise(s.Method, lc, nil)
	return lc, nil
}

// recv returns the call as a Recv to deliver.
func (lc *localCall) recv() capnp.Recv {
	return capnp.Recv{Method: lc.method, Args: lc.args, ReleaseArgs: lc.releaseArgs, Returner: lc}
}

func (lc *localCall) releaseArgs() {
	lc.mu.Lock()
	m := lc.args.Message()
	lc.args = capnp.Struct{}
	lc.mu.Unlock()
	if m != nil {
		m.Release()
	}
}

// AllocResults allocates the results in a message of the call's own.
func (lc *localCall) AllocResults(sz capnp.ObjectSize) (capnp.Struct, error) {
	lc.mu.Lock()
	defer lc.mu.Unlock()
	if lc.results.IsValid() {
		return capnp.Struct{}, errors.New("capnshm: AllocResults called twice")
	}
	_, seg := capnp.NewMultiSegmentMessage(nil)
	s, err := capnp.NewRootStruct(seg, sz)
	if err != nil {
		return capnp.Struct{}, err
	}
	lc.results = s
	return s, nil
}

// PrepareReturn records how the call ended.
func (lc *localCall) PrepareReturn(err error) {
	lc.mu.Lock()
	lc.err = err
	lc.mu.Unlock()
}

// Return resolves the caller's answer, then delivers what was pipelined on
// it.
func (lc *localCall) Return() {
	lc.mu.Lock()
	res, err := lc.results, lc.err
	lc.done = true
	lc.mu.Unlock()
	lc.p.Resolve(res.ToPtr(), err)
	lc.pipe.resolve(res.ToPtr(), err)
	lc.mu.Lock()
	released := lc.released
	lc.mu.Unlock()
	if released {
		lc.cleanup()
	}
}

// ReleaseResults does nothing: the results live until the caller releases
// its answer.
func (lc *localCall) ReleaseResults() {}

// release is the caller's ReleaseFunc: the results go once the call has
// returned (now, or when it does).
func (lc *localCall) release() {
	lc.mu.Lock()
	if lc.released {
		lc.mu.Unlock()
		return
	}
	lc.released = true
	done := lc.done
	lc.mu.Unlock()
	if done {
		lc.cleanup()
	}
}

// cleanup releases the results of a call that returned and was released.
func (lc *localCall) cleanup() {
	lc.p.ReleaseClients()
	lc.mu.Lock()
	m := lc.results.Message()
	lc.results = capnp.Struct{}
	lc.mu.Unlock()
	if m != nil {
		m.Release()
	}
}

// PipelineSend makes a call on a capability in this call's results.
func (lc *localCall) PipelineSend(ctx context.Context, transform []capnp.PipelineOp, s capnp.Send) (*capnp.Answer, capnp.ReleaseFunc) {
	nc, err := newLocalCall(s)
	if err != nil {
		return capnp.ErrorAnswer(s.Method, failed(err)), func() {}
	}
	lc.pipe.recv(ctx, transform, nc.recv())
	return nc.p.Answer(), nc.release
}

// PipelineRecv delivers r to a capability in this call's results.
func (lc *localCall) PipelineRecv(ctx context.Context, transform []capnp.PipelineOp, r capnp.Recv) capnp.PipelineCaller {
	lc.pipe.recv(ctx, transform, r)
	return unpipelinable{}
}

// unpipelinable is the PipelineCaller of a Recv whose target is not known
// yet. capnshm's engine does its own pipelining on the Returners it hands
// out and never calls it.
type unpipelinable struct{}

var errUnpipelinable = failed(errors.New("capnshm: pipelining on a call delivered through a local promise"))

func (unpipelinable) PipelineSend(_ context.Context, _ []capnp.PipelineOp, s capnp.Send) (*capnp.Answer, capnp.ReleaseFunc) {
	return capnp.ErrorAnswer(s.Method, errUnpipelinable), func() {}
}

func (unpipelinable) PipelineRecv(_ context.Context, _ []capnp.PipelineOp, r capnp.Recv) capnp.PipelineCaller {
	r.Reject(errUnpipelinable)
	return nil
}

// promiseHook is the hook of a capability this side will know later: an
// embargoed local capability (known once the Disembargo comes back) or a
// capability the peer passed as one of this side's unreturned answers.
// Calls on it wait in order, then go to the capability; only after they
// have gone is the capnp promise fulfilled, so that later calls, which go
// to the capability directly, come after them (E-order).
type promiseHook struct {
	pipe     pipeline
	resolver capnp.Resolver[capnp.Client]
	name     string
}

// newPromise returns a promised capability and its hook.
func newPromise(name string) (capnp.Client, *promiseHook) {
	h := &promiseHook{name: name}
	c, r := capnp.NewPromisedClient(h)
	h.resolver = r
	return c, h
}

// fulfill delivers the waiting calls to target, then fulfils the promise
// with it. It takes over the reference target.
func (h *promiseHook) fulfill(target capnp.Client) {
	msg, seg := capnp.NewSingleSegmentMessage(nil)
	iface := capnp.NewInterface(seg, msg.CapTable().Add(target)) // steals target
	h.pipe.resolve(iface.ToPtr(), nil)
	h.resolver.Fulfill(iface.Client()) // takes a reference of its own
	msg.Release()
}

// reject fails the waiting calls and the promise with err.
func (h *promiseHook) reject(err error) {
	h.pipe.resolve(capnp.Ptr{}, err)
	h.resolver.Reject(err)
}

func (h *promiseHook) Send(ctx context.Context, s capnp.Send) (*capnp.Answer, capnp.ReleaseFunc) {
	lc, err := newLocalCall(s)
	if err != nil {
		return capnp.ErrorAnswer(s.Method, failed(err)), func() {}
	}
	h.pipe.recv(ctx, nil, lc.recv())
	return lc.p.Answer(), lc.release
}

func (h *promiseHook) Recv(ctx context.Context, r capnp.Recv) capnp.PipelineCaller {
	h.pipe.recv(ctx, nil, r)
	return unpipelinable{}
}

func (h *promiseHook) Brand() capnp.Brand { return capnp.Brand{Value: h} }
func (h *promiseHook) Shutdown()          {}
func (h *promiseHook) String() string     { return "capnshm promise (" + h.name + ")" }
