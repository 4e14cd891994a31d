package rpc_test

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	capnp "capnproto.org/go/capnp/v3"

	"github.com/capnshm/capnshm/internal/conformance"
	"github.com/capnshm/capnshm/internal/echoproto"
	"github.com/capnshm/capnshm/internal/peertest"
	"github.com/capnshm/capnshm/rpc"
)

func init() {
	peertest.Register("engine-echo-server", engineEchoServerPeer)
}

// engineEchoServerPeer serves echoproto.Server with rpc.Listen (capnshm's
// engine) on args[0] and says "listening ADDR", ADDR being what to dial
// (tcp port 0 resolved). Commands on stdin: "close" closes the server and
// every connection it has, from the server's side, and says "closed"; EOF
// ends the process.
func engineEchoServerPeer(args []string) int {
	if len(args) != 1 {
		return peertest.Fail("usage: engine-echo-server ADDR")
	}
	boot := capnp.Client(echoproto.Echo_ServerToClient(&echoproto.Server{}))
	srv, err := rpc.Listen(args[0], boot, rpc.WithLogger(peerLogger()))
	if err != nil {
		return peertest.Fail("listen: %v", err)
	}
	go srv.Serve(context.Background())
	peertest.Say("listening %s", srv.Addr())
	in := peertest.Stdin()
	for in.Scan() {
		if in.Text() == "close" {
			if err := srv.Close(); err != nil {
				return peertest.Fail("close: %v", err)
			}
			peertest.Say("closed")
		}
	}
	if err := srv.Close(); err != nil {
		return peertest.Fail("close: %v", err)
	}
	return 0
}

// dialEngineServer starts an engine-echo-server process listening on an
// address of scheme and dials it with rpc.Dial: capnshm's engine at both
// ends, in two processes.
func dialEngineServer(t *testing.T, scheme rpc.Scheme) *conformance.Conn {
	t.Helper()
	var addr string
	switch scheme {
	case rpc.SchemeShm, rpc.SchemeUnix:
		addr = fmt.Sprintf("%s:%s", scheme, filepath.Join(peertest.TempDir(t), "s.sock"))
	case rpc.SchemeTCP:
		addr = "tcp:127.0.0.1:0"
	default:
		t.Fatalf("no conformance address for scheme %s", scheme)
	}
	p := peertest.Start(t, "engine-echo-server", nil, addr)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("server process %d's stderr:\n%s", p.Pid(), p.Stderr())
		}
	})
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	line, err := p.Line(ctx)
	if err != nil {
		t.Fatal(err)
	}
	addr, ok := strings.CutPrefix(line, "listening ")
	if !ok {
		t.Fatalf("server process said %q, want \"listening ADDR\"", line)
	}
	c, err := rpc.Dial(ctx, addr, rpc.WithLogger(peerLogger()))
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	t.Cleanup(func() { c.Close() })
	if want := scheme == rpc.SchemeShm; c.SharedMemory() != want {
		t.Fatalf("%s: shared memory %v, want %v", addr, c.SharedMemory(), want)
	}
	return &conformance.Conn{
		// No wait for the bootstrap: the suite's first calls are
		// pipelined on it.
		Boot: echoproto.Echo(c.Bootstrap(t.Context())),
		RPC:  c,
		CloseServer: func() error {
			p.Send("close")
			p.Expect("closed")
			return nil
		},
	}
}

// TestConformanceEngineShm runs the conformance suite strictly on capnshm's
// engine at both ends, in two processes, over shared memory (rpc.Listen and
// rpc.Dial on a shm: address), with the 1 GiB case both ways.
func TestConformanceEngineShm(t *testing.T) {
	env := conformance.Env{
		Dial: func(t *testing.T) *conformance.Conn { return dialEngineServer(t, rpc.SchemeShm) },
		Huge: 1 << 30,
	}
	if testing.Short() || raceEnabled {
		env.Sizes = []int{0, 1, 1 << 20}
		env.Huge = 0
		env.Concurrent = 2000
	}
	conformance.Run(t, env)
}

// TestConformanceEngineUnix runs the conformance suite strictly on capnshm's
// engine at both ends, in two processes, over the stream transport on a
// unix socket (a unix: address). The 1 GiB case is shared memory's: it is
// not run on sockets.
func TestConformanceEngineUnix(t *testing.T) {
	conformance.Run(t, socketEnv(rpc.SchemeUnix))
}

// TestConformanceEngineTCP is TestConformanceEngineUnix on a tcp: address
// (loopback).
func TestConformanceEngineTCP(t *testing.T) {
	conformance.Run(t, socketEnv(rpc.SchemeTCP))
}

func socketEnv(scheme rpc.Scheme) conformance.Env {
	env := conformance.Env{
		Dial: func(t *testing.T) *conformance.Conn { return dialEngineServer(t, scheme) },
	}
	if testing.Short() || raceEnabled {
		env.Sizes = []int{0, 1, 1 << 20}
		env.Concurrent = 2000
	}
	return env
}
