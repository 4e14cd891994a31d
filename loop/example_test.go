package loop_test

import (
	"context"
	"fmt"
	"time"

	"github.com/capnshm/capnshm/internal/echoproto"
	"github.com/capnshm/capnshm/loop"
)

// A loop runs work on its one thread: Do waits for it, Post does not, and
// high-priority work runs first.
func ExampleLoop_Do() {
	l, err := loop.New(loop.Options{})
	if err != nil {
		panic(err)
	}
	defer l.Close()
	ctx := context.Background()
	tid := l.ThreadID()
	err = l.Do(ctx, loop.Normal, func(ctx context.Context) error {
		// Everything queued while this runs waits for it; then high first.
		l.Post(loop.Normal, func() { fmt.Println("normal") })
		l.Post(loop.High, func() { fmt.Println("high") })
		fmt.Println("on the loop's thread:", loop.CurrentThreadID() == tid)
		return nil
	})
	if err != nil {
		panic(err)
	}
	l.Do(ctx, loop.Normal, func(context.Context) error { return nil }) // after both posts
	// Output:
	// on the loop's thread: true
	// high
	// normal
}

// Timers fire on the loop, on its clock; a ManualClock moves only when told.
func ExampleManualClock() {
	clk := loop.NewManualClock(time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC))
	l, err := loop.New(loop.Options{Clock: clk})
	if err != nil {
		panic(err)
	}
	defer l.Close()
	fired := make(chan string, 2)
	l.AfterFunc(2*time.Second, func() { fired <- "2s" })
	l.AfterFunc(time.Second, func() { fired <- "1s" })
	clk.Advance(5 * time.Second)
	fmt.Println(<-fired, <-fired)
	// Output: 1s 2s
}

// BindServer makes every handler of a go-capnp server run on the loop's
// thread, queued at high priority, in the object's call order.
func ExampleBindServer() {
	l, err := loop.New(loop.Options{})
	if err != nil {
		panic(err)
	}
	defer l.Close()
	impl := &echoproto.Server{}
	echo := echoproto.Echo(loop.BindServer(l, echoproto.Echo_Methods(nil, impl), impl))
	defer echo.Release()
	f, release := echo.Echo(context.Background(), func(p echoproto.Echo_echo_Params) error {
		return p.SetData([]byte("drawn on the window's thread"))
	})
	defer release()
	res, err := f.Struct()
	if err != nil {
		panic(err)
	}
	d, _ := res.Data()
	fmt.Println(string(d))
	// Output: drawn on the window's thread
}
