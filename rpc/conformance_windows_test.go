package rpc_test

import (
	"context"
	"testing"
	"time"

	gorpc "capnproto.org/go/capnp/v3/rpc"

	"github.com/capnshm/capnshm/internal/conformance"
	"github.com/capnshm/capnshm/internal/echoproto"
	"github.com/capnshm/capnshm/rpc"
)

// winConformanceEnv is the suite's shape on Windows: the default sizes
// (up to 64 MiB), a 256 MiB message in chunks both ways rather than
// 1 GiB (Wine backs sections with files under /tmp), 2000 calls in flight.
func winConformanceEnv(dial func(t *testing.T) *conformance.Conn) conformance.Env {
	return conformance.Env{Dial: dial, Huge: 256 << 20, Concurrent: 2000}
}

// TestWinConformance runs the conformance suite over shared memory on
// Windows, the server in another process, both sides capnshm's engine
// (Listen and Dial on a shm: address: a named pipe, sections and events
// handed over with DuplicateHandle).
func TestWinConformance(t *testing.T) {
	conformance.Run(t, winConformanceEnv(func(t *testing.T) *conformance.Conn {
		addr := winAddr(rpc.SchemeShm)
		p := startWinPeer(t, "win-serve", addr)
		p.Expect("serving")
		c := apiDial(t, addr, rpc.WithFallback(rpc.FallbackRequire))
		if !c.SharedMemory() {
			t.Fatal("a shm: connection with FallbackRequire is not on shared memory")
		}
		return &conformance.Conn{
			Boot: echoproto.Echo(c.Bootstrap(t.Context())),
			RPC:  c,
			CloseServer: func() error {
				p.Send("close")
				p.Expect("closed")
				return nil
			},
		}
	}))
}

// TestWinConformanceGoCapnp runs the suite with go-capnp's rpc.Conn on
// both sides of capnshm's Windows transport: NewTransport on DialPipe's
// and ListenPipe's connections (the server in another process).
func TestWinConformanceGoCapnp(t *testing.T) {
	env := winConformanceEnv(func(t *testing.T) *conformance.Conn {
		addr := winAddr(rpc.SchemeShm)
		a, err := rpc.ParseAddr(addr)
		if err != nil {
			t.Fatal(err)
		}
		p := startWinPeer(t, "win-serve", addr, "gocapnp")
		p.Expect("serving")
		ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
		defer cancel()
		raw, err := rpc.DialPipe(ctx, a.Endpoint)
		if err != nil {
			t.Fatal(err)
		}
		tr, err := rpc.NewTransport(ctx, raw, rpc.Dialer, rpc.WithPoolSize(winPool), rpc.WithLogger(testLogger(t)))
		if err != nil {
			t.Fatalf("handshake: %v", err)
		}
		c := gorpc.NewConn(tr, nil)
		t.Cleanup(func() { c.Close() })
		return &conformance.Conn{
			Boot: echoproto.Bootstrap(t.Context(), c),
			RPC:  c,
			CloseServer: func() error {
				p.Send("close")
				p.Expect("closed")
				return nil
			},
		}
	})
	env.GoCapnp = true // the lenient mode: go-capnp's known bugs are tolerated, and said
	conformance.Run(t, env)
}
