package rpc_test

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"

	capnp "capnproto.org/go/capnp/v3"

	"github.com/capnshm/capnshm/internal/echoproto"
	"github.com/capnshm/capnshm/internal/peertest"
	"github.com/capnshm/capnshm/rpc"
)

// TestTooLargeFailsAlone: on every transport, a call whose params are over
// what the peer accepts fails alone with ErrTooLarge naming both sizes,
// and results over what the caller accepts come back as an exception
// naming both; the connection goes on. Before, results that large ended a
// shared-memory connection ("rpc: connection closed"), and a socket's
// calls died as "writev: broken pipe" with the whole connection.
func TestTooLargeFailsAlone(t *testing.T) {
	const limit = 1 << 20
	for _, scheme := range []rpc.Scheme{rpc.SchemeShm, rpc.SchemeUnix, rpc.SchemeTCP} {
		t.Run(string(scheme), func(t *testing.T) {
			srv := apiServe(t, apiAddr(t, scheme), rpc.WithMaxMessage(limit))
			c := apiDial(t, srv.Addr().String(), rpc.WithMaxMessage(limit))
			ctx := regressCtx(t)
			echo := echoproto.Echo(c.Bootstrap(ctx))
			defer echo.Release()
			err := echoproto.EchoInPlace(ctx, echo, make([]byte, 2*limit), 0)
			if !errors.Is(err, rpc.ErrTooLarge) || !strings.Contains(err.Error(), "over the 1048576 bytes the peer accepts") {
				t.Errorf("params of 2 MiB to a 1 MiB peer: %v, want ErrTooLarge naming both sizes", err)
			}
			t.Logf("params: %v", err)
			if err := apiPingBoot(ctx, echo); err != nil {
				t.Fatalf("the connection after params too large: %v", err)
			}
			f, release := echo.Fill(ctx, func(p echoproto.Echo_fill_Params) error {
				p.SetSize(2 * limit)
				return nil
			})
			_, err = f.Struct()
			release()
			if err == nil || !strings.Contains(err.Error(), "message too large") || !strings.Contains(err.Error(), "over the 1048576 bytes the caller accepts") {
				t.Errorf("results of 2 MiB to a 1 MiB caller: %v, want an exception naming both sizes", err)
			}
			t.Logf("results: %v", err)
			if err := apiPingBoot(ctx, echo); err != nil {
				t.Fatalf("the connection after results too large: %v", err)
			}
			if c.Err() != nil {
				t.Errorf("the connection ended: %v", c.Err())
			}
		})
	}
}

// checkGone checks that err is what a caller gets when the connection is
// gone: capnp.IsDisconnected and errors.Is ErrDisconnected (and kind), and
// that its text says each thing once.
func checkGone(t *testing.T, what string, err error, kind error) {
	t.Helper()
	if err == nil {
		t.Errorf("%s: no error", what)
		return
	}
	if !capnp.IsDisconnected(err) || !errors.Is(err, rpc.ErrDisconnected) || !errors.Is(err, kind) {
		t.Errorf("%s: %v (%T): IsDisconnected %v, ErrDisconnected %v, %v %v", what, err, err, capnp.IsDisconnected(err), errors.Is(err, rpc.ErrDisconnected), kind, errors.Is(err, kind))
	}
	text := err.Error()
	for _, dup := range []string{"send message: rpc: send message", "@0x0.@0", "capnshm: capnshm:", "disconnected: capnshm: disconnected"} {
		if strings.Contains(text, dup) {
			t.Errorf("%s: %q says %q", what, text, dup)
		}
	}
	t.Logf("%s: %v", what, err)
}

// TestDisconnectErrors: on every transport, an outstanding call, and a
// call made after, fail with one recognisable error when the connection
// goes: the peer dies (ErrPeerGone), this side closes (ErrClosed), the
// socket breaks under the connection (a TCP reset). Before, it was
// capnp.IsDisconnected on some paths, ErrPeerGone on others, and raw
// "broken pipe" or "connection reset by peer" on sockets.
func TestDisconnectErrors(t *testing.T) {
	for _, scheme := range []rpc.Scheme{rpc.SchemeShm, rpc.SchemeUnix, rpc.SchemeTCP} {
		t.Run(string(scheme)+"/peer dies", func(t *testing.T) {
			addr := apiAddr(t, scheme)
			if scheme == rpc.SchemeTCP {
				addr = freeTCPAddr(t)
			}
			p := startServePeer(t, addr)
			c := apiDial(t, addr)
			ctx := regressCtx(t)
			echo := echoproto.Echo(c.Bootstrap(ctx))
			defer echo.Release()
			if err := apiPingBoot(ctx, echo); err != nil {
				t.Fatal(err)
			}
			f, release := echo.Block(ctx, nil)
			defer release()
			if err := apiPingBoot(ctx, echo); err != nil { // the block is there
				t.Fatal(err)
			}
			p.Kill()
			_, err := f.Struct()
			checkGone(t, "the outstanding call", err, rpc.ErrPeerGone)
			<-c.Done()
			checkGone(t, "a call after", apiPingBoot(ctx, echo), rpc.ErrPeerGone)
			if err := c.Err(); !errors.Is(err, rpc.ErrPeerGone) || !errors.Is(err, rpc.ErrDisconnected) {
				t.Errorf("Conn.Err after the peer died: %v, want ErrPeerGone", err)
			}
		})
		t.Run(string(scheme)+"/closed here", func(t *testing.T) {
			srv := apiServe(t, apiAddr(t, scheme))
			c := apiDial(t, srv.Addr().String())
			ctx := regressCtx(t)
			echo := echoproto.Echo(c.Bootstrap(ctx))
			defer echo.Release()
			f, release := echo.Block(ctx, nil)
			defer release()
			if err := apiPingBoot(ctx, echo); err != nil {
				t.Fatal(err)
			}
			c.Close()
			_, err := f.Struct()
			checkGone(t, "the outstanding call", err, rpc.ErrClosed)
			checkGone(t, "a call after", apiPingBoot(ctx, echo), rpc.ErrClosed)
		})
	}
	t.Run("tcp/reset", func(t *testing.T) {
		// A server that takes the bootstrap call, then resets the
		// connection.
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		go func() {
			raw, err := ln.Accept()
			if err != nil {
				return
			}
			buf := make([]byte, 1)
			raw.Read(buf)
			raw.(*net.TCPConn).SetLinger(0)
			raw.Close()
		}()
		c := apiDial(t, "tcp:"+ln.Addr().String())
		ctx := regressCtx(t)
		echo := echoproto.Echo(c.Bootstrap(ctx))
		defer echo.Release()
		checkGone(t, "a call on a reset connection", apiPingBoot(ctx, echo), rpc.ErrPeerGone)
	})
}

// freeTCPAddr returns a tcp: address on a free loopback port.
func freeTCPAddr(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return "tcp:" + ln.Addr().String()
}

// levelRecorder is a slog handler that records the level of every record.
type levelRecorder struct {
	mu      sync.Mutex
	records []slog.Record
}

func (l *levelRecorder) Enabled(context.Context, slog.Level) bool { return true }
func (l *levelRecorder) Handle(_ context.Context, r slog.Record) error {
	l.mu.Lock()
	l.records = append(l.records, r)
	l.mu.Unlock()
	return nil
}
func (l *levelRecorder) WithAttrs([]slog.Attr) slog.Handler { return l }
func (l *levelRecorder) WithGroup(string) slog.Handler      { return l }

// above returns the records at or above level.
func (l *levelRecorder) above(level slog.Level) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
	for _, r := range l.records {
		if r.Level >= level {
			out = append(out, r.Level.String()+" "+r.Message)
		}
	}
	return out
}

// TestNormalEndsAreNotFaults: clients that connect, call and go away (with
// Close, or by just closing their socket without an Abort, as C++ clients
// do), and a server that closes with calls in flight, log nothing at WARN
// or ERROR: a normal end is DEBUG. Before, each was an ERROR line.
func TestNormalEndsAreNotFaults(t *testing.T) {
	for _, scheme := range []rpc.Scheme{rpc.SchemeShm, rpc.SchemeUnix, rpc.SchemeTCP} {
		t.Run(string(scheme), func(t *testing.T) {
			rec := &levelRecorder{}
			log := slog.New(rec)
			states := newConnStates()
			srv := apiServe(t, apiAddr(t, scheme), rpc.WithLogger(log), rpc.WithConnState(states.record))
			addr := srv.Addr().String()
			ctx := regressCtx(t)
			// A capnshm client that calls and closes.
			c := apiDial(t, addr, rpc.WithLogger(log))
			echo := echoproto.Echo(c.Bootstrap(ctx))
			if err := apiPingBoot(ctx, echo); err != nil {
				t.Fatal(err)
			}
			echo.Release()
			c.Close()
			states.wait(t, rpc.StateClosed)
			// A plain client that sends a bootstrap and hangs up.
			a, _ := rpc.ParseAddr(addr)
			network, address := a.Net()
			raw, err := net.Dial(network, address)
			if err != nil {
				t.Fatal(err)
			}
			plain, err := rpc.NewConn(mustStream(t, raw), capnp.Client{}, rpc.WithLogger(log))
			if err != nil {
				t.Fatal(err)
			}
			pb := echoproto.Echo(plain.Bootstrap(ctx))
			if err := apiPingBoot(ctx, pb); err != nil {
				t.Fatal(err)
			}
			raw.Close() // no Abort, no Finish
			states.wait(t, rpc.StateClosed)
			pb.Release()
			plain.Close()
			// A client with a call in flight when the server closes.
			c2 := apiDial(t, addr, rpc.WithLogger(log))
			e2 := echoproto.Echo(c2.Bootstrap(ctx))
			defer e2.Release()
			f, release := e2.Block(ctx, nil)
			defer release()
			if err := apiPingBoot(ctx, e2); err != nil {
				t.Fatal(err)
			}
			srv.Close()
			f.Struct()
			<-c2.Done()
			if bad := rec.above(slog.LevelWarn); len(bad) > 0 {
				t.Errorf("normal ends logged as faults:\n%s", strings.Join(bad, "\n"))
			}
		})
	}
}

// startServePeer starts a server process listening on addr.
func startServePeer(t *testing.T, addr string) *peertest.Peer {
	t.Helper()
	p := peertest.Start(t, "api-serve", nil, addr)
	p.Expect("listening")
	return p
}
