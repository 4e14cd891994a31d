package rpc_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/capnshm/capnshm/internal/echoproto"
	"github.com/capnshm/capnshm/rpc"
	"github.com/capnshm/capnshm/segalloc"
)

// TestMemoryExhausted: when a side's pool, dedicated mappings and heap are
// all used up, the call whose parameters (or results) cannot be built
// fails alone, with an error that says what ran out; the connection goes
// on and the memory is there again for the next call.
func TestMemoryExhausted(t *testing.T) {
	tight := []rpc.Option{rpc.WithPoolSize(rpc.MinPoolSize), rpc.WithMaxDedicated(0), rpc.WithMaxHeap(1 << 20)}
	for _, tc := range []struct {
		name         string
		listen, dial []rpc.Option
		call         func(ctx context.Context, boot echoproto.Echo) error
	}{
		{"params of the caller", nil, tight, func(ctx context.Context, boot echoproto.Echo) error {
			return apiEcho(ctx, boot, 4<<20, 1)
		}},
		{"results of the callee", tight, nil, func(ctx context.Context, boot echoproto.Echo) error {
			f, release := boot.Fill(ctx, func(p echoproto.Echo_fill_Params) error {
				p.SetSize(4 << 20)
				return nil
			})
			defer release()
			_, err := f.Struct()
			return err
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := apiServe(t, apiAddr(t, rpc.SchemeShm), append([]rpc.Option{rpc.WithFallback(rpc.FallbackRequire)}, tc.listen...)...)
			ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
			defer cancel()
			c, err := rpc.Dial(ctx, srv.Addrs()[0].String(), append([]rpc.Option{rpc.WithFallback(rpc.FallbackRequire)}, tc.dial...)...)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			boot := echoproto.Echo(c.Bootstrap(ctx))
			defer boot.Release()
			for round := range 3 {
				err := tc.call(ctx, boot)
				if err == nil || !strings.Contains(err.Error(), "no memory for segment") {
					t.Fatalf("round %d: a 4 MiB message with 1 MiB of memory: %v, want an error naming the exhaustion", round, err)
				}
				if tc.dial != nil && !errors.Is(err, segalloc.ErrExhausted) {
					t.Errorf("round %d: the caller's error does not wrap segalloc.ErrExhausted: %v", round, err)
				}
				if round == 0 {
					t.Logf("error: %v", err)
				}
				if err := apiEcho(ctx, boot, 16<<10, 2); err != nil {
					t.Fatalf("round %d: the connection after it: %v (connection: %v)", round, err, c.Err())
				}
			}
		})
	}
}
