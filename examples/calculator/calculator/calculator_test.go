package calculator_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/capnshm/capnshm/internal/peertest"

	capnp "capnproto.org/go/capnp/v3"

	"github.com/capnshm/capnshm/examples/calculator/calculator"
	"github.com/capnshm/capnshm/rpc"
)

// want is every check RunChecks makes, in order, with its answer.
var want = []calculator.Result{
	{Name: "123", Want: 123},
	{Name: "123 + 45 - 67", Want: 101},
	{Name: "123 + 45", Want: 168},
	{Name: "4 * 6 + 3", Want: 27},
	{Name: "(4 + 6) * 7", Want: 70},
	{Name: "(4 + 6) * 7 / 14", Want: 5},
	{Name: "4 * 6 + 5", Want: 29},
	{Name: "f(12, 34)", Want: 1234},
	{Name: "g(21)", Want: 4244},
	{Name: "f(5, 7) called directly", Want: 507},
	{Name: "pow(2, 4 + 5) (a callback)", Want: 512},
}

// serve starts the calculator on addr until the test ends.
func serve(t *testing.T, addr string) *rpc.Server {
	t.Helper()
	srv, err := rpc.Listen(addr, capnp.Client(calculator.NewServer()))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Error("the server did not stop within 10s")
		}
	})
	return srv
}

// wantTail is every check RunTailCallCheck makes, in order.
var wantTail = []calculator.Result{
	{Name: "t(2, 10) = pow(2, 10) called directly (a tail call)", Want: 1024},
	{Name: "t(3, 4) evaluated", Want: 81},
}

// check dials addr and runs every check of RunChecks, requiring every
// answer and shared memory or not as sharedMemory says. It can run on any
// goroutine.
func check(addr string, sharedMemory bool) error {
	return dialAndRun(addr, sharedMemory, calculator.RunChecks, want)
}

// checkTail is check for RunTailCallCheck.
func checkTail(addr string, sharedMemory bool) error {
	return dialAndRun(addr, sharedMemory, calculator.RunTailCallCheck, wantTail)
}

// dialAndRun dials addr, runs run on its bootstrap capability and
// compares what it reported with want, within 30 s.
func dialAndRun(addr string, sharedMemory bool, run func(context.Context, calculator.Calculator, func(calculator.Result)) error, want []calculator.Result) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := rpc.Dial(ctx, addr)
	if err != nil {
		return err
	}
	defer conn.Close()
	var errs []error
	if conn.SharedMemory() != sharedMemory {
		errs = append(errs, fmt.Errorf("%s: shared memory %v, want %v", addr, conn.SharedMemory(), sharedMemory))
	}
	calc := calculator.Calculator(conn.Bootstrap(ctx))
	defer calc.Release()

	var got []calculator.Result
	if err := run(ctx, calc, func(r calculator.Result) { got = append(got, r) }); err != nil {
		return errors.Join(append(errs, fmt.Errorf("%s: %w", addr, err))...)
	}
	if len(got) != len(want) {
		return errors.Join(append(errs, fmt.Errorf("%s: %d results, want %d: %v", addr, len(got), len(want), got))...)
	}
	for i, r := range got {
		if r.Name != want[i].Name || r.Got != want[i].Want || !r.OK() {
			errs = append(errs, fmt.Errorf("%s: result %d: %v, want %s = %g", addr, i, r, want[i].Name, want[i].Want))
		}
	}
	return errors.Join(errs...)
}

// TestGoClient runs the Go client's checks (RunChecks, RunTailCallCheck)
// against the Go server in this process, on shared memory and on TCP, one
// client and then several at once.
func TestGoClient(t *testing.T) {
	type tc struct {
		name, addr   string
		sharedMemory bool
	}
	cases := []tc{{"tcp", "tcp:127.0.0.1:0", false}}
	if runtime.GOOS == "windows" {
		// shm:NAME: shared memory, the handshake on the pipe \\.\pipe\NAME.
		cases = append(cases, tc{"shm", fmt.Sprintf("shm:capnshm-calculator-test-%d", os.Getpid()), true})
	} else {
		// peertest.TempDir, not t.TempDir: Wine's os.RemoveAll fails.
		dir := peertest.TempDir(t)
		if err := unixSockets(dir); err != nil {
			t.Fatalf("no unix sockets here: %v", err)
		}
		cases = append(cases, tc{"shm", "shm:" + filepath.Join(dir, "calc.sock"), true},
			tc{"shm-abstract", fmt.Sprintf("shm-abstract:capnshm-calculator-test-%d", os.Getpid()), true})
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			srv := serve(t, c.addr)
			addr := srv.Addr().String()
			if err := check(addr, c.sharedMemory); err != nil {
				t.Fatal(err)
			}
			// A callback through a function defined on the server (the
			// Go server calls it; a C++ one makes a tail call).
			if err := checkTail(addr, c.sharedMemory); err != nil {
				t.Fatal(err)
			}

			// Several clients at once on the same server.
			errs := make([]error, 3)
			var wg sync.WaitGroup
			for i := range errs {
				wg.Go(func() { errs[i] = check(addr, c.sharedMemory) })
			}
			wg.Wait()
			if err := errors.Join(errs...); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// unixSockets reports whether this system can listen on a unix socket.
func unixSockets(dir string) error {
	l, err := net.Listen("unix", filepath.Join(dir, "probe.sock"))
	if err != nil {
		return err
	}
	return l.Close()
}

// TestErrors: calls the calculator must refuse fail, with a message that
// says why, and leave the calculator usable.
func TestErrors(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	srv := serve(t, "tcp:127.0.0.1:0")
	conn, err := rpc.Dial(ctx, srv.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	calc := calculator.Calculator(conn.Bootstrap(ctx))
	defer calc.Release()

	// readErr evaluates e and returns the error of reading its value (the
	// read pipelined on the evaluation).
	readErr := func(build func(calculator.Calculator_Expression) error) error {
		f, release := calc.Evaluate(ctx, func(p calculator.Calculator_evaluate_Params) error {
			e, err := p.NewExpression()
			if err != nil {
				return err
			}
			return build(e)
		})
		defer release()
		rf, rrelease := f.Value().Read(ctx, nil)
		defer rrelease()
		_, err := rf.Struct()
		return err
	}
	op, oprelease := calc.GetOperator(ctx, func(p calculator.Calculator_getOperator_Params) error {
		p.SetOp(calculator.Calculator_Operator_add)
		return nil
	})
	defer oprelease()
	add := op.Func() // passed on before it arrives

	for _, c := range []struct {
		name, msg string
		build     func(calculator.Calculator_Expression) error
	}{
		{"parameter outside a function", "parameter 0 out of range", func(e calculator.Calculator_Expression) error {
			e.SetParameter(0)
			return nil
		}},
		{"operator with 3 parameters", "wrong number of parameters: 3, want 2", func(e calculator.Calculator_Expression) error {
			e.SetCall()
			if err := e.Call().SetFunction(add.AddRef()); err != nil {
				return err
			}
			l, err := e.Call().NewParams(3)
			for i := range 3 {
				l.At(i).SetLiteral(1)
			}
			return err
		}},
	} {
		err := readErr(c.build)
		if err == nil || !strings.Contains(err.Error(), c.msg) {
			t.Errorf("%s: error %v, want one containing %q", c.name, err, c.msg)
		}
	}

	// An unknown operator.
	bad, badrelease := calc.GetOperator(ctx, func(p calculator.Calculator_getOperator_Params) error {
		p.SetOp(calculator.Calculator_Operator(9))
		return nil
	})
	defer badrelease()
	if _, err := bad.Struct(); err == nil || !strings.Contains(err.Error(), "unknown operator 9") {
		t.Errorf("getOperator(9): error %v, want unknown operator", err)
	}

	// A defined function called with the wrong number of parameters.
	def, defrelease := calc.DefFunction(ctx, func(p calculator.Calculator_defFunction_Params) error {
		p.SetParamCount(2)
		body, err := p.NewBody()
		body.SetParameter(1)
		return err
	})
	defer defrelease()
	// Not pipelined: this checks the error, not pipelining.
	if _, err := def.Struct(); err != nil {
		t.Fatal(err)
	}
	cf, crelease := def.Func().Call(ctx, func(p calculator.Calculator_Function_call_Params) error {
		_, err := p.NewParams(1)
		return err
	})
	defer crelease()
	if _, err := cf.Struct(); err == nil || !strings.Contains(err.Error(), "wrong number of parameters: 1, want 2") {
		t.Errorf("f(x) of f(x, y): error %v, want wrong number of parameters", err)
	}

	// And the calculator still answers.
	if err := calculator.RunChecks(ctx, calc, nil); err != nil {
		t.Errorf("after the errors: %v", err)
	}
}
