package rpc_test

import (
	"context"
	"fmt"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	capnp "capnproto.org/go/capnp/v3"
	gorpc "capnproto.org/go/capnp/v3/rpc"
	"capnproto.org/go/capnp/v3/rpc/transport"
	rpccp "capnproto.org/go/capnp/v3/std/capnp/rpc"

	"github.com/capnshm/capnshm/internal/echoproto"
	"github.com/capnshm/capnshm/rpc"
)

// TestSelfPipelinedCall: a Call pipelined on a promised answer whose
// question ID is the call's own crashes a go-capnp v3.0.1-alpha.2 process
// (a nil dereference in handleCall); go-capnp's own client sends one when
// a call on a pipelined capability races the Return that resolves it
// (go-capnp #626). On either transport the server refuses it: that
// connection ends with an abort naming the fault, and the server goes on
// serving.
func TestSelfPipelinedCall(t *testing.T) {
	cases := []struct {
		scheme string
		raw    func(ctx context.Context, conn *net.UnixConn) (transport.Transport, error)
	}{
		{"shm-abstract", func(ctx context.Context, conn *net.UnixConn) (transport.Transport, error) {
			return rpc.NewTransport(ctx, conn, rpc.Dialer, nil)
		}},
		{"unix-abstract", func(_ context.Context, conn *net.UnixConn) (transport.Transport, error) {
			return gorpc.NewStreamTransport(conn), nil
		}},
	}
	for i, tc := range cases {
		t.Run(tc.scheme, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
			defer cancel()
			addr := fmt.Sprintf("%s:capnshm-selfpipe-%d-%d", tc.scheme, os.Getpid(), i)
			srv, err := rpc.Listen(addr, capnp.Client(echoproto.Echo_ServerToClient(&echoproto.Server{})))
			if err != nil {
				t.Fatal(err)
			}
			defer srv.Close()
			go srv.Serve(context.Background())

			a, err := rpc.ParseAddr(addr)
			if err != nil {
				t.Fatal(err)
			}
			network, address := a.Net()
			nc, err := (&net.Dialer{}).DialContext(ctx, network, address)
			if err != nil {
				t.Fatal(err)
			}
			tr, err := tc.raw(ctx, nc.(*net.UnixConn))
			if err != nil {
				t.Fatal(err)
			}
			defer tr.Close()

			// Call 0, pipelined on question 0: itself.
			om, err := tr.NewMessage()
			if err != nil {
				t.Fatal(err)
			}
			call, err := om.Message().NewCall()
			if err != nil {
				t.Fatal(err)
			}
			call.SetQuestionId(0)
			call.SetInterfaceId(echoproto.Echo_TypeID)
			call.SetMethodId(0) // ping
			target, err := call.NewTarget()
			if err != nil {
				t.Fatal(err)
			}
			pa, err := target.NewPromisedAnswer()
			if err != nil {
				t.Fatal(err)
			}
			pa.SetQuestionId(0)
			if _, err := call.NewParams(); err != nil {
				t.Fatal(err)
			}
			if err := om.Send(); err != nil {
				t.Fatal(err)
			}
			om.Release()

			// The server aborts this connection and says why.
			reason := ""
			for reason == "" {
				im, err := tr.RecvMessage()
				if err != nil {
					t.Fatalf("the connection ended without an abort: %v", err)
				}
				if im.Message().Which() == rpccp.Message_Which_abort {
					e, err := im.Message().Abort()
					if err != nil {
						t.Fatal(err)
					}
					reason, _ = e.Reason()
				}
				im.Release()
			}
			if !strings.Contains(reason, "pipelined on question 0, its own") {
				t.Fatalf("abort reason %q does not name the self-pipelined call", reason)
			}

			// The server still serves.
			c, err := rpc.Dial(ctx, addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			boot := echoproto.Echo(c.Bootstrap(ctx))
			defer boot.Release()
			f, release := boot.Ping(ctx, nil)
			defer release()
			if _, err := f.Struct(); err != nil {
				t.Fatalf("ping on a new connection: %v", err)
			}
		})
	}
}
