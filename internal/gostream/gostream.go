// Package gostream is go-capnp's own stream transport (transport.New over
// capnp's Encoder and Decoder, unpacked) with its message size and
// traversal limits raised, so that benchmarks can compare it with
// capnshm's transports on messages over go-capnp's 64 MiB default.
// Nothing else differs from transport.NewStream (New) and transport.NewPipe
// (NewPipe).
package gostream

import (
	"io"

	capnp "capnproto.org/go/capnp/v3"
	"capnproto.org/go/capnp/v3/rpc/transport"
)

// New returns go-capnp's stream transport over rwc, accepting messages of
// up to limit bytes and reading each up to limit bytes.
func New(rwc io.ReadWriteCloser, limit uint64) transport.Transport {
	d := capnp.NewDecoder(rwc)
	d.MaxMessageSize = limit
	return transport.New(&codec{Decoder: d, Encoder: capnp.NewEncoder(rwc), Closer: rwc, limit: limit})
}

type codec struct {
	*capnp.Decoder
	*capnp.Encoder
	io.Closer
	limit uint64
}

func (c *codec) Decode() (*capnp.Message, error) {
	m, err := c.Decoder.Decode()
	if err == nil {
		m.ResetReadLimit(c.limit)
	}
	return m, err
}

// NewPipe returns the two ends of go-capnp's in-process pipe
// (transport.NewPipe, queues of depth messages), each reading every
// message up to limit bytes.
func NewPipe(depth int, limit uint64) (transport.Transport, transport.Transport) {
	a, b := transport.NewPipe(depth)
	return transport.New(&pipeCodec{Codec: a, limit: limit}), transport.New(&pipeCodec{Codec: b, limit: limit})
}

type pipeCodec struct {
	transport.Codec
	limit uint64
}

func (c *pipeCodec) Decode() (*capnp.Message, error) {
	m, err := c.Codec.Decode()
	if err == nil {
		m.ResetReadLimit(c.limit)
	}
	return m, err
}
