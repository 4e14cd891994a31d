package calculator

import (
	"context"
	"fmt"
	"math"

	capnp "capnproto.org/go/capnp/v3"
	"capnproto.org/go/capnp/v3/server"
)

// NewServer returns the calculator as a capability, ready to be served
// (rpc.Listen takes it as the bootstrap). The caller owns the reference.
func NewServer() Calculator { return Calculator(newClient(Calculator_NewServer(Server{}))) }

// newClient returns a client of srv, with srv.NewArena set up front:
// go-capnp v3.0.1-alpha.2 sets it lazily on the first local call, without
// synchronization, a data race when two goroutines of this process (two
// function bodies, say) make their first calls on one object at once.
func newClient(srv *server.Server) capnp.Client {
	srv.NewArena = func() capnp.Arena { return capnp.MultiSegment(nil) }
	return capnp.NewClient(srv)
}

// Server implements Calculator as the C++ sample's server does: evaluate
// returns each result as a Value capability, so that a client can use it
// in further calls before it has arrived (promise pipelining); operators
// and defined functions are Function capabilities. Its zero value is ready
// to use.
type Server struct{}

// Evaluate evaluates the expression and returns its value as a Value.
func (Server) Evaluate(ctx context.Context, call Calculator_evaluate) error {
	// Evaluating may wait for other capabilities (previous results,
	// functions, a client's callback): let the calculator take other calls
	// meanwhile.
	call.Go()
	expr, err := call.Args().Expression()
	if err != nil {
		return err
	}
	v, err := evaluate(ctx, expr, nil)
	if err != nil {
		return err
	}
	res, err := call.AllocResults()
	if err != nil {
		return err
	}
	return res.SetValue(Calculator_Value(newClient(Calculator_Value_NewServer(value(v)))))
}

// DefFunction returns a Function that evaluates body with its parameters.
func (Server) DefFunction(_ context.Context, call Calculator_defFunction) error {
	args := call.Args()
	n := args.ParamCount()
	if n < 0 {
		return fmt.Errorf("defFunction: paramCount %d is negative", n)
	}
	body, err := args.Body()
	if err != nil {
		return err
	}
	fn, err := newFunction(int(n), body)
	if err != nil {
		return err
	}
	res, err := call.AllocResults()
	if err != nil {
		fn.Shutdown()
		return err
	}
	return res.SetFunc(Calculator_Function(newClient(Calculator_Function_NewServer(fn))))
}

// GetOperator returns the Function of an arithmetic operator.
func (Server) GetOperator(_ context.Context, call Calculator_getOperator) error {
	op := call.Args().Op()
	switch op {
	case Calculator_Operator_add, Calculator_Operator_subtract, Calculator_Operator_multiply, Calculator_Operator_divide:
	default:
		return fmt.Errorf("getOperator: unknown operator %d", uint16(op))
	}
	res, err := call.AllocResults()
	if err != nil {
		return err
	}
	return res.SetFunc(Calculator_Function(newClient(Calculator_Function_NewServer(operator(op)))))
}

// evaluate computes expr, where parameter i stands for params[i]. It waits
// for every capability the expression names: previous results are read,
// functions are called on the values of their parameters. A capability
// the client passed before it had it (a promise: a previous result or an
// operator not yet returned to the client) is called at once; the calls
// are pipelined until it resolves.
func evaluate(ctx context.Context, expr Calculator_Expression, params []float64) (float64, error) {
	switch expr.Which() {
	case Calculator_Expression_Which_literal:
		return expr.Literal(), nil

	case Calculator_Expression_Which_previousResult:
		f, release := expr.PreviousResult().Read(ctx, nil)
		defer release()
		res, err := f.Struct()
		if err != nil {
			return 0, fmt.Errorf("reading a previous result: %w", err)
		}
		return res.Value(), nil

	case Calculator_Expression_Which_parameter:
		i := expr.Parameter()
		if uint64(i) >= uint64(len(params)) {
			return 0, fmt.Errorf("parameter %d out of range (the function has %d)", i, len(params))
		}
		return params[i], nil

	case Calculator_Expression_Which_call:
		c := expr.Call()
		list, err := c.Params()
		if err != nil {
			return 0, err
		}
		vals := make([]float64, list.Len())
		for i := range vals {
			if vals[i], err = evaluate(ctx, list.At(i), params); err != nil {
				return 0, err
			}
		}
		return callFunction(ctx, c.Function(), vals)
	}
	return 0, fmt.Errorf("unknown expression type %d", uint16(expr.Which()))
}

// callFunction calls fn on vals and returns its value.
func callFunction(ctx context.Context, fn Calculator_Function, vals []float64) (float64, error) {
	f, release := fn.Call(ctx, func(p Calculator_Function_call_Params) error {
		l, err := p.NewParams(int32(len(vals)))
		if err != nil {
			return err
		}
		for i, v := range vals {
			l.Set(i, v)
		}
		return nil
	})
	defer release()
	res, err := f.Struct()
	if err != nil {
		return 0, fmt.Errorf("calling a function: %w", err)
	}
	return res.Value(), nil
}

// value is a Value: a number.
type value float64

// Read returns the number.
func (v value) Read(_ context.Context, call Calculator_Value_read) error {
	res, err := call.AllocResults()
	if err != nil {
		return err
	}
	res.SetValue(float64(v))
	return nil
}

// operator is the Function of an arithmetic operator.
type operator Calculator_Operator

// Call applies the operator to its two parameters.
func (op operator) Call(_ context.Context, call Calculator_Function_call) error {
	params, err := call.Args().Params()
	if err != nil {
		return err
	}
	if params.Len() != 2 {
		return fmt.Errorf("%v: wrong number of parameters: %d, want 2", Calculator_Operator(op), params.Len())
	}
	a, b := params.At(0), params.At(1)
	var v float64
	switch Calculator_Operator(op) {
	case Calculator_Operator_add:
		v = a + b
	case Calculator_Operator_subtract:
		v = a - b
	case Calculator_Operator_multiply:
		v = a * b
	case Calculator_Operator_divide:
		v = a / b
	default:
		return fmt.Errorf("unknown operator %d", uint16(op))
	}
	res, err := call.AllocResults()
	if err != nil {
		return err
	}
	res.SetValue(v)
	return nil
}

// function is a Function defined by defFunction: an expression over its
// parameters, kept in a message of its own (with references to the
// capabilities it names) for as long as the function lives.
type function struct {
	paramCount int
	msg        *capnp.Message
	body       Calculator_Expression
}

func newFunction(paramCount int, body Calculator_Expression) (*function, error) {
	msg, _, err := capnp.NewMessage(capnp.SingleSegment(nil))
	if err != nil {
		return nil, err
	}
	// A deep copy: the call's message is gone when defFunction returns;
	// capabilities are copied as new references, released by Shutdown.
	if err := msg.SetRoot(capnp.Struct(body).ToPtr()); err != nil {
		msg.Release()
		return nil, fmt.Errorf("defFunction: copying the body: %w", err)
	}
	// The body is read at every call, as long as the function lives: no
	// traversal limit (the copy was bounded by the call's own limits).
	msg.ResetReadLimit(math.MaxUint64)
	root, err := ReadRootCalculator_Expression(msg)
	if err != nil {
		msg.Release()
		return nil, err
	}
	return &function{paramCount: paramCount, msg: msg, body: root}, nil
}

// Call evaluates the body with the parameters given.
func (fn *function) Call(ctx context.Context, call Calculator_Function_call) error {
	call.Go() // the body may call other capabilities
	params, err := call.Args().Params()
	if err != nil {
		return err
	}
	if params.Len() != fn.paramCount {
		return fmt.Errorf("wrong number of parameters: %d, want %d", params.Len(), fn.paramCount)
	}
	vals := make([]float64, params.Len())
	for i := range vals {
		vals[i] = params.At(i)
	}
	v, err := evaluate(ctx, fn.body, vals)
	if err != nil {
		return err
	}
	res, err := call.AllocResults()
	if err != nil {
		return err
	}
	res.SetValue(v)
	return nil
}

// Shutdown releases the capabilities the body names, once the function's
// last reference is gone.
func (fn *function) Shutdown() { fn.msg.Release() }
