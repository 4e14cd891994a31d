package loop_test

import (
	"testing"

	"golang.org/x/sys/windows"

	"github.com/capnshm/capnshm/iocpwake"
	"github.com/capnshm/capnshm/loop"
)

// A Windows bell's Wait also returns every 100 ms without a ring, and the
// bridge cannot tell: allow that many extra callbacks.
const coalesceSlack = 2

// ringOnlyBell opens a bell from a duplicate of another bell's event.
func ringOnlyBell(t *testing.T) *iocpwake.Bell {
	t.Helper()
	src, err := iocpwake.New()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { src.Close() })
	self := windows.CurrentProcess()
	var dup windows.Handle
	if err := windows.DuplicateHandle(self, windows.Handle(src.Handle()), self, &dup, 0, false, windows.DUPLICATE_SAME_ACCESS); err != nil {
		t.Fatal(err)
	}
	ro, err := iocpwake.Open(iocpwake.Handle(dup))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ro.Close() })
	return ro
}

// A handle watch calls back on the loop when the handle is signalled; an
// auto-reset event calls it once per SetEvent, a manual-reset one until it
// is reset.
func TestWatchHandle(t *testing.T) {
	for _, interactive := range []bool{false, true} {
		t.Run(mode(interactive), func(t *testing.T) {
			l := start(t, loop.Options{Sys: loop.SysOptions{Interactive: interactive}})
			auto, err := windows.CreateEvent(nil, 0, 0, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer windows.CloseHandle(auto)
			calls := make(chan bool, 16)
			w, err := l.WatchHandle(auto, loop.High, func() bool {
				calls <- l.OnLoop()
				return false
			})
			if err != nil {
				t.Fatal(err)
			}
			for i := range 3 {
				windows.SetEvent(auto)
				if on := await(t, calls, "the handle callback"); !on {
					t.Errorf("signal %d: callback off the loop", i)
				}
			}
			barrier(t, l, loop.Normal)
			if len(calls) != 0 {
				t.Errorf("%d callbacks without a signal", len(calls))
			}
			if err := w.Stop(); err != nil {
				t.Fatal(err)
			}
			windows.SetEvent(auto)
			barrier(t, l, loop.Normal)
			if len(calls) != 0 {
				t.Error("callback after Stop")
			}

			manual, err := windows.CreateEvent(nil, 1, 0, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer windows.CloseHandle(manual)
			n := 0
			done := make(chan struct{})
			w2, err := l.WatchHandle(manual, loop.Normal, func() bool {
				n++
				if n == 3 {
					windows.ResetEvent(manual)
					close(done)
				}
				return false
			})
			if err != nil {
				t.Fatal(err)
			}
			defer w2.Stop()
			windows.SetEvent(manual)
			await(t, done, "three callbacks of a manual-reset event")
		})
	}
}

func mode(interactive bool) string {
	if interactive {
		return "interactive"
	}
	return "scheduled"
}
