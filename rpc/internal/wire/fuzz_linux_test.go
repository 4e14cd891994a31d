package wire

import (
	"errors"
	"io"
	"testing"
)

// FuzzFrameConn feeds a byte stream, as a peer writes it on the socket, to
// the frame reader: every frame it returns has the payload its header
// announced, every failure is an error (malformed, or the stream cut short),
// and nothing panics. Payload buffers grow only as bytes arrive, so a
// stream announcing huge frames does not allocate them.
func FuzzFrameConn(f *testing.F) {
	frame := func(typ FrameType, seq uint64, payload []byte) []byte {
		return append(rawHeader(typ, 0, uint32(len(payload)), seq), payload...)
	}
	f.Add(frame(FrameMsg, 1, make([]byte, 16)), 1<<20)
	f.Add(append(frame(FrameBye, 0, nil), frame(FrameMsg, 2, make([]byte, 8))...), 1<<20)
	f.Add(rawHeader(FrameMsg, 0, 1<<30, 1), 1<<30)
	f.Add([]byte{0x5E, 0xCA, 1, 4}, 0)
	f.Fuzz(func(t *testing.T, stream []byte, maxPayload int) {
		a, b := socketpair(t)
		go func() {
			a.Write(stream)
			a.CloseWrite()
		}()
		r := NewFrameConn(b)
		for {
			h, payload, fds, err := r.ReadFrame(maxPayload)
			if err != nil {
				if err != io.EOF && !errors.Is(err, ErrMalformed) && !errors.Is(err, io.ErrUnexpectedEOF) {
					t.Fatalf("ReadFrame: %v, want EOF, ErrMalformed or ErrUnexpectedEOF", err)
				}
				return
			}
			if len(fds) != 0 {
				t.Fatalf("%d descriptors from a stream that carries none", len(fds))
			}
			if len(payload) != int(h.Length) {
				t.Fatalf("%v frame: %d payload bytes, header says %d", h.Type, len(payload), h.Length)
			}
		}
	})
}
