package ringbuf_test

import (
	"context"
	"errors"
	"flag"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/capnshm/capnshm/internal/peertest"
	"github.com/capnshm/capnshm/internal/pingpong"
	"github.com/capnshm/capnshm/ringbuf"
	"golang.org/x/sys/unix"
)

var idleFor = flag.Duration("idle", 10*time.Second, "how long BenchmarkIdleCPU leaves the pair idle")

func init() {
	peertest.Register("eventfd-echo", eventfdEchoPeer)
	peertest.Register("ring-idle", idlePeer)
}

func eventfdEchoPeer(args []string) int {
	hs := peertest.Handles()
	n, _ := strconv.Atoi(args[0])
	serve := pingpong.EventfdServer
	if args[1] == "kernel" {
		serve = pingpong.KernelEventfdServer
	}
	peertest.Say("ready")
	if err := serve(int(hs[0]), int(hs[1]), n); err != nil {
		return peertest.Fail("%v", err)
	}
	peertest.Say("done")
	return 0
}

func runEventfd(t testing.TB, n int, kernel bool) time.Duration {
	ping, pong, err := pingpong.Eventfds()
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(ping)
	defer unix.Close(pong)
	mode, client := "go", pingpong.EventfdClient
	if kernel {
		mode, client = "kernel", pingpong.KernelEventfdClient
	}
	p := peertest.Start(t, "eventfd-echo", []uintptr{uintptr(ping), uintptr(pong)}, strconv.Itoa(n), mode)
	p.Expect("ready")
	d, err := client(ping, pong, n, nil)
	if err != nil {
		t.Fatal(err)
	}
	p.Expect("done")
	p.WaitOK()
	return d
}

// floors are measured once per process, with a fixed count, so that each
// ring benchmark can report itself as a multiple of them.
var floors struct {
	once          sync.Once
	spin, eventfd float64 // ns per round trip
}

func measureFloors(b *testing.B) {
	floors.once.Do(func() {
		const n = 200_000
		d, err := runPingPong(b, "spin", 8, n)
		if err != nil {
			b.Fatal(err)
		}
		floors.spin = float64(d.Nanoseconds()) / n
		floors.eventfd = float64(runEventfd(b, n/10, false).Nanoseconds()) / (n / 10)
	})
}

// BenchmarkRoundTrip: one 64-byte record there and back between two
// processes. The floor-* workloads measure the machine; every ring-*
// workload also reports its time as a multiple of the floors measured in
// this same run (x-spin-floor, x-eventfd-floor).
func BenchmarkRoundTrip(b *testing.B) {
	b.Run("floor-spin", func(b *testing.B) {
		d, err := runPingPong(b, "spin", 8, b.N)
		if err != nil {
			b.Fatal(err)
		}
		report(b, d)
	})
	b.Run("floor-eventfd", func(b *testing.B) {
		report(b, runEventfd(b, b.N, false))
	})
	b.Run("floor-eventfd-kernel", func(b *testing.B) {
		report(b, runEventfd(b, b.N, true))
	})
	for _, st := range []ringbuf.WaitStrategy{ringbuf.BusySpin, ringbuf.Adaptive, ringbuf.Block} {
		b.Run("ring-"+st.String(), func(b *testing.B) {
			measureFloors(b)
			d, err := runPingPong(b, strconv.Itoa(int(st)), 64, b.N)
			if err != nil {
				b.Fatal(err)
			}
			ns := report(b, d)
			b.ReportMetric(ns/floors.spin, "x-spin-floor")
			b.ReportMetric(ns/floors.eventfd, "x-eventfd-floor")
		})
	}
}

// report replaces the framework's time (which includes starting the peer)
// with the client's own, and returns it in ns per round trip.
func report(b *testing.B, d time.Duration) float64 {
	ns := float64(d.Nanoseconds()) / float64(b.N)
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(ns, "ns/roundtrip")
	return ns
}

// idlePeer waits on an empty ring with the Adaptive strategy for the given
// time and reports the CPU it used meanwhile, in percent of one core.
func idlePeer(args []string) int {
	s, err := openPeerSide(args)
	if err != nil {
		return peertest.Fail("%v", err)
	}
	d, _ := time.ParseDuration(s.rest[0])
	req, _ := pingpong.Rings(s.region.Bytes(), s.capacity)
	r, err := ringbuf.Attach(req)
	if err != nil {
		return peertest.Fail("%v", err)
	}
	c := r.Consumer(ringbuf.Options{Strategy: ringbuf.Adaptive, Waiter: s.mine, Ringer: s.peer})
	before := cpuTime()
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	for {
		err := c.Wait(ctx)
		if errors.Is(err, context.DeadlineExceeded) {
			break
		}
		if err != nil {
			return peertest.Fail("%v", err)
		}
		if _, err := c.Poll(); !errors.Is(err, ringbuf.ErrEmpty) {
			return peertest.Fail("a record arrived on an idle ring: %v", err)
		}
	}
	used := cpuTime() - before
	peertest.Say("%f", 100*used.Seconds()/time.Since(start).Seconds())
	return 0
}

func cpuTime() time.Duration {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		panic(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkIdleCPU reports the CPU, in percent of one core, that a process
// waiting on an idle ring with the Adaptive strategy uses (getrusage over
// -idle, 10 s by default). Run it with -benchtime=1x.
func BenchmarkIdleCPU(b *testing.B) {
	for i := 0; i < b.N; i++ {
		const capacity = 4096
		pr := startPair(b, "ring-idle", capacity, idleFor.String())
		ctx, cancel := context.WithTimeout(context.Background(), *idleFor+time.Minute)
		line, err := pr.p.Line(ctx)
		cancel()
		if err != nil {
			b.Fatal(err)
		}
		pct, err := strconv.ParseFloat(line, 64)
		if err != nil {
			b.Fatalf("peer said %q", line)
		}
		pr.p.WaitOK()
		b.ReportMetric(pct, "cpu-%")
	}
}
