package calculator_test

import (
	"context"
	"fmt"
	"time"

	capnp "capnproto.org/go/capnp/v3"

	"github.com/capnshm/capnshm/examples/calculator/calculator"
	"github.com/capnshm/capnshm/rpc"
)

// The tail-call check against the Go server: a function defined on the
// server whose body calls back a Function of the client. (A C++ server
// answers it with a tail call; the Go server calls back and copies.)
func ExampleRunTailCallCheck() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	srv, err := rpc.Listen("tcp:127.0.0.1:0", capnp.Client(calculator.NewServer()))
	if err != nil {
		fmt.Println(err)
		return
	}
	serveCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- srv.Serve(serveCtx) }()
	defer func() { stop(); <-done }()

	conn, err := rpc.Dial(ctx, srv.Addr().String())
	if err != nil {
		fmt.Println(err)
		return
	}
	defer conn.Close()
	calc := calculator.Calculator(conn.Bootstrap(ctx))
	defer calc.Release()
	if err := calculator.RunTailCallCheck(ctx, calc, func(r calculator.Result) { fmt.Println(r) }); err != nil {
		fmt.Println(err)
	}
	// Output:
	// t(2, 10) = pow(2, 10) called directly (a tail call) = 1024
	// t(3, 4) evaluated = 81
}
