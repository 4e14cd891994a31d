package loop_test

import (
	"errors"
	"slices"
	"testing"

	"github.com/capnshm/capnshm/iocpwake"
	"github.com/capnshm/capnshm/loop"
)

// A doorbell watch calls back on the loop after a ring, at its priority;
// Stop ends the callbacks.
func TestWatchBell(t *testing.T) {
	eachMode(t, func(t *testing.T, sys loop.SysOptions) {
		l := start(t, loop.Options{Sys: sys})
		b, err := iocpwake.New()
		if err != nil {
			t.Fatal(err)
		}
		defer b.Close()
		calls := make(chan bool, 64)
		w, err := l.WatchBell(b, loop.High, func() bool {
			calls <- l.OnLoop()
			return false
		})
		if err != nil {
			t.Fatal(err)
		}
		for i := range 3 {
			if err := b.Ring(); err != nil {
				t.Fatal(err)
			}
			if on := await(t, calls, "the bell callback"); !on {
				t.Errorf("ring %d: callback ran off the loop", i)
			}
			drain(calls) // a spurious extra callback is allowed (Windows)
		}
		if err := w.Stop(); err != nil {
			t.Fatal(err)
		}
		drain(calls)
		b.Ring()
		barrier(t, l, loop.Normal)
		// A callback after Stop returned would be a bug: Stop waits for the
		// loop, and the ring can only reach a stopped watch.
		select {
		case <-calls:
			t.Error("callback after Stop")
		default:
		}
		if err := w.Stop(); err != nil {
			t.Errorf("second Stop: %v", err)
		}
	})
}

// Rings while the loop is busy coalesce into one callback.
func TestWatchBellCoalesces(t *testing.T) {
	l := start(t, loop.Options{})
	b, err := iocpwake.New()
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	calls := make(chan struct{}, 64)
	if _, err := l.WatchBell(b, loop.Normal, func() bool {
		calls <- struct{}{}
		return false
	}); err != nil {
		t.Fatal(err)
	}
	release := block(t, l, loop.High)
	for range 10 {
		b.Ring()
	}
	release()
	await(t, calls, "the bell callback")
	barrier(t, l, loop.Normal)
	if n := len(calls); n > coalesceSlack {
		t.Errorf("10 rings while the loop was busy ran the callback %d more times, want at most %d", n+1, coalesceSlack+1)
	}
}

// more = true calls the callback again without a new ring: a receive loop
// working through a backlog. A normal-priority callback runs again in the
// next turn, after the turn's normal tasks; a high-priority one runs again
// before normal tasks, but within the turn's high budget, so they are not
// starved.
func TestWatchMore(t *testing.T) {
	eachMode(t, func(t *testing.T, sys loop.SysOptions) {
		for _, p := range []loop.Priority{loop.Normal, loop.High} {
			t.Run(p.String(), func(t *testing.T) {
				l := start(t, loop.Options{Sys: sys, HighBatch: 2})
				b, err := iocpwake.New()
				if err != nil {
					t.Fatal(err)
				}
				defer b.Close()
				var rec recorder
				backlog := 6
				done := make(chan struct{})
				if _, err := l.WatchBell(b, p, func() bool {
					if backlog == 0 {
						return false
					}
					backlog--
					rec.add("watch")
					l.Post(loop.Normal, func() { rec.add("task") })
					if backlog == 0 {
						l.Post(loop.Normal, func() { close(done) })
					}
					return backlog > 0
				}); err != nil {
					t.Fatal(err)
				}
				b.Ring()
				await(t, done, "the backlog")
				got := rec.list()
				if p == loop.Normal {
					want := slices.Repeat([]string{"watch", "task"}, 6)
					if !slices.Equal(got, want) {
						t.Errorf("got %v, want %v", got, want)
					}
					return
				}
				if i := slices.Index(got, "task"); i < 0 || i > 2 {
					t.Errorf("got %v: the first normal task ran after %d high callbacks, want at most the budget, 2", got, i)
				}
			})
		}
	})
}

// Bells the loop cannot wait on are refused.
func TestWatchBellRefused(t *testing.T) {
	l := start(t, loop.Options{})
	b, err := iocpwake.New()
	if err != nil {
		t.Fatal(err)
	}
	b.Close()
	if _, err := l.WatchBell(b, loop.Normal, func() bool { return false }); !errors.Is(err, iocpwake.ErrClosed) {
		t.Errorf("WatchBell(closed bell) = %v, want iocpwake.ErrClosed", err)
	}
	ro := ringOnlyBell(t)
	if _, err := l.WatchBell(ro, loop.Normal, func() bool { return false }); !errors.Is(err, iocpwake.ErrRingOnly) {
		t.Errorf("WatchBell(ring-only bell) = %v, want iocpwake.ErrRingOnly", err)
	}
	l.Close()
	b2, err := iocpwake.New()
	if err != nil {
		t.Fatal(err)
	}
	defer b2.Close()
	if _, err := l.WatchBell(b2, loop.Normal, func() bool { return false }); !errors.Is(err, loop.ErrClosed) {
		t.Errorf("WatchBell on a closed loop = %v, want ErrClosed", err)
	}
}

func drain[T any](ch chan T) {
	for {
		select {
		case <-ch:
		default:
			return
		}
	}
}
