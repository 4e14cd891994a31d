package rpc_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	capnp "capnproto.org/go/capnp/v3"

	"github.com/capnshm/capnshm/examples/echo"
	"github.com/capnshm/capnshm/rpc"
)

// The README's first example, whole: a server and a client of the Echo
// interface (examples/echo) in one process (in practice, two), on shared
// memory.
func Example_listenAndDial() {
	dir, _ := os.MkdirTemp("", "example")
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "app.sock")
	ctx := context.Background()
	myBootstrap := echo.Echo_ServerToClient(echo.Server{})

	// README: Listen and dial
	srv, err := rpc.Listen("shm:"+path, capnp.Client(myBootstrap)) // or unix:, unix-abstract:, tcp:host:port
	if err != nil {
		panic(err)
	}
	defer srv.Close()
	go srv.Serve(ctx)

	conn, err := rpc.Dial(ctx, "shm:"+path) // shared memory when both sides can, else the socket
	if err != nil {
		panic(err)
	}
	defer conn.Close()
	boot := echo.Echo(conn.Bootstrap(ctx))
	defer boot.Release()
	fmt.Println("shared memory:", conn.SharedMemory())
	// README: end

	f, release := boot.Ping(ctx, nil)
	defer release()
	_, err = f.Struct()
	fmt.Println("ping:", err)
	// Output:
	// shared memory: true
	// ping: <nil>
}

// The README's in-place example: a 1 MiB request written straight into
// shared memory, read in place by the server.
func Example_inPlace() {
	addr := fmt.Sprintf("shm-abstract:capnshm-readme-%d", os.Getpid())
	srv, err := rpc.Listen(addr, capnp.Client(echo.Echo_ServerToClient(echo.Server{})))
	if err != nil {
		panic(err)
	}
	defer srv.Close()
	ctx := context.Background()
	go srv.Serve(ctx)
	conn, err := rpc.Dial(ctx, addr)
	if err != nil {
		panic(err)
	}
	defer conn.Close()
	boot := echo.Echo(conn.Bootstrap(ctx))
	defer boot.Release()
	fill := func(b []byte) {
		for i := range b {
			b[i] = byte(i)
		}
	}

	// README: in place
	f, release := boot.Sum(ctx, func(p echo.Echo_sum_Params) error {
		ptr, buf, err := rpc.NewData(p.Segment(), 1<<20) // in this side's pool
		if err != nil {
			return err
		}
		fill(buf)                             // written once, where the server reads it
		return capnp.Struct(p).SetPtr(0, ptr) // data is the params' pointer 0
	})
	defer release()
	res, err := f.Struct()
	// README: end
	if err != nil {
		panic(err)
	}
	fmt.Println(res.Length(), "bytes summed; bytes copied on the way:", conn.Stats().BytesCopied < 4096)
	// Output: 1048576 bytes summed; bytes copied on the way: true
}
