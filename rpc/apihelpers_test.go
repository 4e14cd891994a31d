package rpc_test

import (
	"bytes"
	"context"
	"fmt"
	"testing"
	"time"

	capnp "capnproto.org/go/capnp/v3"

	"github.com/capnshm/capnshm/internal/echoproto"
	"github.com/capnshm/capnshm/rpc"
)

// The in-process server, client and echo check of the API tests, on both
// systems.

// apiServe listens on addr with an echo server, serves it, and closes it
// when the test ends.
func apiServe(t *testing.T, addr string, opts ...rpc.Option) *rpc.Server {
	t.Helper()
	boot := capnp.Client(echoproto.Echo_ServerToClient(&echoproto.Server{}))
	opts = append([]rpc.Option{rpc.WithPoolSize(2 << 20), rpc.WithLogger(testLogger(t))}, opts...)
	srv, err := rpc.Listen(addr, boot, opts...)
	if err != nil {
		t.Fatalf("Listen(%q): %v", addr, err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(context.Background()) }()
	t.Cleanup(func() {
		srv.Close()
		select {
		case err := <-served:
			if err != nil {
				t.Errorf("Serve: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Error("Serve did not return after Close")
		}
	})
	return srv
}

// apiDial dials addr from this process; the connection closes when the
// test ends.
func apiDial(t *testing.T, addr string, opts ...rpc.Option) *rpc.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	opts = append([]rpc.Option{rpc.WithPoolSize(2 << 20), rpc.WithLogger(testLogger(t))}, opts...)
	c, err := rpc.Dial(ctx, addr, opts...)
	if err != nil {
		t.Fatalf("Dial(%q): %v", addr, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// apiEcho echoes n bytes of a pattern and checks what comes back.
func apiEcho(ctx context.Context, boot echoproto.Echo, n int, seed byte) error {
	f, release := boot.Echo(ctx, func(p echoproto.Echo_echo_Params) error {
		ptr, b, err := echoproto.NewData(p.Segment(), n)
		if err != nil {
			return err
		}
		echoproto.FillPattern(b, seed, 0)
		return capnp.Struct(p).SetPtr(0, ptr)
	})
	defer release()
	res, err := f.Struct()
	if err != nil {
		return err
	}
	d, err := res.Data()
	if err != nil {
		return err
	}
	want := make([]byte, n)
	echoproto.FillPattern(want, seed, 0)
	if !bytes.Equal(d, want) {
		return fmt.Errorf("echo of %d bytes came back wrong (%d bytes)", n, len(d))
	}
	return nil
}
