package rpc

import (
	"errors"
	"fmt"

	capnp "capnproto.org/go/capnp/v3"
	"capnproto.org/go/capnp/v3/exc"
	rpccp "capnproto.org/go/capnp/v3/std/capnp/rpc"
)

// The envelope of an incoming message.
//
// A received message may lie in the peer's shared memory, which the peer
// can rewrite at any time, and go-capnp reads a field anew each time it is
// asked for it. So everything the engine acts on (the message's kind, its
// IDs, targets and transforms, its cap table) is read exactly once, here,
// into an envelope in private memory, checked, and only then used. A
// payload's content is resolved once to a capnp.Ptr (a location, not a
// copy) and read in place by the application: bytes that change under it
// may read as wrong values, never as a panic or an access out of bounds,
// since go-capnp bounds-checks every access against segments whose bounds
// the transport fixed in private memory.

// Limits of what an envelope may hold.
const (
	// maxTransform is the most ops in a promised answer's transform.
	maxTransform = 64
	// maxCapTable is the most capabilities in one payload.
	maxCapTable = 1 << 16
)

// envelope is one incoming message, as the engine acts on it.
type envelope struct {
	which rpccp.Message_Which
	// id is the question ID of a Bootstrap, Call, Return (answerId) or
	// Finish, the promise ID of a Resolve, the import ID of a Release.
	id uint32

	// Call.
	target      msgTarget
	method      capnp.Method // interface and method IDs
	resultsTo   rpccp.Call_sendResultsTo_Which
	payload     payload // Call params, Return results
	releaseCaps bool    // Return.releaseParamCaps, Finish.releaseResultCaps

	// Return.
	ret       rpccp.Return_Which
	noFinish  bool           // Return.noFinishNeeded
	exception *exc.Exception // Return.exception, Resolve.exception, Abort
	takeFrom  uint32         // Return.takeFromOtherQuestion

	// Resolve.
	resolveTo capDesc // when exception is nil

	// Release.
	count uint32

	// Disembargo.
	embargo   rpccp.Disembargo_context_Which
	embargoID uint32

	// Unimplemented: the echoed message's kind, the question ID of an
	// echoed Bootstrap or Call, the cap of an echoed Resolve.
	echoed *envelope
}

// msgTarget is a MessageTarget.
type msgTarget struct {
	promised  bool               // promisedAnswer, else importedCap
	id        uint32             // the import (export) ID or the question (answer) ID
	transform []capnp.PipelineOp // promisedAnswer's ops (noops dropped)
	path      string             // transform as a map key (see pathOf)
}

// payload is a Payload: its content (in place) and its cap table.
type payload struct {
	content capnp.Ptr
	caps    []capDesc
}

// capDesc is a CapDescriptor.
type capDesc struct {
	which rpccp.CapDescriptor_Which // thirdPartyHosted is decoded as senderHosted of its vine
	id    uint32                    // senderHosted, senderPromise, receiverHosted
	ans   msgTarget                 // receiverAnswer (promised is set)
}

// errEnvelope wraps the errors of decode, which always end the connection
// with an Abort that says what was wrong.
var errEnvelope = errors.New("malformed message")

func malformedf(format string, args ...any) error {
	return fmt.Errorf("%w: %w: "+format, append([]any{ErrProtocol, errEnvelope}, args...)...)
}

// decode reads the envelope of rm once. Message kinds the engine does not
// handle are returned with which set and nothing else; the caller answers
// them with Unimplemented.
func decode(rm rpccp.Message, e *envelope) error {
	*e = envelope{which: rm.Which()}
	switch e.which {
	case rpccp.Message_Which_bootstrap:
		b, err := rm.Bootstrap()
		if err != nil {
			return malformedf("bootstrap: %v", err)
		}
		e.id = b.QuestionId()
	case rpccp.Message_Which_call:
		return decodeCall(rm, e)
	case rpccp.Message_Which_return:
		return decodeReturn(rm, e)
	case rpccp.Message_Which_finish:
		f, err := rm.Finish()
		if err != nil {
			return malformedf("finish: %v", err)
		}
		e.id, e.releaseCaps = f.QuestionId(), f.ReleaseResultCaps()
	case rpccp.Message_Which_resolve:
		r, err := rm.Resolve()
		if err != nil {
			return malformedf("resolve: %v", err)
		}
		e.id = r.PromiseId()
		switch w := r.Which(); w {
		case rpccp.Resolve_Which_cap:
			cd, err := r.Cap()
			if err != nil {
				return malformedf("resolve %d: cap: %v", e.id, err)
			}
			if e.resolveTo, err = decodeCap(cd); err != nil {
				return fmt.Errorf("resolve %d: %w", e.id, err)
			}
		case rpccp.Resolve_Which_exception:
			x, err := r.Exception()
			if err != nil {
				return malformedf("resolve %d: exception: %v", e.id, err)
			}
			e.exception = fromException(x)
		default:
			return malformedf("resolve %d: unknown kind %d", e.id, w)
		}
	case rpccp.Message_Which_release:
		r, err := rm.Release()
		if err != nil {
			return malformedf("release: %v", err)
		}
		e.id, e.count = r.Id(), r.ReferenceCount()
	case rpccp.Message_Which_disembargo:
		d, err := rm.Disembargo()
		if err != nil {
			return malformedf("disembargo: %v", err)
		}
		t, err := d.Target()
		if err != nil {
			return malformedf("disembargo: target: %v", err)
		}
		if e.target, err = decodeTarget(t); err != nil {
			return fmt.Errorf("disembargo: %w", err)
		}
		ctx := d.Context()
		switch e.embargo = ctx.Which(); e.embargo {
		case rpccp.Disembargo_context_Which_senderLoopback:
			e.embargoID = ctx.SenderLoopback()
		case rpccp.Disembargo_context_Which_receiverLoopback:
			e.embargoID = ctx.ReceiverLoopback()
		}
	case rpccp.Message_Which_abort:
		x, err := rm.Abort()
		if err != nil {
			return malformedf("abort: %v", err)
		}
		e.exception = fromException(x)
	case rpccp.Message_Which_unimplemented:
		u, err := rm.Unimplemented()
		if err != nil {
			return malformedf("unimplemented: %v", err)
		}
		e.echoed = &envelope{}
		switch w := u.Which(); w {
		case rpccp.Message_Which_bootstrap, rpccp.Message_Which_call, rpccp.Message_Which_resolve:
			if err := decode(u, e.echoed); err != nil {
				return fmt.Errorf("unimplemented: %w", err)
			}
		default:
			e.echoed.which = w
		}
	}
	return nil
}

func decodeCall(rm rpccp.Message, e *envelope) error {
	c, err := rm.Call()
	if err != nil {
		return malformedf("call: %v", err)
	}
	e.id = c.QuestionId()
	t, err := c.Target()
	if err != nil {
		return malformedf("call %d: target: %v", e.id, err)
	}
	if e.target, err = decodeTarget(t); err != nil {
		return fmt.Errorf("call %d: %w", e.id, err)
	}
	e.method = capnp.Method{InterfaceID: c.InterfaceId(), MethodID: c.MethodId()}
	e.resultsTo = c.SendResultsTo().Which()
	p, err := c.Params()
	if err != nil {
		return malformedf("call %d: params: %v", e.id, err)
	}
	if e.payload, err = decodePayload(p); err != nil {
		return fmt.Errorf("call %d: params: %w", e.id, err)
	}
	return nil
}

func decodeReturn(rm rpccp.Message, e *envelope) error {
	r, err := rm.Return()
	if err != nil {
		return malformedf("return: %v", err)
	}
	e.id = r.AnswerId()
	e.releaseCaps = r.ReleaseParamCaps()
	e.noFinish = r.NoFinishNeeded()
	switch e.ret = r.Which(); e.ret {
	case rpccp.Return_Which_results:
		p, err := r.Results()
		if err != nil {
			return malformedf("return %d: results: %v", e.id, err)
		}
		if e.payload, err = decodePayload(p); err != nil {
			return fmt.Errorf("return %d: results: %w", e.id, err)
		}
	case rpccp.Return_Which_exception:
		x, err := r.Exception()
		if err != nil {
			return malformedf("return %d: exception: %v", e.id, err)
		}
		e.exception = fromException(x)
	case rpccp.Return_Which_takeFromOtherQuestion:
		e.takeFrom = r.TakeFromOtherQuestion()
	case rpccp.Return_Which_canceled, rpccp.Return_Which_resultsSentElsewhere:
	case rpccp.Return_Which_acceptFromThirdParty:
		return malformedf("return %d: acceptFromThirdParty, a level 3 answer to a call that did not allow it", e.id)
	default:
		return malformedf("return %d: unknown kind %d", e.id, e.ret)
	}
	return nil
}

func decodeTarget(t rpccp.MessageTarget) (msgTarget, error) {
	switch w := t.Which(); w {
	case rpccp.MessageTarget_Which_importedCap:
		return msgTarget{id: t.ImportedCap()}, nil
	case rpccp.MessageTarget_Which_promisedAnswer:
		pa, err := t.PromisedAnswer()
		if err != nil {
			return msgTarget{}, malformedf("target: promised answer: %v", err)
		}
		return decodePromised(pa)
	default:
		return msgTarget{}, malformedf("target of unknown kind %d", w)
	}
}

func decodePromised(pa rpccp.PromisedAnswer) (msgTarget, error) {
	mt := msgTarget{promised: true, id: pa.QuestionId()}
	ops, err := pa.Transform()
	if err != nil {
		return msgTarget{}, malformedf("promised answer %d: transform: %v", mt.id, err)
	}
	n := ops.Len()
	if n > maxTransform {
		return msgTarget{}, malformedf("promised answer %d: a transform of %d ops, over the limit of %d", mt.id, n, maxTransform)
	}
	for i := 0; i < n; i++ {
		op := ops.At(i)
		switch w := op.Which(); w {
		case rpccp.PromisedAnswer_Op_Which_noop:
		case rpccp.PromisedAnswer_Op_Which_getPointerField:
			mt.transform = append(mt.transform, capnp.PipelineOp{Field: op.GetPointerField()})
		default:
			return msgTarget{}, malformedf("promised answer %d: transform op %d of unknown kind %d", mt.id, i, w)
		}
	}
	mt.path = pathOf(mt.transform)
	return mt, nil
}

func decodePayload(p rpccp.Payload) (payload, error) {
	var pl payload
	var err error
	if pl.content, err = p.Content(); err != nil {
		return payload{}, malformedf("content: %v", err)
	}
	tab, err := p.CapTable()
	if err != nil {
		return payload{}, malformedf("cap table: %v", err)
	}
	n := tab.Len()
	if n > maxCapTable {
		return payload{}, malformedf("a cap table of %d entries, over the limit of %d", n, maxCapTable)
	}
	if n > 0 {
		pl.caps = make([]capDesc, n)
		for i := range pl.caps {
			if pl.caps[i], err = decodeCap(tab.At(i)); err != nil {
				return payload{}, fmt.Errorf("cap %d: %w", i, err)
			}
		}
	}
	return pl, nil
}

func decodeCap(cd rpccp.CapDescriptor) (capDesc, error) {
	d := capDesc{which: cd.Which()}
	switch d.which {
	case rpccp.CapDescriptor_Which_none:
	case rpccp.CapDescriptor_Which_senderHosted:
		d.id = cd.SenderHosted()
	case rpccp.CapDescriptor_Which_senderPromise:
		d.id = cd.SenderPromise()
	case rpccp.CapDescriptor_Which_receiverHosted:
		d.id = cd.ReceiverHosted()
	case rpccp.CapDescriptor_Which_receiverAnswer:
		pa, err := cd.ReceiverAnswer()
		if err != nil {
			return capDesc{}, malformedf("receiver answer: %v", err)
		}
		if d.ans, err = decodePromised(pa); err != nil {
			return capDesc{}, err
		}
	case rpccp.CapDescriptor_Which_thirdPartyHosted:
		// Level 1: use the vine, as if it were the sender's own.
		tp, err := cd.ThirdPartyHosted()
		if err != nil {
			return capDesc{}, malformedf("third-party cap: %v", err)
		}
		d.which, d.id = rpccp.CapDescriptor_Which_senderHosted, tp.VineId()
	default:
		return capDesc{}, malformedf("cap descriptor of unknown kind %d", d.which)
	}
	return d, nil
}

// pathOf encodes a transform as a map key: two bytes per op.
func pathOf(ops []capnp.PipelineOp) string {
	if len(ops) == 0 {
		return ""
	}
	b := make([]byte, 2*len(ops))
	for i, op := range ops {
		b[2*i], b[2*i+1] = byte(op.Field), byte(op.Field>>8)
	}
	return string(b)
}
