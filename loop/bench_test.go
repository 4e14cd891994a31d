package loop_test

import (
	"context"
	"testing"
	"time"

	"github.com/capnshm/capnshm/internal/echoproto"
	"github.com/capnshm/capnshm/loop"
)

// BenchmarkPing measures, in one run, a ping to a handler bound to a loop
// (BindServer) against a ping to an ordinary go-capnp handler, both over
// go-capnp's rpc.Conn on the same kind of in-process stream, alternating
// call by call. It reports both latencies and their ratio (target: <= 2),
// with the loop's default spin and without it (Options.Spin < 0).
//
//	go test -run '^$' -bench Ping -benchtime 20000x ./loop/
func BenchmarkPing(b *testing.B) {
	for _, c := range connections {
		for _, sp := range []struct {
			name string
			spin time.Duration
		}{{"spin", 0}, {"nospin", -1}} {
			b.Run(c.name+"/"+sp.name, func(b *testing.B) { benchPing(b, c, sp.spin) })
		}
	}
}

func benchPing(b *testing.B, c connection, spin time.Duration) {
	l := start(b, loop.Options{Spin: spin})
	plainSrv, boundSrv := &echoproto.Server{}, &echoproto.Server{}
	plain := serve(b, c.pair, capnpClient(echoproto.Echo_ServerToClient(plainSrv)))
	bound := serve(b, c.pair, loop.BindServer(l, echoproto.Echo_Methods(nil, boundSrv), boundSrv))
	ctx := context.Background()
	for range 200 { // warm up both paths
		if err := ping(ctx, plain); err != nil {
			b.Fatal(err)
		}
		if err := ping(ctx, bound); err != nil {
			b.Fatal(err)
		}
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
		if err := ping(ctx, first); err != nil {
			b.Fatal(err)
		}
		tm := time.Now()
		if err := ping(ctx, second); err != nil {
			b.Fatal(err)
		}
		*t1 += tm.Sub(t0)
		*t2 += time.Since(tm)
	}
	b.StopTimer()
	n := float64(b.N)
	b.ReportMetric(float64(tPlain.Nanoseconds())/n, "plain-ns/ping")
	b.ReportMetric(float64(tBound.Nanoseconds())/n, "bound-ns/ping")
	b.ReportMetric(float64(tBound)/float64(tPlain), "bound/plain")
}
