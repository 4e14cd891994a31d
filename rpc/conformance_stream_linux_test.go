package rpc_test

import (
	"context"
	"fmt"
	"os"
	"sync/atomic"
	"testing"
	"time"

	capnp "capnproto.org/go/capnp/v3"

	"github.com/capnshm/capnshm/internal/conformance"
	"github.com/capnshm/capnshm/internal/echoproto"
	"github.com/capnshm/capnshm/rpc"
)

var streamServers atomic.Int64

// TestConformanceStream runs the conformance suite over the fallback path:
// Listen and Dial on a unix: address, go-capnp's stream transport on a real
// socket.
func TestConformanceStream(t *testing.T) {
	conformance.Run(t, conformance.Env{
		Dial: func(t *testing.T) *conformance.Conn {
			addr := fmt.Sprintf("unix-abstract:capnshm-conformance-%d-%d", os.Getpid(), streamServers.Add(1))
			srv, err := rpc.Listen(addr, capnp.Client(echoproto.Echo_ServerToClient(&echoproto.Server{})))
			if err != nil {
				t.Fatal(err)
			}
			go srv.Serve(context.Background())
			t.Cleanup(func() { srv.Close() })
			ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
			defer cancel()
			c, err := rpc.Dial(ctx, addr)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { c.Close() })
			if c.SharedMemory() {
				t.Fatal("a unix: address ran on shared memory")
			}
			return &conformance.Conn{
				Boot:        echoproto.Echo(c.Bootstrap(t.Context())),
				RPC:         c,
				CloseServer: srv.Close,
			}
		},
		Sizes:      []int{0, 1, 1 << 20},
		Concurrent: 2000,
	})
}
