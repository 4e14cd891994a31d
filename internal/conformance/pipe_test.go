package conformance_test

import (
	"net"
	"testing"

	capnp "capnproto.org/go/capnp/v3"
	"capnproto.org/go/capnp/v3/rpc"

	"github.com/capnshm/capnshm/internal/conformance"
	"github.com/capnshm/capnshm/internal/echoproto"
	capnshm "github.com/capnshm/capnshm/rpc"
)

// TestConformanceGoCapnpPipe runs the suite on go-capnp's rpc.Conn (both
// ends) over capnshm's stream transport on an in-process pipe, in the
// lenient mode (Env.GoCapnp): a check of the suite against the other engine.
// capnshm's NewStreamTransport is go-capnp's with its incoming-message
// checks, without which the embargo race can crash the process (go-capnp
// #626: see rpc.NewStreamTransport).
func TestConformanceGoCapnpPipe(t *testing.T) {
	conformance.Run(t, conformance.Env{
		Dial: func(t *testing.T) *conformance.Conn {
			a, b := net.Pipe()
			boot := echoproto.Echo_ServerToClient(&echoproto.Server{})
			server := rpc.NewConn(stream(t, a), &rpc.Options{BootstrapClient: capnp.Client(boot)})
			client := rpc.NewConn(stream(t, b), nil)
			t.Cleanup(func() { client.Close(); server.Close() })
			return &conformance.Conn{
				Boot: echoproto.Bootstrap(t.Context(), client),
				RPC:  client,
				// The pipe first, as capnshm's Server.Close does: go-capnp
				// v3.0.1-alpha.2 can answer the calls it cancels while
				// closing with empty successes.
				CloseServer: func() error {
					a.Close()
					return server.Close()
				},
			}
		},
		Sizes:      []int{0, 1, 1 << 20},
		Concurrent: load(),
		GoCapnp:    true,
	})
}

// TestConformanceEnginePipe runs the suite strictly on capnshm's engine,
// both ends in this process over an in-process pipe.
func TestConformanceEnginePipe(t *testing.T) {
	conformance.Run(t, conformance.Env{
		Dial: func(t *testing.T) *conformance.Conn {
			a, b := net.Pipe()
			boot := echoproto.Echo_ServerToClient(&echoproto.Server{})
			server, err := capnshm.NewConn(stream(t, a), capnp.Client(boot))
			if err != nil {
				t.Fatal(err)
			}
			client, err := capnshm.NewConn(stream(t, b), capnp.Client{})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { client.Close(); server.Close() })
			return &conformance.Conn{
				Boot:        echoproto.Echo(client.Bootstrap(t.Context())),
				RPC:         client,
				CloseServer: server.Close,
			}
		},
		Sizes:      []int{0, 1, 1 << 20},
		Concurrent: load(),
	})
}

// load is the size of the load cases: smaller under the race detector.
func load() int {
	if testing.Short() || raceEnabled {
		return 2000
	}
	return 0
}

// stream returns capnshm's stream transport on c.
func stream(t *testing.T, c net.Conn) *capnshm.StreamTransport {
	st, err := capnshm.NewStreamTransport(c)
	if err != nil {
		t.Fatal(err)
	}
	return st
}
