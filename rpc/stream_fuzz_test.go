package rpc_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"testing"

	capnp "capnproto.org/go/capnp/v3"
	rpccp "capnproto.org/go/capnp/v3/std/capnp/rpc"

	"github.com/capnshm/capnshm/rpc"
)

// fuzzStream is a byte stream of fixed contents that swallows writes.
type fuzzStream struct{ r *bytes.Reader }

func (s fuzzStream) Read(p []byte) (int, error)  { return s.r.Read(p) }
func (s fuzzStream) Write(p []byte) (int, error) { return len(p), nil }
func (s fuzzStream) Close() error                { return nil }

// FuzzStreamTransport feeds arbitrary bytes to StreamTransport's reader
// (what a peer on a unix or tcp socket controls entirely): it must never
// panic, every message it delivers is within the limit and readable, and
// every failure is one of the transport's errors.
func FuzzStreamTransport(f *testing.F) {
	frame := func(segs ...[]byte) []byte {
		hdr := make([]byte, (len(segs)/2+1)*8)
		binary.LittleEndian.PutUint32(hdr, uint32(len(segs)-1))
		for i, s := range segs {
			binary.LittleEndian.PutUint32(hdr[4+4*i:], uint32(len(s)/8))
		}
		out := hdr
		for _, s := range segs {
			out = append(out, s...)
		}
		return out
	}
	msg, seg := capnp.NewSingleSegmentMessage(nil)
	rm, _ := rpccp.NewRootMessage(seg)
	bs, _ := rm.NewBootstrap()
	bs.SetQuestionId(7)
	good, _ := msg.Marshal()
	f.Add(good)
	f.Add(append(append([]byte{}, good...), good...))
	f.Add(frame(make([]byte, 8), make([]byte, 16), make([]byte, 8)))
	f.Add(frame(make([]byte, 0)))
	f.Add([]byte{0xff, 0xff, 0xff, 0xff})
	f.Add([]byte{0, 0, 0, 0, 0xff, 0xff, 0xff, 0x7f}) // a 16 GiB segment, announced
	f.Add(frame(make([]byte, 80<<10)))                // larger than one buffer
	f.Add(good[:len(good)-3])
	const limit = 1 << 20
	f.Fuzz(func(t *testing.T, data []byte) {
		tr, err := rpc.NewStreamTransport(fuzzStream{bytes.NewReader(data)}, rpc.WithMaxMessage(limit))
		if err != nil {
			t.Fatal(err)
		}
		defer tr.Close()
		for range 64 {
			in, err := tr.RecvMessage()
			if err != nil {
				if !errors.Is(err, rpc.ErrDisconnected) && !errors.Is(err, rpc.ErrProtocol) && !errors.Is(err, rpc.ErrTooLarge) {
					t.Fatalf("RecvMessage: %v: not one of the transport's errors", err)
				}
				return
			}
			m := in.Message()
			// A null root reads as a message of kind 0 with no segment.
			if msg := capnp.Struct(m).Message(); msg != nil {
				total, err := msg.TotalSize()
				if err != nil || total > limit {
					t.Fatalf("delivered a message of %d bytes (%v), limit %d", total, err, limit)
				}
			}
			_ = m.Which()
			in.Release()
		}
	})
}

var _ io.ReadWriteCloser = fuzzStream{}
