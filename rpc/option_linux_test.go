package rpc_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	capnp "capnproto.org/go/capnp/v3"

	"github.com/capnshm/capnshm/internal/echoproto"
	"github.com/capnshm/capnshm/ringbuf"
	"github.com/capnshm/capnshm/rpc"
)

// badOptions are options out of their range, each with the text its error
// must contain.
var badOptions = []struct {
	name string
	opt  []rpc.Option
	want string
}{
	{"pool 1", []rpc.Option{rpc.WithPoolSize(1)}, "WithPoolSize(1): want a multiple of 65536 from 65536 to"},
	{"pool negative", []rpc.Option{rpc.WithPoolSize(-4 << 20)}, "WithPoolSize(-4194304)"},
	{"pool unaligned", []rpc.Option{rpc.WithPoolSize(3<<20 + 4096)}, "WithPoolSize(3149824)"},
	{"pool too large", []rpc.Option{rpc.WithPoolSize(rpc.MaxPoolSize + rpc.PoolSizeUnit)}, "WithPoolSize("},
	{"ring 1000", []rpc.Option{rpc.WithRingCapacity(1000)}, "WithRingCapacity(1000): want a power of two from 4096 to 1073741824"},
	{"ring small", []rpc.Option{rpc.WithRingCapacity(2048)}, "WithRingCapacity(2048)"},
	{"ring negative", []rpc.Option{rpc.WithRingCapacity(-1)}, "WithRingCapacity(-1)"},
	{"max message small", []rpc.Option{rpc.WithMaxMessage(100)}, "WithMaxMessage(100): want 4096 to"},
	{"max message negative", []rpc.Option{rpc.WithMaxMessage(-1)}, "WithMaxMessage(-1)"},
	{"inline negative", []rpc.Option{rpc.WithInlineMax(-1)}, "WithInlineMax(-1): want 0 (never inline) to 65536 bytes"},
	{"inline large", []rpc.Option{rpc.WithInlineMax(1 << 20)}, "WithInlineMax(1048576)"},
	{"inline over the ring", []rpc.Option{rpc.WithRingCapacity(4096), rpc.WithInlineMax(4096)}, "WithInlineMax(4096) does not fit a ring of capacity 4096 (WithRingCapacity)"},
	{"dedicated negative", []rpc.Option{rpc.WithMaxDedicated(-5)}, "WithMaxDedicated(-5)"},
	{"heap negative", []rpc.Option{rpc.WithMaxHeap(-5)}, "WithMaxHeap(-5)"},
	{"cache negative", []rpc.Option{rpc.WithMappingCache(-1, time.Second)}, "WithMappingCache(-1, 1s)"},
	{"cache idle zero", []rpc.Option{rpc.WithMappingCache(1<<20, 0)}, "want an idle time of at least 1ms"},
	{"strategy", []rpc.Option{rpc.WithWaitStrategy(ringbuf.WaitStrategy(42))}, "WithWaitStrategy("},
	{"spin negative", []rpc.Option{rpc.WithSpinTime(-time.Second)}, "WithSpinTime(-1s)"},
	{"yield negative", []rpc.Option{rpc.WithYieldTime(-time.Millisecond)}, "WithYieldTime(-1ms)"},
	{"handshake zero", []rpc.Option{rpc.WithHandshakeTimeout(0)}, "WithHandshakeTimeout(0s): want a positive duration"},
	{"fallback", []rpc.Option{rpc.WithFallback(rpc.Fallback(7))}, "WithFallback(Fallback(7))"},
	{"flow window", []rpc.Option{rpc.WithFlowWindow(-1)}, "WithFlowWindow(-1)"},
}

// TestBadOptions: an invalid option is an error from Listen, Server.Listen,
// Dial and NewTransport, naming the option and its range, on shm: addresses
// too (it used to turn shared memory off silently, with an INFO line saying
// "refused").
func TestBadOptions(t *testing.T) {
	dir := t.TempDir()
	addr := "shm:" + filepath.Join(dir, "s.sock")
	boot := func() capnp.Client { return capnp.Client(echoproto.Echo_ServerToClient(&echoproto.Server{})) }
	srv, err := rpc.Listen(addr, boot())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	go srv.Serve(t.Context())
	check := func(t *testing.T, what string, err error, want string) {
		t.Helper()
		if !errors.Is(err, rpc.ErrBadOption) || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want ErrBadOption containing %q", what, err, want)
		}
	}
	for _, b := range badOptions {
		t.Run(b.name, func(t *testing.T) {
			_, err := rpc.Listen("shm:"+filepath.Join(dir, "bad.sock"), boot(), b.opt...)
			check(t, "Listen", err, b.want)
			if _, err := os.Stat(filepath.Join(dir, "bad.sock")); err == nil {
				t.Error("Listen with a bad option left a socket file")
			}
			check(t, "Server.Listen", srv.Listen("shm:"+filepath.Join(dir, "bad2.sock"), b.opt...), b.want)
			ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
			defer cancel()
			for _, f := range []rpc.Fallback{rpc.FallbackAuto, rpc.FallbackRequire} {
				c, err := rpc.Dial(ctx, addr, append([]rpc.Option{rpc.WithFallback(f)}, b.opt...)...)
				if err == nil {
					c.Close()
				}
				check(t, fmt.Sprintf("Dial(%v)", f), err, b.want)
			}
			mine, _ := socketPair(t)
			_, err = rpc.NewTransport(ctx, mine, rpc.Dialer, b.opt...)
			check(t, "NewTransport", err, b.want)
		})
	}
}

// TestGoodOptions: values at the edges of the ranges connect.
func TestGoodOptions(t *testing.T) {
	cases := []struct {
		name string
		opts []rpc.Option
	}{
		{"smallest pool and ring", []rpc.Option{rpc.WithPoolSize(rpc.MinPoolSize), rpc.WithRingCapacity(ringbuf.MinCapacity), rpc.WithInlineMax(1024)}},
		{"odd pool", []rpc.Option{rpc.WithPoolSize(9 * rpc.PoolSizeUnit)}},
		{"no inline, no dedicated, no heap, no cache", []rpc.Option{rpc.WithInlineMax(0), rpc.WithMaxDedicated(0), rpc.WithMaxHeap(0), rpc.WithMappingCache(0, time.Second)}},
		{"no spin, no prefault", []rpc.Option{rpc.WithSpinTime(0), rpc.WithPrefault(false), rpc.WithWaitStrategy(ringbuf.Block)}},
		{"no yield", []rpc.Option{rpc.WithSpinTime(0), rpc.WithYieldTime(0)}},
		{"long yield", []rpc.Option{rpc.WithYieldTime(time.Second)}},
		{"small max message", []rpc.Option{rpc.WithMaxMessage(rpc.MinMaxMessage)}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			addr := "shm:" + filepath.Join(t.TempDir(), "s.sock")
			srv, err := rpc.Listen(addr, capnp.Client(echoproto.Echo_ServerToClient(&echoproto.Server{})), c.opts...)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { srv.Close() })
			go srv.Serve(t.Context())
			ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
			defer cancel()
			conn, err := rpc.Dial(ctx, addr, append([]rpc.Option{rpc.WithFallback(rpc.FallbackRequire)}, c.opts...)...)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			if err := apiPing(ctx, conn); err != nil {
				t.Fatal(err)
			}
		})
	}
}
