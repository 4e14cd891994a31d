package rpc_test

import (
	"context"
	"fmt"
	"net"

	capnp "capnproto.org/go/capnp/v3"
	gorpc "capnproto.org/go/capnp/v3/rpc"

	"github.com/capnshm/capnshm/internal/echoproto"
	"github.com/capnshm/capnshm/rpc"
)

// ExampleNewStreamTransport builds go-capnp connections by hand, on an
// in-process pipe, with capnshm's checked stream transport.
func ExampleNewStreamTransport() {
	a, b := net.Pipe()
	ta, err := rpc.NewStreamTransport(a)
	if err != nil {
		panic(err)
	}
	tb, err := rpc.NewStreamTransport(b)
	if err != nil {
		panic(err)
	}
	boot := echoproto.Echo_ServerToClient(&echoproto.Server{})
	server := gorpc.NewConn(ta, &gorpc.Options{BootstrapClient: capnp.Client(boot)})
	defer server.Close()
	client := gorpc.NewConn(tb, nil)
	defer client.Close()

	ctx := context.Background()
	echo := echoproto.Bootstrap(ctx, client)
	defer echo.Release()
	f, release := echo.Echo(ctx, func(p echoproto.Echo_echo_Params) error {
		return p.SetData([]byte("hello"))
	})
	defer release()
	res, err := f.Struct()
	if err != nil {
		fmt.Println(err)
		return
	}
	d, _ := res.Data()
	fmt.Printf("%s\n", d)
	// Output: hello
}
