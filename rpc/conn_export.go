package rpc

import (
	"errors"
	"fmt"

	capnp "capnproto.org/go/capnp/v3"
	rpccp "capnproto.org/go/capnp/v3/std/capnp/rpc"
)

// Exports: the capabilities this side passes to the peer.
//
// A local capability passed in params or results is exported once per
// connection: the export records a reference to it and counts the
// descriptors sent (refs); the peer's Release messages (and Finish or
// Return with releaseResultCaps / releaseParamCaps) take them back, and
// at zero the export and its reference go. The export is found again
// through the capability's capnp.Metadata, keyed by the Conn. A promise
// is exported as senderPromise, and a goroutine waits for it to resolve,
// then sends Resolve.
//
// Capabilities that are the peer's own (imports, or capabilities pipelined
// on this side's questions) are described as such (receiverHosted,
// receiverAnswer), not exported.
type export struct {
	id      uint32
	client  capnp.Client // this side's reference
	meta    *capnp.Metadata
	refs    uint32 // descriptors the peer holds
	promise bool   // exported as senderPromise: a Resolve follows
	dropped bool   // removed from the table
}

// describeCaps writes the cap table of payload from the clients of its
// message's capnp.CapTable, exporting local ones. It returns the exports
// made or counted, one reference each, for the caller to give back if the
// message is not sent. Not to be called with mu held.
func (c *Conn) describeCaps(p rpccp.Payload, ct *capnp.CapTable) ([]*export, error) {
	n := ct.Len()
	if n == 0 {
		return nil, nil
	}
	tab, err := p.NewCapTable(int32(n))
	if err != nil {
		return nil, err
	}
	var exps []*export
	for i := 0; i < n; i++ {
		e, err := c.describe(ct.At(i), tab.At(i))
		if err != nil {
			return exps, fmt.Errorf("capability %d: %w", i, err)
		}
		if e != nil {
			exps = append(exps, e)
		}
	}
	return exps, nil
}

// describe writes the descriptor of client into cd, exporting it if it is
// local, and returns the export (nil if none was needed).
func (c *Conn) describe(client capnp.Client, cd rpccp.CapDescriptor) (*export, error) {
	if !client.IsValid() {
		cd.SetNone()
		return nil, nil
	}
	snap := client.Snapshot()
	defer snap.Release()
	switch v := snap.Brand().Value.(type) {
	case *importClient:
		if v.c == c {
			cd.SetReceiverHosted(v.ent.id)
			return nil, nil
		}
	case capnp.PipelineClient:
		if q := c.questionOf(v.Answer()); q != nil {
			return nil, c.describeAnswer(cd, q, v.Transform())
		}
	case *questionPipeHook:
		if v.q.c == c {
			return nil, c.describeAnswer(cd, v.q, v.transform)
		}
	}
	promise := snap.IsPromise() && !snap.IsResolved()
	meta := snap.Metadata()
	meta.Lock()
	defer meta.Unlock()
	var e *export
	if v, ok := meta.Get(c.key); ok {
		e = v.(*export)
	}
	c.mu.Lock()
	if c.closing {
		err := c.closedErrLocked()
		c.mu.Unlock()
		return nil, err
	}
	fresh := e == nil || e.dropped
	if fresh {
		e = &export{client: client.AddRef(), meta: meta, promise: promise}
		e.id = c.exports.add(e)
		meta.Put(c.key, e)
	}
	e.refs++
	c.mu.Unlock()
	if e.promise {
		cd.SetSenderPromise(e.id)
		if fresh {
			go c.watchPromise(e)
		}
	} else {
		cd.SetSenderHosted(e.id)
	}
	return e, nil
}

// describeAnswer writes receiverAnswer(q, transform).
func (c *Conn) describeAnswer(cd rpccp.CapDescriptor, q *question, transform []capnp.PipelineOp) error {
	pa, err := cd.NewReceiverAnswer()
	if err != nil {
		return err
	}
	return writePromised(pa, q.id, transform)
}

// questionOf finds the question whose promise gave ans (a scan: this is
// needed only when a capability pipelined on a question is itself passed
// in a message).
func (c *Conn) questionOf(ans *capnp.Answer) *question {
	c.mu.Lock()
	defer c.mu.Unlock()
	var found *question
	c.questions.each(func(_ uint32, q *question) {
		if found == nil && q.p != nil && q.p.Answer() == ans && !q.finished {
			found = q
		}
	})
	return found
}

// watchPromise waits for an exported promise to resolve, then sends
// Resolve (unless the peer released it first, or the connection ended).
func (c *Conn) watchPromise(e *export) {
	if err := e.client.Resolve(c.ctx); err != nil {
		return // the connection ended
	}
	c.mu.Lock()
	dropped := e.dropped || c.closing
	c.mu.Unlock()
	if dropped {
		return
	}
	om, rm, err := c.newMessage()
	if err != nil {
		return
	}
	res, err := rm.NewResolve()
	if err != nil {
		om.Release()
		return
	}
	res.SetPromiseId(e.id)
	var made *export
	snap := e.client.Snapshot()
	if brokenErr, ok := snap.Brand().Value.(error); ok {
		x, xerr := res.NewException()
		if xerr == nil {
			err = toException(x, brokenErr)
		} else {
			err = xerr
		}
	} else {
		var cd rpccp.CapDescriptor
		if cd, err = res.NewCap(); err == nil {
			made, err = c.describe(snap.Client(), cd)
		}
	}
	snap.Release()
	if err != nil {
		om.Release()
		return
	}
	c.mu.Lock()
	if e.dropped || c.closing {
		c.mu.Unlock()
		om.Release()
		c.dropExports([]*export{made})
		return
	}
	flush := c.out.push(om, nil)
	c.mu.Unlock()
	if flush {
		c.out.flush()
	}
}

// handleRelease takes back references to an export.
func (c *Conn) handleRelease(e *envelope) {
	c.mu.Lock()
	if c.closing {
		c.mu.Unlock()
		return
	}
	x, ok := c.exports.get(e.id)
	if !ok {
		c.mu.Unlock()
		c.abortf("Release of export %d, which this side does not export", e.id)
		return
	}
	if e.count > x.refs {
		c.mu.Unlock()
		c.abortf("Release of %d references to export %d, which the peer holds %d of", e.count, e.id, x.refs)
		return
	}
	x.refs -= e.count
	gone := x.refs == 0
	if gone {
		c.removeExportLocked(x)
	}
	c.mu.Unlock()
	if gone {
		x.forget(c)
	}
}

// dropExports takes back one reference to each export, for descriptors
// that never reached the peer or that it released implicitly.
func (c *Conn) dropExports(exps []*export) {
	var gone []*export
	c.mu.Lock()
	for _, x := range exps {
		if x == nil || x.dropped {
			continue
		}
		x.refs--
		if x.refs == 0 {
			c.removeExportLocked(x)
			gone = append(gone, x)
		}
	}
	c.mu.Unlock()
	for _, x := range gone {
		x.forget(c)
	}
}

// removeExportLocked removes x from the table. Called with mu held.
func (c *Conn) removeExportLocked(x *export) {
	if cur, ok := c.exports.get(x.id); ok && cur == x {
		c.exports.remove(x.id)
	}
	x.dropped = true
}

// forget releases a removed export: its metadata entry, then its
// reference. Not with mu held (metadata, then mu, is the lock order).
func (x *export) forget(c *Conn) {
	x.meta.Lock()
	if v, ok := x.meta.Get(c.key); ok && v == x {
		x.meta.Delete(c.key)
	}
	x.meta.Unlock()
	x.client.Release()
}

// drop releases an export of a connection that ended, unless a late
// dropExports (a Return built while the connection ended) took its last
// reference first. dropped is read and written under mu, as dropExports
// does.
func (x *export) drop(c *Conn) {
	c.mu.Lock()
	already := x.dropped
	x.dropped = true
	c.mu.Unlock()
	if !already {
		x.forget(c)
	}
}

// handleUnimplemented handles the peer echoing a message of this side that
// it does not implement.
func (c *Conn) handleUnimplemented(e *envelope) {
	echoed := e.echoed
	switch echoed.which {
	case rpccp.Message_Which_resolve:
		// The peer will never use the capability the promise resolved to.
		d := echoed.resolveTo
		if echoed.exception == nil && (d.which == rpccp.CapDescriptor_Which_senderHosted || d.which == rpccp.CapDescriptor_Which_senderPromise) {
			c.mu.Lock()
			x, ok := c.exports.get(d.id)
			c.mu.Unlock()
			if ok {
				c.dropExports([]*export{x})
			}
		}
	case rpccp.Message_Which_bootstrap, rpccp.Message_Which_call:
		c.mu.Lock()
		q, ok := c.questions.get(echoed.id)
		if !ok || q.returned {
			c.mu.Unlock()
			c.abortf("Unimplemented echoing question %d, which this side has no call pending for", echoed.id)
			return
		}
		q.returned = true
		if q.finished {
			c.questions.remove(q.id)
		}
		settle := !q.resolved
		q.resolved = true
		c.mu.Unlock()
		if settle {
			q.settle(capnp.Ptr{}, unimplementedf("capnshm: the peer does not implement this message (it echoed it as Unimplemented)"))
		}
		if q.kind == kindBootstrap {
			c.finishBootstrap(q)
		}
	default:
		c.abortErr(errors.New("the peer does not implement a message this side needs it to (" + echoed.which.String() + ")"))
	}
}
