package rpc_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	capnp "capnproto.org/go/capnp/v3"
	gorpc "capnproto.org/go/capnp/v3/rpc"
	"golang.org/x/sys/unix"

	"github.com/capnshm/capnshm/internal/echoproto"
	"github.com/capnshm/capnshm/internal/peertest"
	"github.com/capnshm/capnshm/rpc"
	"github.com/capnshm/capnshm/rpc/internal/wire"
)

func init() {
	peertest.Register("echo-client", echoClientPeer)
}

// echoClientPeer dials over the socket it inherited and obeys commands:
// "block" starts a call that never returns; "ping"; "corrupt" publishes a
// MSG record whose segment lies outside its pool.
func echoClientPeer(args []string) int {
	conn, err := unixConn(int(peertest.Handles()[0]))
	if err != nil {
		return peertest.Fail("%v", err)
	}
	tr, err := rpc.NewTransport(context.Background(), conn, rpc.Dialer, append(peerOptions(args), rpc.WithLogger(peerLogger()))...)
	if err != nil {
		return peertest.Fail("handshake: %v", err)
	}
	c := gorpc.NewConn(tr, nil)
	defer c.Close()
	boot := echoproto.Bootstrap(context.Background(), c)
	ctx := context.Background()
	peertest.Say("ready")
	in := peertest.Stdin()
	for in.Scan() {
		switch in.Text() {
		case "block":
			f, _ := boot.Block(ctx, nil)
			go f.Struct()
			p, release := boot.Ping(ctx, nil) // the block call was sent before it
			if _, err := p.Struct(); err != nil {
				return peertest.Fail("ping: %v", err)
			}
			release()
			peertest.Say("blocked")
		case "ping":
			p, release := boot.Ping(ctx, nil)
			_, err := p.Struct()
			release()
			peertest.Say("pong %v", err)
		case "corrupt":
			var b [64]byte
			n, err := wire.PutMsg(b[:], 1, []wire.SegRef{{Loc: 0, Offset: 1 << 40, Length: 4096}})
			if err != nil {
				return peertest.Fail("%v", err)
			}
			if err := rpc.InjectRecord(tr, b[:n]); err != nil {
				return peertest.Fail("%v", err)
			}
			peertest.Say("corrupted")
		}
	}
	return 0
}

// logBuffer collects a transport's logs for assertions.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// server is an Echo server in this process with one connection per client.
type server struct {
	t    *testing.T
	logs *logBuffer
}

// accept serves a new connection on conn and returns its transport and
// rpc connection.
func (s *server) accept(conn *net.UnixConn) (*rpc.Transport, *gorpc.Conn) {
	s.t.Helper()
	logger := slog.New(slog.NewTextHandler(s.logs, nil))
	ctx, cancel := context.WithTimeout(s.t.Context(), 30*time.Second)
	defer cancel()
	tr, err := rpc.NewTransport(ctx, conn, rpc.Listener, rpc.WithLogger(logger))
	if err != nil {
		s.t.Fatalf("accept: %v", err)
	}
	boot := echoproto.Echo_ServerToClient(&echoproto.Server{})
	c := gorpc.NewConn(tr, &gorpc.Options{BootstrapClient: capnp.Client(boot), Logger: logger})
	s.t.Cleanup(func() { c.Close() })
	return tr, c
}

// startClient starts a client process connected to a new connection of s.
func (s *server) startClient(args ...string) (*peertest.Peer, *rpc.Transport, *gorpc.Conn) {
	s.t.Helper()
	mine, theirs := socketPair(s.t)
	p := peertest.Start(s.t, "echo-client", []uintptr{uintptr(theirs)}, args...)
	unix.Close(theirs)
	tr, c := s.accept(mine)
	p.Expect("ready")
	return p, tr, c
}

// TestClientKilledMidCall: a client process dies (SIGKILL) while the server
// runs its call; the server ends that connection at once and keeps serving
// its other clients.
func TestClientKilledMidCall(t *testing.T) {
	s := &server{t: t, logs: &logBuffer{}}
	victim, vtr, vconn := s.startClient()
	other, _, _ := s.startClient()
	victim.Send("block")
	victim.Expect("blocked")
	start := time.Now()
	victim.Kill()
	select {
	case <-vconn.Done():
	case <-time.After(30 * time.Second):
		t.Fatal("the server did not notice its client's death")
	}
	t.Logf("the server ended the dead client's connection %v after SIGKILL: %v", time.Since(start), vtr.Err())
	if !errors.Is(vtr.Err(), rpc.ErrPeerGone) {
		t.Fatalf("transport error %v, want ErrPeerGone", vtr.Err())
	}
	other.Send("ping")
	other.Expect("pong <nil>")
}

// TestServerKilledMidCall: every call outstanding to a server that dies
// fails with a disconnected error.
func TestServerKilledMidCall(t *testing.T) {
	c, tr, p := dialPeer(t, nil)
	defer c.Boot.Release()
	ctx := t.Context()
	var futures []echoproto.Echo_block_Results_Future
	for i := 0; i < 10; i++ {
		f, release := c.Boot.Block(ctx, nil)
		defer release()
		futures = append(futures, f)
	}
	g, release := c.Boot.Ping(ctx, nil) // the blocks are on the server now
	if _, err := g.Struct(); err != nil {
		t.Fatal(err)
	}
	release()
	start := time.Now()
	p.Kill()
	for i, f := range futures {
		_, err := f.Struct()
		if err == nil || !capnp.IsDisconnected(err) {
			t.Fatalf("call %d: %v, want a disconnected error", i, err)
		}
	}
	t.Logf("10 outstanding calls failed %v after SIGKILL; transport: %v", time.Since(start), tr.Err())
	if !errors.Is(tr.Err(), rpc.ErrPeerGone) {
		t.Fatalf("transport error %v, want ErrPeerGone", tr.Err())
	}
}

// TestCorruptDescriptor: a client that publishes a record pointing outside
// its pool gets its connection aborted with an error that names the
// problem; the server and its other clients are unaffected.
func TestCorruptDescriptor(t *testing.T) {
	s := &server{t: t, logs: &logBuffer{}}
	evil, etr, econn := s.startClient()
	other, _, _ := s.startClient()
	evil.Send("corrupt")
	evil.Expect("corrupted")
	select {
	case <-econn.Done():
	case <-time.After(30 * time.Second):
		t.Fatal("the corrupt connection was not aborted")
	}
	err := etr.Err()
	if !errors.Is(err, rpc.ErrProtocol) || !strings.Contains(err.Error(), "outside the peer's pool") {
		t.Fatalf("transport error %v, want ErrProtocol naming the segment outside the pool", err)
	}
	t.Logf("error: %v", err)
	other.Send("ping")
	other.Expect("pong <nil>")
}

// resources counts this process's open descriptors and capnshm mappings.
func resources(t *testing.T) (fds, maps int) {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile("/proc/self/maps")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents), strings.Count(string(b), "memfd:capnshm")
}

// TestNoLeaks: connections that end every way (closed by us, by the
// peer, by the peer's death) leave no descriptor or mapping behind.
func TestNoLeaks(t *testing.T) {
	fds0, maps0 := resources(t)
	for _, how := range []string{"close", "peer-close", "kill"} {
		t.Run(how, func(t *testing.T) {
			c, tr, p := dialPeer(t, nil)
			// Move some messages both ways, by reference and inline.
			ctx := t.Context()
			f, release := c.Boot.Fill(ctx, func(p echoproto.Echo_fill_Params) error {
				p.SetSize(4 << 20)
				return nil
			})
			if _, err := f.Struct(); err != nil {
				t.Fatal(err)
			}
			release()
			if _, maps := resources(t); maps <= maps0 {
				t.Fatalf("no capnshm mappings while connected (%d)", maps)
			}
			switch how {
			case "close":
				c.Boot.Release()
				c.RPC.Close()
			case "peer-close":
				c.Boot.Release()
				c.CloseServer()
			case "kill":
				c.Boot.Release()
				p.Kill()
			}
			select {
			case <-c.RPC.Done():
			case <-time.After(30 * time.Second):
				t.Fatal("connection not done")
			}
			c.RPC.Close()
			tr.Close()
			p.CloseStdin()
			p.Wait(ctx)
		})
	}
	runtime.GC()
	if fds, maps := resources(t); fds != fds0 || maps != maps0 {
		t.Fatalf("descriptors %d -> %d, capnshm mappings %d -> %d", fds0, fds, maps0, maps)
	}
}

// TestHeldResultsFallback: a client that holds every result while it keeps
// calling exhausts the server's pool; the server falls back (dedicated
// mappings, then heap memory sent on the socket) and never deadlocks.
func TestHeldResultsFallback(t *testing.T) {
	c, _, p := dialPeer(t, nil, "pool=2097152", "maxded=0")
	defer c.Boot.Release()
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	const size = 256 << 10
	var releases []capnp.ReleaseFunc
	for i := 0; i < 40; i++ { // 10 MiB of results, a 2 MiB pool
		f, release := c.Boot.Fill(ctx, func(p echoproto.Echo_fill_Params) error {
			p.SetSize(size)
			p.SetSeed(byte(i))
			return nil
		})
		res, err := f.Struct()
		if err != nil {
			t.Fatalf("call %d with %d results held: %v", i, len(releases), err)
		}
		d, _ := res.Data()
		if len(d) != size || d[size-1] != echoproto.Pattern(byte(i), size-1) {
			t.Fatalf("call %d: wrong results", i)
		}
		releases = append(releases, release)
	}
	p.Send("stats")
	stats, err := p.Line(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("server: %s", stats)
	if !strings.Contains(stats, "SentOnSocket:") || strings.Contains(stats, "SentOnSocket:0 ") {
		t.Fatalf("the server never fell back to the socket: %s", stats)
	}
	for _, r := range releases {
		r()
	}
	// Everything still works after the pressure is gone.
	f, release := c.Boot.Ping(ctx, nil)
	defer release()
	if _, err := f.Struct(); err != nil {
		t.Fatal(err)
	}
}

// TestOtherUserRefused: a peer running as another user is refused unless
// the listener allows it.
func TestOtherUserRefused(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root to make a socket owned by another user")
	}
	for _, allow := range []bool{false, true} {
		t.Run(fmt.Sprint("allow=", allow), func(t *testing.T) {
			listen, dial := foreignSocketPair(t, 65534)
			errc := make(chan error, 1)
			go func() {
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				defer cancel()
				tr, err := rpc.NewTransport(ctx, dial, rpc.Dialer, allowOthers(allow)...)
				if err == nil {
					tr.Close()
				}
				errc <- err
			}()
			ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
			defer cancel()
			tr, err := rpc.NewTransport(ctx, listen, rpc.Listener, allowOthers(allow)...)
			derr := <-errc
			if allow {
				if err != nil || derr != nil {
					t.Fatalf("allowed peer refused: %v / %v", err, derr)
				}
				tr.Close()
				return
			}
			if !errors.Is(err, rpc.ErrRefused) || !strings.Contains(err.Error(), "uid 65534") {
				t.Fatalf("listener: %v, want ErrRefused naming the uid", err)
			}
			if !errors.Is(derr, rpc.ErrRefused) {
				t.Fatalf("dialer: %v, want ErrRefused", derr)
			}
			t.Logf("listener: %v; dialer: %v", err, derr)
		})
	}
}

// foreignSocketPair makes a socketpair whose credentials (SO_PEERCRED)
// belong to uid: they are taken from the thread that creates it, which
// switches to uid for the call and back.
func foreignSocketPair(t *testing.T, uid int) (*net.UnixConn, *net.UnixConn) {
	t.Helper()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if _, _, e := unix.RawSyscall(unix.SYS_SETRESUID, ^uintptr(0), uintptr(uid), ^uintptr(0)); e != 0 {
		t.Fatalf("setresuid: %v", e)
	}
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if _, _, e := unix.RawSyscall(unix.SYS_SETRESUID, ^uintptr(0), 0, ^uintptr(0)); e != 0 {
		panic("cannot restore uid 0: " + e.Error())
	}
	if err != nil {
		t.Fatal(err)
	}
	a, err1 := unixConn(fds[0])
	b, err2 := unixConn(fds[1])
	if err := errors.Join(err1, err2); err != nil {
		t.Fatal(err)
	}
	return a, b
}

// TestOversizedMessage: a call larger than the peer's MaxMessage fails with
// ErrTooLarge and the connection goes on; results larger than what the
// client accepts become an exception naming both sizes, and the connection
// goes on too.
func TestOversizedMessage(t *testing.T) {
	c, tr, _ := dialPeer(t, []rpc.Option{rpc.WithMaxMessage(2 << 20)}, "maxmsg=1048576")
	defer c.Boot.Release()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	err := echoproto.EchoInPlace(ctx, c.Boot, make([]byte, 4<<20), 0)
	if err == nil || !errors.Is(err, rpc.ErrTooLarge) && !strings.Contains(err.Error(), "over the 1048576 bytes the peer accepts") {
		t.Fatalf("a 4 MiB call to a 1 MiB peer: %v, want a too-large error", err)
	}
	t.Logf("call: %v", err)
	if err := echoproto.EchoInPlace(ctx, c.Boot, make([]byte, 512<<10), 1); err != nil {
		t.Fatalf("the connection does not go on after a refused call: %v", err)
	}
	// 3 MiB of results are over the client's 2 MiB: the transport answers
	// with an exception in their place, and the connection goes on.
	f, release := c.Boot.Fill(ctx, func(p echoproto.Echo_fill_Params) error {
		p.SetSize(3 << 20)
		return nil
	})
	defer release()
	if _, err := f.Struct(); err == nil || !strings.Contains(err.Error(), "over the 2097152 bytes the caller accepts") {
		t.Fatalf("results over the client's limit: %v, want an exception naming both sizes", err)
	}
	if err := echoproto.EchoInPlace(ctx, c.Boot, make([]byte, 512<<10), 2); err != nil {
		t.Fatalf("the connection does not go on after results too large: %v (transport: %v)", err, tr.Err())
	}
}

// allowOthers returns WithAllowOtherUsers when allow is set.
func allowOthers(allow bool) []rpc.Option {
	if allow {
		return []rpc.Option{rpc.WithAllowOtherUsers()}
	}
	return nil
}
