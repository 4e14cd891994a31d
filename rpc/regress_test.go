package rpc_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	capnp "capnproto.org/go/capnp/v3"
	gorpc "capnproto.org/go/capnp/v3/rpc"

	"github.com/capnshm/capnshm/internal/echoproto"
	"github.com/capnshm/capnshm/rpc"
)

// Regression tests of the engine: behaviours go-capnp v3.0.1-alpha.2's
// rpc.Conn gets wrong. Each runs with capnshm's engine on both ends; with
// CAPNSHM_TEST_GOCAPNP=1 the same test also runs with go-capnp's Conn on
// the end it gets wrong, to show the failure (those runs are expected to
// fail, and bounded in time).

// engines are the implementations a regression test runs against.
type engines struct {
	name   string
	server string // "capnshm" or "go-capnp"
	client string
}

func regressionEngines(t *testing.T, goCapnpEnd string) []engines {
	es := []engines{{"capnshm", "capnshm", "capnshm"}}
	if os.Getenv("CAPNSHM_TEST_GOCAPNP") == "1" {
		e := engines{"go-capnp-" + goCapnpEnd, "capnshm", "capnshm"}
		if goCapnpEnd == "server" || goCapnpEnd == "both" {
			e.server = "go-capnp"
		}
		if goCapnpEnd == "client" || goCapnpEnd == "both" {
			e.client = "go-capnp"
		}
		es = append(es, e)
	}
	return es
}

// regressBound bounds each regression test: a hang is a failure.
const regressBound = 20 * time.Second

// pipePair connects an Echo server and a client over an in-process pipe,
// each end run by the engine named; it returns the client's bootstrap and
// the server's Echo object.
func pipePair(t *testing.T, e engines, srv *echoproto.Server) echoproto.Echo {
	t.Helper()
	return connPair(t, e, srv, net.Pipe)
}

// connPair is pipePair over the connections pair makes.
func connPair(t *testing.T, e engines, srv *echoproto.Server, pair func() (net.Conn, net.Conn)) echoproto.Echo {
	t.Helper()
	a, b := pair()
	boot := capnp.Client(echoproto.Echo_ServerToClient(srv))
	switch e.server {
	case "capnshm":
		c, err := rpc.NewConn(mustStream(t, a), boot)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
	default:
		c := gorpc.NewConn(mustStream(t, a), &gorpc.Options{BootstrapClient: boot})
		t.Cleanup(func() { a.Close(); c.Close() })
	}
	ctx, cancel := context.WithTimeout(context.Background(), regressBound)
	t.Cleanup(cancel)
	switch e.client {
	case "capnshm":
		c, err := rpc.NewConn(mustStream(t, b), capnp.Client{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return echoproto.Echo(c.Bootstrap(ctx))
	default:
		c := gorpc.NewConn(mustStream(t, b), nil)
		t.Cleanup(func() { b.Close(); c.Close() })
		return echoproto.Bootstrap(ctx, c)
	}
}

// tcpPair is pipePair over a loopback TCP connection.
func tcpPair(t *testing.T, e engines, srv *echoproto.Server) echoproto.Echo {
	t.Helper()
	return connPair(t, e, srv, func() (net.Conn, net.Conn) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		accepted := make(chan net.Conn, 1)
		go func() {
			c, _ := ln.Accept()
			accepted <- c
		}()
		b, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		a := <-accepted
		if a == nil {
			t.Fatal("accept failed")
		}
		return a, b
	})
}

func mustStream(t *testing.T, c net.Conn) *rpc.StreamTransport {
	st, err := rpc.NewStreamTransport(c)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func regressCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), regressBound)
	t.Cleanup(cancel)
	return ctx
}

// TestFinishRightAfterPipelining: a client sends Finish for a question
// right after pipelining a call on its results, before the Return, as the
// official C++ calculator client does. The pipelined call depends on the
// answer, so the server must not cancel it. The answer here waits (gate)
// until the Finish has reached the server. (go-capnp's server cancels the
// call on any early Finish: the pipelined call fails with "context
// canceled".)
func TestFinishRightAfterPipelining(t *testing.T) {
	for _, e := range regressionEngines(t, "server") {
		t.Run(e.name, func(t *testing.T) {
			echo := pipePair(t, e, &echoproto.Server{})
			defer echo.Release()
			ctx := regressCtx(t)
			for i := 0; i < 20; i++ {
				f, release := echo.Gate(ctx, func(p echoproto.Echo_gate_Params) error {
					p.SetStart(int64(i))
					return nil
				})
				ctr := f.Counter().AddRef()
				g, release2 := ctr.Get(ctx, nil)
				release() // Finish now, before the gate's Return
				if err := openGate(ctx, echo); err != nil {
					t.Fatal(err)
				}
				res, err := g.Struct()
				if err != nil {
					t.Fatalf("round %d: the call pipelined on a finished question: %v", i, err)
				}
				if res.Value() != int64(i) {
					t.Fatalf("round %d: got %d", i, res.Value())
				}
				release2()
				ctr.Release()
			}
		})
	}
}

// openGate lets the server's gate calls return.
func openGate(ctx context.Context, echo echoproto.Echo) error {
	f, release := echo.OpenGate(ctx, nil)
	defer release()
	_, err := f.Struct()
	return err
}

// TestTwoLevelPipelining: open(name).session.sub().session.name(), all
// pipelined, reaches the sub-session. (go-capnp's server delivers a call
// pipelined on a queued call to the first call's target: the answer is
// the outer session's name, or nothing.)
func TestTwoLevelPipelining(t *testing.T) {
	for _, e := range regressionEngines(t, "server") {
		t.Run(e.name, func(t *testing.T) {
			echo := pipePair(t, e, &echoproto.Server{})
			defer echo.Release()
			ctx := regressCtx(t)
			for i := 0; i < 20; i++ {
				name := fmt.Sprint("s", i)
				f, r1 := echo.Open(ctx, func(p echoproto.Echo_open_Params) error { return p.SetName(name) })
				g, r2 := f.Session().Sub(ctx, nil)
				h, r3 := g.Session().Sub(ctx, nil)
				n, r4 := h.Session().Name(ctx, nil)
				res, err := n.Struct()
				if err != nil {
					t.Fatalf("round %d: %v", i, err)
				}
				got, _ := res.Name()
				if want := name + "/sub/sub"; got != want {
					t.Fatalf("round %d: the three-level pipelined call reached %q, want %q", i, got, want)
				}
				r4()
				r3()
				r2()
				r1()
			}
		})
	}
}

// TestSamePromiseTwice: the same unresolved capability (pipelined on a
// question that has not returned: a gate) passed to the peer in two calls:
// it arrives twice as a receiverAnswer. (A go-capnp server deadlocks:
// capnp's Future.Client returns without unlocking when asked twice for one
// path.)
func TestSamePromiseTwice(t *testing.T) {
	for _, e := range regressionEngines(t, "server") {
		t.Run(e.name, func(t *testing.T) {
			echo := pipePair(t, e, &echoproto.Server{})
			defer echo.Release()
			ctx := regressCtx(t)
			f, release := echo.Gate(ctx, func(p echoproto.Echo_gate_Params) error {
				p.SetStart(100)
				return nil
			})
			defer release()
			ctr := f.Counter() // unresolved until the gate opens
			add := func(delta int64) (echoproto.Echo_add_Results_Future, capnp.ReleaseFunc) {
				return echo.Add(ctx, func(p echoproto.Echo_add_Params) error {
					p.SetDelta(delta)
					return p.SetCounter(ctr.AddRef())
				})
			}
			a1, ra1 := add(1)
			a2, ra2 := add(2)
			defer ra1()
			defer ra2()
			if err := openGate(ctx, echo); err != nil {
				t.Fatal(err)
			}
			r1, err1 := a1.Struct()
			r2, err2 := a2.Struct()
			if err := errors.Join(err1, err2); err != nil {
				t.Fatal(err)
			}
			got := map[int64]bool{r1.Value(): true, r2.Value(): true}
			if !(got[101] && got[103]) && !(got[102] && got[103]) {
				t.Errorf("the two adds on the passed promise saw %d and %d, want 101 and 103 (or 102 and 103)", r1.Value(), r2.Value())
			}
		})
	}
}

// TestPipelinedEOrder: calls made on a promise (pipelined on a question,
// here counter.self(), which resolves to the same counter) and, once it
// has resolved, on the capability, run in the order they were made, every
// one exactly once, over a real socket under load. (A go-capnp server runs
// some out of order, go-capnp #631: it delivers the calls that waited on
// an answer from one goroutine while later calls arrive on another.)
func TestPipelinedEOrder(t *testing.T) {
	for _, e := range regressionEngines(t, "server") {
		t.Run(e.name, func(t *testing.T) {
			echo := tcpPair(t, e, &echoproto.Server{})
			defer echo.Release()
			ctx := regressCtx(t)
			var wg sync.WaitGroup
			errs := make(chan error, 4)
			for g := 0; g < 4; g++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for round := 0; round < 60; round++ {
						if err := selfRound(ctx, echo, 100); err != nil {
							errs <- err
							return
						}
					}
				}()
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Fatal(err)
			}
		})
	}
}

// selfRound makes n calls on self, a promise of counter.self() pipelined
// on counter(), resolving it half-way: each adds 1, so the values must be
// 1..n in call order.
func selfRound(ctx context.Context, echo echoproto.Echo, n int) error {
	f, release := echo.Counter(ctx, nil)
	defer release()
	s, release2 := f.Counter().Self(ctx, nil)
	defer release2()
	self := s.Counter()
	futs := make([]echoproto.Counter_add_Results_Future, 0, n)
	for i := 0; i < n; i++ {
		g, rel := self.Add(ctx, func(p echoproto.Counter_add_Params) error {
			p.SetDelta(1)
			return nil
		})
		defer rel()
		futs = append(futs, g)
		if i == n/2 {
			if _, err := s.Struct(); err != nil {
				return err
			}
		}
	}
	for i, g := range futs {
		res, err := g.Struct()
		if err != nil {
			return fmt.Errorf("call %d of %d: %w", i+1, n, err)
		}
		if res.Value() != int64(i+1) {
			return fmt.Errorf("call %d of %d saw %d: E-order broken", i+1, n, res.Value())
		}
	}
	return nil
}

// TestCallRacingReturn: calls on a capability pipelined on a question,
// made in a burst while its Return arrives, go to the capability, every
// one of them and in order. (A go-capnp client finishes the question on
// its Return and makes some of those calls pipelined on the finished
// question: a server aborts the connection, or a go-capnp server crashes,
// go-capnp #626; capnshm's transports refuse to send them, failing each
// with rpc.ErrLateCall.)
func TestCallRacingReturn(t *testing.T) {
	for _, e := range regressionEngines(t, "client") {
		t.Run(e.name, func(t *testing.T) {
			echo := tcpPair(t, e, &echoproto.Server{})
			defer echo.Release()
			ctx := regressCtx(t)
			for round := 0; round < 100; round++ {
				if err := selfRound(ctx, echo, 100); err != nil {
					t.Fatalf("round %d: %v", round, err)
				}
			}
		})
	}
}

// TestTailCallFromGoServer: a call pipelined on results that are the
// caller's own capability goes back to the caller, and the caller gets its
// own object's answer. A C++ server makes it a tail call
// (sendResultsTo.yourself, then takeFromOtherQuestion), which a go-capnp
// client cannot parse: it closes the connection. capnshm's engine, which
// over a socket cannot tell a go-capnp client from a C++ one, has the
// results come back instead (TestTailCallsOnlyWhereTaken), and either
// client gets its answer.
func TestTailCallFromGoServer(t *testing.T) {
	for _, e := range regressionEngines(t, "client") {
		t.Run(e.name, func(t *testing.T) {
			echo := pipePair(t, e, &echoproto.Server{})
			defer echo.Release()
			ctx := regressCtx(t)
			var live atomic.Int64
			live.Add(1)
			cb := echoproto.Callback_ServerToClient(countedCallback{live: &live})
			defer cb.Release()
			for i := 0; i < 20; i++ {
				f, release := echo.Reflect(ctx, func(p echoproto.Echo_reflect_Params) error {
					return p.SetCallback(cb.AddRef())
				})
				g, rel2 := f.Callback().Call(ctx, func(p echoproto.Callback_call_Params) error {
					p.SetValue(int64(i))
					return nil
				})
				res, err := g.Struct()
				if err != nil {
					t.Fatalf("round %d: the call pipelined on the reflected capability: %v", i, err)
				}
				if res.Result() != int64(2*i) {
					t.Fatalf("round %d: got %d, want %d", i, res.Result(), 2*i)
				}
				rel2()
				release()
			}
		})
	}
}

// TestBootstrapExpiredContext: a Bootstrap whose context has ended fails
// alone; the connection goes on, and a Bootstrap with a live context
// works.
func TestBootstrapExpiredContext(t *testing.T) {
	for _, e := range regressionEngines(t, "client") {
		t.Run(e.name, func(t *testing.T) {
			a, b := net.Pipe()
			srv, err := rpc.NewConn(mustStream(t, a), capnp.Client(echoproto.Echo_ServerToClient(&echoproto.Server{})))
			if err != nil {
				t.Fatal(err)
			}
			defer srv.Close()
			var bootstrap func(context.Context) echoproto.Echo
			switch e.client {
			case "capnshm":
				c, err := rpc.NewConn(mustStream(t, b), capnp.Client{})
				if err != nil {
					t.Fatal(err)
				}
				defer c.Close()
				bootstrap = func(ctx context.Context) echoproto.Echo { return echoproto.Echo(c.Bootstrap(ctx)) }
			default:
				c := gorpc.NewConn(mustStream(t, b), nil)
				defer c.Close()
				bootstrap = func(ctx context.Context) echoproto.Echo { return echoproto.Echo(c.Bootstrap(ctx)) }
			}
			expired, cancel := context.WithCancel(context.Background())
			cancel()
			dead := bootstrap(expired)
			err = apiPingBoot(regressCtx(t), dead)
			if !errors.Is(err, context.Canceled) {
				t.Errorf("a call on a bootstrap with an expired context: %v, want context.Canceled", err)
			}
			dead.Release()
			live := bootstrap(regressCtx(t))
			defer live.Release()
			if err := apiPingBoot(regressCtx(t), live); err != nil {
				t.Fatalf("the connection after the expired bootstrap: %v", err)
			}
		})
	}
}
