package rpc_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	capnp "capnproto.org/go/capnp/v3"

	"github.com/capnshm/capnshm/internal/echoproto"
	"github.com/capnshm/capnshm/rpc"
)

// A server on a shm: address: clients that can get shared memory, the
// others the stream transport on the same socket. In practice the client is
// another process.
func ExampleListen() {
	dir, _ := os.MkdirTemp("", "example")
	defer os.RemoveAll(dir)
	addr := "shm:" + filepath.Join(dir, "echo.sock")

	boot := capnp.Client(echoproto.Echo_ServerToClient(&echoproto.Server{}))
	srv, err := rpc.Listen(addr, boot) // srv owns boot now
	if err != nil {
		panic(err)
	}
	defer srv.Close()
	go srv.Serve(context.Background())
	// The same server on TCP too (port 0: the system picks one).
	if err := srv.Listen("tcp:127.0.0.1:0"); err != nil {
		panic(err)
	}

	ctx := context.Background()
	for _, a := range srv.Addrs() {
		conn, err := rpc.Dial(ctx, a.String())
		if err != nil {
			panic(err)
		}
		echo := echoproto.Echo(conn.Bootstrap(ctx))
		f, release := echo.Ping(ctx, nil)
		_, err = f.Struct()
		release()
		echo.Release()
		fmt.Printf("%s: ping %v, shared memory %v\n", a.Scheme, err, conn.SharedMemory())
		conn.Close()
	}
	// Output:
	// shm: ping <nil>, shared memory true
	// tcp: ping <nil>, shared memory false
}

// A client: the address alone decides shared memory or a socket. Here on a
// Linux abstract socket, which leaves no file behind.
func ExampleDial() {
	addr := fmt.Sprintf("shm-abstract:capnshm-example-%d", os.Getpid())
	boot := capnp.Client(echoproto.Echo_ServerToClient(&echoproto.Server{}))
	srv, err := rpc.Listen(addr, boot, rpc.WithPoolSize(4<<20))
	if err != nil {
		panic(err)
	}
	defer srv.Close()
	go srv.Serve(context.Background())

	ctx := context.Background()
	conn, err := rpc.Dial(ctx, addr, rpc.WithPoolSize(4<<20))
	if err != nil {
		panic(err)
	}
	defer conn.Close()
	echo := echoproto.Echo(conn.Bootstrap(ctx))
	defer echo.Release()
	f, release := echo.Fill(ctx, func(p echoproto.Echo_fill_Params) error {
		p.SetSize(1 << 20)
		return nil
	})
	defer release()
	res, err := f.Struct()
	if err != nil {
		panic(err)
	}
	data, _ := res.Data()
	fmt.Println(len(data), "bytes; shared memory:", conn.SharedMemory(), "; read in place:", conn.Stats().BytesCopied < 4096)
	// Output: 1048576 bytes; shared memory: true ; read in place: true
}

// The fallback policies, dialer against listener.
func ExampleFallback() {
	dir, _ := os.MkdirTemp("", "example")
	defer os.RemoveAll(dir)
	ctx := context.Background()
	for _, listener := range []rpc.Fallback{rpc.FallbackAuto, rpc.FallbackNever} {
		addr := "shm:" + filepath.Join(dir, listener.String()+".sock")
		boot := capnp.Client(echoproto.Echo_ServerToClient(&echoproto.Server{}))
		srv, err := rpc.Listen(addr, boot, rpc.WithFallback(listener))
		if err != nil {
			panic(err)
		}
		go srv.Serve(ctx)
		for _, dialer := range []rpc.Fallback{rpc.FallbackAuto, rpc.FallbackRequire, rpc.FallbackNever} {
			conn, err := rpc.Dial(ctx, addr, rpc.WithFallback(dialer))
			switch {
			case errors.Is(err, rpc.ErrRefused):
				fmt.Printf("listener %v, dialer %v: refused\n", listener, dialer)
			case err != nil:
				panic(err)
			default:
				fmt.Printf("listener %v, dialer %v: shared memory %v\n", listener, dialer, conn.SharedMemory())
				conn.Close()
			}
		}
		srv.Close()
	}
	// Output:
	// listener auto, dialer auto: shared memory true
	// listener auto, dialer require: shared memory true
	// listener auto, dialer never: shared memory false
	// listener never, dialer auto: shared memory false
	// listener never, dialer require: refused
	// listener never, dialer never: shared memory false
}
