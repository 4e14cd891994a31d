package loop_test

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/capnshm/capnshm/loop"
)

// Timers fire in deadline order (arming order among equal deadlines), on
// the injected clock, and only once it has reached their deadline.
func TestTimersInOrder(t *testing.T) {
	eachMode(t, func(t *testing.T, sys loop.SysOptions) {
		clk := loop.NewManualClock(epoch)
		l := start(t, loop.Options{Sys: sys, Clock: clk})
		fired := make(chan string, 16)
		at := func(name string, d time.Duration) *loop.Timer {
			return l.AfterFunc(d, func() {
				if got := clk.Now().Sub(epoch); got < d {
					t.Errorf("timer %s fired at +%v, before its deadline +%v", name, got, d)
				}
				if !l.OnLoop() {
					t.Errorf("timer %s fired off the loop", name)
				}
				fired <- name
			})
		}
		at("c30", 30*time.Millisecond)
		at("a10", 10*time.Millisecond)
		at("b20", 20*time.Millisecond)
		at("a10'", 10*time.Millisecond)
		stopped := at("stopped", 5*time.Millisecond)
		moved := at("moved", 1*time.Millisecond)
		if !stopped.Stop() {
			t.Error("Stop of an armed timer returned false")
		}
		if stopped.Stop() {
			t.Error("second Stop returned true")
		}
		if !moved.Reset(25 * time.Millisecond) {
			t.Error("Reset of an armed timer returned false")
		}

		expect := func(want ...string) {
			t.Helper()
			var got []string
			for range want {
				got = append(got, await(t, fired, "timer "+want[len(got)]))
			}
			barrier(t, l, loop.Normal)
			select {
			case extra := <-fired:
				t.Errorf("timer %s fired too early", extra)
			default:
			}
			if !slices.Equal(got, want) {
				t.Errorf("fired %v, want %v", got, want)
			}
		}
		barrier(t, l, loop.Normal)
		expect() // nothing is due yet
		clk.Advance(15 * time.Millisecond)
		expect("a10", "a10'")
		clk.Advance(12 * time.Millisecond) // +27
		expect("b20", "moved")
		clk.Advance(time.Hour)
		expect("c30")
		if s := l.Stats(); s.Timers != 5 {
			t.Errorf("Stats.Timers = %d, want 5", s.Timers)
		}
	})
}

// A timer rearmed from its own function for a time already past fires again
// in the next turn, not in the same one: the loop's other work runs between.
func TestTimerRearmFromItself(t *testing.T) {
	clk := loop.NewManualClock(epoch)
	l := start(t, loop.Options{Clock: clk})
	var rec recorder
	done := make(chan struct{})
	n := 0
	var fire func()
	var tm *loop.Timer
	arm := func(context.Context) error {
		tm = l.AfterFunc(0, fire)
		return nil
	}
	fire = func() {
		n++
		rec.add(fmt.Sprintf("timer%d", n))
		k := n
		l.Post(loop.Normal, func() { rec.add(fmt.Sprintf("task%d", k)) })
		if n < 3 {
			tm.Reset(0)
		} else {
			l.Post(loop.Normal, func() { close(done) })
		}
	}
	// Armed on the loop, so that tm is set before the timer can fire.
	if err := l.Do(context.Background(), loop.Normal, arm); err != nil {
		t.Fatal(err)
	}
	await(t, done, "the timer to fire 3 times")
	want := []string{"timer1", "task1", "timer2", "task2", "timer3", "task3"}
	if got := rec.list(); !slices.Equal(got, want) {
		t.Errorf("got %v, want %v", got, want)
	}
}
