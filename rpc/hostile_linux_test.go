package rpc_test

// Attacks by a hostile or broken peer (issue 9): a client process that
// speaks the handshake by hand (rawPeer) and then breaks the rules. After
// each one the server's descriptors, capnshm mappings, goroutines and
// connections return to their base, and a second, well-behaved client
// process is served throughout.

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"runtime"
	"runtime/pprof"
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

// attackBound turns a hang into a failure; nothing here should come near.
const attackBound = 20 * time.Second

// rig is a Server on a shm: address with a well-behaved client process
// connected, and the usage of this process in that state (the base).
type rig struct {
	t         *testing.T
	srv       *rpc.Server
	addr      string
	path      string
	good      *peertest.Peer
	base      usage
	baseConns int
}

func newRig(t *testing.T, opts ...rpc.Option) *rig {
	t.Helper()
	addr := apiAddr(t, rpc.SchemeShm)
	r := &rig{t: t, addr: addr, path: strings.TrimPrefix(addr, "shm:")}
	r.srv = apiServe(t, addr, append([]rpc.Option{rpc.WithPoolSize(1 << 20)}, opts...)...)
	r.good = startDialPeer(t, addr, "require")
	r.good.Expect("dialed shm=true")
	r.ping()
	r.base = stable(t)
	r.baseConns = rpc.ServerConns(r.srv)
	return r
}

// stable measures this process once its usage has not changed for a few
// samples (goroutines of a call just served may still be leaving).
func stable(t *testing.T) usage {
	t.Helper()
	last, same := measure(t), 0
	for same < 3 {
		time.Sleep(20 * time.Millisecond)
		runtime.GC()
		u := measure(t)
		if u == last {
			same++
		} else {
			last, same = u, 0
		}
	}
	return last
}

// ping has the good client call the server once.
func (r *rig) ping() {
	r.t.Helper()
	r.good.Send("ping")
	r.good.Expect("pong <nil>")
}

// serving has the good client call the server in a loop until the
// returned function is called, which fails the test if any call failed
// and reports how many succeeded.
func (r *rig) serving() func() int {
	var mu sync.Mutex
	var stop bool
	var calls int
	var err error
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			mu.Lock()
			s := stop
			mu.Unlock()
			if s {
				return
			}
			r.good.Send("ping")
			ctx, cancel := context.WithTimeout(context.Background(), attackBound)
			line, lerr := r.good.Line(ctx)
			cancel()
			if lerr == nil && line != "pong <nil>" {
				lerr = errors.New(line)
			}
			if lerr != nil {
				mu.Lock()
				err = lerr
				mu.Unlock()
				return
			}
			mu.Lock()
			calls++
			mu.Unlock()
		}
	}()
	return func() int {
		r.t.Helper()
		mu.Lock()
		stop = true
		mu.Unlock()
		<-done
		if err != nil {
			r.t.Fatalf("the well-behaved client was not served during the attack: %v%s", err, r.hangDump(err))
		}
		return calls
	}
}

// hangDump, when err is a call that got no answer in time, returns the
// goroutines of this process (the server) and of the good client, which
// it ends with SIGQUIT: where each side waits says what was lost.
func (r *rig) hangDump(err error) string {
	if !errors.Is(err, context.DeadlineExceeded) {
		return ""
	}
	var b strings.Builder
	b.WriteString("\nthe server's goroutines:\n")
	_ = pprof.Lookup("goroutine").WriteTo(&b, 2)
	if r.good.Process().Signal(unix.SIGQUIT) == nil {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_ = r.good.Wait(ctx)
		cancel()
	}
	b.WriteString("\nthe good client's stderr (SIGQUIT):\n")
	b.WriteString(r.good.Stderr())
	return b.String()
}

// attack starts a hostile client of the rig's server.
func (r *rig) attack(name string, params ...string) *peertest.Peer {
	r.t.Helper()
	p := peertest.Start(r.t, "hostile", nil, append([]string{r.path, name}, params...)...)
	r.t.Cleanup(func() {
		if r.t.Failed() {
			r.t.Logf("attacker's stderr:\n%s", p.Stderr())
		}
	})
	return p
}

// settle checks that the server is back at its base: the attacker's
// connections gone and everything they held released.
func (r *rig) settle() {
	r.t.Helper()
	u := settle(r.t, r.base)
	if n := rpc.ServerConns(r.srv); n != r.baseConns {
		r.t.Fatalf("the server holds %d connections, %d before the attack", n, r.baseConns)
	}
	r.ping()
	r.t.Logf("back at base: %v", u)
}

// connRig is a Transport-level server in this process (NewTransport and
// go-capnp's Conn on a socket pair per client, as failure_linux_test.go's
// server), for attacks whose outcome is the attacked transport's Err.
type connRig struct {
	t    *testing.T
	s    *server
	good *peertest.Peer
	base usage
}

func newConnRig(t *testing.T) *connRig {
	t.Helper()
	r := &connRig{t: t, s: &server{t: t, logs: &logBuffer{}}}
	r.good, _, _ = r.s.startClient()
	r.good.Send("ping")
	r.good.Expect("pong <nil>")
	r.base = stable(t)
	return r
}

// attack starts a hostile client on a new connection served with opts.
func (r *connRig) attack(opts []rpc.Option, name string, params ...string) (*rpc.Transport, *gorpc.Conn, *peertest.Peer) {
	r.t.Helper()
	mine, theirs := socketPair(r.t)
	p := peertest.Start(r.t, "hostile", []uintptr{uintptr(theirs)}, append([]string{"fd", name}, params...)...)
	unix.Close(theirs)
	r.t.Cleanup(func() {
		if r.t.Failed() {
			r.t.Logf("attacker's stderr:\n%s", p.Stderr())
		}
	})
	logger := slog.New(slog.NewTextHandler(r.s.logs, nil))
	ctx, cancel := context.WithTimeout(r.t.Context(), attackBound)
	defer cancel()
	tr, err := rpc.NewTransport(ctx, mine, rpc.Listener, append(opts, rpc.WithLogger(logger))...)
	if err != nil {
		r.t.Fatalf("handshake: %v; attacker: %s", err, p.Stderr())
	}
	boot := echoproto.Echo_ServerToClient(&echoproto.Server{})
	c := gorpc.NewConn(tr, &gorpc.Options{BootstrapClient: capnp.Client(boot), Logger: logger})
	return tr, c, p
}

// acceptWith serves a well-behaved client on conn with opts.
func (r *connRig) acceptWith(conn *net.UnixConn, opts []rpc.Option) (*rpc.Transport, *gorpc.Conn) {
	r.t.Helper()
	logger := slog.New(slog.NewTextHandler(r.s.logs, nil))
	ctx, cancel := context.WithTimeout(r.t.Context(), attackBound)
	defer cancel()
	tr, err := rpc.NewTransport(ctx, conn, rpc.Listener, append(opts, rpc.WithLogger(logger))...)
	if err != nil {
		r.t.Fatalf("handshake: %v", err)
	}
	boot := echoproto.Echo_ServerToClient(&echoproto.Server{})
	return tr, gorpc.NewConn(tr, &gorpc.Options{BootstrapClient: capnp.Client(boot), Logger: logger})
}

// ended waits for the attacked connection to end and returns why.
func (r *connRig) ended(tr *rpc.Transport, c *gorpc.Conn) error {
	r.t.Helper()
	select {
	case <-c.Done():
	case <-time.After(attackBound):
		r.t.Fatalf("the attacked connection did not end within %v (transport: %v)", attackBound, tr.Err())
	}
	return tr.Err()
}

// settle closes the attacked connection and checks that this process is
// back at its base, the good client still served.
func (r *connRig) settle(tr *rpc.Transport, c *gorpc.Conn, p *peertest.Peer) {
	r.t.Helper()
	c.Close()
	tr.Close()
	p.Kill()
	u := settle(r.t, r.base)
	r.good.Send("ping")
	r.good.Expect("pong <nil>")
	r.t.Logf("back at base: %v", u)
}

// within fails the test if f has not returned within attackBound.
func within(t *testing.T, what string, f func()) time.Duration {
	t.Helper()
	start := time.Now()
	done := make(chan struct{})
	go func() {
		defer close(done)
		f()
	}()
	select {
	case <-done:
		return time.Since(start)
	case <-time.After(attackBound):
		t.Fatalf("%s did not return within %v", what, attackBound)
	}
	return 0
}

// ---- item 1: what the engine acts on is read once ----

// TestRewriteAfterCheck: a client sends 1,000 calls by reference from its
// pool (2 KiB each: read in place, not copied) and keeps rewriting them
// while the server reads them: torn mixes of
// calls that differ in question ID, target, method and parameters (go-capnp
// read the question ID again after the transport's check, and crashed on
// the changed value 5 times in 5). The server does not crash; it answers or
// ends that connection with a protocol error; the other client is served
// throughout; and the server ends back at its base.
func TestRewriteAfterCheck(t *testing.T) {
	r := newRig(t)
	stop := r.serving()
	p := r.attack("rewrite", "1000")
	ctx, cancel := context.WithTimeout(t.Context(), attackBound)
	defer cancel()
	line, err := p.Line(ctx)
	if err != nil || !strings.HasPrefix(line, "rewrote ") {
		t.Fatalf("attacker: %q, %v; stderr: %s", line, err, p.Stderr())
	}
	t.Logf("attacker: %s", line)
	// The calls are over InlineMax, so they were read in place, where the
	// attacker kept writing; unless the server ended that connection
	// (also allowed), its counters say so.
	attacked := false
	for _, c := range r.srv.Stats().Conns {
		if st := c.Stats; st.MessagesReceived > 1000 && st.BytesReceived > 1000*2<<10 {
			attacked = true
			if st.BytesCopied > st.BytesReceived/4 {
				t.Errorf("the attacked connection copied %d of the %d bytes it received: the calls were not read in place", st.BytesCopied, st.BytesReceived)
			}
			t.Logf("the attacked connection read %d messages, %d bytes, in place (%d bytes copied)", st.MessagesReceived, st.BytesReceived, st.BytesCopied)
		}
	}
	if !attacked {
		t.Logf("the server ended the attacked connection")
	}
	t.Logf("%d calls of the other client served during the attack", stop())
	p.Kill()
	r.settle()
}

// ---- item 2: the peer cannot write our memory ----

// TestPeerCannotWriteOurMemory: a client that holds the server's pool and
// a dedicated mapping (a 4 MiB result) tries every route into them: a
// writable mapping, mprotect of its read-only one, a read-write reopen
// through /proc with pwrite, and hole punching. Each fails, and the result
// it holds is intact.
func TestPeerCannotWriteOurMemory(t *testing.T) {
	r := newConnRig(t)
	mine, theirs := socketPair(t)
	p := peertest.Start(t, "seal-client", []uintptr{uintptr(theirs)})
	unix.Close(theirs)
	// A 1 MiB pool: the 4 MiB result goes in a dedicated mapping.
	tr, c := r.acceptWith(mine, []rpc.Option{rpc.WithPoolSize(1 << 20)})
	for _, region := range []string{"pool", "mapping"} {
		line, err := p.Line(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("%s", line)
		if line != region+" EPERM EACCES EPERM EPERM" {
			t.Errorf("the client's writes into our %s: %q, want %q", region, line, region+" EPERM EACCES EPERM EPERM")
		}
	}
	p.Expect("intact true")
	r.settle(tr, c, p)
}

// ---- item 3: doorbells ----

// TestDoorbellsCannotWedge: a client fills every doorbell the server rings
// and keeps clearing O_NONBLOCK on every descriptor it was given, the
// server's own doorbells among them, while making the server ring. The
// server goes on serving the other client, and when the attacker dies its
// connection is cleaned up entirely.
func TestDoorbellsCannotWedge(t *testing.T) {
	r := newRig(t)
	p := r.attack("bells")
	stop := r.serving()
	p.Expect("attacking")
	time.Sleep(200 * time.Millisecond) // let the attack run while the good client calls
	t.Logf("%d calls served during the attack", stop())
	p.Kill()
	r.settle()
}

// TestDoorbellsCannotHoldClose: the same attack, and Server.Close while
// the attacker is alive: Close returns at once.
func TestDoorbellsCannotHoldClose(t *testing.T) {
	r := newRig(t)
	p := r.attack("bells")
	p.Expect("attacking")
	r.ping()
	d := within(t, "Server.Close during the attack", func() { r.srv.Close() })
	t.Logf("Server.Close took %v", d)
	p.Kill()
}

func init() {
	peertest.Register("sigterm-server", sigtermServerPeer)
}

// sigtermServerPeer serves echo on args[0] until SIGTERM, as a daemon does
// (signal.NotifyContext), or until its stdin closes, then exits 0. args[1], if there, is the
// handshake timeout.
func sigtermServerPeer(args []string) int {
	ctx, stop := signalContext()
	defer stop()
	// The test closing our stdin (its cleanup) stops us too.
	go func() {
		in := peertest.Stdin()
		for in.Scan() {
		}
		stop()
	}()
	opts := []rpc.Option{rpc.WithPoolSize(1 << 20)}
	if len(args) > 1 {
		d, err := time.ParseDuration(args[1])
		if err != nil {
			return peertest.Fail("%v", err)
		}
		opts = append(opts, rpc.WithHandshakeTimeout(d))
	}
	srv, err := rpc.Listen(args[0], capnp.Client(echoproto.Echo_ServerToClient(&echoproto.Server{})), opts...)
	if err != nil {
		return peertest.Fail("%v", err)
	}
	peertest.Say("listening")
	if err := srv.Serve(ctx); err != nil && ctx.Err() == nil {
		return peertest.Fail("serve: %v", err)
	}
	peertest.Say("stopped")
	return 0
}

// TestSIGTERMUnderAttack: a server process with a connection under the
// doorbell attack still stops on SIGTERM.
func TestSIGTERMUnderAttack(t *testing.T) {
	addr := apiAddr(t, rpc.SchemeShm)
	srv := peertest.Start(t, "sigterm-server", nil, addr)
	srv.Expect("listening")
	p, err := rawDial(strings.TrimPrefix(addr, "shm:"), rawHello{})
	if err != nil {
		t.Fatal(err)
	}
	defer p.close()
	stop, err := attackBells(p)
	defer stop()
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond) // under attack a while before the signal
	if err := srv.Process().Signal(unix.SIGTERM); err != nil {
		t.Fatal(err)
	}
	d := within(t, "the server's exit after SIGTERM", func() { srv.Expect("stopped"); srv.WaitOK() })
	t.Logf("the server stopped %v after SIGTERM", d)
}

// ---- items 4 and 5: before the handshake ----

// TestOneByteThenClose: 200 clients send one byte (the start of a frame's
// magic) and hang up. Each connection ends at once, long before the
// handshake timeout.
func TestOneByteThenClose(t *testing.T) {
	r := newRig(t, rpc.WithHandshakeTimeout(time.Minute))
	p := r.attack("onebyte", "200", "close")
	stop := r.serving()
	p.Expect("connected 200")
	p.Expect("closed 0 of 0")
	p.CloseStdin()
	p.WaitOK()
	stop()
	r.settle()
}

// TestOneByteNoBusyLoop: 200 clients send one byte and wait. The server
// (a process of its own, so that its CPU time is its alone) spends next
// to no CPU on them meanwhile, and closes them at the handshake timeout.
func TestOneByteNoBusyLoop(t *testing.T) {
	addr := apiAddr(t, rpc.SchemeShm)
	srv := peertest.Start(t, "sigterm-server", nil, addr, "3s")
	srv.Expect("listening")
	p := peertest.Start(t, "hostile", nil, strings.TrimPrefix(addr, "shm:"), "onebyte", "200")
	p.Expect("connected 200")
	time.Sleep(100 * time.Millisecond) // the server has accepted them
	before, start := processCPU(t, srv.Pid()), time.Now()
	time.Sleep(time.Second)
	used, wall := processCPU(t, srv.Pid())-before, time.Since(start)
	t.Logf("CPU used by the server with 200 one-byte clients waiting: %v in %v", used, wall)
	if used > wall/4 {
		t.Errorf("the server used %v of CPU in %v with 200 idle one-byte clients: a busy loop", used, wall)
	}
	p.Expect("closed 200 of 200")
	p.CloseStdin()
	p.WaitOK()
	srv.Process().Signal(unix.SIGTERM)
	srv.Expect("stopped")
	srv.WaitOK()
}

// processCPU returns the CPU time process pid has used (/proc/PID/stat).
func processCPU(t *testing.T, pid int) time.Duration {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	// The fields after the command name (in parentheses) start with the
	// state (field 3); utime and stime are fields 14 and 15, in clock
	// ticks of 10 ms (USER_HZ is 100 on Linux).
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+2:]))
	var utime, stime int64
	fmt.Sscan(f[11], &utime)
	fmt.Sscan(f[12], &stime)
	return time.Duration(utime+stime) * 10 * time.Millisecond
}

// TestHandshakeTimeoutFromAccept: clients that send nothing, or half a
// HELLO frame header, are disconnected at the handshake timeout.
func TestHandshakeTimeoutFromAccept(t *testing.T) {
	for _, attack := range []string{"silent", "partialhello"} {
		t.Run(attack, func(t *testing.T) {
			r := newRig(t, rpc.WithHandshakeTimeout(500*time.Millisecond))
			p := r.attack(attack, "100")
			stop := r.serving()
			p.Expect("connected 100")
			p.Expect("closed 100 of 100")
			p.CloseStdin()
			p.WaitOK()
			stop()
			r.settle()
		})
	}
}

// ---- item 6: a peer that stops reading ----

// TestStoppedReaderCannotHoldClose: a client whose calls' results go on
// the socket (no dedicated mappings on the server) and which never reads
// it: the server's writer blocks, and Close still returns at once.
func TestStoppedReaderCannotHoldClose(t *testing.T) {
	r := newConnRig(t)
	tr, c, p := r.attack([]rpc.Option{rpc.WithPoolSize(256 << 10), rpc.WithMaxDedicated(0)}, "stopread")
	p.Expect("wedged")
	r.good.Send("ping")
	r.good.Expect("pong <nil>")
	d := within(t, "Transport.Close with a blocked socket writer", func() { tr.Close() })
	t.Logf("Close took %v", d)
	r.settle(tr, c, p)
}

// ---- item 7: limits ----

// TestConnectionLimits: connections over the total limit, or over the
// limit for one user, are refused at accept with a REFUSE that names the
// limit; those under it are held; the good client is served throughout.
func TestConnectionLimits(t *testing.T) {
	for _, tt := range []struct {
		name   string
		opt    rpc.Option
		held   int // of 20 (the good client holds one connection)
		reason string
	}{
		{"total", rpc.WithMaxConns(6), 5, "WithMaxConns"},
		{"per user", rpc.WithMaxConnsPerUser(4), 3, "WithMaxConnsPerUser"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := newRig(t, tt.opt, rpc.WithHandshakeTimeout(time.Minute))
			p := r.attack("conns", "20")
			stop := r.serving()
			p.Expect(fmt.Sprintf("held %d refused %d closed 0", tt.held, 20-tt.held))
			line, err := p.Line(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("%s", line)
			if !strings.Contains(line, tt.reason) {
				t.Errorf("the refusal %q does not name %s", line, tt.reason)
			}
			stop()
			p.CloseStdin()
			p.WaitOK()
			r.settle()
		})
	}
}

// TestPeerMappingLimits: a client announcing more dedicated mappings (or
// more mapped bytes) than the limit has its connection ended with ErrLimit
// naming it, and every mapping it sent is unmapped.
func TestPeerMappingLimits(t *testing.T) {
	for _, tt := range []struct {
		name   string
		opts   []rpc.Option
		n      string
		size   string
		reason string
	}{
		{"count", []rpc.Option{rpc.WithMaxPeerMappings(16)}, "40", "65536", "WithMaxPeerMappings"},
		{"bytes", []rpc.Option{rpc.WithMaxPeerMappingBytes(10 << 30)}, "10", fmt.Sprint(4 << 30), "WithMaxPeerMappingBytes"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := newConnRig(t)
			tr, c, p := r.attack(tt.opts, "maps", tt.n, tt.size)
			err := r.ended(tr, c)
			if !errors.Is(err, rpc.ErrLimit) || !strings.Contains(err.Error(), tt.reason) {
				t.Fatalf("the connection ended with %v, want ErrLimit naming %s", err, tt.reason)
			}
			t.Logf("%v", err)
			r.settle(tr, c, p)
		})
	}
}

// TestSocketMessagesNeverTaken: a client sends socket messages that no
// SOCK record ever takes, 32 of 8 MiB or 100,000 of 8 bytes. The server
// holds at most MaxSocketBytes of them (it stops reading the socket; each
// counts at least 1 KiB), and ends the connection once the ring has been
// idle for FrameTimeout.
func TestSocketMessagesNeverTaken(t *testing.T) {
	for _, tt := range []struct{ name, n, size string }{
		{"large", "32", fmt.Sprint(8 << 20)},
		{"tiny", "100000", "8"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := newConnRig(t)
			var ms runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&ms)
			heap0 := ms.HeapAlloc
			tr, c, p := r.attack([]rpc.Option{rpc.WithMaxSocketBytes(16 << 20), rpc.WithFrameTimeout(time.Second)}, "sockmsgs", tt.n, tt.size)
			p.Expect("sending")
			var peak uint64
			deadline := time.After(attackBound)
		wait:
			for {
				select {
				case <-c.Done():
					break wait
				case <-deadline:
					t.Fatalf("the connection did not end (transport: %v); heap grew by %d MiB at most", tr.Err(), (peak-heap0)>>20)
				case <-time.After(20 * time.Millisecond):
					runtime.ReadMemStats(&ms)
					peak = max(peak, ms.HeapAlloc)
				}
			}
			err := tr.Err()
			t.Logf("heap grew by %d MiB at most; %v", (peak-heap0)>>20, err)
			if peak-heap0 > 96<<20 {
				t.Errorf("the heap grew by %d MiB for socket messages never taken (limit 16 MiB)", (peak-heap0)>>20)
			}
			if !errors.Is(err, rpc.ErrProtocol) || !strings.Contains(err.Error(), "without the SOCK record") {
				t.Fatalf("the connection ended with %v, want ErrProtocol naming the missing SOCK record", err)
			}
			r.settle(tr, c, p)
		})
	}
}

// TestPeerPoolAndRingLimits: a HELLO announcing a pool or a ring over the
// limits is refused with a reason that names the limit.
func TestPeerPoolAndRingLimits(t *testing.T) {
	for _, tt := range []struct {
		name, pool, ring, reason string
	}{
		{"pool", fmt.Sprint(64 << 30), "65536", "WithMaxPeerPool"},
		{"ring", "1048576", fmt.Sprint(4 << 20), "WithMaxPeerRing"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := newRig(t, rpc.WithMaxPeerRing(1<<20))
			p := r.attack("hello", tt.pool, tt.ring)
			line, err := p.Line(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("%s", line)
			if !strings.HasPrefix(line, "refused") || !strings.Contains(line, tt.reason) {
				t.Fatalf("the server answered %q, want a refusal naming %s", line, tt.reason)
			}
			p.CloseStdin()
			p.WaitOK()
			r.settle()
		})
	}
}

// ---- item 8: faults that wedged silently ----

// TestRecordsWithoutFrames: a MSG record naming a dedicated mapping never
// sent, and a SOCK record whose frame never comes, end the connection
// after FrameTimeout with an error that names them.
func TestRecordsWithoutFrames(t *testing.T) {
	for _, tt := range []struct{ kind, want string }{
		{"msg", "names dedicated mapping 7, which the peer never sent"},
		{"sock", "announces socket message 1, which the peer never sent"},
	} {
		t.Run(tt.kind, func(t *testing.T) {
			r := newConnRig(t)
			tr, c, p := r.attack([]rpc.Option{rpc.WithFrameTimeout(300 * time.Millisecond)}, "record", tt.kind)
			p.Expect("published")
			err := r.ended(tr, c)
			if !errors.Is(err, rpc.ErrProtocol) || !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), "FrameTimeout") {
				t.Fatalf("the connection ended with %v, want ErrProtocol: %s", err, tt.want)
			}
			t.Logf("%v", err)
			p.Expect("closed")
			r.settle(tr, c, p)
		})
	}
}

// TestCorruptOutboundRing: a client writes an impossible head into the
// server's outbound ring; the server ends the connection, once, with
// ErrProtocol naming the head, when its ring fills.
func TestCorruptOutboundRing(t *testing.T) {
	r := newConnRig(t)
	tr, c, p := r.attack([]rpc.Option{rpc.WithRingCapacity(4096)}, "corrupthead")
	p.Expect("attacking")
	err := r.ended(tr, c)
	if !errors.Is(err, rpc.ErrProtocol) || !strings.Contains(err.Error(), "head") {
		t.Fatalf("the connection ended with %v, want ErrProtocol naming the head", err)
	}
	t.Logf("%v", err)
	r.settle(tr, c, p)
}

// signalContext ends at SIGTERM.
func signalContext() (context.Context, context.CancelFunc) {
	return signal.NotifyContext(context.Background(), unix.SIGTERM)
}

// ---- the kill storm ----

func init() {
	peertest.Register("storm-client", stormClientPeer)
}

// stormClientPeer dials args[0] and echoes in a loop until it is killed,
// saying "dialed" once connected.
func stormClientPeer(args []string) int {
	ctx := context.Background()
	c, err := rpc.Dial(ctx, args[0], rpc.WithFallback(rpc.FallbackRequire), rpc.WithPoolSize(256<<10))
	if err != nil {
		return peertest.Fail("dial: %v", err)
	}
	peertest.Say("dialed")
	boot := echoproto.Echo(c.Bootstrap(ctx))
	for i := 0; ; i++ {
		if err := apiEcho(ctx, boot, 1+(i*4099)%(512<<10), byte(i)); err != nil {
			return peertest.Fail("echo: %v", err)
		}
	}
}

// stormClients is how many clients TestKillStorm kills: 200, 50 with
// -short, or CAPNSHM_STORM.
func stormClients() int {
	if s := os.Getenv("CAPNSHM_STORM"); s != "" {
		var n int
		fmt.Sscan(s, &n)
		return n
	}
	if testing.Short() {
		return 50
	}
	return 200
}

// TestKillStorm: 200 clients killed at random points (starting, in the
// handshake, mid-call) while another client keeps calling: every one of
// its calls succeeds, and the server ends back at its base.
func TestKillStorm(t *testing.T) {
	r := newRig(t)
	n := stormClients()
	stop := r.serving()
	start := time.Now()
	var wg sync.WaitGroup
	var mu sync.Mutex
	dialed := 0
	sem := make(chan struct{}, 8)
	for i := range n {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			p := peertest.Start(t, "storm-client", nil, r.addr)
			// Kill points spread over the start, the handshake and the
			// calls; processes start slower under the race detector.
			spread := 150
			if raceEnabled {
				spread = 600
			}
			time.Sleep(time.Duration((i*7919)%spread) * time.Millisecond)
			p.Kill()
			if line, err := p.Line(context.Background()); err == nil && line == "dialed" {
				mu.Lock()
				dialed++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	calls := stop()
	t.Logf("%d clients killed in %v (%d after connecting, %d before or during the handshake); %d calls of the other client served meanwhile",
		n, time.Since(start).Round(time.Millisecond), dialed, n-dialed, calls)
	r.settle()
}

// connectAs connects to the abstract unix socket name from a thread
// running as uid, so that the server sees uid in SO_PEERCRED. Needs root.
func connectAs(t *testing.T, name string, uid int) *net.UnixConn {
	t.Helper()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, e := unix.RawSyscall(unix.SYS_SETRESUID, ^uintptr(0), uintptr(uid), ^uintptr(0)); e != 0 {
		t.Fatalf("setresuid: %v", e)
	}
	err = unix.Connect(fd, &unix.SockaddrUnix{Name: "@" + name})
	if _, _, e := unix.RawSyscall(unix.SYS_SETRESUID, ^uintptr(0), 0, ^uintptr(0)); e != 0 {
		panic("cannot restore uid 0: " + e.Error())
	}
	if err != nil {
		t.Fatal(err)
	}
	c, err := unixConn(fd)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// refusedWithin reports whether the server sends a REFUSE (and closes) on
// c within a second, with its reason; false means it holds c.
func refusedWithin(t *testing.T, c *net.UnixConn) (bool, string) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(time.Second))
	hdr, payload, _, err := wire.NewFrameConn(c).ReadFrame(0)
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return false, ""
	}
	if err != nil || hdr.Type != wire.FrameRefuse {
		t.Fatalf("the server answered %v, %v; want a REFUSE or nothing", hdr, err)
	}
	r, err := wire.ParseRefuse(payload)
	if err != nil {
		t.Fatal(err)
	}
	return true, r.Reason
}

// TestConnectionLimitPerUser: the per-user limit counts each user apart:
// with one connection per user allowed and root's taken, another root
// connection is refused and one of uid 65534 is held.
func TestConnectionLimitPerUser(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root to connect as another user")
	}
	addr := apiAddr(t, rpc.SchemeShmAbstract)
	name := strings.TrimPrefix(addr, "shm-abstract:")
	srv := apiServe(t, addr, rpc.WithMaxConnsPerUser(1), rpc.WithHandshakeTimeout(time.Minute))
	good := startDialPeer(t, addr, "require")
	good.Expect("dialed shm=true")
	if refused, reason := refusedWithin(t, connectAs(t, name, 0)); !refused || !strings.Contains(reason, "WithMaxConnsPerUser") {
		t.Fatalf("a second connection of root: refused %v (%q), want refused naming Options.MaxConnsPerUser", refused, reason)
	}
	if refused, reason := refusedWithin(t, connectAs(t, name, 65534)); refused {
		t.Fatalf("the first connection of uid 65534 was refused: %s", reason)
	}
	if n := rpc.ServerConns(srv); n != 2 {
		t.Fatalf("the server holds %d connections, want 2 (root's and uid 65534's)", n)
	}
	good.Send("ping")
	good.Expect("pong <nil>")
}

// TestServerRestartUnderKillStorm (item 9): a server process is killed
// (SIGKILL) while clients dial it and are killed at random points, then
// started again on the same address, three times over. Each restart
// takes over the dead server's socket file while clients are still
// dialing, and a client that dials the last one is served over shared
// memory.
func TestServerRestartUnderKillStorm(t *testing.T) {
	addr := apiAddr(t, rpc.SchemeShm)
	const rounds, clients = 3, 16
	spread := 150
	if raceEnabled {
		spread = 600
	}
	for round := range rounds {
		srv := peertest.Start(t, "sigterm-server", nil, addr)
		srv.Expect("listening")
		var wg sync.WaitGroup
		for i := range clients {
			wg.Add(1)
			go func() {
				defer wg.Done()
				p := peertest.Start(t, "storm-client", nil, addr)
				time.Sleep(time.Duration((i*7919)%spread) * time.Millisecond)
				p.Kill()
			}()
			if i == clients/2 {
				srv.Kill() // mid-storm: clients still starting and dialing
			}
		}
		wg.Wait()
		if _, err := os.Lstat(strings.TrimPrefix(addr, "shm:")); err != nil {
			t.Fatalf("round %d: the killed server's socket file: %v", round, err)
		}
	}
	srv := peertest.Start(t, "sigterm-server", nil, addr)
	srv.Expect("listening")
	c := startDialPeer(t, addr, "require")
	c.Expect("dialed shm=true")
	c.Send("ping")
	c.Expect("pong <nil>")
}
