package rpc_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/capnshm/capnshm/internal/echoproto"
	"github.com/capnshm/capnshm/internal/peertest"
	"github.com/capnshm/capnshm/rpc"
)

// TestLiveness: with WithLiveness, a call to a server process that is
// stopped (SIGSTOP: not dead, its sockets open) fails as disconnected
// within a few liveness periods, and the connection ends with
// ErrUnresponsive; a server that is alive but slow to answer (a handler
// waiting on a gate for many periods) does not trip it, because the peer
// answers the probe.
func TestLiveness(t *testing.T) {
	// Generous for loaded CI machines (-race): a probe answered late by
	// more than d would end the live connection too.
	const d = 200 * time.Millisecond
	for _, scheme := range []rpc.Scheme{rpc.SchemeShm, rpc.SchemeUnix} {
		t.Run(string(scheme), func(t *testing.T) {
			addr := apiAddr(t, scheme)
			srv := peertest.Start(t, "sigterm-server", nil, addr)
			srv.Expect("listening")
			ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
			defer cancel()
			c, err := rpc.Dial(ctx, addr, rpc.WithLiveness(d))
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			boot := echoproto.Echo(c.Bootstrap(ctx))
			defer boot.Release()

			// Alive but slow: a gate call held for 10 periods.
			gate, release := boot.Gate(ctx, nil)
			defer release()
			slow := time.NewTimer(10 * d)
			select {
			case <-slow.C:
			case <-c.Done():
				t.Fatalf("the connection to a live server ended: %v", c.Err())
			}
			if err := openGate(ctx, boot); err != nil {
				t.Fatal(err)
			}
			if _, err := gate.Struct(); err != nil {
				t.Fatalf("the slow call: %v", err)
			}

			// Stopped: the next call fails and the connection ends.
			if err := unix.Kill(srv.Pid(), unix.SIGSTOP); err != nil {
				t.Fatal(err)
			}
			defer unix.Kill(srv.Pid(), unix.SIGCONT)
			// kill returns before the process stops: wait until it has.
			var info unix.Siginfo
			if err := unix.Waitid(unix.P_PID, srv.Pid(), &info, unix.WSTOPPED|unix.WNOWAIT, nil); err != nil {
				t.Fatalf("waiting for the server to stop: %v", err)
			}
			start := time.Now()
			f, rel := boot.Ping(ctx, nil)
			_, err = f.Struct()
			rel()
			if err == nil || !errors.Is(c.Err(), rpc.ErrUnresponsive) || !errors.Is(c.Err(), rpc.ErrDisconnected) {
				t.Fatalf("a call to a stopped server: %v; connection: %v; want it ended with ErrUnresponsive", err, c.Err())
			}
			t.Logf("call to the stopped server failed after %v: %v", time.Since(start).Round(time.Millisecond), err)
		})
	}
}
