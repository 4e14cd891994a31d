package rpc_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/capnshm/capnshm/internal/echoproto"
	"github.com/capnshm/capnshm/rpc"
)

// TestCapabilitiesReleased: a long-lived connection that obtains and drops
// 1,000 capabilities in results, and passes 1,000 in params the other way,
// ends with the objects of both sides shut down while it stays open. Over
// shared memory the transport never released the cap table of a received
// message (go-capnp relies on IncomingMessage.Release for that), so every
// received capability kept a reference until the connection closed.
func TestCapabilitiesReleased(t *testing.T) {
	for _, scheme := range []rpc.Scheme{rpc.SchemeShm, rpc.SchemeUnix} {
		t.Run(string(scheme), func(t *testing.T) {
			addr := apiAddr(t, scheme)
			srv := apiServe(t, addr)
			c := apiDial(t, srv.Addr().String())
			if c.SharedMemory() != (scheme == rpc.SchemeShm) {
				t.Fatalf("shared memory %v on %s", c.SharedMemory(), scheme)
			}
			ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
			defer cancel()
			boot := echoproto.Echo(c.Bootstrap(ctx))
			defer boot.Release()
			base, err := liveObjects(ctx, boot)
			if err != nil {
				t.Fatal(err)
			}
			const n = 1000
			// Capabilities in results: made by the server, dropped here.
			for i := 0; i < n; i++ {
				f, release := boot.Counter(ctx, func(p echoproto.Echo_counter_Params) error {
					p.SetStart(int64(i))
					return nil
				})
				ctr := f.Counter()
				g, rel2 := ctr.Get(ctx, nil)
				res, err := g.Struct()
				if err != nil {
					t.Fatalf("counter %d: %v", i, err)
				}
				if res.Value() != int64(i) {
					t.Fatalf("counter %d reads %d", i, res.Value())
				}
				rel2()
				release()
			}
			eventually(t, "server objects after dropping the returned counters", func() (bool, string) {
				live, err := liveObjects(ctx, boot)
				return err == nil && live == base, fmt.Sprintf("%d live (base %d), err %v", live, base, err)
			})
			// Capabilities in params: made here, released by the server
			// once its call returns.
			var live atomic.Int64
			for i := 0; i < n; i++ {
				live.Add(1)
				cb := echoproto.Callback_ServerToClient(countedCallback{&live})
				f, release := boot.CallBack(ctx, func(p echoproto.Echo_callBack_Params) error {
					p.SetValue(int64(i))
					return p.SetCallback(cb)
				})
				res, err := f.Struct()
				if err != nil {
					t.Fatalf("callBack %d: %v", i, err)
				}
				if res.Result() != int64(2*i+1) {
					t.Fatalf("callBack %d: %d", i, res.Result())
				}
				release()
			}
			eventually(t, "client callbacks after the server's calls returned", func() (bool, string) {
				return live.Load() == 0, fmt.Sprintf("%d live", live.Load())
			})
			if err := apiPingBoot(ctx, boot); err != nil {
				t.Fatalf("the connection after the releases: %v", err)
			}
		})
	}
}

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
