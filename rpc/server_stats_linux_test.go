package rpc_test

import (
	"context"
	"os"
	"testing"
	"time"

	capnp "capnproto.org/go/capnp/v3"

	"github.com/capnshm/capnshm/internal/echoproto"
	"github.com/capnshm/capnshm/rpc"
)

// peerEcho is the test protocol's server, reporting the peer of each ping
// (rpc.PeerFromContext) and each gate call as it starts.
type peerEcho struct {
	echoproto.Server
	peers chan rpc.Peer
	gated chan struct{}
}

func (s *peerEcho) Ping(ctx context.Context, _ echoproto.Echo_ping) error {
	p, ok := rpc.PeerFromContext(ctx)
	if !ok {
		p = rpc.Peer{User: "no peer in the handler's context"}
	}
	s.peers <- p
	return nil
}

func (s *peerEcho) Gate(ctx context.Context, call echoproto.Echo_gate) error {
	s.gated <- struct{}{}
	return s.Server.Gate(ctx, call)
}

// TestPeerAndServerStats: a handler learns its peer from its context (the
// address, shared memory or not, and the credentials the system gives), and
// Server.Stats lists the established connections with their peers and
// counters, a call in flight included.
func TestPeerAndServerStats(t *testing.T) {
	for _, tc := range []struct {
		scheme  rpc.Scheme
		wantShm bool
		creds   bool
	}{
		{rpc.SchemeShm, true, true},
		{rpc.SchemeUnix, false, true},
		{rpc.SchemeTCP, false, false},
	} {
		t.Run(string(tc.scheme), func(t *testing.T) {
			impl := &peerEcho{peers: make(chan rpc.Peer, 4), gated: make(chan struct{}, 1)}
			srv, err := rpc.Listen(apiAddr(t, tc.scheme), capnp.Client(echoproto.Echo_ServerToClient(impl)), rpc.WithPoolSize(1<<20))
			if err != nil {
				t.Fatal(err)
			}
			defer srv.Close()
			go srv.Serve(context.Background())
			addr := srv.Addrs()[0]
			ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
			defer cancel()
			var boots []echoproto.Echo
			for range 2 {
				c, err := rpc.Dial(ctx, addr.String())
				if err != nil {
					t.Fatal(err)
				}
				defer c.Close()
				boot := echoproto.Echo(c.Bootstrap(ctx))
				defer boot.Release()
				boots = append(boots, boot)
				f, release := boot.Ping(ctx, nil)
				_, err = f.Struct()
				release()
				if err != nil {
					t.Fatal(err)
				}
				p := <-impl.peers
				if p.Addr.String() != addr.String() || p.SharedMemory != tc.wantShm || p.Creds != tc.creds {
					t.Fatalf("peer %+v: want Addr %v, SharedMemory %v, Creds %v", p, addr, tc.wantShm, tc.creds)
				}
				if tc.creds && (p.PID != os.Getpid() || p.UID != os.Getuid() || p.GID != os.Getgid()) {
					t.Fatalf("peer %+v: want pid %d uid %d gid %d", p, os.Getpid(), os.Getuid(), os.Getgid())
				}
			}
			// A call in flight on the first connection.
			gate, release := boots[0].Gate(ctx, nil)
			defer release()
			<-impl.gated
			st := srv.Stats()
			if len(st.Conns) != 2 || st.Negotiating != 0 {
				t.Fatalf("Stats: %d connections, %d negotiating; want 2, 0", len(st.Conns), st.Negotiating)
			}
			if want := map[bool]int{true: 2, false: 0}[tc.wantShm]; st.SharedMemory != want {
				t.Errorf("Stats.SharedMemory = %d, want %d", st.SharedMemory, want)
			}
			// At least the gate call; a bootstrap or a ping whose Finish is
			// still on its way counts too.
			if st.Total.Answers < 1 {
				t.Errorf("Stats.Total.Answers = %d with a call in flight, want at least 1", st.Total.Answers)
			}
			for _, c := range st.Conns {
				if c.Peer.SharedMemory != tc.wantShm || c.Stats.MessagesReceived < 2 {
					t.Errorf("connection %+v: want SharedMemory %v and at least 2 messages received", c, tc.wantShm)
				}
			}
			if err := openGate(ctx, boots[1]); err != nil {
				t.Fatal(err)
			}
			if _, err := gate.Struct(); err != nil {
				t.Fatal(err)
			}
		})
	}
}
