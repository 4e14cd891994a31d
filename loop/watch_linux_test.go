package loop_test

import (
	"os"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/capnshm/capnshm/iocpwake"
	"github.com/capnshm/capnshm/loop"
)

// A bell's goroutine may take rings in two Waits while the loop is busy,
// and mark the watch ready again after the loop has cleared it.
const coalesceSlack = 1

// ringOnlyBell opens a bell from a duplicate of another bell's descriptor.
func ringOnlyBell(t *testing.T) *iocpwake.Bell {
	t.Helper()
	src, err := iocpwake.New()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { src.Close() })
	fd, err := unix.Dup(int(src.Handle()))
	if err != nil {
		t.Fatal(err)
	}
	ro, err := iocpwake.Open(iocpwake.Handle(fd))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ro.Close() })
	return ro
}

// An fd watch is level-triggered: a callback that leaves data unread runs
// again; one that reads it all does not.
func TestWatchFD(t *testing.T) {
	l := start(t, loop.Options{})
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	rfd := int(r.Fd())
	type call struct {
		ev   loop.Events
		on   bool
		data string
	}
	calls := make(chan call, 16)
	readOne := true
	watch, err := l.WatchFD(rfd, loop.Readable, loop.Normal, func(ev loop.Events) bool {
		buf := make([]byte, 64)
		if readOne {
			buf = buf[:1]
		}
		n, _ := unix.Read(rfd, buf)
		calls <- call{ev, l.OnLoop(), string(buf[:max(n, 0)])}
		return false
	})
	if err != nil {
		t.Fatal(err)
	}
	w.Write([]byte("ab"))
	c1 := await(t, calls, "first callback")
	c2 := await(t, calls, "second callback (data left unread)")
	if c1.ev&loop.Readable == 0 || !c1.on || c1.data != "a" || c2.data != "b" {
		t.Errorf("callbacks %+v, %+v; want readable on the loop, a then b", c1, c2)
	}
	barrier(t, l, loop.Normal)
	if len(calls) != 0 {
		t.Errorf("callback with nothing to read: %+v", <-calls)
	}
	if err := watch.Stop(); err != nil {
		t.Fatal(err)
	}
	w.Write([]byte("c"))
	barrier(t, l, loop.Normal)
	if len(calls) != 0 {
		t.Errorf("callback after Stop: %+v", <-calls)
	}
	// Hangup is reported without being asked for (in every turn, since it
	// lasts: the callback must not block the loop on a full channel).
	watch, err = l.WatchFD(rfd, loop.Readable, loop.Normal, func(ev loop.Events) bool {
		var buf [8]byte
		unix.Read(rfd, buf[:])
		select {
		case calls <- call{ev: ev}:
		default:
		}
		return false
	})
	if err != nil {
		t.Fatal(err)
	}
	defer watch.Stop()
	w.Close()
	for {
		c := await(t, calls, "the hangup")
		if c.ev&loop.Hangup != 0 {
			break
		}
	}
}

// The pump fd: data on the window system's connection runs the pump as soon
// as the loop is idle, long before MaxPumpDelay.
func TestWatchPumpFD(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	rfd := int(r.Fd())
	unix.SetNonblock(rfd, true)
	got := make(chan string, 4)
	clk := loop.NewManualClock(epoch)
	l := start(t, loop.Options{Clock: clk, Pump: func() {
		buf := make([]byte, 16)
		if n, _ := unix.Read(rfd, buf); n > 0 {
			got <- string(buf[:n])
		}
	}})
	if err := l.WatchPumpFD(rfd); err != nil {
		t.Fatal(err)
	}
	if err := l.WatchPumpFD(rfd); err == nil {
		t.Error("a second WatchPumpFD succeeded")
	}
	w.Write([]byte("event"))
	if s := await(t, got, "the pump"); s != "event" {
		t.Errorf("pump read %q", s)
	}
	noPump := start(t, loop.Options{})
	if err := noPump.WatchPumpFD(rfd); err == nil {
		t.Error("WatchPumpFD on a loop without a pump succeeded")
	}
}
