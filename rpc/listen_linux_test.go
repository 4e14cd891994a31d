package rpc_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	capnp "capnproto.org/go/capnp/v3"

	"github.com/capnshm/capnshm/internal/echoproto"
	"github.com/capnshm/capnshm/internal/peertest"
	"github.com/capnshm/capnshm/rpc"
)

func init() {
	peertest.Register("api-serve", apiServePeer)
}

// apiServePeer listens on args[0] with an echo server, says "listening",
// and serves until it is killed.
func apiServePeer(args []string) int {
	boot := capnp.Client(echoproto.Echo_ServerToClient(&echoproto.Server{}))
	srv, err := rpc.Listen(args[0], boot)
	if err != nil {
		return peertest.Fail("listen: %v", err)
	}
	peertest.Say("listening")
	_ = srv.Serve(context.Background())
	return 0
}

// TestListenTakesOverStaleSocket: a server killed with SIGKILL leaves its
// socket file behind; a new server on the same address takes it over
// (before, Listen failed with "bind: address already in use"), while a file
// on which a live server accepts, or a path that is not a socket, is
// refused with ErrAddrInUse and left alone.
func TestListenTakesOverStaleSocket(t *testing.T) {
	for _, scheme := range []rpc.Scheme{rpc.SchemeShm, rpc.SchemeUnix} {
		t.Run(string(scheme), func(t *testing.T) {
			dir := peertest.TempDir(t)
			addr := string(scheme) + ":" + filepath.Join(dir, "s.sock")
			ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
			defer cancel()

			// Stale: a server process killed mid-life.
			p := peertest.Start(t, "api-serve", nil, addr)
			p.Expect("listening")
			c := apiDial(t, addr)
			if err := apiPing(ctx, c); err != nil {
				t.Fatalf("ping the first server: %v", err)
			}
			p.Kill()
			if _, err := os.Stat(filepath.Join(dir, "s.sock")); err != nil {
				t.Fatalf("the killed server's socket file: %v (the test needs it left behind)", err)
			}
			srv := apiServe(t, addr)
			c2 := apiDial(t, addr)
			if err := apiPing(ctx, c2); err != nil {
				t.Fatalf("ping the server that took over: %v", err)
			}
			if c2.SharedMemory() != (scheme == rpc.SchemeShm) {
				t.Errorf("shared memory %v on %s", c2.SharedMemory(), scheme)
			}

			// Live: refused, and the live server keeps serving.
			_, err := rpc.Listen(addr, capnp.Client{})
			if !errors.Is(err, rpc.ErrAddrInUse) || !strings.Contains(err.Error(), "another server accepts connections") {
				t.Errorf("Listen on a live server's address: %v, want ErrAddrInUse naming it", err)
			}
			if err := apiPing(ctx, apiDial(t, addr)); err != nil {
				t.Errorf("the live server after a refused Listen: %v", err)
			}
			srv.Close()

			// Not a socket: refused, never removed.
			other := filepath.Join(dir, "not-a-socket")
			if err := os.WriteFile(other, []byte("keep me"), 0o600); err != nil {
				t.Fatal(err)
			}
			_, err = rpc.Listen(string(scheme)+":"+other, capnp.Client{})
			if !errors.Is(err, rpc.ErrAddrInUse) || !strings.Contains(err.Error(), "is not a socket (a regular file); it is not removed") {
				t.Errorf("Listen on a regular file: %v, want ErrAddrInUse saying it is not a socket", err)
			}
			if b, err := os.ReadFile(other); err != nil || string(b) != "keep me" {
				t.Errorf("the regular file after Listen: %q, %v", b, err)
			}
			if err := os.Mkdir(filepath.Join(dir, "d"), 0o700); err != nil {
				t.Fatal(err)
			}
			_, err = rpc.Listen(string(scheme)+":"+filepath.Join(dir, "d"), capnp.Client{})
			if !errors.Is(err, rpc.ErrAddrInUse) || !strings.Contains(err.Error(), "(a directory)") {
				t.Errorf("Listen on a directory: %v", err)
			}
		})
	}
}
