package rpc_test

import (
	"bytes"
	"log/slog"
	"sync"
	"testing"
)

// testLogger logs at Warn and above to the test log until the test's
// cleanups run.
func testLogger(t *testing.T) *slog.Logger {
	w := &testWriter{t: t}
	t.Cleanup(w.stop)
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

// testWriter writes lines to t's log until stop. go-capnp reports a
// connection's error from a goroutine that may outlive Conn.Done (and so
// Server.Close); a t.Logf after the test has ended is a data race in the
// testing package.
type testWriter struct {
	t       *testing.T
	mu      sync.Mutex
	stopped bool
}

func (w *testWriter) Write(b []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.stopped {
		w.t.Logf("%s", bytes.TrimRight(b, "\n"))
	}
	return len(b), nil
}

func (w *testWriter) stop() {
	w.mu.Lock()
	w.stopped = true
	w.mu.Unlock()
}
