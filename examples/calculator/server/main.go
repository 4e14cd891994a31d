// Command server serves the Cap'n Proto calculator (see ../calculator) as
// the bootstrap capability of every connection, until SIGINT or SIGTERM:
//
//	go run ./examples/calculator/server                        # shm-abstract:capnshm-calculator
//	go run ./examples/calculator/server -addr shm:/tmp/calc.sock
//	go run ./examples/calculator/server -addr tcp:127.0.0.1:4000
//
// On a shm: address, clients that speak capnshm get shared memory; plain
// Cap'n Proto clients (C++ EzRpcClient on a unix socket, go-capnp's stream
// transport) get the stream transport on the same socket. A tcp: address
// always runs the stream transport, wire-compatible with C++ EZ-RPC.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	capnp "capnproto.org/go/capnp/v3"

	"github.com/capnshm/capnshm/examples/calculator/calculator"
	"github.com/capnshm/capnshm/rpc"
)

func main() {
	addr := flag.String("addr", calculator.DefaultAddr, "address to listen on: shm:/path, shm-abstract:name, unix:/path, unix-abstract:name, tcp:host:port; on Windows shm:NAME, pipe:NAME or tcp:host:port")
	verbose := flag.Bool("v", false, "log each connection (whether it runs on shared memory) and how it ended, such as clients going away")
	flag.Parse()
	if err := run(*addr, *verbose); err != nil {
		fmt.Fprintln(os.Stderr, "calculator server:", err)
		os.Exit(1)
	}
}

func run(addr string, verbose bool) error {
	var opts []rpc.Option
	if verbose {
		log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
		opts = append(opts, rpc.WithLogger(log))
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	srv, err := rpc.Listen(addr, capnp.Client(calculator.NewServer()), opts...)
	if err != nil {
		return err
	}
	fmt.Printf("calculator serving on %s (Ctrl-C to stop)\n", srv.Addr())
	err = srv.Serve(ctx)
	if errors.Is(err, context.Canceled) {
		fmt.Println("calculator server: stopped")
		return nil
	}
	return err
}
