package rpc_test

import (
	"bytes"
	"context"
	"sync/atomic"
	"testing"

	"github.com/capnshm/capnshm/internal/echoproto"
	"github.com/capnshm/capnshm/rpc"
)

// Helpers the tests share on every system.

// apiPingBoot pings boot.
func apiPingBoot(ctx context.Context, boot echoproto.Echo) error {
	f, release := boot.Ping(ctx, nil)
	defer release()
	_, err := f.Struct()
	return err
}

// countedCallback is a Callback that counts its live capabilities: go-capnp
// calls Shutdown when the last reference to one is gone.
type countedCallback struct {
	live *atomic.Int64
	echoproto.DataEcho
}

func (c countedCallback) Call(_ context.Context, call echoproto.Callback_call) error {
	res, err := call.AllocResults()
	if err != nil {
		return err
	}
	res.SetResult(call.Args().Value() * 2)
	return nil
}

func (c countedCallback) Shutdown() { c.live.Add(-1) }

// forwardToOwnCallback calls reflect on boot, then echoData on the
// reflected callback, pipelined, until the server forwards the call back
// (a round where reflect's Return wins the race is made again), and
// checks that the data comes back and whether the server made it a tail
// call. It takes over boot.
func forwardToOwnCallback(t *testing.T, boot echoproto.Echo, wantTail bool) {
	t.Helper()
	ctx := t.Context()
	defer boot.Release()
	// Not pipelined on the bootstrap: go-capnp v3.0.1-alpha.2 releases
	// the bootstrap's Return while such a call reads it (README, known
	// issues).
	if err := boot.Resolve(ctx); err != nil {
		t.Fatal(err)
	}
	var live atomic.Int64
	cb := echoproto.Callback_ServerToClient(countedCallback{live: &live})
	defer cb.Release()
	data := []byte("pipelined on the caller's own callback")
	forwarded := false
	for round := 0; round < 100 && !forwarded; round++ {
		tail0, back0 := rpc.Forwarded()
		f, release := boot.Reflect(ctx, func(p echoproto.Echo_reflect_Params) error {
			return p.SetCallback(cb.AddRef())
		})
		g, release2 := f.Callback().EchoData(ctx, func(p echoproto.Callback_echoData_Params) error {
			return p.SetData(data)
		})
		res, err := g.Struct()
		if err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		if got, err := res.Data(); err != nil || !bytes.Equal(got, data) {
			t.Fatalf("round %d: the call returned %q (%v), want %q", round, got, err, data)
		}
		release2()
		release()
		tail1, back1 := rpc.Forwarded()
		forwarded = tail1 > tail0 || back1 > back0
		if forwarded && (tail1 > tail0) != wantTail {
			t.Fatalf("round %d: forwarded as a tail call: %v, want %v", round, tail1 > tail0, wantTail)
		}
	}
	if !forwarded {
		t.Fatal("in 100 rounds, the call never went through the server")
	}
	// The connection goes on.
	if err := apiPingBoot(ctx, boot); err != nil {
		t.Fatal(err)
	}
}
