// Command client connects to the calculator server and runs the checks of
// the C++ sample client (a literal, operators, pipelined evaluations,
// functions defined on the server, a callback), printing each result and
// whether the connection runs on shared memory. It exits with status 1 if
// a call fails or an answer is wrong.
//
//	go run ./examples/calculator/client                        # shm-abstract:capnshm-calculator
//	go run ./examples/calculator/client -addr shm:/tmp/calc.sock
//	go run ./examples/calculator/client -addr tcp:127.0.0.1:4000
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/capnshm/capnshm/examples/calculator/calculator"
	"github.com/capnshm/capnshm/rpc"
)

func main() {
	addr := flag.String("addr", calculator.DefaultAddr, "server address: shm:/path, shm-abstract:name, unix:/path, unix-abstract:name, tcp:host:port; on Windows shm:NAME, pipe:NAME or tcp:host:port")
	timeout := flag.Duration("timeout", 10*time.Second, "give up after this long")
	flag.Parse()
	if err := run(*addr, *timeout); err != nil {
		fmt.Fprintln(os.Stderr, "calculator client:", err)
		os.Exit(1)
	}
}

func run(addr string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	conn, err := rpc.Dial(ctx, addr)
	if err != nil {
		return err
	}
	defer conn.Close()
	fmt.Printf("connected to %s; shared memory: %v\n", conn.RemoteAddr(), conn.SharedMemory())

	calc := calculator.Calculator(conn.Bootstrap(ctx))
	defer calc.Release()
	if err := calculator.RunChecks(ctx, calc, func(r calculator.Result) { fmt.Println(" ", r) }); err != nil {
		return err
	}
	st := conn.Stats()
	fmt.Printf("%d messages sent, %d received; shared memory: %v\nPASS\n", st.MessagesSent, st.MessagesReceived, conn.SharedMemory())
	return nil
}
