package rpc_test

import (
	"context"
	"fmt"

	capnp "capnproto.org/go/capnp/v3"

	"github.com/capnshm/capnshm/internal/echoproto"
	"github.com/capnshm/capnshm/rpc"
)

// ExamplePipe runs both ends of a connection in one process: capnshm's
// engine on each end of rpc.Pipe, messages handed over without a copy.
func ExamplePipe() {
	a, b := rpc.Pipe()
	server, err := rpc.NewConn(a, capnp.Client(echoproto.Echo_ServerToClient(&echoproto.Server{})))
	if err != nil {
		panic(err)
	}
	defer server.Close()
	client, err := rpc.NewConn(b, capnp.Client{})
	if err != nil {
		panic(err)
	}
	defer client.Close()

	ctx := context.Background()
	echo := echoproto.Echo(client.Bootstrap(ctx))
	defer echo.Release()
	f, release := echo.Echo(ctx, func(p echoproto.Echo_echo_Params) error {
		return p.SetData([]byte("hello"))
	})
	defer release()
	res, err := f.Struct()
	if err != nil {
		panic(err)
	}
	data, _ := res.Data()
	fmt.Printf("%s, %d bytes copied\n", data, client.Stats().BytesCopied)
	// Output: hello, 0 bytes copied
}
