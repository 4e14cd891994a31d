package rpc

import (
	"bytes"
	"errors"
	"fmt"
	"sync/atomic"

	capnp "capnproto.org/go/capnp/v3"
	rpccp "capnproto.org/go/capnp/v3/std/capnp/rpc"
)

// The engine copies a peer's objects in three places: the params of a
// call it forwards (a call on an import, made by this side's Recv), the
// results that come back for it, and a message it echoes in an
// Unimplemented. go-capnp v3.0.1-alpha.2's copy
// (Struct.SetPtr and what calls it) recurses once per level of nesting
// and does not stop at its depth limit: List.Struct gives an element one
// level less than its list, which wraps from 0 to the largest uint, so a
// message whose objects point back at themselves through a list of
// structs makes it recurse until the goroutine's stack overflows, which
// ends the process. A message the peer wrote therefore goes through
// checkCopyable before it is copied, and a message read in place from the
// peer's shared memory is first copied out of it (privateContent,
// privateMessage): the peer could rewrite it between the check and the
// copy.

// maxCopyDepth is how deep the objects of a peer's message may nest for
// the engine to copy them: C++'s default nesting limit.
const maxCopyDepth = 64

// errCopyDepth and errCopyAliased are checkCopyable's refusals.
var (
	errCopyDepth   = fmt.Errorf("its objects nest deeper than %d levels", maxCopyDepth)
	errCopyAliased = errors.New("copying it would visit more pointers than the message has words: its objects are shared or point back at themselves")
)

// checkCopyable walks the objects of p, as a copy would, and returns an
// error unless they nest at most maxCopyDepth levels deep and a copy would
// visit at most as many pointers as their message has words (a tree of
// objects cannot have more; one whose objects are shared, or cyclic, can).
// A panic of go-capnp's while reading becomes an error too.
func checkCopyable(p capnp.Ptr) (err error) {
	if !p.IsValid() {
		return nil
	}
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("unreadable: %v", r)
		}
	}()
	var budget uint64
	if msg := p.Message(); msg != nil {
		total, err := msg.TotalSize()
		if err != nil {
			return err
		}
		budget = total / 8
	}
	return walkPtr(p, maxCopyDepth, &budget)
}

// walkPtr walks the object p points to, depth levels left, each pointer
// spending one of budget.
func walkPtr(p capnp.Ptr, depth int, budget *uint64) error {
	if !p.IsValid() {
		return nil
	}
	if *budget == 0 {
		return errCopyAliased
	}
	*budget--
	if depth == 0 {
		return errCopyDepth
	}
	if s := p.Struct(); s.IsValid() {
		return walkStruct(s, depth-1, budget)
	}
	if l := p.List(); l.IsValid() {
		// Every element of a list has the same layout: a list whose first
		// element holds no pointer (a primitive list, Data, Text) has none.
		if l.Len() == 0 || l.Struct(0).Size().PointerCount == 0 {
			return nil
		}
		for i := 0; i < l.Len(); i++ {
			if err := walkStruct(l.Struct(i), depth-1, budget); err != nil {
				return err
			}
		}
	}
	return nil // a capability
}

// walkStruct walks the pointers of s.
func walkStruct(s capnp.Struct, depth int, budget *uint64) error {
	for i := uint16(0); i < s.Size().PointerCount; i++ {
		p, err := s.Ptr(i)
		if err != nil {
			return err
		}
		if err := walkPtr(p, depth, budget); err != nil {
			return err
		}
	}
	return nil
}

// privateContent returns p, the content of a message's payload, where the
// peer cannot change it between the engine's check and go-capnp's copy:
// p itself, unless its message was read in place from the peer's shared
// memory; then the same object in a private copy of the message
// (privateMessage). locate finds the payload's content from a message's
// root (a Call's params, a Return's results); it must lead to p in the
// original, or p is not where the engine found it and is refused.
func privateContent(p capnp.Ptr, locate func(rpccp.Message) (capnp.Ptr, error)) (capnp.Ptr, error) {
	msg := p.Message()
	if !p.IsValid() || msg == nil || !inSharedMemory(msg) {
		return p, nil
	}
	rm, err := readRootGuarded(msg, false)
	if err != nil {
		return capnp.Ptr{}, err
	}
	if at, err := locateGuarded(rm, locate); err != nil || at != p {
		return capnp.Ptr{}, errors.New("the message it is in changed while it was read")
	}
	own, err := privateMessage(msg)
	if err != nil {
		return capnp.Ptr{}, err
	}
	privateCopies.Add(1)
	// The copy's capabilities are the original's, borrowed: the copy is
	// never released, so its table releases nothing.
	ct, src := capnp.Struct(own).Message().CapTable(), msg.CapTable()
	for i := range src.Len() {
		ct.Add(src.At(i))
	}
	return locateGuarded(own, locate)
}

// privateCopies counts the messages privateContent (and an Unimplemented
// echo) copied out of shared memory, for tests.
var privateCopies atomic.Uint64

// locateGuarded is locate(rm), with a panic of go-capnp's as an error.
func locateGuarded(rm rpccp.Message, locate func(rpccp.Message) (capnp.Ptr, error)) (p capnp.Ptr, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("unreadable: %v", r)
		}
	}()
	return locate(rm)
}

// callParams and returnResults are privateContent's locate functions for
// a forwarded call's params and the results that come back for it.
func callParams(rm rpccp.Message) (capnp.Ptr, error) {
	call, err := rm.Call()
	if err != nil {
		return capnp.Ptr{}, err
	}
	return payloadContent(call.Params())
}

func returnResults(rm rpccp.Message) (capnp.Ptr, error) {
	ret, err := rm.Return()
	if err != nil {
		return capnp.Ptr{}, err
	}
	return payloadContent(ret.Results())
}

// payloadContent is a payload's content.
func payloadContent(pl rpccp.Payload, err error) (capnp.Ptr, error) {
	if err != nil {
		return capnp.Ptr{}, err
	}
	return pl.Content()
}

// privateMessage returns the root of a copy of msg's segments in this
// process's own memory, with msg's traversal limit: what checkCopyable
// checks there stays as checked, where a message read in place from the
// peer's shared memory may change between the check and the copy.
func privateMessage(msg *capnp.Message) (rpccp.Message, error) {
	n := msg.NumSegments()
	segs := make([][]byte, n)
	for i := range n {
		seg, err := msg.Segment(capnp.SegmentID(i))
		if err != nil {
			return rpccp.Message{}, err
		}
		segs[i] = bytes.Clone(seg.Data())
	}
	own := &capnp.Message{Arena: capnp.MultiSegment(segs), TraverseLimit: msg.TraverseLimit}
	return readRootGuarded(own, false)
}
