package rpc_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	capnp "capnproto.org/go/capnp/v3"
	gorpc "capnproto.org/go/capnp/v3/rpc"
	"golang.org/x/sys/unix"

	"github.com/capnshm/capnshm/internal/conformance"
	"github.com/capnshm/capnshm/internal/echoproto"
	"github.com/capnshm/capnshm/internal/peertest"
	"github.com/capnshm/capnshm/rpc"
)

func init() {
	peertest.Register("echo-server", echoServerPeer)
}

// unixConn turns a descriptor into a *net.UnixConn. It takes fd: the
// connection holds a duplicate and fd itself is closed.
func unixConn(fd int) (*net.UnixConn, error) {
	f := os.NewFile(uintptr(fd), "socket")
	defer f.Close()
	c, err := net.FileConn(f)
	if err != nil {
		return nil, err
	}
	return c.(*net.UnixConn), nil
}

// socketPair returns the two ends of a connected unix stream socket. Close
// theirs (closeFD) once a peer has it: while this process holds it, the
// socket never reports the peer's death.
func socketPair(t testing.TB) (mine *net.UnixConn, theirs int) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	c, err := unixConn(fds[0])
	if err != nil {
		t.Fatal(err)
	}
	return c, fds[1]
}

// echoServerPeer serves echoproto.Server over the transport on the socket
// it inherited. Commands on stdin: "close" closes the connection; EOF ends
// the process.
func echoServerPeer(args []string) int {
	conn, err := unixConn(int(peertest.Handles()[0]))
	if err != nil {
		return peertest.Fail("%v", err)
	}
	logger := peerLogger()
	tr, err := rpc.NewTransport(context.Background(), conn, rpc.Listener, append(peerOptions(args), rpc.WithLogger(logger))...)
	if err != nil {
		peertest.Say("handshake failed: %v", err)
		return 0
	}
	boot := echoproto.Echo_ServerToClient(&echoproto.Server{})
	c := gorpc.NewConn(tr, &gorpc.Options{BootstrapClient: capnp.Client(boot), Logger: logger})
	peertest.Say("serving")
	in := peertest.Stdin()
	for in.Scan() {
		switch in.Text() {
		case "close":
			// The transport first, as Server.Close does: go-capnp
			// v3.0.1-alpha.2 can answer calls it cancels while closing
			// with empty successes, and the client must not get them.
			tr.Close()
			c.Close()
			<-c.Done()
			peertest.Say("closed")
		case "stats":
			peertest.Say("%+v", tr.Stats())
		}
	}
	c.Close()
	return 0
}

// transportPair returns the two ends of a connection in this process: the
// dialer with dialOpts, the listener with defaults. Both close at the end
// of the test.
func transportPair(t *testing.T, dialOpts ...rpc.Option) (dialer, listener *rpc.Transport) {
	t.Helper()
	return transportPairOpts(t, dialOpts, nil)
}

// transportPairOpts is transportPair with the listener's options too.
func transportPairOpts(t *testing.T, dialOpts, listenOpts []rpc.Option) (dialer, listener *rpc.Transport) {
	t.Helper()
	mine, theirs := socketPair(t)
	other, err := unixConn(theirs)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	type result struct {
		tr  *rpc.Transport
		err error
	}
	lc := make(chan result, 1)
	go func() {
		tr, err := rpc.NewTransport(ctx, other, rpc.Listener, listenOpts...)
		lc <- result{tr, err}
	}()
	dialer, err = rpc.NewTransport(ctx, mine, rpc.Dialer, dialOpts...)
	l := <-lc
	if err != nil {
		t.Fatalf("dialer: %v", err)
	}
	t.Cleanup(func() { dialer.Close() })
	if l.err != nil {
		t.Fatalf("listener: %v", l.err)
	}
	t.Cleanup(func() { l.tr.Close() })
	return dialer, l.tr
}

// peerLogger logs a peer's warnings and faults to its stderr.
func peerLogger() *slog.Logger {
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

// peerOptions turns a peer's "name=value" arguments into options.
func peerOptions(args []string) []rpc.Option {
	var o []rpc.Option
	for _, a := range args {
		k, v, _ := strings.Cut(a, "=")
		var n int64
		fmt.Sscan(v, &n)
		switch k {
		case "pool":
			o = append(o, rpc.WithPoolSize(n))
		case "inline":
			o = append(o, rpc.WithInlineMax(int(n)))
		case "maxmsg":
			o = append(o, rpc.WithMaxMessage(n))
		case "maxded":
			o = append(o, rpc.WithMaxDedicated(n))
		case "maxheap":
			o = append(o, rpc.WithMaxHeap(n))
		}
	}
	return o
}

// dialPeer starts an echo server process and connects to it.
func dialPeer(t *testing.T, opts []rpc.Option, peerArgs ...string) (*conformance.Conn, *rpc.Transport, *peertest.Peer) {
	t.Helper()
	mine, theirs := socketPair(t)
	p := peertest.Start(t, "echo-server", []uintptr{uintptr(theirs)}, peerArgs...)
	unix.Close(theirs)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("peer's stderr:\n%s", p.Stderr())
		}
	})
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	tr, err := rpc.NewTransport(ctx, mine, rpc.Dialer, append([]rpc.Option{rpc.WithLogger(peerLogger())}, opts...)...)
	if err != nil {
		t.Fatalf("handshake: %v; peer: %s", err, p.Stderr())
	}
	p.Expect("serving")
	c := gorpc.NewConn(tr, nil)
	t.Cleanup(func() { c.Close() })
	return &conformance.Conn{
		Boot: echoproto.Bootstrap(t.Context(), c),
		RPC:  c,
		CloseServer: func() error {
			p.Send("close")
			p.Expect("closed")
			return nil
		},
	}, tr, p
}

// TestConformanceGoCapnpShm runs the conformance suite on go-capnp's
// rpc.Conn, at both ends, over capnshm's shared-memory Transport, across two
// processes, in the lenient mode (Env.GoCapnp): what a user who brings
// go-capnp's Conn gets. The engine's runs are TestConformanceEngine*.
func TestConformanceGoCapnpShm(t *testing.T) {
	env := conformance.Env{
		Dial: func(t *testing.T) *conformance.Conn {
			c, _, _ := dialPeer(t, nil)
			return c
		},
		Huge:    1 << 30,
		GoCapnp: true,
	}
	if testing.Short() || raceEnabled {
		env.Sizes = []int{0, 1, 1 << 20}
		env.Huge = 0
		env.Concurrent = 2000
	}
	conformance.Run(t, env)
}

// TestZeroCopy: a large message travels by reference, with no byte copied
// by the transport, in both directions.
func TestZeroCopy(t *testing.T) {
	c, tr, _ := dialPeer(t, nil)
	defer c.Boot.Release()
	ctx := t.Context()
	const n = 8 << 20
	f, release := c.Boot.Sum(ctx, func(p echoproto.Echo_sum_Params) error {
		ptr, b, err := echoproto.NewData(p.Segment(), n)
		if err != nil {
			return err
		}
		echoproto.FillPattern(b, 1, 0)
		return capnp.Struct(p).SetPtr(0, ptr)
	})
	res, err := f.Struct()
	if err != nil {
		t.Fatal(err)
	}
	if res.Length() != n {
		t.Fatalf("server saw %d bytes", res.Length())
	}
	release()
	before := tr.Stats()
	g, release2 := c.Boot.Fill(ctx, func(p echoproto.Echo_fill_Params) error {
		p.SetSize(n)
		p.SetSeed(2)
		return nil
	})
	r2, err := g.Struct()
	if err != nil {
		t.Fatal(err)
	}
	d, _ := r2.Data()
	if len(d) != n {
		t.Fatalf("got %d bytes", len(d))
	}
	release2()
	after := tr.Stats()
	// Only small control messages (inline) may have been copied.
	if copied := after.BytesCopied - before.BytesCopied; copied >= 64<<10 {
		t.Fatalf("the transport copied %d bytes for an %d-byte result", copied, n)
	}
	if after.SentByReference == 0 {
		t.Fatal("no message went by reference")
	}
	t.Logf("stats: %+v", after)
}

// TestHandshakeRefused: a peer whose handshake fails gets a clear error, and
// nothing is left behind.
func TestHandshakeGarbage(t *testing.T) {
	mine, theirs := socketPair(t)
	other, err := unixConn(theirs)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	go other.Write([]byte("GET / HTTP/1.1\r\nHost: example\r\n\r\n"))
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	_, err = rpc.NewTransport(ctx, mine, rpc.Listener, nil)
	if !errors.Is(err, rpc.ErrProtocol) {
		t.Fatalf("got %v, want ErrProtocol", err)
	}
	t.Logf("error: %v", err)
}

func TestHandshakeTimeout(t *testing.T) {
	for _, tc := range []struct {
		name string
		ctx  time.Duration // 0: none
		opts []rpc.Option
		want error
		says string
	}{
		{"context", 100 * time.Millisecond, nil, context.DeadlineExceeded, "before the context ended"},
		{"option", 0, []rpc.Option{rpc.WithHandshakeTimeout(100 * time.Millisecond)}, os.ErrDeadlineExceeded, "WithHandshakeTimeout"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mine, theirs := socketPair(t)
			defer mine.Close()
			defer unix.Close(theirs) // the silent peer
			ctx := t.Context()
			if tc.ctx > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, tc.ctx)
				defer cancel()
			}
			_, err := rpc.NewTransport(ctx, mine, rpc.Dialer, tc.opts...)
			if err == nil {
				t.Fatal("handshake with a silent peer succeeded")
			}
			if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.says) {
				t.Fatalf("handshake with a silent peer: %v; want an error saying %q that wraps %v", err, tc.says, tc.want)
			}
		})
	}
}

// racingCloseRounds is how many transport pairs TestNewMessageRacingClose
// closes under their builders.
const racingCloseRounds = 100
