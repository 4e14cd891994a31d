package rpc_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	capnp "capnproto.org/go/capnp/v3"
	gorpc "capnproto.org/go/capnp/v3/rpc"

	"github.com/capnshm/capnshm/internal/echoproto"
	"github.com/capnshm/capnshm/rpc"
)

// TestWinAddressForms: every Windows address form serves, in this process
// and to a client process; shm: runs on shared memory (a named pipe for
// the handshake), pipe: and tcp: on the stream transport.
func TestWinAddressForms(t *testing.T) {
	for _, tt := range []struct {
		scheme  rpc.Scheme
		network string
	}{{rpc.SchemeShm, "pipe"}, {rpc.SchemePipe, "pipe"}, {rpc.SchemeTCP, "tcp"}} {
		t.Run(string(tt.scheme), func(t *testing.T) {
			srv := apiServe(t, winAddr(tt.scheme))
			addr := srv.Addr().String()
			if n := srv.Addr().Network(); n != tt.network {
				t.Errorf("Addr().Network() = %q, want %q", n, tt.network)
			}
			wantShm := tt.scheme == rpc.SchemeShm
			c := apiDial(t, addr)
			if c.SharedMemory() != wantShm {
				t.Errorf("SharedMemory() = %v, want %v", c.SharedMemory(), wantShm)
			}
			if p := c.Peer(); tt.network == "pipe" && (!p.Creds || p.PID == 0 || !strings.HasPrefix(p.User, "S-1-")) {
				t.Errorf("Peer() = %+v: want the pipe's peer process and its user SID", p)
			}
			boot := echoproto.Echo(c.Bootstrap(t.Context()))
			defer boot.Release()
			if err := apiEcho(t.Context(), boot, 1<<20, 3); err != nil {
				t.Fatal(err)
			}
			if st := c.Stats(); wantShm && st.SentByReference == 0 {
				t.Errorf("Stats() = %+v: nothing went by reference on shared memory", st)
			}
			p := startWinPeer(t, "win-dial", addr, "auto")
			p.Expect(fmt.Sprintf("dialed shm=%v", wantShm))
			p.Send("echo 100000")
			p.Expect("echoed <nil>")
			p.CloseStdin()
			p.WaitOK()
		})
	}
}

// TestWinFallbackPolicies: every combination of the dialer's and the
// listener's policy on a shm: address, the dialer in another process; and
// shm: dialers against a pipe: listener on the same pipe name: the matrix
// Linux's TestFallbackPolicies checks on a unix socket.
func TestWinFallbackPolicies(t *testing.T) {
	type result struct {
		shm     bool
		dialErr string // a substring of Dial's error; "" if Dial succeeds
		pingErr string // a substring of the ping's error; "" if it succeeds
	}
	shm, stream := result{shm: true}, result{}
	for _, tc := range []struct {
		listener, dialer string
		want             result
	}{
		{"auto", "auto", shm},
		{"auto", "require", shm},
		{"auto", "never", stream},
		{"require", "auto", shm},
		{"require", "require", shm},
		{"require", "never", result{pingErr: "requires shared memory and the client speaks plain Cap'n Proto"}},
		{"never", "auto", stream},
		{"never", "require", result{dialErr: "handshake refused by the peer: the listener on shm:"}},
		{"never", "never", stream},
		{"pipe", "auto", stream},
		{"pipe", "require", result{dialErr: "does not offer shared memory"}},
		{"pipe", "never", stream},
	} {
		t.Run("listener="+tc.listener+"/dialer="+tc.dialer, func(t *testing.T) {
			addr := winAddr(rpc.SchemeShm)
			if tc.listener == "pipe" {
				apiServe(t, "pipe:"+strings.TrimPrefix(addr, "shm:"))
			} else {
				apiServe(t, addr, rpc.WithFallback(winFallback(tc.listener)))
			}
			p := startWinPeer(t, "win-dial", addr, tc.dialer)
			ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
			defer cancel()
			line, err := p.Line(ctx)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("client: %s", line)
			if tc.want.dialErr != "" {
				if !strings.HasPrefix(line, "dial error: ") || !strings.Contains(line, tc.want.dialErr) || !strings.Contains(line, "FallbackRequire") {
					t.Fatalf("client said %q, want a Dial error containing %q", line, tc.want.dialErr)
				}
				return
			}
			if want := fmt.Sprintf("dialed shm=%v", tc.want.shm); line != want {
				t.Fatalf("client said %q, want %q", line, want)
			}
			p.Send("ping")
			if line, err = p.Line(ctx); err != nil {
				t.Fatal(err)
			}
			t.Logf("client: %s", line)
			if tc.want.pingErr == "" {
				if line != "pong <nil>" {
					t.Fatalf("client said %q, want pong <nil>", line)
				}
				return
			}
			// The call fails with the reason the server's Abort gave.
			if !strings.HasPrefix(line, "pong ") || !strings.Contains(line, tc.want.pingErr) {
				t.Fatalf("client said %q, want the call to fail with %q", line, tc.want.pingErr)
			}
		})
	}
}

// TestWinPlainClient: plain Cap'n Proto clients on DialPipe's connection
// against shm: listeners: go-capnp's rpc.Conn on its own stream transport
// is served under auto and never; under require a client is turned away,
// and capnshm's engine on the stream transport shows the Abort's reason in
// its call's error.
func TestWinPlainClient(t *testing.T) {
	for _, policy := range []string{"auto", "never", "require"} {
		t.Run(policy, func(t *testing.T) {
			addr := winAddr(rpc.SchemeShm)
			apiServe(t, addr, rpc.WithFallback(winFallback(policy)))
			ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
			defer cancel()
			raw, err := rpc.DialPipe(ctx, strings.TrimPrefix(addr, "shm:"))
			if err != nil {
				t.Fatal(err)
			}
			if policy == "require" {
				st, err := rpc.NewStreamTransport(raw)
				if err != nil {
					t.Fatal(err)
				}
				c, err := rpc.NewConn(st, capnp.Client{})
				if err != nil {
					t.Fatal(err)
				}
				defer c.Close()
				err = apiPingBoot(ctx, echoproto.Echo(c.Bootstrap(ctx)))
				if err == nil || !strings.Contains(err.Error(), addr+" requires shared memory and the client speaks plain Cap'n Proto") {
					t.Fatalf("a plain client of a require listener: %v, want the Abort's reason", err)
				}
				t.Logf("%v", err)
				return
			}
			c := gorpc.NewConn(gorpc.NewStreamTransport(raw), nil)
			defer c.Close()
			boot := echoproto.Echo(c.Bootstrap(ctx))
			defer boot.Release()
			// Not pipelined on the bootstrap (go-capnp v3.0.1-alpha.2
			// releases the bootstrap's Return while such a call reads it).
			if err := boot.Resolve(ctx); err != nil {
				t.Fatal(err)
			}
			if err := apiEcho(ctx, boot, 100000, 9); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestWinRequireErrors: FallbackRequire fails clearly where shared memory
// cannot be had; addresses Windows does not have are ErrUnsupported, and
// a pipe name that cannot be one is ErrBadAddress.
func TestWinRequireErrors(t *testing.T) {
	ctx := t.Context()
	req := rpc.WithFallback(rpc.FallbackRequire)
	addr := winAddr(rpc.SchemeShm)
	apiServe(t, addr, rpc.WithFallback(rpc.FallbackNever))
	_, err := rpc.Dial(ctx, addr, req)
	if !errors.Is(err, rpc.ErrRefused) || !strings.Contains(err.Error(), "FallbackNever") {
		t.Errorf("Dial with require to a never listener: %v, want ErrRefused naming the listener's policy", err)
	}
	for _, a := range []string{"pipe:" + strings.TrimPrefix(addr, "shm:"), "tcp:127.0.0.1:1"} {
		if _, err := rpc.Dial(ctx, a, req); !errors.Is(err, rpc.ErrBadOption) || !strings.Contains(err.Error(), "only shm:") {
			t.Errorf("Dial(%q) with require: %v, want ErrBadOption", a, err)
		}
	}
	for _, a := range []string{"shm-abstract:x", "unix-abstract:x"} {
		if _, err := rpc.Dial(ctx, a); !errors.Is(err, rpc.ErrUnsupported) {
			t.Errorf("Dial(%q): %v, want ErrUnsupported", a, err)
		}
		if _, err := rpc.Listen(a, capnp.Client{}); !errors.Is(err, rpc.ErrUnsupported) {
			t.Errorf("Listen(%q): %v, want ErrUnsupported", a, err)
		}
	}
	for _, a := range []string{`shm:a\b`, "pipe:", "shm:" + strings.Repeat("x", 248)} {
		if _, err := rpc.ParseAddr(a); !errors.Is(err, rpc.ErrBadAddress) {
			t.Errorf("ParseAddr(%q): %v, want ErrBadAddress", a, err)
		}
	}
	if _, err := rpc.Dial(ctx, winAddr(rpc.SchemeShm)); err == nil || !strings.Contains(err.Error(), `\\.\pipe\capnshm-test-`) {
		t.Errorf("Dial of a pipe nobody serves: %v, want an error naming the pipe", err)
	}
}

// TestWinTailCallsOnlyWhereTaken is TestTailCallsOnlyWhereTaken on
// Windows: a call pipelined on reflect's result goes back to the caller's
// callback as a tail call only to capnshm's engine dialled with Dial over
// shared memory; go-capnp, on a Transport of NewTransport's or on the
// plain pipe, gets the results back.
func TestWinTailCallsOnlyWhereTaken(t *testing.T) {
	addr := winAddr(rpc.SchemeShm)
	apiServe(t, addr)
	name := strings.TrimPrefix(addr, "shm:")
	for _, tt := range []struct {
		name   string
		client func(t *testing.T) capnp.Client // the bootstrap
		tail   bool
	}{
		{"engine over shared memory, Dial", func(t *testing.T) capnp.Client {
			return apiDial(t, addr).Bootstrap(t.Context())
		}, true},
		{"go-capnp over shared memory", func(t *testing.T) capnp.Client {
			raw, err := rpc.DialPipe(t.Context(), name)
			if err != nil {
				t.Fatal(err)
			}
			tr, err := rpc.NewTransport(t.Context(), raw, rpc.Dialer, rpc.WithPoolSize(2<<20))
			if err != nil {
				t.Fatal(err)
			}
			c := gorpc.NewConn(tr, nil)
			t.Cleanup(func() { c.Close() })
			return c.Bootstrap(t.Context())
		}, false},
		{"go-capnp over the pipe", func(t *testing.T) capnp.Client {
			raw, err := rpc.DialPipe(t.Context(), name)
			if err != nil {
				t.Fatal(err)
			}
			c := gorpc.NewConn(gorpc.NewStreamTransport(raw), nil)
			t.Cleanup(func() { c.Close() })
			return c.Bootstrap(t.Context())
		}, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			forwardToOwnCallback(t, echoproto.Echo(tt.client(t)), tt.tail)
		})
	}
}
