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
// engine), one Server per command. Commands on stdin:
//
//	listen ADDR   listen on ADDR; says "listening N DIAL", N naming the
//	              server, DIAL the address to dial (tcp port 0 resolved)
//	close N       close server N and its connections, from the server's
//	              side; says "closed N"
//
// EOF closes every server and ends the process.
func engineEchoServerPeer([]string) int {
	servers := map[string]*rpc.Server{}
	defer func() {
		for _, srv := range servers {
			srv.Close()
		}
	}()
	in := peertest.Stdin()
	for in.Scan() {
		cmd, arg, _ := strings.Cut(in.Text(), " ")
		switch cmd {
		case "listen":
			boot := capnp.Client(echoproto.Echo_ServerToClient(&echoproto.Server{}))
			srv, err := rpc.Listen(arg, boot, rpc.WithLogger(peerLogger()))
			if err != nil {
				return peertest.Fail("listen %s: %v", arg, err)
			}
			go srv.Serve(context.Background())
			id := fmt.Sprint(len(servers))
			servers[id] = srv
			peertest.Say("listening %s %s", id, srv.Addr())
		case "close":
			srv := servers[arg]
			if srv == nil {
				return peertest.Fail("close: no server %q", arg)
			}
			if err := srv.Close(); err != nil {
				return peertest.Fail("close %s: %v", arg, err)
			}
			peertest.Say("closed %s", arg)
		default:
			return peertest.Fail("unknown command %q", in.Text())
		}
	}
	return 0
}

// engineServers is one engine-echo-server process for a test: each Dial
// asks it for a new Server on a new address of scheme and dials it with
// rpc.Dial, so both ends run capnshm's engine, in two processes. One
// process serves every case of the suite (a re-executed race binary takes
// about a second to start); each case has a Server of its own, so that
// CloseServer closes that case's connection only.
type engineServers struct {
	scheme rpc.Scheme
	dir    string
	p      *peertest.Peer
	n      int
}

func newEngineServers(t *testing.T, scheme rpc.Scheme) *engineServers {
	s := &engineServers{scheme: scheme, dir: peertest.TempDir(t)}
	s.p = peertest.Start(t, "engine-echo-server", nil)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("server process %d's stderr:\n%s", s.p.Pid(), s.p.Stderr())
		}
	})
	return s
}

// ask sends the peer a command and returns its answer.
func (s *engineServers) ask(t *testing.T, cmd string) string {
	t.Helper()
	s.p.Send(cmd)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	line, err := s.p.Line(ctx)
	if err != nil {
		t.Fatalf("%s: %v", cmd, err)
	}
	return line
}

// dial is the suite's Env.Dial.
func (s *engineServers) dial(t *testing.T) *conformance.Conn {
	t.Helper()
	s.n++
	var addr string
	switch s.scheme {
	case rpc.SchemeShm, rpc.SchemeUnix:
		addr = fmt.Sprintf("%s:%s", s.scheme, filepath.Join(s.dir, fmt.Sprintf("s%d.sock", s.n)))
	case rpc.SchemeTCP:
		addr = "tcp:127.0.0.1:0"
	default:
		t.Fatalf("no conformance address for scheme %s", s.scheme)
	}
	line := s.ask(t, "listen "+addr)
	var id, dialAddr string
	if _, err := fmt.Sscanf(line, "listening %s %s", &id, &dialAddr); err != nil {
		t.Fatalf("server process said %q, want \"listening N ADDR\"", line)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	c, err := rpc.Dial(ctx, dialAddr, rpc.WithLogger(peerLogger()))
	if err != nil {
		t.Fatalf("dial %s: %v", dialAddr, err)
	}
	t.Cleanup(func() { c.Close() })
	if want := s.scheme == rpc.SchemeShm; c.SharedMemory() != want {
		t.Fatalf("%s: shared memory %v, want %v", dialAddr, c.SharedMemory(), want)
	}
	return &conformance.Conn{
		// No wait for the bootstrap: the suite's first calls are
		// pipelined on it.
		Boot: echoproto.Echo(c.Bootstrap(t.Context())),
		RPC:  c,
		CloseServer: func() error {
			if got := s.ask(t, "close "+id); got != "closed "+id {
				t.Fatalf("server process said %q, want \"closed %s\"", got, id)
			}
			return nil
		},
	}
}

// TestConformanceEngineShm runs the conformance suite strictly on capnshm's
// engine at both ends, in two processes, over shared memory (rpc.Listen and
// rpc.Dial on a shm: address), with the 1 GiB case both ways.
func TestConformanceEngineShm(t *testing.T) {
	env := conformance.Env{
		Dial: newEngineServers(t, rpc.SchemeShm).dial,
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
	conformance.Run(t, socketEnv(newEngineServers(t, rpc.SchemeUnix)))
}

// TestConformanceEngineTCP is TestConformanceEngineUnix on a tcp: address
// (loopback).
func TestConformanceEngineTCP(t *testing.T) {
	conformance.Run(t, socketEnv(newEngineServers(t, rpc.SchemeTCP)))
}

func socketEnv(s *engineServers) conformance.Env {
	env := conformance.Env{Dial: s.dial}
	if testing.Short() || raceEnabled {
		env.Sizes = []int{0, 1, 1 << 20}
		env.Concurrent = 2000
	}
	return env
}
