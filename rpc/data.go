package rpc

import (
	"fmt"

	capnp "capnproto.org/go/capnp/v3"
)

// maxData bounds a Data: Cap'n Proto's list limit of 2^29 elements.
const maxData = 1 << 29

// NewData allocates an n-byte Data in seg's message (the params or results
// being built) and returns it two ways: the pointer to store in the struct
// (capnp.Struct.SetPtr, with the field's pointer index) and the bytes, to
// write in place. Over shared memory they lie in this side's pool: written
// once here, read where they are by the peer, never copied (the generated
// SetData copies its argument instead).
//
// One Data holds at most 2^29-1 bytes (Cap'n Proto's list limit); a larger
// payload travels as a list of parts.
func NewData(seg *capnp.Segment, n int) (capnp.Ptr, []byte, error) {
	if n < 0 || n >= maxData {
		return capnp.Ptr{}, nil, fmt.Errorf("capnshm: NewData(%d): one Data holds 0 to %d bytes; send a larger payload as a list of parts", n, maxData-1)
	}
	l, err := capnp.NewUInt8List(seg, int32(n))
	if err != nil {
		return capnp.Ptr{}, nil, err
	}
	p := l.ToPtr()
	return p, p.Data(), nil
}
