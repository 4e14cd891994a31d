package rpc_test

import (
	"context"
	"fmt"
	"net"
	"os"

	capnp "capnproto.org/go/capnp/v3"
	gorpc "capnproto.org/go/capnp/v3/rpc"
	"golang.org/x/sys/unix"

	"github.com/capnshm/capnshm/examples/echo"
	"github.com/capnshm/capnshm/rpc"
)

// Both ends of a connection in one process, for brevity: in practice the
// listener accepts the unix socket in another process. The server's
// results are written in place into its shared pool and read in place by
// the client.
func ExampleNewTransport() {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		panic(err)
	}
	conn := func(fd int) *net.UnixConn {
		f := os.NewFile(uintptr(fd), "socket")
		defer f.Close()
		c, err := net.FileConn(f)
		if err != nil {
			panic(err)
		}
		return c.(*net.UnixConn)
	}
	ctx := context.Background()

	// Server side.
	served := make(chan *gorpc.Conn, 1)
	go func() {
		tr, err := rpc.NewTransport(ctx, conn(fds[1]), rpc.Listener)
		if err != nil {
			panic(err)
		}
		boot := echo.Echo_ServerToClient(echo.Server{})
		served <- gorpc.NewConn(tr, &gorpc.Options{BootstrapClient: capnp.Client(boot)})
	}()

	// Client side.
	unixConn := conn(fds[0])
	// README: go-capnp's Conn
	tr, err := rpc.NewTransport(ctx, unixConn, rpc.Dialer) // the handshake, then shared memory
	if err != nil {
		panic(err)
	}
	client := gorpc.NewConn(tr, nil) // capnproto.org/go/capnp/v3/rpc
	defer client.Close()
	boot := echo.Echo(client.Bootstrap(ctx))
	if err := boot.Resolve(ctx); err != nil { // before calling it: see Known issues
		panic(err)
	}
	defer boot.Release()
	// README: end
	server := <-served
	defer server.Close()

	f, release := boot.Echo(ctx, func(p echo.Echo_echo_Params) error {
		return p.SetData(make([]byte, 1<<20)) // copied once, into this side's pool
	})
	defer release()
	res, err := f.Struct()
	if err != nil {
		panic(err)
	}
	data, _ := res.Data()
	// The transport copied only the small control messages (the bootstrap);
	// both 1 MiB bodies were read in place.
	fmt.Println(len(data), "bytes received; transport copied under 4 KiB:", tr.Stats().BytesCopied < 4096)
	// Output: 1048576 bytes received; transport copied under 4 KiB: true
}
