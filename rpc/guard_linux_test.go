package rpc_test

import (
	"context"
	"errors"
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
	"github.com/capnshm/capnshm/rpc/internal/wire"
)

// buildSelfCall makes m a ping pipelined on its own question: question 0,
// whose target is the promised answer of question 0.
func buildSelfCall(m rpccp.Message) error {
	call, err := m.NewCall()
	if err != nil {
		return err
	}
	call.SetQuestionId(0)
	call.SetInterfaceId(echoproto.Echo_TypeID)
	call.SetMethodId(0) // ping
	target, err := call.NewTarget()
	if err != nil {
		return err
	}
	pa, err := target.NewPromisedAnswer()
	if err != nil {
		return err
	}
	pa.SetQuestionId(0)
	_, err = call.NewParams()
	return err
}

// TestLateCallNotSent: a call pipelined on a question already finished
// (or on itself), which go-capnp v3.0.1-alpha.2 sends when a call races
// the Return resolving its target (go-capnp #626), is not sent: Send
// fails with ErrLateCall and the transport goes on.
func TestLateCallNotSent(t *testing.T) {
	cases := []struct {
		name string
		pair func(t *testing.T) (client, server transport.Transport)
	}{
		{"shm", func(t *testing.T) (transport.Transport, transport.Transport) {
			return transportPair(t)
		}},
		{"stream", func(t *testing.T) (transport.Transport, transport.Transport) {
			mine, theirs := socketPair(t)
			other, err := unixConn(theirs)
			if err != nil {
				t.Fatal(err)
			}
			a, err1 := rpc.NewStreamTransport(mine)
			b, err2 := rpc.NewStreamTransport(other)
			if err1 != nil || err2 != nil {
				t.Fatal(err1, err2)
			}
			return a, b
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			client, server := tc.pair(t)
			defer client.Close()
			defer server.Close()
			send := func(build func(rpccp.Message) error) error {
				om, err := client.NewMessage()
				if err != nil {
					return err
				}
				defer om.Release()
				if err := build(om.Message()); err != nil {
					t.Fatal(err)
				}
				return om.Send()
			}
			// Question 0 is asked, then finished; a call pipelined on it
			// after that is refused, whatever its own ID.
			if err := send(func(m rpccp.Message) error {
				b, err := m.NewBootstrap()
				b.SetQuestionId(0)
				return err
			}); err != nil {
				t.Fatal(err)
			}
			if err := send(func(m rpccp.Message) error {
				f, err := m.NewFinish()
				f.SetQuestionId(0)
				return err
			}); err != nil {
				t.Fatal(err)
			}
			err := send(buildSelfCall)
			if !errors.Is(err, rpc.ErrLateCall) || !strings.Contains(err.Error(), "its own question ID") {
				t.Fatalf("Send of a self-pipelined call: %v, want ErrLateCall naming it", err)
			}
			// The transport goes on: the next message arrives after the
			// first two, and the refused one never does.
			if err := send(func(m rpccp.Message) error {
				b, err := m.NewBootstrap()
				b.SetQuestionId(7)
				return err
			}); err != nil {
				t.Fatal(err)
			}
			for i, want := range []rpccp.Message_Which{rpccp.Message_Which_bootstrap, rpccp.Message_Which_finish, rpccp.Message_Which_bootstrap} {
				im, err := server.RecvMessage()
				if err != nil {
					t.Fatal(err)
				}
				if got := im.Message().Which(); got != want {
					t.Fatalf("message %d is a %v, want a %v", i, got, want)
				}
				im.Release()
			}
		})
	}
}

// TestSelfPipelinedCall: a peer that sends a call pipelined on its own
// question ID anyway (a go-capnp client racing a Return, or a foreign one)
// would crash a go-capnp v3.0.1-alpha.2 server process (a nil dereference
// in handleCall); capnshm's transports refuse it under a go-capnp Conn.
// Under capnshm's engine (rpc.Listen) that call fails alone, with an
// exception naming the fault, and the connection and the server go on.
func TestSelfPipelinedCall(t *testing.T) {
	cases := []struct {
		scheme string
		// send sends a self-pipelined call on a new raw connection.
		send func(t *testing.T, ctx context.Context, conn *net.UnixConn) transport.Transport
	}{
		{"shm-abstract", func(t *testing.T, ctx context.Context, conn *net.UnixConn) transport.Transport {
			tr, err := rpc.NewTransport(ctx, conn, rpc.Dialer, nil)
			if err != nil {
				t.Fatal(err)
			}
			// The transport would refuse to send it: publish the record
			// by hand.
			_, seg := capnp.NewSingleSegmentMessage(nil)
			m, err := rpccp.NewRootMessage(seg)
			if err != nil {
				t.Fatal(err)
			}
			if err := buildSelfCall(m); err != nil {
				t.Fatal(err)
			}
			rec := make([]byte, 4096)
			n, err := wire.PutInline(rec, [][]byte{seg.Data()})
			if err != nil {
				t.Fatal(err)
			}
			if err := rpc.InjectRecord(tr, rec[:n]); err != nil {
				t.Fatal(err)
			}
			return tr
		}},
		{"unix-abstract", func(t *testing.T, _ context.Context, conn *net.UnixConn) transport.Transport {
			// go-capnp's own stream transport sends anything.
			tr := gorpc.NewStreamTransport(conn)
			om, err := tr.NewMessage()
			if err != nil {
				t.Fatal(err)
			}
			defer om.Release()
			if err := buildSelfCall(om.Message()); err != nil {
				t.Fatal(err)
			}
			if err := om.Send(); err != nil {
				t.Fatal(err)
			}
			return tr
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
			tr := tc.send(t, ctx, nc.(*net.UnixConn))
			defer tr.Close()

			// The server answers that call with an exception that says why.
			reason := ""
			for reason == "" {
				im, err := tr.RecvMessage()
				if err != nil {
					t.Fatalf("the connection ended without a Return: %v", err)
				}
				switch m := im.Message(); m.Which() {
				case rpccp.Message_Which_abort:
					e, _ := m.Abort()
					r, _ := e.Reason()
					t.Fatalf("the server aborted the connection (%q), want the call to fail alone", r)
				case rpccp.Message_Which_return:
					ret, err := m.Return()
					if err != nil || ret.AnswerId() != 0 || ret.Which() != rpccp.Return_Which_exception {
						t.Fatalf("the Return of the self-pipelined call: %v, %v; want an exception for question 0", ret.Which(), err)
					}
					e, _ := ret.Exception()
					reason, _ = e.Reason()
				}
				im.Release()
			}
			if !strings.Contains(reason, "pipelined on question 0") {
				t.Fatalf("exception %q does not name the self-pipelined call", reason)
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
