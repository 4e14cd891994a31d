package rpc

import (
	"encoding/binary"
	"errors"
	"testing"

	capnp "capnproto.org/go/capnp/v3"
	rpccp "capnproto.org/go/capnp/v3/std/capnp/rpc"
)

// rawMessage is a one-segment message of words, as a peer could write it.
func rawMessage(t *testing.T, words ...uint64) *capnp.Message {
	t.Helper()
	b := make([]byte, 8*len(words))
	for i, w := range words {
		binary.LittleEndian.PutUint64(b[8*i:], w)
	}
	msg, err := capnp.Unmarshal(append(binary.LittleEndian.AppendUint32(binary.LittleEndian.AppendUint32(nil, 0), uint32(len(words))), b...))
	if err != nil {
		t.Fatal(err)
	}
	return msg
}

// structPtr and compositeListPtr encode pointers (offset in words from
// the end of the pointer).
func structPtr(off int32, data, ptrs uint16) uint64 {
	return uint64(uint32(off)<<2) | uint64(data)<<32 | uint64(ptrs)<<48
}

func compositeListPtr(off int32, words uint32) uint64 {
	return 1 | uint64(uint32(off)<<2) | 7<<32 | uint64(words)<<35
}

// chain builds a message of n structs, each pointing to the next.
func chain(t *testing.T, n int) capnp.Ptr {
	t.Helper()
	_, seg, err := capnp.NewMessage(capnp.SingleSegment(nil))
	if err != nil {
		t.Fatal(err)
	}
	root, err := capnp.NewRootStruct(seg, capnp.ObjectSize{PointerCount: 1})
	if err != nil {
		t.Fatal(err)
	}
	cur := root
	for range n - 1 {
		next, err := capnp.NewStruct(seg, capnp.ObjectSize{PointerCount: 1})
		if err != nil {
			t.Fatal(err)
		}
		if err := cur.SetPtr(0, next.ToPtr()); err != nil {
			t.Fatal(err)
		}
		cur = next
	}
	return root.ToPtr()
}

// diamonds builds a message of n levels, each struct's two pointers at
// the same struct of the next level: 2n+1 words, 2^n paths.
func diamonds(t *testing.T, n int) capnp.Ptr {
	t.Helper()
	_, seg, err := capnp.NewMessage(capnp.SingleSegment(nil))
	if err != nil {
		t.Fatal(err)
	}
	sz := capnp.ObjectSize{PointerCount: 2}
	root, err := capnp.NewRootStruct(seg, sz)
	if err != nil {
		t.Fatal(err)
	}
	cur := root
	for range n {
		next, err := capnp.NewStruct(seg, sz)
		if err != nil {
			t.Fatal(err)
		}
		for i := range uint16(2) {
			if err := cur.SetPtr(i, next.ToPtr()); err != nil {
				t.Fatal(err)
			}
		}
		cur = next
	}
	return root.ToPtr()
}

func TestCheckCopyable(t *testing.T) {
	// A struct whose one pointer is a list of one struct whose one pointer
	// is the struct again: the cycle through a list of structs that made
	// go-capnp's copy overflow the stack (FuzzEngineMessages found it).
	cycle := rawMessage(t,
		structPtr(0, 0, 1),     // root -> word 1
		compositeListPtr(0, 1), // word 1: -> the list at word 2
		structPtr(1, 0, 1),     // word 2: the list's tag: 1 element of 0 data, 1 pointer
		structPtr(-3, 0, 1),    // word 3: the element's pointer -> word 1
	)
	cycleRoot, err := cycle.Root()
	if err != nil {
		t.Fatal(err)
	}
	text := func() capnp.Ptr {
		_, seg, _ := capnp.NewMessage(capnp.SingleSegment(nil))
		st, _ := capnp.NewRootStruct(seg, capnp.ObjectSize{PointerCount: 1})
		if err := st.SetText(0, "hello"); err != nil {
			t.Fatal(err)
		}
		return st.ToPtr()
	}()
	for _, tt := range []struct {
		name string
		p    capnp.Ptr
		want error
	}{
		{"null", capnp.Ptr{}, nil},
		{"a struct with text", text, nil},
		{"a chain 60 deep", chain(t, 60), nil},
		{"a chain 100 deep", chain(t, 100), errCopyDepth},
		{"a cycle through a list of structs", cycleRoot, errCopyAliased},
		{"2^40 paths over 81 words", diamonds(t, 40), errCopyAliased},
	} {
		t.Run(tt.name, func(t *testing.T) {
			err := checkCopyable(tt.p)
			if !errors.Is(err, tt.want) {
				t.Fatalf("checkCopyable = %v, want %v", err, tt.want)
			}
			if err == nil && tt.p.IsValid() {
				// What passes can be copied.
				_, seg, _ := capnp.NewMessage(capnp.SingleSegment(nil))
				dst, _ := capnp.NewRootStruct(seg, capnp.ObjectSize{PointerCount: 1})
				if err := dst.SetPtr(0, tt.p); err != nil {
					t.Fatalf("copy: %v", err)
				}
			}
		})
	}
}

// sharedCall builds a Call whose params hold a struct with one Data field
// and one capability, and returns it as a message read in place from a
// peer's memory (an roArena marked shared over the built segment, which
// the test then rewrites as the peer could), with that segment.
func sharedCall(t *testing.T, cap capnp.Client) (*capnp.Message, []byte) {
	t.Helper()
	msg, seg, err := capnp.NewMessage(capnp.SingleSegment(nil))
	if err != nil {
		t.Fatal(err)
	}
	rm, err := rpccp.NewRootMessage(seg)
	if err != nil {
		t.Fatal(err)
	}
	call, err := rm.NewCall()
	if err != nil {
		t.Fatal(err)
	}
	pl, err := call.NewParams()
	if err != nil {
		t.Fatal(err)
	}
	st, err := capnp.NewStruct(pl.Segment(), capnp.ObjectSize{PointerCount: 2})
	if err != nil {
		t.Fatal(err)
	}
	if err := st.SetData(0, []byte("the peer's params")); err != nil {
		t.Fatal(err)
	}
	id := msg.CapTable().Add(cap)
	if err := st.SetPtr(1, capnp.NewInterface(pl.Segment(), id).ToPtr()); err != nil {
		t.Fatal(err)
	}
	if err := pl.SetContent(st.ToPtr()); err != nil {
		t.Fatal(err)
	}
	s0, err := msg.Segment(0)
	if err != nil {
		t.Fatal(err)
	}
	b := s0.Data()
	in := &capnp.Message{Arena: &roArena{segs: [][]byte{b}, shared: true}, TraverseLimit: 1 << 20}
	in.CapTable().Reset(cap.AddRef())
	return in, b
}

// TestPrivateContent: a forwarded call's params in a message read in
// place from shared memory are copied out of it before they are checked
// and copied (the peer's later writes do not reach them, and their
// capabilities come along); elsewhere they are used as they are; and a
// pointer that is not where the call's params are is refused.
func TestPrivateContent(t *testing.T) {
	cap := capnp.ErrorClient(errors.New("a capability"))
	defer cap.Release()
	in, mem := sharedCall(t, cap)
	rm, err := readRootGuarded(in, false)
	if err != nil {
		t.Fatal(err)
	}
	params, err := callParams(rm)
	if err != nil {
		t.Fatal(err)
	}

	// As forward passes them: the Recv's Args struct, as a pointer.
	got, err := privateContent(params.Struct().ToPtr(), callParams)
	if err != nil {
		t.Fatal(err)
	}
	if got.Message() == in {
		t.Fatal("params read in place from shared memory were not copied out of it")
	}
	clear(mem) // the peer rewrites its memory after the check
	d, err := got.Struct().Ptr(0)
	if err != nil || string(d.Data()) != "the peer's params" {
		t.Fatalf("the private params read %q (%v) after the peer rewrote its memory", d.Data(), err)
	}
	ip, err := got.Struct().Ptr(1)
	if err != nil {
		t.Fatal(err)
	}
	if c := ip.Interface().Client(); !c.IsSame(cap) {
		t.Fatal("the private params lost their capability")
	}

	// Not in shared memory: used as is.
	local, _ := sharedCall(t, cap)
	local.Arena.(*roArena).shared = false
	lrm, _ := readRootGuarded(local, false)
	lp, _ := callParams(lrm)
	if got, err := privateContent(lp, callParams); err != nil || got != lp {
		t.Fatalf("params in private memory: got %v, %v; want them as they are", got, err)
	}

	// A pointer that is not the call's params (the peer changed the
	// message between the engine's decoding and this, or the caller got
	// it elsewhere): refused.
	other, _ := sharedCall(t, cap)
	orm, _ := readRootGuarded(other, false)
	call, _ := orm.Call()
	if _, err := privateContent(call.ToPtr(), callParams); err == nil {
		t.Fatal("a pointer elsewhere in the message was taken for the call's params")
	}
	// A message whose root is no longer a Call.
	clear(mem)
	if _, err := privateContent(params, callParams); err == nil {
		t.Fatal("params of a message that is no longer a Call were accepted")
	}
}

// TestPrivateResults: the results of a forwarded call, in a Return read
// in place from shared memory, are copied out of it too (copyResults), and
// a Return's results are not taken for a Call's params.
func TestPrivateResults(t *testing.T) {
	msg, seg, err := capnp.NewMessage(capnp.SingleSegment(nil))
	if err != nil {
		t.Fatal(err)
	}
	rm, _ := rpccp.NewRootMessage(seg)
	ret, _ := rm.NewReturn()
	pl, err := ret.NewResults()
	if err != nil {
		t.Fatal(err)
	}
	st, _ := capnp.NewStruct(pl.Segment(), capnp.ObjectSize{PointerCount: 1})
	if err := st.SetData(0, []byte("the peer's results")); err != nil {
		t.Fatal(err)
	}
	if err := pl.SetContent(st.ToPtr()); err != nil {
		t.Fatal(err)
	}
	s0, _ := msg.Segment(0)
	in := &capnp.Message{Arena: &roArena{segs: [][]byte{s0.Data()}, shared: true}, TraverseLimit: 1 << 20}
	irm, err := readRootGuarded(in, false)
	if err != nil {
		t.Fatal(err)
	}
	results, err := returnResults(irm)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := privateContent(results, callParams); err == nil {
		t.Fatal("a Return's results were taken for a Call's params")
	}
	got, err := privateContent(results, returnResults)
	if err != nil {
		t.Fatal(err)
	}
	if got.Message() == in {
		t.Fatal("results read in place from shared memory were not copied out of it")
	}
	clear(s0.Data())
	if d, err := got.Struct().Ptr(0); err != nil || string(d.Data()) != "the peer's results" {
		t.Fatalf("the private results read %q (%v) after the peer rewrote its memory", d.Data(), err)
	}
}
