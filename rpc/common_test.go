package rpc_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/capnshm/capnshm/internal/echoproto"
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
type countedCallback struct{ live *atomic.Int64 }

func (c countedCallback) Call(_ context.Context, call echoproto.Callback_call) error {
	res, err := call.AllocResults()
	if err != nil {
		return err
	}
	res.SetResult(call.Args().Value() * 2)
	return nil
}

func (c countedCallback) Shutdown() { c.live.Add(-1) }

// liveObjects asks the server how many of its capabilities are alive.
func liveObjects(ctx context.Context, boot echoproto.Echo) (int64, error) {
	f, release := boot.LiveObjects(ctx, nil)
	defer release()
	res, err := f.Struct()
	if err != nil {
		return 0, err
	}
	return res.Count(), nil
}

// eventually waits, with a bound, until cond holds; cond reports what it
// saw for the error.
func eventually(t *testing.T, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		ok, saw := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: still %s after 30 s", what, saw)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
