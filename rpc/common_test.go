package rpc_test

import (
	"context"
	"sync/atomic"

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
