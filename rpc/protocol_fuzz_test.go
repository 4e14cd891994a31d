package rpc

import (
	"encoding/binary"
	"testing"
	"time"

	capnp "capnproto.org/go/capnp/v3"
	rpccp "capnproto.org/go/capnp/v3/std/capnp/rpc"

	"github.com/capnshm/capnshm/internal/echoproto"
)

// FuzzEngineMessages feeds the engine arbitrary messages, as a peer would
// send them: whatever they hold, the engine answers, aborts or ignores,
// never panics, and its connection closes within a bound.
func FuzzEngineMessages(f *testing.F) {
	seed := func(builds ...func(rpccp.Message) error) {
		var b []byte
		for _, build := range builds {
			msg, seg := capnp.NewMultiSegmentMessage(nil)
			rm, _ := rpccp.NewRootMessage(seg)
			if err := build(rm); err != nil {
				f.Fatal(err)
			}
			data, err := msg.Marshal()
			if err != nil {
				f.Fatal(err)
			}
			b = binary.LittleEndian.AppendUint32(b, uint32(len(data)))
			b = append(b, data...)
		}
		f.Add(b)
	}
	boot := func(m rpccp.Message) error { b, err := m.NewBootstrap(); b.SetQuestionId(0); return err }
	call := func(q uint32, target func(rpccp.MessageTarget) error, method uint16) func(rpccp.Message) error {
		return func(m rpccp.Message) error {
			c, err := m.NewCall()
			if err != nil {
				return err
			}
			c.SetQuestionId(q)
			c.SetInterfaceId(echoproto.Echo_TypeID)
			c.SetMethodId(method)
			t, err := c.NewTarget()
			if err != nil {
				return err
			}
			if err := target(t); err != nil {
				return err
			}
			p, err := c.NewParams()
			if err != nil {
				return err
			}
			st, err := capnp.NewStruct(p.Segment(), capnp.ObjectSize{DataSize: 16, PointerCount: 2})
			if err != nil {
				return err
			}
			return p.SetContent(st.ToPtr())
		}
	}
	finish := func(q uint32) func(rpccp.Message) error {
		return func(m rpccp.Message) error { x, err := m.NewFinish(); x.SetQuestionId(q); return err }
	}
	release := func(id, n uint32) func(rpccp.Message) error {
		return func(m rpccp.Message) error { r, err := m.NewRelease(); r.SetId(id); r.SetReferenceCount(n); return err }
	}
	seed(boot)
	seed(boot, call(1, importedCap(0), mPing), finish(1), finish(0))
	seed(boot, call(1, importedCap(0), mCounter), call(2, promisedAnswer(1, 0), 0), finish(1), finish(2))
	seed(call(1, promisedAnswer(0), mCounter), boot, release(0, 1))
	seed(boot, release(0, 3))
	f.Fuzz(func(t *testing.T, data []byte) {
		p := newRawPeer(t)
		go func() { // what the engine sends is read and dropped
			for {
				select {
				case <-p.tr.out:
				case <-p.tr.closed:
					return
				}
			}
		}()
		for len(data) >= 4 {
			n := int(binary.LittleEndian.Uint32(data))
			data = data[4:]
			if n > len(data) {
				n = len(data)
			}
			msg, err := capnp.Unmarshal(data[:n])
			data = data[n:]
			if err != nil {
				continue
			}
			if _, err := readRoot(msg); err != nil {
				continue // the transports refuse these
			}
			select {
			case p.tr.in <- msg:
			case <-p.conn.Done():
			}
		}
		done := make(chan struct{})
		go func() { p.conn.Close(); close(done) }()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			t.Fatal("Close did not finish")
		}
	})
}
