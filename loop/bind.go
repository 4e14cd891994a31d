package loop

import (
	"context"

	capnp "capnproto.org/go/capnp/v3"
	"capnproto.org/go/capnp/v3/server"
)

// BindMethods returns a copy of methods (a go-capnp method table, as the
// generated X_Methods(nil, impl) returns it) whose every Impl runs on l's
// thread, queued at High priority. go-capnp hands an object's calls to its
// Impls one at a time, each waiting for the previous one to return, and the
// loop runs its queue in order, so the object's calls keep their order.
//
// When the loop cannot take a call, the call fails with the loop's error,
// which go-capnp sends as an exception of its type: overloaded
// (ErrOverloaded), disconnected (ErrClosed), failed (ErrWouldDeadlock, see
// the package documentation). A call whose context ends before its turn
// does not run.
func BindMethods(l *Loop, methods []server.Method) []server.Method {
	out := make([]server.Method, len(methods))
	for i, m := range methods {
		impl := m.Impl
		name := m.InterfaceName + "." + m.MethodName
		out[i] = m
		out[i].Impl = func(ctx context.Context, call *server.Call) error {
			return l.do(ctx, High, name, func(ctx context.Context) error { return impl(ctx, call) })
		}
	}
	return out
}

// BindServer returns a client of a go-capnp server whose methods run on l's
// thread (see BindMethods). impl is the object the methods belong to: it is
// the server's brand, as with the generated X_NewServer, and if it has a
// Shutdown method (server.Shutdowner), that runs on the loop too once the
// last reference is gone (on go-capnp's goroutine if the loop has closed by
// then). For the generated code of an interface Foo:
//
//	client := foo.Foo(loop.BindServer(l, foo.Foo_Methods(nil, impl), impl))
func BindServer(l *Loop, methods []server.Method, impl any) capnp.Client {
	var sd server.Shutdowner
	if s, ok := impl.(server.Shutdowner); ok {
		sd = shutdowner{l: l, s: s}
	}
	return capnp.NewClient(server.New(BindMethods(l, methods), impl, sd))
}

type shutdowner struct {
	l *Loop
	s server.Shutdowner
}

func (s shutdowner) Shutdown() {
	if err := s.l.control("shutdown", s.s.Shutdown); err != nil {
		s.s.Shutdown() // the loop has closed
	}
}
