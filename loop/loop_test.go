package loop_test

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"capnproto.org/go/capnp/v3/exc"

	"github.com/capnshm/capnshm/loop"
)

// Tasks queued together run high priority first, each priority in FIFO
// order, and on the loop's thread.
func TestPriorityOrder(t *testing.T) {
	eachMode(t, func(t *testing.T, sys loop.SysOptions) {
		for _, blocker := range []loop.Priority{loop.High, loop.Normal} {
			t.Run("blocked by "+blocker.String(), func(t *testing.T) {
				l := start(t, loop.Options{Sys: sys})
				release := block(t, l, blocker)
				var rec recorder
				var off atomic.Int32
				var want []string
				for i := range 5 {
					for _, p := range []loop.Priority{loop.Normal, loop.High} {
						name := fmt.Sprintf("%s%d", p, i)
						if err := l.Post(p, func() {
							if !l.OnLoop() {
								off.Add(1)
							}
							rec.add(name)
						}); err != nil {
							t.Fatal(err)
						}
					}
				}
				for i := range 5 {
					want = append(want, fmt.Sprintf("high%d", i))
				}
				for i := range 5 {
					want = append(want, fmt.Sprintf("normal%d", i))
				}
				release()
				barrier(t, l, loop.Normal)
				if got := rec.list(); !slices.Equal(got, want) {
					t.Errorf("order\n got %v\nwant %v", got, want)
				}
				if n := off.Load(); n != 0 {
					t.Errorf("%d tasks ran off the loop's thread", n)
				}
			})
		}
	})
}

// A high task posted while a long run of normal tasks is queued waits
// behind one normal task at most.
func TestHighPreemptsNormalBatch(t *testing.T) {
	l := start(t, loop.Options{})
	release := block(t, l, loop.High)
	var rec recorder
	for i := range 10 {
		l.Post(loop.Normal, func() {
			rec.add(fmt.Sprintf("n%d", i))
			if i == 2 {
				l.Post(loop.High, func() { rec.add("H") })
			}
		})
	}
	release()
	barrier(t, l, loop.Normal)
	got := rec.list()
	if i := slices.Index(got, "H"); i != 3 {
		t.Errorf("high task ran at position %d of %v, want 3 (right after the normal task that posted it)", i, got)
	}
}

func TestDo(t *testing.T) {
	ctx := context.Background()
	t.Run("returns f's error", func(t *testing.T) {
		l := start(t, loop.Options{})
		sentinel := errors.New("from f")
		if err := l.Do(ctx, loop.Normal, func(context.Context) error { return sentinel }); err != sentinel {
			t.Fatalf("Do = %v, want f's error", err)
		}
	})
	t.Run("inline on the loop", func(t *testing.T) {
		l := start(t, loop.Options{})
		var inner, outer bool
		err := l.Do(ctx, loop.Normal, func(ctx context.Context) error {
			outer = true
			// Inline: runs before Do returns, although the loop is busy
			// with this very task.
			err := l.Do(ctx, loop.High, func(context.Context) error {
				inner = outer && l.OnLoop()
				return nil
			})
			if !inner {
				return fmt.Errorf("inner Do returned %v before f ran", err)
			}
			return err
		})
		if err != nil || !inner {
			t.Fatalf("Do = %v, inner ran inline: %v", err, inner)
		}
	})
	t.Run("cancelled before it runs", func(t *testing.T) {
		l := start(t, loop.Options{})
		release := block(t, l, loop.High)
		cctx, cancel := context.WithCancel(ctx)
		var ran atomic.Bool
		errc := make(chan error, 1)
		go func() {
			errc <- l.Do(cctx, loop.Normal, func(context.Context) error { ran.Store(true); return nil })
		}()
		for l.Queued(loop.Normal) == 0 {
			runtime.Gosched()
		}
		cancel()
		if err := await(t, errc, "Do to return"); !errors.Is(err, context.Canceled) {
			t.Fatalf("Do = %v, want context.Canceled", err)
		}
		release()
		barrier(t, l, loop.Normal)
		if ran.Load() {
			t.Fatal("f ran although its context ended first")
		}
	})
	t.Run("context already done", func(t *testing.T) {
		l := start(t, loop.Options{})
		cctx, cancel := context.WithCancel(ctx)
		cancel()
		ran := false
		err := l.Do(cctx, loop.Normal, func(context.Context) error { ran = true; return nil })
		if !errors.Is(err, context.Canceled) || ran {
			t.Fatalf("Do = %v, ran %v; want context.Canceled, not run", err, ran)
		}
	})
	t.Run("after Close", func(t *testing.T) {
		l := start(t, loop.Options{})
		if err := l.Close(); err != nil {
			t.Fatal(err)
		}
		err := l.Do(ctx, loop.Normal, func(context.Context) error { return nil })
		if !errors.Is(err, loop.ErrClosed) || exc.TypeOf(err) != exc.Disconnected {
			t.Fatalf("Do after Close = %v (type %v), want ErrClosed, disconnected", err, exc.TypeOf(err))
		}
		if err := l.Post(loop.High, func() {}); !errors.Is(err, loop.ErrClosed) {
			t.Fatalf("Post after Close = %v, want ErrClosed", err)
		}
		if err := l.Close(); !errors.Is(err, loop.ErrClosed) {
			t.Fatalf("second Close = %v, want ErrClosed", err)
		}
	})
}

// Close with work queued: the running task finishes, queued Do calls fail
// with ErrClosed, queued posts and timers never run, and Close returns.
func TestCloseWithWorkQueued(t *testing.T) {
	eachMode(t, func(t *testing.T, sys loop.SysOptions) {
		clk := loop.NewManualClock(epoch)
		l := start(t, loop.Options{Sys: sys, Clock: clk})
		release := block(t, l, loop.Normal)
		var ran atomic.Int32
		errs := make(chan error, 8)
		for i := range 8 {
			p := loop.Priority(i % 2)
			go func() {
				errs <- l.Do(context.Background(), p, func(context.Context) error { ran.Add(1); return nil })
			}()
		}
		for l.Queued(loop.High)+l.Queued(loop.Normal) < 8 {
			runtime.Gosched()
		}
		for range 3 {
			l.Post(loop.Normal, func() { ran.Add(1) })
		}
		fired := false
		tm := l.AfterFunc(time.Second, func() { fired = true })
		closed := make(chan error, 1)
		go func() { closed <- l.Close() }()
		for !l.Closing() {
			runtime.Gosched()
		}
		clk.Advance(time.Hour)
		release()
		if err := await(t, closed, "Close to return"); err != nil {
			t.Fatalf("Close = %v", err)
		}
		for range 8 {
			if err := await(t, errs, "a queued Do to fail"); !errors.Is(err, loop.ErrClosed) {
				t.Errorf("queued Do = %v, want ErrClosed", err)
			}
		}
		if n := ran.Load(); n != 0 || fired {
			t.Errorf("after Close: %d queued tasks ran, timer fired: %v", n, fired)
		}
		if tm.Stop() {
			t.Error("Stop of a timer dropped by Close reported it armed")
		}
		select {
		case <-l.Done():
		default:
			t.Error("Done not closed after Close returned")
		}
	})
}

// Close from a task on the loop returns at once; the loop stops after it.
func TestCloseFromTask(t *testing.T) {
	l := start(t, loop.Options{})
	var after atomic.Bool
	l.Post(loop.Normal, func() {
		if err := l.Close(); err != nil {
			t.Errorf("Close from the loop = %v", err)
		}
		after.Store(true)
	})
	await(t, l.Done(), "the loop to stop")
	if !after.Load() {
		t.Error("the task did not finish after its Close")
	}
}

// Run runs the loop on the calling goroutine's thread.
func TestRun(t *testing.T) {
	done := make(chan error, 1)
	tids := make(chan [2]uint64, 1)
	go func() {
		done <- loop.Run(loop.Options{}, func(l *loop.Loop) {
			tids <- [2]uint64{l.ThreadID(), loop.CurrentThreadID()}
			go l.Close()
		})
	}()
	ids := await(t, tids, "ready to run")
	if ids[0] != ids[1] {
		t.Errorf("ready ran on thread %d, the loop's is %d", ids[1], ids[0])
	}
	if err := await(t, done, "Run to return"); err != nil {
		t.Fatalf("Run = %v", err)
	}
}

// The queue bound: past MaxQueued, Post and Do fail with an overloaded
// exception, and work on the other priority is still accepted.
func TestOverloaded(t *testing.T) {
	eachMode(t, func(t *testing.T, sys loop.SysOptions) {
		l := start(t, loop.Options{Sys: sys, MaxQueued: 3})
		release := block(t, l, loop.High)
		drained := make(chan struct{})
		for i := range 3 {
			f := func() {}
			if i == 2 {
				f = func() { close(drained) }
			}
			if err := l.Post(loop.Normal, f); err != nil {
				t.Fatalf("post %d: %v", i, err)
			}
		}
		err := l.Post(loop.Normal, func() {})
		if !errors.Is(err, loop.ErrOverloaded) || exc.TypeOf(err) != exc.Overloaded {
			t.Fatalf("Post past the bound = %v (type %v), want ErrOverloaded, overloaded", err, exc.TypeOf(err))
		}
		err = l.Do(context.Background(), loop.Normal, func(context.Context) error { return nil })
		if !errors.Is(err, loop.ErrOverloaded) || exc.TypeOf(err) != exc.Overloaded {
			t.Fatalf("Do past the bound = %v, want overloaded", err)
		}
		if err := l.Post(loop.High, func() {}); err != nil {
			t.Fatalf("high post while normal is full: %v", err)
		}
		if n := l.Stats().Overloaded; n != 2 {
			t.Errorf("Stats.Overloaded = %d, want 2", n)
		}
		release()
		await(t, drained, "the queue to drain")
		if err := l.Post(loop.Normal, func() {}); err != nil {
			t.Fatalf("post once drained: %v", err)
		}
	})
}

// A wake-up that was consumed always leads to the work it announced: many
// rounds of "the loop is idle, another goroutine posts one task".
func TestWakeUpLeadsToWork(t *testing.T) {
	eachMode(t, func(t *testing.T, sys loop.SysOptions) {
		l := start(t, loop.Options{Sys: sys})
		n := 3000
		if testing.Short() {
			n = 300
		}
		ran := make(chan struct{}, 1)
		for i := range n {
			p := loop.Priority(i % 2)
			if err := l.Post(p, func() { ran <- struct{}{} }); err != nil {
				t.Fatal(err)
			}
			await(t, ran, fmt.Sprintf("task %d after a wake-up", i))
		}
		if s := l.Stats(); s.Wakeups == 0 {
			t.Errorf("no wake-ups counted over %d posts to an idle loop: %+v", n, s)
		}
	})
}

// Wake-ups coalesce: many posts to a loop that is about to block send one.
func TestWakeUpsCoalesce(t *testing.T) {
	eachMode(t, func(t *testing.T, sys loop.SysOptions) {
		l := start(t, loop.Options{Sys: sys})
		release := block(t, l, loop.High)
		before := l.Stats().Wakeups
		// While a task runs the loop is not waiting: posts send no wake-up.
		for range 50 {
			l.Post(loop.Normal, func() {})
		}
		if d := l.Stats().Wakeups - before; d != 0 {
			t.Errorf("%d wake-ups sent to a busy loop, want 0", d)
		}
		l.PretendWaiting()
		var wg sync.WaitGroup
		for range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for range 20 {
					l.Post(loop.Normal, func() {})
				}
			}()
		}
		wg.Wait()
		if d := l.Stats().Wakeups - before; d != 1 {
			t.Errorf("%d wake-ups for 160 posts to a waiting loop, want 1", d)
		}
		release()
		barrier(t, l, loop.Normal)
	})
}

// OnLoop is true on the loop's thread only, and ThreadID is that thread's.
func TestThread(t *testing.T) {
	l := start(t, loop.Options{})
	if l.OnLoop() {
		t.Error("OnLoop true off the loop")
	}
	var tid uint64
	var on bool
	l.Do(context.Background(), loop.Normal, func(context.Context) error {
		tid, on = loop.CurrentThreadID(), l.OnLoop()
		return nil
	})
	if !on || tid != l.ThreadID() {
		t.Errorf("in a task: OnLoop %v, thread %d, ThreadID %d", on, tid, l.ThreadID())
	}
}
