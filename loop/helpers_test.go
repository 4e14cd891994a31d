package loop_test

import (
	"context"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/capnshm/capnshm/loop"
)

// bound is how long a test waits for something that should happen at once
// before it fails (instead of hanging); generous for Wine.
const bound = 20 * time.Second

var epoch = time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)

// start starts a loop closed at cleanup.
func start(t testing.TB, opts loop.Options) *loop.Loop {
	t.Helper()
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	l, err := loop.New(opts)
	if err != nil {
		t.Fatalf("loop.New: %v", err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

// await fails the test if ch does not deliver within bound.
func await[T any](t testing.TB, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(bound):
		t.Fatalf("timed out after %v waiting for %s", bound, what)
		panic("unreachable")
	}
}

// block occupies the loop with a task at priority p until the returned
// function is called; it returns once the task runs.
func block(t testing.TB, l *loop.Loop, p loop.Priority) (release func()) {
	t.Helper()
	started := make(chan struct{})
	rel := make(chan struct{})
	if err := l.Post(p, func() {
		close(started)
		<-rel
	}); err != nil {
		t.Fatalf("post blocker: %v", err)
	}
	await(t, started, "the blocking task to start")
	var once sync.Once
	release = func() { once.Do(func() { close(rel) }) }
	t.Cleanup(release)
	return release
}

// barrier returns once every task queued on l at priority p before it has run.
func barrier(t testing.TB, l *loop.Loop, p loop.Priority) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), bound)
	defer cancel()
	if err := l.Do(ctx, p, func(context.Context) error { return nil }); err != nil {
		t.Fatalf("barrier: %v", err)
	}
}

// recorder collects labels in the order the loop produced them.
type recorder struct {
	mu  sync.Mutex
	got []string
}

func (r *recorder) add(s string) {
	r.mu.Lock()
	r.got = append(r.got, s)
	r.mu.Unlock()
}

func (r *recorder) list() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.got...)
}
