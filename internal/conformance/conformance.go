// Package conformance is the conformance suite: the behaviour every
// transport and RPC engine must show, run against an Echo server
// (internal/echoproto) at the other end of a connection that the caller
// sets up: in-process over a pipe, or across processes over shared memory,
// unix and tcp sockets.
//
// The client side is capnshm's engine (rpc.Conn) or go-capnp's rpc.Conn
// (over capnshm's transports, for users who bring it). The engine is held
// to the protocol strictly: every pipelined call runs, in E-order, with no
// wait for a promise to resolve first. go-capnp v3.0.1-alpha.2 has known
// bugs in exactly those places (go-capnp #626, #631), so when Env.GoCapnp
// is set the suite tolerates them, and says where.
package conformance

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	capnp "capnproto.org/go/capnp/v3"
	"capnproto.org/go/capnp/v3/rpc"

	"github.com/capnshm/capnshm/internal/echoproto"
	capnshm "github.com/capnshm/capnshm/rpc"
)

// Conn is one client connection to an Echo server.
type Conn struct {
	// Boot is the server's bootstrap capability; the suite releases it.
	Boot echoproto.Echo
	// RPC is the client's connection: capnshm's Conn or go-capnp's.
	RPC interface {
		Close() error
		Done() <-chan struct{}
	}
	// CloseServer closes the connection from the server's side.
	CloseServer func() error
}

// Env describes the transport under test.
type Env struct {
	// Dial makes a new connection to a new or shared server.
	Dial func(t *testing.T) *Conn
	// Sizes are the echo payload sizes to check; nil means DefaultSizes.
	Sizes []int
	// Huge, if non-zero, is the size of the chunked message checked in
	// both directions (the 1 GiB case).
	Huge int
	// Concurrent is the size of the load cases: the calls in flight at
	// once in Concurrent, the calls made in all in PromisePassedBack;
	// 0 means 10000.
	Concurrent int
	// GoCapnp says the client side is go-capnp's rpc.Conn, not capnshm's
	// engine: the suite then tolerates its known bugs (calls that race a
	// Return fail with rpc.ErrLateCall and are retried, the embargo race
	// may abort the connection or run calls out of order, the bootstrap is
	// resolved before calls are pipelined on it). Without it each of those
	// is a failure.
	GoCapnp bool
}

// DefaultSizes are the message sizes the suite echoes.
var DefaultSizes = []int{0, 1, 1 << 20, 64 << 20}

// bound turns a hang into a failure; nothing here should take long.
const bound = 2 * time.Minute

// Run runs every case as a subtest.
func Run(t *testing.T, env Env) {
	cases := []struct {
		name string
		fn   func(t *testing.T, env Env)
	}{
		{"Bootstrap", testBootstrap},
		{"Echo", testEcho},
		{"Huge", testHuge},
		{"Pipelining", testPipelining},
		{"ReturnWhileBuilding", testReturnWhileBuilding},
		{"PromisePassedBack", testPromisePassedBack},
		{"Embargo", testEmbargo},
		{"Cancel", testCancel},
		{"Exception", testException},
		{"CapabilitiesBothWays", testCallback},
		{"Stream", testStream},
		{"Concurrent", testConcurrent},
		{"CloseClient", testCloseClient},
		{"CloseServer", testCloseServer},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) { c.fn(t, env) })
	}
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), bound)
	t.Cleanup(cancel)
	return ctx
}

func dial(t *testing.T, env Env) *Conn {
	t.Helper()
	c := env.Dial(t)
	t.Cleanup(func() { c.Boot.Release() })
	return c
}

func testBootstrap(t *testing.T, env Env) {
	c := dial(t, env)
	ctx := ctxT(t)
	for i := 0; i < 3; i++ {
		f, release := c.Boot.Ping(ctx, nil)
		if _, err := f.Struct(); err != nil {
			t.Fatalf("ping %d: %v", i, err)
		}
		release()
	}
}

func testEcho(t *testing.T, env Env) {
	c := dial(t, env)
	ctx := ctxT(t)
	sizes := env.Sizes
	if sizes == nil {
		sizes = DefaultSizes
	}
	for _, n := range sizes {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			// Built in place: the client writes the Data into its
			// message, the server copies it into its results.
			f, release := c.Boot.Echo(ctx, func(p echoproto.Echo_echo_Params) error {
				ptr, b, err := echoproto.NewData(p.Segment(), n)
				if err != nil {
					return err
				}
				echoproto.FillPattern(b, byte(n), 0)
				return capnp.Struct(p).SetPtr(0, ptr)
			})
			defer release()
			res, err := f.Struct()
			if err != nil {
				t.Fatal(err)
			}
			d, err := res.Data()
			if err != nil {
				t.Fatal(err)
			}
			if len(d) != n {
				t.Fatalf("echoed %d bytes, want %d", len(d), n)
			}
			if i := mismatch(d, byte(n), 0); i >= 0 {
				t.Fatalf("byte %d of %d differs", i, n)
			}
		})
	}
}

// mismatch returns the index of the first byte of d that is not the fill
// pattern for offset off, or -1.
func mismatch(d []byte, seed byte, off uint64) int {
	for i, b := range d {
		if b != echoproto.Pattern(seed, off+uint64(i)) {
			return i
		}
	}
	return -1
}

func testHuge(t *testing.T, env Env) {
	if env.Huge == 0 {
		t.Skip("no huge size configured")
	}
	c := dial(t, env)
	ctx := ctxT(t)
	const chunk = 256 << 20
	count := (env.Huge + chunk - 1) / chunk
	size := env.Huge / count
	size &^= 7
	// Client to server: the client builds count chunks in place.
	var want uint64
	placed := 0
	f, release := c.Boot.SumChunks(ctx, func(p echoproto.Echo_sumChunks_Params) error {
		placed++
		want = 0
		l, err := p.NewChunks(int32(count))
		if err != nil {
			return err
		}
		for i := 0; i < count; i++ {
			ptr, b, err := echoproto.NewData(p.Segment(), size)
			if err != nil {
				return err
			}
			echoproto.FillPattern(b, 3, uint64(i*size))
			want += echoproto.Sum(b)
			if err := capnp.PointerList(l).Set(i, ptr); err != nil {
				return err
			}
		}
		return nil
	})
	res, err := f.Struct()
	if placed != 1 {
		// Seconds of building, during which the bootstrap the call is
		// pipelined on resolves.
		t.Errorf("the %d-byte params were built %d times, want once (capnp.Send.PlaceArgs is called at most once)", count*size, placed)
	}
	if err != nil {
		t.Fatalf("sending %d bytes: %v", count*size, err)
	}
	if res.Length() != uint64(count*size) || res.Sum() != want {
		t.Fatalf("server saw %d bytes summing to %d, want %d and %d", res.Length(), res.Sum(), count*size, want)
	}
	release()
	// Server to client: the server fills count chunks in place.
	g, release2 := c.Boot.FillChunks(ctx, func(p echoproto.Echo_fillChunks_Params) error {
		p.SetChunkSize(uint64(size))
		p.SetCount(uint32(count))
		p.SetSeed(5)
		return nil
	})
	defer release2()
	r2, err := g.Struct()
	if err != nil {
		t.Fatalf("receiving %d bytes: %v", count*size, err)
	}
	chunks, err := r2.Chunks()
	if err != nil {
		t.Fatal(err)
	}
	if chunks.Len() != count {
		t.Fatalf("%d chunks, want %d", chunks.Len(), count)
	}
	for i := 0; i < count; i++ {
		d, err := chunks.At(i)
		if err != nil {
			t.Fatal(err)
		}
		if len(d) != size {
			t.Fatalf("chunk %d: %d bytes, want %d", i, len(d), size)
		}
		if j := mismatch(d, 5, uint64(i*size)); j >= 0 {
			t.Fatalf("chunk %d: byte %d differs", i, j)
		}
	}
}

func testPipelining(t *testing.T, env Env) {
	c := dial(t, env)
	ctx := ctxT(t)
	// Call add on the counter before the call that returns it has returned.
	retryLateCall(t, env, func() error {
		f, release := c.Boot.Counter(ctx, func(p echoproto.Echo_counter_Params) error {
			p.SetStart(40)
			return nil
		})
		defer release()
		counter := f.Counter()
		g, release2 := counter.Add(ctx, func(p echoproto.Counter_add_Params) error {
			p.SetDelta(2)
			return nil
		})
		defer release2()
		res, err := g.Struct()
		if err != nil {
			return err
		}
		if res.Value() != 42 {
			t.Fatalf("pipelined add = %d, want 42", res.Value())
		}
		return nil
	})
}

// testReturnWhileBuilding makes calls pipelined on a promise whose
// resolution arrives while the call's params are being built (the
// application's PlaceArgs waits for it): a call on the bootstrap, which
// waits for the bootstrap's Return (pipelined unless that Return has
// already arrived), then a call on the counter a gate call returns, which
// opens the gate and waits for that call's Return (always pipelined: the
// gate opens only then). Each must run once, on the right object, with its
// params built once (capnp.Send: PlaceArgs is called at most once).
func testReturnWhileBuilding(t *testing.T, env Env) {
	if env.GoCapnp {
		t.Skip("go-capnp v3.0.1-alpha.2 holds its connection lock while PlaceArgs runs: the Return it would wait for cannot arrive")
	}
	c := dial(t, env)
	ctx := ctxT(t)
	var bootPlaced, addPlaced int
	f, release := c.Boot.Counter(ctx, func(p echoproto.Echo_counter_Params) error {
		bootPlaced++
		if err := capnp.Client(c.Boot).Resolve(ctx); err != nil {
			return err
		}
		p.SetStart(40)
		return nil
	})
	defer release()
	if _, err := f.Struct(); err != nil {
		t.Fatal(err)
	}
	g, release2 := f.Counter().Get(ctx, nil)
	defer release2()
	if r, err := g.Struct(); err != nil || r.Value() != 40 {
		t.Errorf("the counter made by a call on the bootstrap holds %d, %v, want 40", r.Value(), err)
	}

	gate, release3 := c.Boot.Gate(ctx, func(p echoproto.Echo_gate_Params) error {
		p.SetStart(10)
		return nil
	})
	defer release3()
	add, release4 := gate.Counter().Add(ctx, func(p echoproto.Counter_add_Params) error {
		addPlaced++
		if err := openGate(ctx, c.Boot, gate.Future); err != nil {
			return err
		}
		p.SetDelta(2)
		return nil
	})
	defer release4()
	r, err := add.Struct()
	if err != nil {
		t.Fatal(err)
	}
	if r.Value() != 12 {
		t.Errorf("add on the gate's counter = %d, want 12", r.Value())
	}
	if bootPlaced != 1 || addPlaced != 1 {
		t.Errorf("params built %d times for the call on the bootstrap and %d for the call on the gate's counter, want once each (capnp.Send.PlaceArgs is called at most once)", bootPlaced, addPlaced)
	}
}

// testPromisePassedBack passes the same unresolved promise (the counter a
// gate call will return) back to the server in several calls at once, as
// the official C++ calculator client passes a result not yet received; the
// promise's question is finished as soon as its Return arrives, as C++
// does, while the server's handlers call the counter. Every call must reach
// the counter: a capability passed back as receiverAnswer stays valid after
// the Finish. Under load, many times: the race it looks for is narrow.
func testPromisePassedBack(t *testing.T, env Env) {
	if env.GoCapnp {
		t.Skip("go-capnp v3.0.1-alpha.2's Conn deadlocks when two messages name the same unresolved promise (examples/calculator/README.md)")
	}
	c := dial(t, env)
	ctx := ctxT(t)
	calls := 10
	rounds := env.Concurrent / calls
	if env.Concurrent == 0 {
		rounds = 10000 / calls
	}
	failed := 0
	for i := 0; i < rounds; i++ {
		gate, release := c.Boot.Gate(ctx, nil)
		counter := gate.Counter()
		futures := make([]echoproto.Echo_add_Results_Future, calls)
		releases := make([]capnp.ReleaseFunc, calls)
		for j := range futures {
			futures[j], releases[j] = c.Boot.Add(ctx, func(p echoproto.Echo_add_Params) error {
				p.SetDelta(1)
				return p.SetCounter(counter.AddRef())
			})
		}
		finished := make(chan struct{})
		go func() {
			defer close(finished)
			<-gate.Done() // the Finish right after the Return
			counter.Release()
			release()
		}()
		if err := openGate(ctx, c.Boot, gate.Future); err != nil {
			t.Fatal(err)
		}
		seen := make(map[int64]bool, calls)
		for j, f := range futures {
			res, err := f.Struct()
			switch {
			case err != nil:
				if failed++; failed <= 3 {
					t.Errorf("round %d, call %d: %v", i, j, err)
				}
			case res.Value() < 1 || res.Value() > int64(calls) || seen[res.Value()]:
				t.Errorf("round %d, call %d saw %d: a call ran twice or on another counter", i, j, res.Value())
			default:
				seen[res.Value()] = true
			}
			releases[j]()
		}
		<-finished
	}
	if failed > 0 {
		t.Errorf("%d of %d calls given a promise passed back failed", failed, rounds*calls)
	}
}

// openGate opens the echo server's gate until the gate call gate has
// returned. The server's gate call lets other calls run before it waits on
// the gate (echoproto.Server.Gate calls Go first), so an openGate that
// overtakes it opens a gate nobody waits on: it is sent again until the
// call returns.
func openGate(ctx context.Context, boot echoproto.Echo, gate *capnp.Future) error {
	for {
		o, release := boot.OpenGate(ctx, nil)
		_, err := o.Struct()
		release()
		if err != nil {
			return err
		}
		select {
		case <-gate.Done():
			return nil
		case <-time.After(10 * time.Millisecond):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// retryLateCall runs attempt once; any error fails t. Under go-capnp's
// Conn (env.GoCapnp) it runs it again (3 times in all at most) while it
// fails with rpc.ErrLateCall: if a Return wins the race against a call
// pipelined on its answer, go-capnp v3.0.1-alpha.2 makes the call on the
// finished question and capnshm's transport does not send it (go-capnp
// #626). capnshm's engine never makes such a call, so there it is a
// failure like any other.
func retryLateCall(t *testing.T, env Env, attempt func() error) {
	t.Helper()
	for i := 1; ; i++ {
		err := attempt()
		if env.GoCapnp && errors.Is(err, capnshm.ErrLateCall) && i < 3 {
			t.Logf("attempt %d: %v", i, err)
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		return
	}
}

func testEmbargo(t *testing.T, env Env) {
	c := dial(t, env)
	ctx := ctxT(t)
	// The self call is itself pipelined on the counter call: under
	// go-capnp, when it races that call's Return, a fresh counter, a new
	// attempt.
	retryLateCall(t, env, func() error { return embargo(t, ctx, env, c) })
}

// embargo runs one attempt of the embargo case on a fresh counter. It
// returns the self call's error (retried under go-capnp if it is
// rpc.ErrLateCall); it fails t for anything else.
func embargo(t *testing.T, ctx context.Context, env Env, c *Conn) error {
	f, release := c.Boot.Counter(ctx, func(p echoproto.Echo_counter_Params) error { return nil })
	defer release()
	counter := f.Counter()
	// self returns the same counter; calls made on the promise and, once
	// it resolves, directly, must all run in the order they were made.
	s, release2 := counter.Self(ctx, nil)
	defer release2()
	self := s.Counter()
	const n = 100
	futures := make([]echoproto.Counter_add_Results_Future, 0, n)
	for i := 0; i < n; i++ {
		g, rel := self.Add(ctx, func(p echoproto.Counter_add_Params) error {
			p.SetDelta(1)
			return nil
		})
		defer rel()
		futures = append(futures, g)
		if i == n/2 {
			if _, err := s.Struct(); err != nil { // let the promise resolve mid-way
				return err
			}
		}
	}
	// Every call must run exactly once, and in E-order: each call sees the
	// value after the one before, whether it went to the promise or, once
	// it resolved, to the capability itself. go-capnp v3.0.1-alpha.2
	// breaks both under real timing over any transport (go-capnp #626 and
	// #631, fixed on its main branch only; its own stream transport on a
	// unix socket shows it in about one run in five): under it
	// (env.GoCapnp) late calls and violations of E-order are logged, and
	// the transport's own FIFO order is checked by the transport's tests.
	seen := make(map[int64]bool, n)
	outOfOrder, late, first := 0, 0, ""
	for i, g := range futures {
		res, err := g.Struct()
		if env.GoCapnp && errors.Is(err, capnshm.ErrLateCall) {
			// A call that raced the Return of self: go-capnp made it on
			// the finished question, and capnshm did not send it.
			late++
			continue
		}
		if env.GoCapnp && err != nil && capnp.IsDisconnected(err) {
			// go-capnp v3.0.1-alpha.2 can also abort the connection in
			// this race (a call pipelined after its promise's Finish,
			// go-capnp #626), on any transport.
			t.Skipf("go-capnp aborted the connection during the embargo race (go-capnp #626): %v", err)
		}
		if err != nil {
			t.Fatalf("call %d of %d: %v", i, n, err)
		}
		v := res.Value()
		if v < 1 || v > n || seen[v] {
			t.Fatalf("call %d saw %d: a call ran twice or a value is impossible", i, v)
		}
		seen[v] = true
		if v != int64(i+1-late) {
			if outOfOrder == 0 {
				first = fmt.Sprintf("call %d saw %d, want %d", i, v, i+1-late)
			}
			outOfOrder++
		}
	}
	if late > 0 {
		t.Logf("%d of %d calls raced the promise's resolution and were not sent (rpc.ErrLateCall, go-capnp #626)", late, n)
	}
	if len(seen) != n-late {
		t.Fatalf("%d calls succeeded, want %d", len(seen), n-late)
	}
	switch {
	case outOfOrder > 0 && env.GoCapnp:
		t.Logf("go-capnp ran %d of %d pipelined calls out of order (go-capnp #631, see comment); first: %s", outOfOrder, n, first)
	case outOfOrder > 0:
		t.Fatalf("E-order broken: %d of %d pipelined calls ran out of order; first: %s", outOfOrder, n, first)
	}
	return nil
}

func testCancel(t *testing.T, env Env) {
	c := dial(t, env)
	ctx, cancel := context.WithCancel(ctxT(t))
	f, release := c.Boot.Block(ctx, nil)
	defer release()
	time.AfterFunc(10*time.Millisecond, cancel)
	_, err := f.Struct()
	if err == nil {
		t.Fatal("a cancelled call succeeded")
	}
	// The connection still works.
	g, release2 := c.Boot.Ping(ctxT(t), nil)
	defer release2()
	if _, err := g.Struct(); err != nil {
		t.Fatalf("ping after a cancelled call: %v", err)
	}
}

func testException(t *testing.T, env Env) {
	c := dial(t, env)
	ctx := ctxT(t)
	f, release := c.Boot.Fail(ctx, func(p echoproto.Echo_fail_Params) error {
		return p.SetReason("the server says no")
	})
	defer release()
	_, err := f.Struct()
	if err == nil || !strings.Contains(err.Error(), "the server says no") {
		t.Fatalf("got %v, want the server's error", err)
	}
}

type callback struct{ echoproto.DataEcho }

func (callback) Call(_ context.Context, call echoproto.Callback_call) error {
	res, err := call.AllocResults()
	if err != nil {
		return err
	}
	res.SetResult(call.Args().Value() * 2)
	return nil
}

func testCallback(t *testing.T, env Env) {
	c := dial(t, env)
	ctx := ctxT(t)
	cb := echoproto.Callback_ServerToClient(callback{})
	defer cb.Release()
	f, release := c.Boot.CallBack(ctx, func(p echoproto.Echo_callBack_Params) error {
		p.SetValue(20)
		return p.SetCallback(cb.AddRef())
	})
	defer release()
	res, err := f.Struct()
	if err != nil {
		t.Fatal(err)
	}
	if res.Result() != 41 {
		t.Fatalf("callBack = %d, want 20*2+1", res.Result())
	}
}

func testStream(t *testing.T, env Env) {
	c := dial(t, env)
	ctx := ctxT(t)
	before := pushed(t, ctx, c.Boot)
	const n, size = 1000, 4096
	for i := 0; i < n; i++ {
		if err := c.Boot.Push(ctx, func(p echoproto.Echo_push_Params) error {
			ptr, b, err := echoproto.NewData(p.Segment(), size)
			if err != nil {
				return err
			}
			echoproto.FillPattern(b, byte(i), 0)
			return capnp.Struct(p).SetPtr(0, ptr)
		}); err != nil {
			t.Fatalf("push %d: %v", i, err)
		}
	}
	if err := c.Boot.WaitStreaming(); err != nil {
		t.Fatal(err)
	}
	after := pushed(t, ctx, c.Boot)
	if after[0]-before[0] != n*size || after[1]-before[1] != n {
		t.Fatalf("server received %d bytes in %d calls, want %d in %d", after[0]-before[0], after[1]-before[1], n*size, n)
	}
}

func pushed(t *testing.T, ctx context.Context, e echoproto.Echo) [2]uint64 {
	f, release := e.Pushed(ctx, nil)
	defer release()
	res, err := f.Struct()
	if err != nil {
		t.Fatal(err)
	}
	return [2]uint64{res.Bytes(), res.Count()}
}

func testConcurrent(t *testing.T, env Env) {
	c := dial(t, env)
	ctx := ctxT(t)
	n := env.Concurrent
	if n == 0 {
		n = 10000
	}
	type call struct {
		f       echoproto.Echo_echo_Results_Future
		release capnp.ReleaseFunc
	}
	calls := make([]call, n)
	// The calls start at once, pipelined on the bootstrap if it has not
	// resolved yet. go-capnp v3.0.1-alpha.2 can send the Finish of a
	// promise's question before calls already pipelined on that promise
	// (go-capnp issue #626, fixed by PR #632 on its main branch, in no tag
	// yet): calls racing with the bootstrap's resolution then fail, over
	// any transport. Under it (env.GoCapnp) the bootstrap is resolved
	// first.
	if env.GoCapnp {
		if err := capnp.Client(c.Boot).Resolve(ctx); err != nil {
			t.Fatal(err)
		}
	}
	var mu sync.Mutex
	var wg sync.WaitGroup
	// Issue every call before waiting for any, from several goroutines.
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for i := g; i < n; i += 8 {
				f, release := c.Boot.Echo(ctx, func(p echoproto.Echo_echo_Params) error {
					return p.SetData([]byte(fmt.Sprint(i)))
				})
				mu.Lock()
				calls[i] = call{f, release}
				mu.Unlock()
			}
		}(g)
	}
	wg.Wait()
	for i, cl := range calls {
		res, err := cl.f.Struct()
		if err != nil {
			t.Fatalf("call %d: %v", i, err)
		}
		d, err := res.Data()
		if err != nil || string(d) != fmt.Sprint(i) {
			t.Fatalf("call %d: got %q, %v", i, d, err)
		}
		cl.release()
	}
}

func testCloseClient(t *testing.T, env Env) {
	c := env.Dial(t)
	ctx := ctxT(t)
	f, release := c.Boot.Block(ctx, nil)
	defer release()
	c.Boot.Release()
	err := c.RPC.Close()
	switch {
	case env.GoCapnp && err != nil && !errors.Is(err, rpc.ErrConnClosed):
		t.Logf("close: %v", err) // go-capnp reports the transport's errors
	case !env.GoCapnp && err != nil:
		t.Errorf("close: %v", err)
	}
	select {
	case <-c.RPC.Done():
	case <-ctx.Done():
		t.Fatal("the connection is not done after Close")
	}
	_, err = f.Struct()
	switch {
	case err == nil:
		t.Fatal("a call outstanding at Close succeeded")
	case !env.GoCapnp && !capnp.IsDisconnected(err):
		t.Fatalf("a call outstanding at Close failed with %v, want a disconnected error", err)
	}
}

func testCloseServer(t *testing.T, env Env) {
	c := env.Dial(t)
	defer c.Boot.Release()
	ctx := ctxT(t)
	f, release := c.Boot.Block(ctx, nil)
	defer release()
	// Make sure the call reached the server before closing it.
	g, release2 := c.Boot.Ping(ctx, nil)
	if _, err := g.Struct(); err != nil {
		t.Fatal(err)
	}
	release2()
	if err := c.CloseServer(); err != nil {
		t.Logf("server close: %v", err)
	}
	start := time.Now()
	_, err := f.Struct()
	switch {
	case err == nil:
		t.Fatal("a call outstanding when the server closed succeeded")
	case !env.GoCapnp && !capnp.IsDisconnected(err):
		t.Fatalf("a call outstanding when the server closed failed with %v, want a disconnected error", err)
	}
	select {
	case <-c.RPC.Done():
	case <-ctx.Done():
		t.Fatal("the client connection is not done after the server closed")
	}
	t.Logf("outstanding call failed %v after the server closed", time.Since(start))
}
