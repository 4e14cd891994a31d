package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/capnshm/capnshm/loop"
)

// TestMain runs main instead of the tests when the test binary is started
// as the program (see runProgram), and prepares a display (Linux: Xvfb).
func TestMain(m *testing.M) {
	flag.Parse()
	if os.Getenv("CAPNSHM_WINDOW_MAIN") == "1" {
		os.Args = append([]string{"window"}, strings.Fields(os.Getenv("CAPNSHM_WINDOW_ARGS"))...)
		main()
		os.Exit(0)
	}
	quietWindowSystem(testing.Verbose())
	stop := prepareDisplay()
	code := m.Run()
	stop()
	os.Exit(code)
}

// startTestApp starts the program's server, skipping the test where there is
// no display (failing instead under CAPNSHM_REQUIRE_DISPLAY=1, as in CI).
func startTestApp(t *testing.T, pump time.Duration, interactive bool) *app {
	t.Helper()
	name := strings.ReplaceAll(t.Name(), "/", "-")
	a, err := startApp(appConfig{addr: privateAddr(fmt.Sprintf("%d-%s", os.Getpid(), name)), maxPumpDelay: pump,
		interactive: interactive})
	if errors.Is(err, errNoDisplay) {
		if os.Getenv("CAPNSHM_REQUIRE_DISPLAY") == "1" {
			t.Fatalf("CAPNSHM_REQUIRE_DISPLAY=1 but: %v", err)
		}
		t.Skipf("skipped: %v (and no Xvfb to start)", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	return a
}

// Under a flood of draw calls from clients over RPC, every handler runs on
// the window's thread, the window's events and messages are read and
// dispatched (the pump runs by its deadline), and the window answers the
// window system's liveness checks (Linux: _NET_WM_PING from another X
// client; Windows: SendMessageTimeout from another thread) within the 5 s
// after which it would be called hung.
func TestFloodKeepsWindowAlive(t *testing.T) {
	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) { testFlood(t, m.interactive) })
	}
}

func testFlood(t *testing.T, interactive bool) {
	const pump = 200 * time.Millisecond
	a := startTestApp(t, pump, interactive)
	if a.windowThread != a.l.ThreadID() {
		t.Fatalf("window created on thread %d, the loop's is %d", a.windowThread, a.l.ThreadID())
	}
	var before uint64
	a.l.Do(context.Background(), loop.Normal, func(context.Context) error { before = a.w.eventCount(); return nil })
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, err := checkDuring(ctx, "", a.windowID, 100*time.Millisecond, func() (floodReport, error) {
		return flood(ctx, a.addr, 4, 1500*time.Millisecond)
	})
	if err != nil {
		t.Fatal(err)
	}
	r := c.report
	if err := r.check(); err != nil {
		t.Error(err)
	}
	s := r.status
	t.Logf("%d draw calls, %d pump runs (longest gap %v), %d events, %d liveness checks (slowest %v)",
		r.calls, s.pumps, s.maxPumpGap, s.events, len(c.rtts), slowest(c.rtts))
	if r.calls < 100 {
		t.Errorf("only %d draw calls in the flood", r.calls)
	}
	if s.offThread != 0 || s.handlerThread != a.l.ThreadID() || s.windowThread != a.l.ThreadID() {
		t.Errorf("threads: %d handlers off the window's thread; status ran on %d, window %d, loop %d",
			s.offThread, s.handlerThread, s.windowThread, a.l.ThreadID())
	}
	if len(c.rtts) < 3 {
		t.Errorf("only %d liveness checks during the flood", len(c.rtts))
	}
	// Each check delivered a window-system event (X11: the ClientMessage)
	// or a posted message (Windows) that only the pump reads; those of the
	// checks answered before the flood's end were counted in its status.
	if s.events-before < s.pings || s.pings == 0 {
		t.Errorf("window events: %d before, %d after the flood, with %d checks answered: the pump did not read them", before, s.events, s.pings)
	}
	if s.pumps < 3 {
		t.Errorf("the pump ran %d times in a 1.5 s flood with MaxPumpDelay %v", s.pumps, pump)
	}
}

func slowest(d []time.Duration) time.Duration {
	var m time.Duration
	for _, x := range d {
		m = max(m, x)
	}
	return m
}
