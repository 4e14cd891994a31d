package rpc_test

import (
	"errors"
	"net"
	"strings"
	"testing"

	capnp "capnproto.org/go/capnp/v3"
	"capnproto.org/go/capnp/v3/rpc/transport"
	rpccp "capnproto.org/go/capnp/v3/std/capnp/rpc"

	"github.com/capnshm/capnshm/rpc"
)

// TestReceivedReadLimits: a received message cannot make its reader do
// more work than its size allows. The peer sends a 72 KiB call whose
// parameters are a list of 1,000 pointers to the same 64 KiB Data (the
// encoding allows pointers to alias); reading every element would read
// 64 MiB. The receiving transport's traversal limit (a few times the
// message's size) stops the reader with an error long before, on shared
// memory and on the stream transport alike; and a chain of structs nested
// deeper than the nesting limit fails to read past it, without a crash.
func TestReceivedReadLimits(t *testing.T) {
	type pair struct{ send, recv transport.Transport }
	for _, tc := range []struct {
		name string
		make func(t *testing.T) pair
	}{
		{"shm", func(t *testing.T) pair {
			d, l := transportPair(t)
			t.Cleanup(func() { d.Close(); l.Close() })
			return pair{d, l}
		}},
		{"stream", func(t *testing.T) pair {
			a, b := net.Pipe()
			s, err1 := rpc.NewStreamTransport(a)
			r, err2 := rpc.NewStreamTransport(b)
			if err := errors.Join(err1, err2); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { s.Close(); r.Close() })
			return pair{s, r}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := tc.make(t)
			const n, size = 1000, 64 << 10
			content := sendCall(t, p.send, func(st capnp.Struct) error {
				data, err := capnp.NewData(st.Segment(), make([]byte, size))
				if err != nil {
					return err
				}
				list, err := capnp.NewPointerList(st.Segment(), n)
				if err != nil {
					return err
				}
				for i := range n {
					if err := list.Set(i, data.ToPtr()); err != nil { // aliases: same message
						return err
					}
				}
				return st.SetPtr(0, list.ToPtr())
			}, p.recv)
			defer content.release()

			ptr, err := content.st.Ptr(0)
			if err != nil {
				t.Fatal(err)
			}
			list := ptr.List()
			read, total := 0, 0
			for i := range n {
				e, err := capnp.PointerList(list).At(i)
				if err == nil {
					total += len(e.Data())
					if len(e.Data()) == size {
						read++
						continue
					}
				}
				break
			}
			if read == n || total >= n*size {
				t.Fatalf("read all %d aliases (%d bytes) of a %d-element list in a small message: no traversal limit", read, total, n)
			}
			t.Logf("the traversal limit stopped the reader after %d of %d aliases (%d KiB)", read, n, total>>10)

			// Structs nested 200 deep, in a message of their own.
			nested := sendCall(t, p.send, func(st capnp.Struct) error {
				cur := st
				for range 200 {
					next, err := capnp.NewStruct(st.Segment(), capnp.ObjectSize{PointerCount: 2})
					if err != nil {
						return err
					}
					if err := cur.SetPtr(1, next.ToPtr()); err != nil {
						return err
					}
					cur = next
				}
				return nil
			}, p.recv)
			defer nested.release()
			cur, depth := nested.st, 0
			var stop error
			for ; depth < 200; depth++ {
				next, err := cur.Ptr(1)
				if err != nil {
					stop = err
					break
				}
				cur = next.Struct()
			}
			if stop == nil || !strings.Contains(stop.Error(), "depth limit") {
				t.Fatalf("read structs nested %d deep (stopped by %v): want the nesting limit to stop the reader", depth, stop)
			}
			t.Logf("the nesting limit stopped the reader at depth %d: %v", depth, stop)
		})
	}
}

// received is a received call's parameter struct, with its message.
type received struct {
	st      capnp.Struct
	release func()
}

// sendCall sends a Call whose parameter struct (2 pointers) build fills,
// on s, and returns that struct as r received it.
func sendCall(t *testing.T, s transport.Transport, build func(capnp.Struct) error, r transport.Transport) received {
	t.Helper()
	out, err := s.NewMessage()
	if err != nil {
		t.Fatal(err)
	}
	call, err := out.Message().NewCall()
	if err != nil {
		t.Fatal(err)
	}
	call.SetQuestionId(1)
	params, err := call.NewParams()
	if err != nil {
		t.Fatal(err)
	}
	st, err := capnp.NewStruct(call.Segment(), capnp.ObjectSize{PointerCount: 2})
	if err == nil {
		err = build(st)
	}
	if err == nil {
		err = params.SetContent(st.ToPtr())
	}
	if err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() { errc <- out.Send() }()
	in, err := r.RecvMessage()
	if err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	out.Release()
	m := in.Message()
	if m.Which() != rpccp.Message_Which_call {
		t.Fatalf("received a %v", m.Which())
	}
	c, err := m.Call()
	if err != nil {
		t.Fatal(err)
	}
	rp, err := c.Params()
	if err != nil {
		t.Fatal(err)
	}
	content, err := rp.Content()
	if err != nil {
		t.Fatal(err)
	}
	return received{st: content.Struct(), release: in.Release}
}
