package loop_test

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/capnshm/capnshm/loop"
)

// Under a flood of high-priority tasks the pump still runs once per
// MaxPumpDelay, late by at most the batches of one turn, counted on the
// injected clock: every task moves the clock by one step.
func TestPumpUnderFlood(t *testing.T) {
	eachMode(t, func(t *testing.T, sys loop.SysOptions) {
		const (
			step     = time.Millisecond
			maxDelay = 100 * time.Millisecond
			batch    = 8
			total    = 3 * time.Second
			inFlight = 50
		)
		clk := loop.NewManualClock(epoch)
		var mu sync.Mutex
		var pumps []time.Duration
		var tasksBetween []int
		tasks := 0
		opts := loop.Options{
			Sys:          sys,
			Clock:        clk,
			MaxPumpDelay: maxDelay,
			HighBatch:    batch,
			NormalBatch:  batch,
			Pump: func() {
				mu.Lock()
				pumps = append(pumps, clk.Now().Sub(epoch))
				tasksBetween = append(tasksBetween, tasks)
				tasks = 0
				mu.Unlock()
			},
		}
		l := start(t, opts)
		done := make(chan struct{})
		var flood func()
		flood = func() {
			clk.Advance(step)
			mu.Lock()
			tasks++
			mu.Unlock()
			if clk.Now().Sub(epoch) >= total {
				select {
				case <-done:
				default:
					close(done)
				}
				return
			}
			if err := l.Post(loop.High, flood); err != nil {
				t.Errorf("flood post: %v", err)
			}
		}
		for range inFlight {
			if err := l.Post(loop.High, flood); err != nil {
				t.Fatal(err)
			}
		}
		await(t, done, "the flood to end")
		barrier(t, l, loop.High)

		mu.Lock()
		defer mu.Unlock()
		// One turn: a high batch, the pre-pump high batch; no normal tasks here.
		late := 2 * batch * step
		want := int(total / (maxDelay + late))
		if len(pumps) < want {
			t.Fatalf("pump ran %d times in %v of flood, want at least %d: %v", len(pumps), total, want, pumps)
		}
		prev := time.Duration(0)
		for i, at := range pumps {
			if gap := at - prev; gap > maxDelay+late {
				t.Errorf("pump run %d at +%v, %v after the previous one: more than MaxPumpDelay %v + %v", i, at, gap, maxDelay, late)
			}
			prev = at
		}
		for i, n := range tasksBetween[1:] {
			if n < int(maxDelay/step)/2 {
				t.Errorf("only %d flood tasks ran between pump runs %d and %d: the pump ran too often", n, i, i+1)
			}
		}
		if s := l.Stats(); s.MaxPumpGap > maxDelay+late || s.Pumps != uint64(len(pumps)) {
			t.Errorf("Stats: MaxPumpGap %v (want <= %v), Pumps %d (want %d)", s.MaxPumpGap, maxDelay+late, s.Pumps, len(pumps))
		}
	})
}

// High-priority tasks queued before a due pump run before it.
func TestPumpAfterQueuedTasks(t *testing.T) {
	eachMode(t, func(t *testing.T, sys loop.SysOptions) {
		for _, blocker := range []loop.Priority{loop.High, loop.Normal} {
			t.Run("blocked by "+blocker.String(), func(t *testing.T) {
				clk := loop.NewManualClock(epoch)
				var rec recorder
				pumped := make(chan struct{}, 16)
				l := start(t, loop.Options{Sys: sys, Clock: clk, HighBatch: 8, Pump: func() {
					rec.add("pump")
					pumped <- struct{}{}
				}})
				release := block(t, l, blocker)
				clk.Advance(2 * time.Second) // the pump is due
				var want []string
				for i := range 6 {
					name := fmt.Sprintf("h%d", i)
					want = append(want, name)
					l.Post(loop.High, func() { rec.add(name) })
				}
				want = append(want, "pump")
				release()
				await(t, pumped, "the pump")
				if got := rec.list(); !slices.Equal(got, want) {
					t.Errorf("got %v, want %v", got, want)
				}
			})
		}
	})
}

// Before its deadline the pump runs only when the loop has nothing else to
// do, and only if it has work (WakePump).
func TestPumpWhenIdle(t *testing.T) {
	eachMode(t, func(t *testing.T, sys loop.SysOptions) {
		clk := loop.NewManualClock(epoch)
		var rec recorder
		pumped := make(chan struct{}, 16)
		l := start(t, loop.Options{Sys: sys, Clock: clk, Pump: func() {
			rec.add("pump")
			pumped <- struct{}{}
		}})
		release := block(t, l, loop.Normal)
		l.WakePump()
		for i := range 3 {
			l.Post(loop.Normal, func() { rec.add(fmt.Sprintf("n%d", i)) })
		}
		release()
		await(t, pumped, "the pump")
		barrier(t, l, loop.Normal)
		want := []string{"n0", "n1", "n2", "pump"}
		if got := rec.list(); !slices.Equal(got, want) {
			t.Errorf("got %v, want %v", got, want)
		}
		// Idle without pump work: no run until the deadline.
		barrier(t, l, loop.Normal)
		if n := len(rec.list()); n != len(want) {
			t.Errorf("the pump ran again without work or deadline: %v", rec.list())
		}
		clk.Advance(loop.DefaultMaxPumpDelay)
		await(t, pumped, "the pump at its deadline")
	})
}

// A run longer than SlowTask is logged at WARN with its duration.
func TestSlowTaskLogged(t *testing.T) {
	clk := loop.NewManualClock(epoch)
	h := &captureHandler{}
	l := start(t, loop.Options{Clock: clk, SlowTask: time.Second, Logger: slog.New(h)})
	ctx := context.Background()
	l.Do(ctx, loop.Normal, func(context.Context) error { clk.Advance(999 * time.Millisecond); return nil })
	l.Do(ctx, loop.High, func(context.Context) error { clk.Advance(2500 * time.Millisecond); return nil })
	recs := h.records()
	if len(recs) != 1 {
		t.Fatalf("%d records logged, want 1 (the 2.5 s task only): %v", len(recs), recs)
	}
	r := recs[0]
	if r.Level != slog.LevelWarn || r.attrs["duration"] != (2500*time.Millisecond).String() ||
		r.attrs["kind"] != "task" || r.attrs["priority"] != "high" {
		t.Errorf("record: level %v, attrs %v; want WARN, duration 2.5s, kind task, priority high", r.Level, r.attrs)
	}
	if n := l.Stats().SlowTasks; n != 1 {
		t.Errorf("Stats.SlowTasks = %d, want 1", n)
	}
}

type record struct {
	Level slog.Level
	attrs map[string]string
}

// captureHandler keeps the records logged, with their attributes as text.
type captureHandler struct {
	mu   sync.Mutex
	recs []record
}

func (h *captureHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h *captureHandler) Handle(_ context.Context, r slog.Record) error {
	rec := record{Level: r.Level, attrs: map[string]string{}}
	r.Attrs(func(a slog.Attr) bool {
		rec.attrs[a.Key] = a.Value.String()
		return true
	})
	h.mu.Lock()
	h.recs = append(h.recs, rec)
	h.mu.Unlock()
	return nil
}
func (h *captureHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *captureHandler) WithGroup(string) slog.Handler      { return h }
func (h *captureHandler) records() []record {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]record(nil), h.recs...)
}
