package rpc_test

import (
	"context"
	"testing"
	"time"

	"github.com/capnshm/capnshm/internal/echoproto"
	"github.com/capnshm/capnshm/rpc"
)

// TestOneMaxMessageRule: the default max message is the same on every
// transport, so a 100 MiB call that works over shared memory works when
// the connection falls back to its socket, and over unix: and tcp:
// (falling back used to lower it to go-capnp's 64 MiB and end the
// connection).
func TestOneMaxMessageRule(t *testing.T) {
	for _, tc := range []struct {
		name      string
		scheme    rpc.Scheme
		listenOpt []rpc.Option
		wantShm   bool
	}{
		{"shm", rpc.SchemeShm, nil, true},
		{"shm fallen back", rpc.SchemeShm, []rpc.Option{rpc.WithFallback(rpc.FallbackNever)}, false},
		{"unix", rpc.SchemeUnix, nil, false},
		{"tcp", rpc.SchemeTCP, nil, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := apiServe(t, apiAddr(t, tc.scheme), tc.listenOpt...)
			ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
			defer cancel()
			c, err := rpc.Dial(ctx, srv.Addrs()[0].String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if c.SharedMemory() != tc.wantShm {
				t.Fatalf("SharedMemory() = %v, want %v", c.SharedMemory(), tc.wantShm)
			}
			boot := echoproto.Echo(c.Bootstrap(ctx))
			defer boot.Release()
			if err := apiEcho(ctx, boot, 100<<20, 7); err != nil {
				t.Fatalf("a 100 MiB echo: %v", err)
			}
			if err := apiEcho(ctx, boot, 64, 8); err != nil {
				t.Fatalf("the connection after it: %v", err)
			}
		})
	}
}
