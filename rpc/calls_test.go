package rpc_test

import (
	"context"
	"errors"
	"testing"

	"github.com/capnshm/capnshm/internal/echoproto"
)

// valueCtx is a context of a type that is not comparable (it holds a
// slice): the engine must not compare such contexts.
type valueCtx struct {
	context.Context
	tags []string
}

// TestCallContexts: a call whose context ends before its Return fails with
// the context's error, whatever other calls share or do not share that
// context; calls under another context, and calls that returned, are not
// touched; contexts of a non-comparable type work too.
func TestCallContexts(t *testing.T) {
	e := engines{"capnshm", "capnshm", "capnshm"}
	echo := pipePair(t, e, &echoproto.Server{})
	defer echo.Release()
	bound := regressCtx(t)

	shared, cancelShared := context.WithCancel(bound)
	other, cancelOther := context.WithCancel(bound)
	defer cancelOther()
	odd, cancelOdd := context.WithCancel(bound)
	oddCtx := valueCtx{odd, []string{"x"}}

	// Finished calls under the shared context, then blocked ones.
	for range 3 {
		if err := apiPingBoot(shared, echo); err != nil {
			t.Fatal(err)
		}
	}
	type blocked struct {
		name string
		ctx  context.Context
		f    echoproto.Echo_block_Results_Future
		rel  func()
	}
	var calls []blocked
	for _, c := range []struct {
		name string
		ctx  context.Context
	}{{"shared", shared}, {"other", other}, {"shared", shared}, {"odd", oddCtx}, {"shared", shared}, {"odd", oddCtx}} {
		f, rel := echo.Block(c.ctx, nil)
		calls = append(calls, blocked{c.name, c.ctx, f, rel})
	}
	defer func() {
		for _, c := range calls {
			c.rel()
		}
	}()
	// The connection serves meanwhile, under each context.
	for _, ctx := range []context.Context{shared, other, oddCtx} {
		if err := apiPingBoot(ctx, echo); err != nil {
			t.Fatal(err)
		}
	}

	cancelShared()
	for _, c := range calls {
		if c.name != "shared" {
			continue
		}
		if _, err := c.f.Struct(); !errors.Is(err, context.Canceled) {
			t.Errorf("a call under the cancelled context: %v, want context.Canceled", err)
		}
	}
	cancelOdd()
	for _, c := range calls {
		if c.name != "odd" {
			continue
		}
		if _, err := c.f.Struct(); !errors.Is(err, context.Canceled) {
			t.Errorf("a call under the cancelled non-comparable context: %v, want context.Canceled", err)
		}
	}
	// The call under the other context is still outstanding, and the
	// connection still serves.
	for _, c := range calls {
		if c.name != "other" {
			continue
		}
		select {
		case <-c.f.Done():
			_, err := c.f.Struct()
			t.Errorf("the call under the other context ended: %v", err)
		default:
		}
	}
	if err := apiPingBoot(other, echo); err != nil {
		t.Fatal(err)
	}
	// A new call under the cancelled context fails at once, unsent.
	if err := apiPingBoot(shared, echo); !errors.Is(err, context.Canceled) {
		t.Errorf("a call under an already cancelled context: %v, want context.Canceled", err)
	}
	cancelOther()
	for _, c := range calls {
		if c.name == "other" {
			if _, err := c.f.Struct(); !errors.Is(err, context.Canceled) {
				t.Errorf("the call under the other context, once cancelled: %v", err)
			}
		}
	}
}

// TestPlaceArgsOnce: a call pipelined on a question whose Return arrives
// while its params are being written goes to the resolved capability with
// those params: its PlaceArgs runs once (it may have side effects: a
// sender hashing what it writes got a wrong checksum), and the call
// arrives whole.
func TestPlaceArgsOnce(t *testing.T) {
	e := engines{"capnshm", "capnshm", "capnshm"}
	echo := pipePair(t, e, &echoproto.Server{})
	defer echo.Release()
	ctx := regressCtx(t)
	for i := range 20 {
		f, rel := echo.Counter(ctx, func(p echoproto.Echo_counter_Params) error {
			p.SetStart(int64(100 * i))
			return nil
		})
		placed := 0
		add, relAdd := f.Counter().Add(ctx, func(p echoproto.Counter_add_Params) error {
			placed++
			<-f.Done() // the question returns while this call is being built
			p.SetDelta(7)
			return nil
		})
		res, err := add.Struct()
		if err != nil {
			t.Fatalf("call %d: %v", i, err)
		}
		if placed != 1 || res.Value() != int64(100*i+7) {
			t.Fatalf("call %d: PlaceArgs ran %d times, value %d; want once, %d", i, placed, res.Value(), 100*i+7)
		}
		relAdd()
		rel()
	}
}
