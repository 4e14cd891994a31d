package rpc_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	capnp "capnproto.org/go/capnp/v3"
	gorpc "capnproto.org/go/capnp/v3/rpc"

	"github.com/capnshm/capnshm/internal/echoproto"
	"github.com/capnshm/capnshm/internal/handles"
	"github.com/capnshm/capnshm/internal/peertest"
	"github.com/capnshm/capnshm/rpc"
)

// Helpers of the Windows tests: named pipes for addresses, peer processes
// that dial or serve, and handle censuses for leaks.

func init() {
	peertest.Register("win-dial", winDialPeer)
	peertest.Register("win-serve", winServePeer)
}

var winNames atomic.Int64

// winAddr returns a fresh address of the given scheme: a pipe name no
// other test uses, or TCP port 0.
func winAddr(scheme rpc.Scheme) string {
	if scheme == rpc.SchemeTCP {
		return "tcp:127.0.0.1:0"
	}
	return fmt.Sprintf("%s:capnshm-test-%d-%d", scheme, os.Getpid(), winNames.Add(1))
}

// winFallback parses a policy name.
func winFallback(s string) rpc.Fallback {
	switch s {
	case "require":
		return rpc.FallbackRequire
	case "never":
		return rpc.FallbackNever
	}
	return rpc.FallbackAuto
}

// winPool is the pool size of the Windows tests' connections: Wine backs
// a section with a file under /tmp, so they stay small.
const winPool = 2 << 20

// winDialPeer dials args[0] with policy args[1] (auto, require, never) and
// says "dialed shm=<bool>" or "dial error: <err>". Then it obeys commands:
// "ping" says "pong <err>"; "echo N" echoes N bytes and says "echoed
// <err>"; "block" starts a call that never returns and says "blocked" once
// the server has it; "await" waits for that call and says "block <err>
// disconnected=<bool>".
func winDialPeer(args []string) int {
	ctx := context.Background()
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	c, err := rpc.Dial(dctx, args[0], rpc.WithFallback(winFallback(args[1])), rpc.WithPoolSize(winPool), rpc.WithLogger(logger))
	cancel()
	if err != nil {
		peertest.Say("dial error: %v", err)
		return 0
	}
	defer c.Close()
	peertest.Say("dialed shm=%v", c.SharedMemory())
	boot := echoproto.Echo(c.Bootstrap(ctx))
	defer boot.Release()
	var blocked chan error
	in := peertest.Stdin()
	for in.Scan() {
		cmd, arg, _ := strings.Cut(in.Text(), " ")
		switch cmd {
		case "ping":
			peertest.Say("pong %v", apiPingBoot(ctx, boot))
		case "echo":
			var n int
			fmt.Sscan(arg, &n)
			peertest.Say("echoed %v", apiEcho(ctx, boot, n, byte(n)))
		case "block":
			f, _ := boot.Block(ctx, nil)
			blocked = make(chan error, 1)
			go func() {
				_, err := f.Struct()
				blocked <- err
			}()
			if err := apiPingBoot(ctx, boot); err != nil {
				return peertest.Fail("ping: %v", err)
			}
			peertest.Say("blocked")
		case "await":
			err := <-blocked
			peertest.Say("block %v disconnected=%v", err, capnp.IsDisconnected(err))
		}
	}
	return 0
}

// winServePeer serves an Echo on args[0] and says "serving". With args[1]
// "gocapnp" it serves one connection with go-capnp's rpc.Conn over
// capnshm's transport on the named pipe instead (ListenPipe, NewTransport).
// Commands: "close" closes the server (or the connection) and says
// "closed"; EOF ends the process.
func winServePeer(args []string) int {
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	boot := capnp.Client(echoproto.Echo_ServerToClient(&echoproto.Server{}))
	var closeFn func()
	if len(args) > 1 && args[1] == "gocapnp" {
		a, err := rpc.ParseAddr(args[0])
		if err != nil {
			return peertest.Fail("%v", err)
		}
		l, err := rpc.ListenPipe(a.Endpoint)
		if err != nil {
			return peertest.Fail("%v", err)
		}
		peertest.Say("serving")
		raw, err := l.Accept()
		l.Close()
		if err != nil {
			return peertest.Fail("accept: %v", err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		tr, err := rpc.NewTransport(ctx, raw, rpc.Listener, rpc.WithPoolSize(winPool), rpc.WithLogger(logger))
		cancel()
		if err != nil {
			return peertest.Fail("handshake: %v", err)
		}
		c := gorpc.NewConn(tr, &gorpc.Options{BootstrapClient: boot, Logger: logger})
		closeFn = func() {
			// The transport first, as Server.Close does: go-capnp
			// v3.0.1-alpha.2 can answer calls it cancels while closing
			// with empty successes.
			tr.Close()
			c.Close()
			<-c.Done()
		}
	} else {
		srv, err := rpc.Listen(args[0], boot, rpc.WithPoolSize(winPool), rpc.WithLogger(logger))
		if err != nil {
			return peertest.Fail("%v", err)
		}
		go srv.Serve(context.Background())
		closeFn = func() { srv.Close() }
		peertest.Say("serving")
	}
	in := peertest.Stdin()
	for in.Scan() {
		if in.Text() == "close" {
			closeFn()
			peertest.Say("closed")
		}
	}
	closeFn()
	return 0
}

// startWinPeer starts a peer process and shows its stderr if the test
// fails.
func startWinPeer(t *testing.T, name string, args ...string) *peertest.Peer {
	t.Helper()
	p := peertest.Start(t, name, nil, args...)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("%s's stderr:\n%s", name, p.Stderr())
		}
	})
	return p
}

// leakKinds are the kinds of handle a connection holds: sections (pools,
// rings, dedicated mappings, this side's and the peer's), completion
// ports (this side's doorbells, each with its event), the peer's
// doorbells (events this side may only set), the pipe (a File) and the
// peer process. Events in general are left out: Go's runtime keeps two
// for every thread it starts, when it likes.
var leakKinds = []string{"Section", "IoCompletion", handles.RingEvents, "File", "Process"}

// census counts this process's handles of leakKinds.
func census(t *testing.T) map[string]int {
	t.Helper()
	all, err := handles.Census()
	if err != nil {
		t.Fatal(err)
	}
	c := make(map[string]int, len(leakKinds))
	for _, k := range leakKinds {
		c[k] = all[k]
	}
	return c
}

// winWarmUp makes and closes one shared-memory connection in this
// process, and one to a client process, so that what the first of each
// creates for good (the runtime's completion port, the system thread
// pool's wait threads, what starting a process needs) exists before a
// test takes its census.
func winWarmUp(t *testing.T) {
	t.Helper()
	srv := apiServe(t, winAddr(rpc.SchemeShm))
	c := apiDial(t, srv.Addr().String())
	if err := apiPingBoot(t.Context(), echoproto.Echo(c.Bootstrap(t.Context()))); err != nil {
		t.Fatalf("warm-up: %v", err)
	}
	c.Close()
	p := startWinPeer(t, "win-dial", srv.Addr().String(), "require")
	p.Expect("dialed shm=true")
	p.Send("ping")
	p.Expect("pong <nil>")
	p.CloseStdin()
	p.WaitOK()
	srv.Close()
}

// settleCensus waits (bounded) until this process's census is back at
// base: the handles of a connection that ended are closed by the
// goroutines that end it, a moment after its Done.
func settleCensus(t *testing.T, base map[string]int) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		now := census(t)
		over := false
		for k, n := range now {
			if n > base[k] {
				over = true
			}
		}
		if !over {
			t.Logf("handles back at base: %v", now)
			return
		}
		if time.Now().After(deadline) {
			all, _ := handles.Census()
			t.Fatalf("handles leaked: %v, base %v (every kind: %v)", now, base, all)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// transportPair returns the two ends of a shared-memory connection in
// this process, over a named pipe: the dialer with dialOpts, the listener
// with defaults. Both close at the end of the test.
func transportPair(t *testing.T, dialOpts ...rpc.Option) (dialer, listener *rpc.Transport) {
	t.Helper()
	name := fmt.Sprintf("capnshm-pair-%d-%d", os.Getpid(), winNames.Add(1))
	l, err := rpc.ListenPipe(name)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	type result struct {
		tr  *rpc.Transport
		err error
	}
	lc := make(chan result, 1)
	go func() {
		raw, err := l.Accept()
		if err != nil {
			lc <- result{nil, err}
			return
		}
		tr, err := rpc.NewTransport(ctx, raw, rpc.Listener)
		lc <- result{tr, err}
	}()
	raw, err := rpc.DialPipe(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	dialer, err = rpc.NewTransport(ctx, raw, rpc.Dialer, dialOpts...)
	lr := <-lc
	if err != nil {
		t.Fatalf("dialer: %v", err)
	}
	t.Cleanup(func() { dialer.Close() })
	if lr.err != nil {
		t.Fatalf("listener: %v", lr.err)
	}
	t.Cleanup(func() { lr.tr.Close() })
	return dialer, lr.tr
}

// racingCloseRounds is how many transport pairs TestNewMessageRacingClose
// closes under their builders: a pair costs about 0.3 s under Wine.
const racingCloseRounds = 20
