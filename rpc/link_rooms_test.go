package rpc

import (
	"fmt"
	"testing"

	capnp "capnproto.org/go/capnp/v3"
	rpccp "capnproto.org/go/capnp/v3/std/capnp/rpc"
)

// oneSegment returns the bytes of a message of one segment that build
// makes.
func oneSegment(tb testing.TB, build func(rpccp.Message) error) []byte {
	tb.Helper()
	_, seg, err := capnp.NewMessage(capnp.SingleSegment(nil))
	if err != nil {
		tb.Fatal(err)
	}
	rm, err := rpccp.NewRootMessage(seg)
	if err != nil {
		tb.Fatal(err)
	}
	if err := build(rm); err != nil {
		tb.Fatal(err)
	}
	return seg.Data()
}

func returnOf(id uint32) func(rpccp.Message) error {
	return func(rm rpccp.Message) error {
		ret, err := rm.NewReturn()
		if err != nil {
			return err
		}
		ret.SetAnswerId(id)
		_, err = ret.NewResults()
		return err
	}
}

func TestPeekReturn(t *testing.T) {
	ret := oneSegment(t, returnOf(7))
	// The root pointer's offset made to point past the end, a list
	// pointer, a far pointer.
	pastEnd := append([]byte(nil), ret...)
	pastEnd[0] |= 0xfc
	pastEnd[1], pastEnd[2], pastEnd[3] = 0xff, 0xff, 0x1f
	list := append([]byte(nil), ret...)
	list[0] = list[0]&^3 | 1
	far := append([]byte(nil), ret...)
	far[0] = far[0]&^3 | 2
	for _, tt := range []struct {
		name string
		b    []byte
		id   uint32
		ok   bool
	}{
		{"a Return", ret, 7, true},
		{"a Return of question 1<<31", oneSegment(t, returnOf(1<<31)), 1 << 31, true},
		{"a Finish", oneSegment(t, func(rm rpccp.Message) error {
			f, err := rm.NewFinish()
			f.SetQuestionId(7)
			return err
		}), 0, false},
		{"a Call", oneSegment(t, func(rm rpccp.Message) error {
			c, err := rm.NewCall()
			c.SetQuestionId(7)
			return err
		}), 0, false},
		{"empty", nil, 0, false},
		{"a null root", make([]byte, 8), 0, false},
		{"cut short", ret[:16], 0, false},
		{"a root past the end", pastEnd, 0, false},
		{"a list root", list, 0, false},
		{"a far root", far, 0, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			id, ok := peekReturn(tt.b)
			if ok != tt.ok || id != tt.id {
				t.Fatalf("peekReturn = %d, %v; want %d, %v", id, ok, tt.id, tt.ok)
			}
		})
	}
}

// FuzzPeekReturn: peekReturn never panics, and whenever it names a Return
// and its question, go-capnp reads the same message as that Return (or
// cannot read it at all).
func FuzzPeekReturn(f *testing.F) {
	for _, id := range []uint32{0, 7, 1 << 31} {
		f.Add(oneSegment(f, returnOf(id)))
	}
	f.Add(oneSegment(f, func(rm rpccp.Message) error { _, err := rm.NewFinish(); return err }))
	f.Fuzz(func(t *testing.T, b []byte) {
		id, ok := peekReturn(b)
		if !ok {
			return
		}
		if err := agreesReturn(b, id); err != nil {
			t.Fatal(err)
		}
	})
}

// agreesReturn reads b with go-capnp: an error if it reads as something
// other than a Return of question id.
func agreesReturn(b []byte, id uint32) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = nil // go-capnp cannot read it: the message is refused anyway
		}
	}()
	if len(b)%8 != 0 {
		return nil
	}
	msg := &capnp.Message{Arena: capnp.SingleSegment(b)}
	rm, rerr := rpccp.ReadRootMessage(msg)
	if rerr != nil {
		return nil
	}
	if rm.Which() != rpccp.Message_Which_return {
		return fmt.Errorf("peekReturn saw a Return of question %d, go-capnp a %v", id, rm.Which())
	}
	ret, rerr := rm.Return()
	if rerr != nil {
		return nil
	}
	if ret.AnswerId() != id {
		return fmt.Errorf("peekReturn saw question %d, go-capnp %d", id, ret.AnswerId())
	}
	return nil
}
