package rpc_test

import (
	"errors"
	"sync"
	"testing"
	"time"

	capnp "capnproto.org/go/capnp/v3"

	"github.com/capnshm/capnshm/internal/echoproto"
	"github.com/capnshm/capnshm/rpc"
)

// TestWinServerKilledMidCall: a server process killed (TerminateProcess)
// while it holds calls of this client: every outstanding call fails with
// a disconnected error, promptly, the connection ends with ErrPeerGone,
// and once it is closed this process holds no handle more than before.
func TestWinServerKilledMidCall(t *testing.T) {
	winWarmUp(t)
	base := census(t)
	addr := winAddr(rpc.SchemeShm)
	p := startWinPeer(t, "win-serve", addr)
	p.Expect("serving")
	c := apiDial(t, addr, rpc.WithFallback(rpc.FallbackRequire))
	ctx := t.Context()
	boot := echoproto.Echo(c.Bootstrap(ctx))
	var futures []echoproto.Echo_block_Results_Future
	var releases []capnp.ReleaseFunc
	for i := 0; i < 10; i++ {
		f, release := boot.Block(ctx, nil)
		futures = append(futures, f)
		releases = append(releases, release)
	}
	if err := apiPingBoot(ctx, boot); err != nil { // the blocks are on the server now
		t.Fatal(err)
	}
	start := time.Now()
	p.Kill()
	for i, f := range futures {
		_, err := f.Struct()
		if err == nil || !capnp.IsDisconnected(err) || !errors.Is(err, rpc.ErrDisconnected) {
			t.Fatalf("call %d: %v, want a disconnected error", i, err)
		}
	}
	t.Logf("10 outstanding calls failed %v after TerminateProcess; the connection: %v", time.Since(start), c.Err())
	select {
	case <-c.Done():
	case <-time.After(20 * time.Second):
		t.Fatal("the connection did not end")
	}
	if !errors.Is(c.Err(), rpc.ErrPeerGone) {
		t.Fatalf("the connection ended with %v, want ErrPeerGone", c.Err())
	}
	for _, r := range releases {
		r()
	}
	boot.Release()
	c.Close()
	settleCensus(t, base)
}

// TestWinClientKilledMidCall: a client process killed while the server
// runs its call: the server ends that connection with ErrPeerGone at
// once, the call's context ends, the server's other clients go on, and
// the server holds no handle of the dead client's afterwards.
func TestWinClientKilledMidCall(t *testing.T) {
	winWarmUp(t)
	base := census(t)
	var mu sync.Mutex
	ended := make(chan rpc.ConnInfo, 4)
	srv := apiServe(t, winAddr(rpc.SchemeShm), rpc.WithConnState(func(ci rpc.ConnInfo, st rpc.ConnState) {
		if st == rpc.StateClosed {
			mu.Lock()
			defer mu.Unlock()
			ended <- ci
		}
	}))
	addr := srv.Addr().String()
	victim := startWinPeer(t, "win-dial", addr, "require")
	victim.Expect("dialed shm=true")
	other := startWinPeer(t, "win-dial", addr, "require")
	other.Expect("dialed shm=true")
	victim.Send("block")
	victim.Expect("blocked")
	start := time.Now()
	victim.Kill()
	select {
	case ci := <-ended:
		if !errors.Is(ci.Err, rpc.ErrPeerGone) {
			t.Fatalf("the dead client's connection ended with %v, want ErrPeerGone", ci.Err)
		}
		t.Logf("the server ended the dead client's connection %v after TerminateProcess: %v", time.Since(start), ci.Err)
	case <-time.After(20 * time.Second):
		t.Fatal("the server did not notice its client's death")
	}
	other.Send("ping")
	other.Expect("pong <nil>")
	other.CloseStdin()
	other.WaitOK()
	select {
	case <-ended:
	case <-time.After(20 * time.Second):
		t.Fatal("the other client's connection did not end after it left")
	}
	srv.Close()
	settleCensus(t, base)
}

// TestWinNoLeaks: connections that end every way (closed here, closed by
// the server, the server killed) after moving messages by reference and
// inline, and through a dedicated mapping, leave no handle behind.
func TestWinNoLeaks(t *testing.T) {
	winWarmUp(t)
	base := census(t)
	for _, how := range []string{"close", "peer-close", "kill"} {
		t.Run(how, func(t *testing.T) {
			addr := winAddr(rpc.SchemeShm)
			p := startWinPeer(t, "win-serve", addr)
			p.Expect("serving")
			c := apiDial(t, addr, rpc.WithFallback(rpc.FallbackRequire))
			ctx := t.Context()
			boot := echoproto.Echo(c.Bootstrap(ctx))
			// 4 MiB results: over the server's 2 MiB pool, so they come
			// in dedicated mappings (MAP frames, duplicated handles).
			f, release := boot.Fill(ctx, func(p echoproto.Echo_fill_Params) error {
				p.SetSize(4 << 20)
				return nil
			})
			if _, err := f.Struct(); err != nil {
				t.Fatal(err)
			}
			if st := c.Stats(); st.PeerMappings == 0 {
				t.Errorf("no dedicated mapping of the server's mapped here: %+v", st)
			}
			// While connected, every kind the census counts is held: it
			// would see any of them left behind.
			during := census(t)
			for _, k := range leakKinds {
				if during[k] <= base[k] {
					t.Errorf("no %s handle held while connected: %v, base %v", k, during, base)
				}
			}
			release()
			if err := apiEcho(ctx, boot, 100, 1); err != nil {
				t.Fatal(err)
			}
			boot.Release()
			switch how {
			case "close":
				c.Close()
			case "peer-close":
				p.Send("close")
				p.Expect("closed")
			case "kill":
				p.Kill()
			}
			select {
			case <-c.Done():
			case <-time.After(20 * time.Second):
				t.Fatal("the connection did not end")
			}
			if how != "close" && !errors.Is(c.Err(), rpc.ErrPeerGone) {
				t.Errorf("the connection ended with %v, want ErrPeerGone", c.Err())
			}
			c.Close()
			p.CloseStdin()
			p.Wait(ctx)
		})
	}
	settleCensus(t, base)
}
