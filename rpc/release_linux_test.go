package rpc_test

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	capnp "capnproto.org/go/capnp/v3"
	gorpc "capnproto.org/go/capnp/v3/rpc"

	"github.com/capnshm/capnshm/internal/echoproto"
	"github.com/capnshm/capnshm/internal/peertest"
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
				cb := echoproto.Callback_ServerToClient(countedCallback{live: &live})
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

// TestResolveMessagesReleased: the Resolve messages a server sends when its
// promised capabilities resolve are released by the client once handled.
// Over shared memory each one sent by reference (nothing is inlined or
// copied out here; by default small messages are, which hides the leak)
// holds a piece of the server's pool until the client frees it; go-capnp v3.0.1-alpha.2's Conn never releases a Resolve, so a
// long-lived connection whose promises resolve pins the server's pool
// without bound (with CAPNSHM_TEST_GOCAPNP=1 the go-capnp client run shows
// it).
func TestResolveMessagesReleased(t *testing.T) {
	for _, e := range regressionEngines(t, "client") {
		t.Run(e.name, func(t *testing.T) {
			// Nothing inlined, nothing copied out on receipt: every message
			// of the server's stays in its pool until the client frees it.
			noInline := []rpc.Option{rpc.WithInlineMax(0)}
			dialer, listener := transportPairOpts(t, noInline, noInline)
			srv, err := rpc.NewConn(listener, capnp.Client(echoproto.Echo_ServerToClient(&echoproto.Server{})))
			if err != nil {
				t.Fatal(err)
			}
			defer srv.Close()
			ctx := regressCtx(t)
			var echo echoproto.Echo
			if e.client == "capnshm" {
				c, err := rpc.NewConn(dialer, capnp.Client{})
				if err != nil {
					t.Fatal(err)
				}
				defer c.Close()
				echo = echoproto.Echo(c.Bootstrap(ctx))
			} else {
				c := gorpc.NewConn(dialer, nil)
				defer c.Close()
				echo = echoproto.Bootstrap(ctx, c)
			}
			defer echo.Release()
			if err := echo.Resolve(ctx); err != nil {
				t.Fatal(err)
			}
			const n = 16
			var counters []echoproto.Counter
			defer func() {
				for _, c := range counters {
					c.Release()
				}
			}()
			for i := range n {
				f, rel := echo.Promise(ctx, func(p echoproto.Echo_promise_Params) error {
					p.SetStart(int64(i))
					return nil
				})
				if _, err := f.Struct(); err != nil {
					t.Fatalf("promise %d: %v", i, err)
				}
				counters = append(counters, f.Counter().AddRef())
				rel()
			}
			held := func() uint64 {
				if err := apiPingBoot(ctx, echo); err != nil { // what came before is handled
					t.Fatal(err)
				}
				return listener.Stats().PeerHeld
			}
			base := held()
			sent := listener.Stats().SentByReference
			f, rel := echo.ResolvePromises(ctx, nil)
			if res, err := f.Struct(); err != nil || res.Resolved() != n {
				t.Fatalf("resolvePromises: %v, %v", res, err)
			}
			rel()
			for i, c := range counters {
				g, rel := c.Get(ctx, nil)
				res, err := g.Struct()
				if err != nil || res.Value() != int64(i) {
					t.Fatalf("counter %d after its promise resolved: %d, %v", i, res.Value(), err)
				}
				rel()
			}
			if byRef := listener.Stats().SentByReference - sent; byRef < n {
				t.Fatalf("the server sent %d messages by reference for %d Resolves and the calls after: the test needs them by reference", byRef, n)
			}
			t.Logf("server messages held by the client: %d before the Resolves, %d after", base, held())
			eventually(t, "the server's messages the client holds after the promises resolved", func() (bool, string) {
				h := held()
				return h <= base, fmt.Sprintf("%d held (before the %d Resolves: %d)", h, n, base)
			})
		})
	}
}

// TestClientKilledDuringCallback: a client process dies (SIGKILL) while the
// server's handler is calling back into it. The handler's call fails, the
// connection ends, and this process (the server) is back to its file
// descriptors, shared-memory mappings and goroutines of before the client
// came. go-capnp v3.0.1-alpha.2's Conn as the server leaked goroutines and
// both memfds (the pool and ring, about 32 MiB) per death (with
// CAPNSHM_TEST_GOCAPNP=1 the go-capnp server run shows it).
func TestClientKilledDuringCallback(t *testing.T) {
	for _, e := range regressionEngines(t, "server") {
		t.Run(e.name, func(t *testing.T) {
			path := filepath.Join(peertest.TempDir(t), "s.sock")
			var ended func() <-chan struct{}
			if e.server == "capnshm" {
				states := newConnStates()
				apiServe(t, "shm:"+path, rpc.WithConnState(states.record))
				ended = func() <-chan struct{} {
					done := make(chan struct{})
					go func() { states.wait(t, rpc.StateClosed); close(done) }()
					return done
				}
			} else {
				ended = goCapnpServe(t, path)
			}
			// The base: a client that came and went, so that what the
			// runtime and the listener keep after a first connection is
			// in it.
			p := startDialPeer(t, "shm:"+path, "require")
			p.Expect("dialed shm=true")
			p.Send("ping")
			p.Expect("pong <nil>")
			gone := ended()
			p.CloseStdin()
			p.WaitOK()
			<-gone
			base := settle(t, stable(t))

			victim := startDialPeer(t, "shm:"+path, "require")
			victim.Expect("dialed shm=true")
			gone = ended()
			victim.Send("callback")
			victim.Expect("called back")
			victim.Kill()
			select {
			case <-gone:
			case <-time.After(30 * time.Second):
				t.Fatal("the server did not end the dead client's connection in 30 s")
			}
			u := settle(t, base)
			t.Logf("after the client died mid-callback: %v (base %v)", u, base)
		})
	}
}

// goCapnpServe serves echoproto.Server at the unix socket path with
// capnshm's shm transport under go-capnp's rpc.Conn, one connection per
// client, until the test ends. The function it returns gives a channel
// closed when the next connection to end has ended.
func goCapnpServe(t *testing.T, path string) func() <-chan struct{} {
	t.Helper()
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	ends := make(chan struct{}, 16)
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Go(func() {
		for {
			conn, err := ln.AcceptUnix()
			if err != nil {
				return
			}
			wg.Go(func() {
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				tr, err := rpc.NewTransport(ctx, conn, rpc.Listener)
				cancel()
				if err != nil {
					conn.Close()
					ends <- struct{}{}
					return
				}
				boot := echoproto.Echo_ServerToClient(&echoproto.Server{})
				c := gorpc.NewConn(tr, &gorpc.Options{BootstrapClient: capnp.Client(boot), Logger: slog.New(slog.DiscardHandler)})
				<-c.Done()
				ends <- struct{}{}
			})
		}
	})
	return func() <-chan struct{} {
		done := make(chan struct{})
		go func() {
			select {
			case <-ends:
			case <-time.After(time.Minute):
			}
			close(done)
		}()
		return done
	}
}
