package rpc_test

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	capnp "capnproto.org/go/capnp/v3"

	"github.com/capnshm/capnshm/internal/echoproto"
	"github.com/capnshm/capnshm/loop"
	"github.com/capnshm/capnshm/rpc"
)

// BenchmarkLoopBoundPing: a ping to a handler bound to a loop's thread
// (loop.BindServer) against a ping to an ordinary handler, on the same
// transport, through capnshm's engine (both ends in this process; each
// server on a listener of its own). The pings alternate, so both see the
// same machine; bound/plain is the ratio (issue 13's target: at most 2).
// "spin" is the loop's default (it spins up to loop.DefaultSpin while
// calls keep coming); "nospin" blocks at once.
//
//	go test -run '^$' -bench LoopBoundPing -benchtime 20000x ./rpc/
func BenchmarkLoopBoundPing(b *testing.B) {
	for _, c := range []struct {
		scheme rpc.Scheme
		spin   string
	}{{rpc.SchemeShm, "spin"}, {rpc.SchemeShm, "nospin"}, {rpc.SchemeUnix, "spin"}, {rpc.SchemeUnix, "nospin"}} {
		scheme := c.scheme
		b.Run(string(scheme)+"/"+c.spin, func(b *testing.B) {
			opts := loop.Options{} // the loop spins for loop.DefaultSpin
			if c.spin == "nospin" {
				opts.Spin = -1
			}
			l, err := loop.New(opts)
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { l.Close() })
			plainSrv, boundSrv := &echoproto.Server{}, &echoproto.Server{}
			plain := loopBenchConn(b, scheme, "plain", capnp.Client(echoproto.Echo_ServerToClient(plainSrv)))
			bound := loopBenchConn(b, scheme, "bound", loop.BindServer(l, echoproto.Echo_Methods(nil, boundSrv), boundSrv))
			ctx := context.Background()
			ping := func(e echoproto.Echo) {
				f, release := e.Ping(ctx, nil)
				_, err := f.Struct()
				release()
				if err != nil {
					b.Fatal(err)
				}
			}
			for range 200 { // warm up both paths
				ping(plain)
				ping(bound)
			}
			var tPlain, tBound time.Duration
			b.ReportAllocs()
			b.ResetTimer()
			for i := range b.N {
				first, second, t1, t2 := plain, bound, &tPlain, &tBound
				if i%2 == 1 {
					first, second, t1, t2 = bound, plain, &tBound, &tPlain
				}
				t0 := time.Now()
				ping(first)
				tm := time.Now()
				ping(second)
				*t1 += tm.Sub(t0)
				*t2 += time.Since(tm)
			}
			b.StopTimer()
			n := float64(b.N)
			b.ReportMetric(float64(tPlain.Nanoseconds())/n, "plain-ns/ping")
			b.ReportMetric(float64(tBound.Nanoseconds())/n, "bound-ns/ping")
			b.ReportMetric(float64(tBound)/float64(tPlain), "bound/plain")
		})
	}
}

// loopBenchConn serves boot on a listener of its own and returns the
// bootstrap of a connection dialed to it.
func loopBenchConn(b *testing.B, scheme rpc.Scheme, name string, boot capnp.Client) echoproto.Echo {
	b.Helper()
	addr := fmt.Sprintf("%s:%s", scheme, filepath.Join(b.TempDir(), name+".sock"))
	var opts []rpc.Option
	if scheme == rpc.SchemeShm {
		opts = append(opts, rpc.WithFallback(rpc.FallbackRequire))
	}
	srv, err := rpc.Listen(addr, boot, opts...)
	if err != nil {
		b.Fatal(err)
	}
	go srv.Serve(context.Background())
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, err := rpc.Dial(ctx, addr)
	if err != nil {
		b.Fatal(err)
	}
	e := echoproto.Echo(c.Bootstrap(context.Background()))
	b.Cleanup(func() {
		e.Release()
		c.Close()
		srv.Close()
	})
	return e
}
