package calculator

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strings"
)

// ErrWrongAnswer is what RunChecks returns when the calculator computed a
// wrong value.
var ErrWrongAnswer = errors.New("calculator: wrong answer")

// Result is one check of RunChecks.
type Result struct {
	Name      string // what was computed, e.g. "f(12, 34)"
	Got, Want float64
}

// OK reports whether the answer is right. Every check computes an integer,
// exactly representable: the comparison is exact.
func (r Result) OK() bool { return r.Got == r.Want }

func (r Result) String() string {
	if r.OK() {
		return fmt.Sprintf("%s = %g", r.Name, r.Got)
	}
	return fmt.Sprintf("%s = %g, want %g: WRONG", r.Name, r.Got, r.Want)
}

// RunChecks runs against calc the checks of the C++ sample client
// (calculator-client.c++), and the same as ../cpp/client.c++: a literal,
// operators from getOperator, pipelined evaluations that use results not
// yet received, functions defined with defFunction, and a callback (a
// Function served by this side and called by the calculator). As the
// sample client, it never waits for a result before passing it on: a
// promise (an operator, a Value, a defined function) goes back to the
// calculator in as many messages as use it, before it has arrived. report, if
// not nil, is called with each result. RunChecks returns an error on a
// failed call, or one wrapping ErrWrongAnswer (after every check ran) if
// an answer was wrong.
func RunChecks(ctx context.Context, calc Calculator, report func(Result)) error {
	c := &checker{ctx: ctx, calc: calc, report: report}
	return c.runAll(c.literal, c.operators, c.pipelining, c.functions, c.callback)
}

// RunTailCallCheck runs against calc the check that meets a tail call in
// a C++ calculator (../cpp/server.c++): it defines t(x, y) = pow(x, y),
// where pow is a Function served by this side (Power), then calls t(2, 10)
// directly and evaluates t(3, 4). A server that forwards t's call to pow
// with a tail call (C++'s CallContext::tailCall) sends the forwarded call
// back here with sendResultsTo.yourself and answers t's call with
// Return.takeFromOtherQuestion; a server that calls pow and copies its
// answer (the Go server) gives the same answers by an ordinary callback.
// report and the error are as RunChecks's.
func RunTailCallCheck(ctx context.Context, calc Calculator, report func(Result)) error {
	c := &checker{ctx: ctx, calc: calc, report: report}
	return c.runAll(c.tailCall)
}

// runAll runs each check, then says whether any answer was wrong.
func (c *checker) runAll(checks ...func() error) error {
	defer c.releaseAll()
	for _, check := range checks {
		if err := c.run(check); err != nil {
			return err
		}
	}
	if len(c.wrong) > 0 {
		return fmt.Errorf("%w: %s", ErrWrongAnswer, strings.Join(c.wrong, "; "))
	}
	return nil
}

// run runs check and waits for its answers. A check that failed reports
// nothing (see wait).
func (c *checker) run(check func() error) error {
	if err := check(); err != nil {
		return err
	}
	return c.wait()
}

// checker issues calls, keeps what must be released, and collects the
// answers.
type checker struct {
	ctx     context.Context
	calc    Calculator
	report  func(Result)
	pending []pending
	release []func()
	wrong   []string
}

// pending is a read or a call sent and not yet answered.
type pending struct {
	name   string
	want   float64
	answer func() (float64, error)
}

func (c *checker) releaseAll() {
	for i := len(c.release) - 1; i >= 0; i-- {
		c.release[i]()
	}
	c.release = nil
}

// expect reads v (a Value that may not have arrived: the read is
// pipelined on the call that returns it) and records it, to be checked by
// wait.
func (c *checker) expect(name string, want float64, v Calculator_Value) {
	f, release := v.Read(c.ctx, nil)
	c.release = append(c.release, release)
	c.pending = append(c.pending, pending{name: name, want: want, answer: func() (float64, error) {
		res, err := f.Struct()
		return res.Value(), err
	}})
}

// wait collects the answers of every pending read or call, then reports
// them and records the wrong ones. If any failed, it reports none: a check
// reports all its results, each once, or none.
func (c *checker) wait() error {
	defer func() { c.pending = c.pending[:0] }()
	results := make([]Result, 0, len(c.pending))
	for _, p := range c.pending {
		got, err := p.answer()
		if err != nil {
			return fmt.Errorf("calculator: %s: %w", p.name, err)
		}
		results = append(results, Result{Name: p.name, Got: got, Want: p.want})
	}
	for _, r := range results {
		if c.report != nil {
			c.report(r)
		}
		if !r.OK() {
			c.wrong = append(c.wrong, r.String())
		}
	}
	return nil
}

// evaluate sends evaluate(e) and returns the Value (a promise) without
// waiting.
func (c *checker) evaluate(e expr) Calculator_Value {
	f, release := c.calc.Evaluate(c.ctx, func(p Calculator_evaluate_Params) error {
		x, err := p.NewExpression()
		if err != nil {
			return err
		}
		return e(x)
	})
	c.release = append(c.release, release)
	return f.Value()
}

// operator returns the Function of op (a promise).
func (c *checker) operator(op Calculator_Operator) Calculator_Function {
	f, release := c.calc.GetOperator(c.ctx, func(p Calculator_getOperator_Params) error {
		p.SetOp(op)
		return nil
	})
	c.release = append(c.release, release)
	return f.Func()
}

// define returns the Function defFunction makes of body (a promise).
func (c *checker) define(paramCount int32, body expr) Calculator_Function {
	f, release := c.calc.DefFunction(c.ctx, func(p Calculator_defFunction_Params) error {
		p.SetParamCount(paramCount)
		x, err := p.NewBody()
		if err != nil {
			return err
		}
		return body(x)
	})
	c.release = append(c.release, release)
	return f.Func()
}

// literal: the simplest evaluation, read back pipelined (the read is sent
// before evaluate has returned).
func (c *checker) literal() error {
	c.expect("123", 123, c.evaluate(lit(123)))
	return nil
}

// operators: add and subtract from getOperator, used before they arrive,
// add in two messages.
func (c *checker) operators() error {
	add := c.operator(Calculator_Operator_add)
	sub := c.operator(Calculator_Operator_subtract)
	c.expect("123 + 45 - 67", 101, c.evaluate(apply(sub, apply(add, lit(123), lit(45)), lit(67))))
	c.expect("123 + 45", 168, c.evaluate(apply(add, lit(123), lit(45))))
	return nil
}

// pipelining: results used in further evaluations before they arrive.
func (c *checker) pipelining() error {
	add := c.operator(Calculator_Operator_add)
	mul := c.operator(Calculator_Operator_multiply)
	div := c.operator(Calculator_Operator_divide)

	// 4 * 6, then + 3 on the product not yet computed: one round trip.
	product := c.evaluate(apply(mul, lit(4), lit(6)))
	c.expect("4 * 6 + 3", 27, c.evaluate(apply(add, prev(product), lit(3))))

	// (4 + 6) * 7, then / 14, each on the result before: one round trip.
	sum := c.evaluate(apply(add, lit(4), lit(6)))
	times7 := c.evaluate(apply(mul, prev(sum), lit(7)))
	c.expect("(4 + 6) * 7", 70, times7)
	c.expect("(4 + 6) * 7 / 14", 5, c.evaluate(apply(div, prev(times7), lit(14))))

	// The product again, in a second message, still not arrived: the
	// official client's "add 3 and add 5".
	c.expect("4 * 6 + 5", 29, c.evaluate(apply(add, prev(product), lit(5))))
	return nil
}

// functions: f(x, y) = x * 100 + y and g(x) = f(x, x + 1) * 2, defined on
// the server, each body naming operators (and g's, f) not yet arrived; f
// and g are evaluated before they have arrived, f is also called directly.
func (c *checker) functions() error {
	add := c.operator(Calculator_Operator_add)
	mul := c.operator(Calculator_Operator_multiply)
	f := c.define(2, apply(add, apply(mul, param(0), lit(100)), param(1)))
	g := c.define(1, apply(mul, apply(f, param(0), apply(add, param(0), lit(1))), lit(2)))
	c.expect("f(12, 34)", 1234, c.evaluate(apply(f, lit(12), lit(34))))
	c.expect("g(21)", 4244, c.evaluate(apply(g, lit(21))))

	c.call("f(5, 7) called directly", 507, f, 5, 7)
	return nil
}

// callback: a Function served here, which the calculator calls back.
func (c *checker) callback() error {
	add := c.operator(Calculator_Operator_add)
	pow := Calculator_Function(newClient(Calculator_Function_NewServer(Power{})))
	defer pow.Release() // the evaluate call holds its own reference
	c.expect("pow(2, 4 + 5) (a callback)", 512, c.evaluate(apply(pow, lit(2), apply(add, lit(4), lit(5)))))
	return nil
}

// tailCall: t(x, y) = pow(x, y), with pow served here: t's body is a call,
// which a C++ calculator forwards to pow as a tail call (see
// RunTailCallCheck). t is called before it has arrived (pipelined).
func (c *checker) tailCall() error {
	pow := Calculator_Function(newClient(Calculator_Function_NewServer(Power{})))
	defer pow.Release() // t's body holds its own reference
	t := c.define(2, apply(pow, param(0), param(1)))
	c.call("t(2, 10) = pow(2, 10) called directly (a tail call)", 1024, t, 2, 10)
	c.expect("t(3, 4) evaluated", 81, c.evaluate(apply(t, lit(3), lit(4))))
	return nil
}

// call calls fn on params directly (pipelined if fn has not arrived) and
// records the answer, to be checked by wait.
func (c *checker) call(name string, want float64, fn Calculator_Function, params ...float64) {
	fut, release := fn.Call(c.ctx, func(p Calculator_Function_call_Params) error {
		l, err := p.NewParams(int32(len(params)))
		if err != nil {
			return err
		}
		for i, v := range params {
			l.Set(i, v)
		}
		return nil
	})
	c.release = append(c.release, release)
	c.pending = append(c.pending, pending{name: name, want: want, answer: func() (float64, error) {
		res, err := fut.Struct()
		return res.Value(), err
	}})
}

// Power is a Function computing x to the power y, as the C++ sample
// client's PowerFunction: served by a client, called by the calculator.
type Power struct{}

// Call returns params[0] ** params[1].
func (Power) Call(_ context.Context, call Calculator_Function_call) error {
	params, err := call.Args().Params()
	if err != nil {
		return err
	}
	if params.Len() != 2 {
		return fmt.Errorf("pow: wrong number of parameters: %d, want 2", params.Len())
	}
	res, err := call.AllocResults()
	if err != nil {
		return err
	}
	res.SetValue(math.Pow(params.At(0), params.At(1)))
	return nil
}

// expr writes an expression into e.
type expr func(e Calculator_Expression) error

func lit(v float64) expr {
	return func(e Calculator_Expression) error { e.SetLiteral(v); return nil }
}

func param(i uint32) expr {
	return func(e Calculator_Expression) error { e.SetParameter(i); return nil }
}

// prev is a previous result (SetPreviousResult takes its own reference).
func prev(v Calculator_Value) expr {
	return func(e Calculator_Expression) error { return e.SetPreviousResult(v.AddRef()) }
}

// apply calls fn on args.
func apply(fn Calculator_Function, args ...expr) expr {
	return func(e Calculator_Expression) error {
		e.SetCall()
		call := e.Call()
		if err := call.SetFunction(fn.AddRef()); err != nil {
			return err
		}
		l, err := call.NewParams(int32(len(args)))
		if err != nil {
			return err
		}
		for i, a := range args {
			if err := a(l.At(i)); err != nil {
				return err
			}
		}
		return nil
	}
}
