package handles_test

import (
	"os"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/windows"

	"github.com/capnshm/capnshm/internal/handles"
	"github.com/capnshm/capnshm/internal/peertest"
)

func init() { peertest.Register("handles-hold", holdPeer) }

func TestMain(m *testing.M) { peertest.Main(m) }

// holdPeer reports the type of each handle value the parent sends it, one
// a line, until EOF.
func holdPeer([]string) int {
	in := peertest.Stdin()
	for in.Scan() {
		v, err := strconv.ParseUint(in.Text(), 10, 64)
		if err != nil {
			return peertest.Fail("bad value %q", in.Text())
		}
		typ, err := handles.TypeName(windows.Handle(v))
		if err != nil {
			peertest.Say("error %v", err)
			continue
		}
		peertest.Say("%s", typ)
	}
	return 0
}

// TestTypeName: sections, events and processes are named as the kernel
// names them; a value that is no handle is an error.
func TestTypeName(t *testing.T) {
	ev, err := windows.CreateEvent(nil, 0, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer windows.CloseHandle(ev)
	sec, err := windows.CreateFileMapping(windows.InvalidHandle, nil, windows.PAGE_READWRITE, 0, 4096, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer windows.CloseHandle(sec)
	for _, tt := range []struct {
		name string
		h    windows.Handle
		want string
	}{
		{"event", ev, "Event"},
		{"section", sec, "Section"},
		{"current process", windows.CurrentProcess(), "Process"},
	} {
		got, err := handles.TypeName(tt.h)
		if err != nil || got != tt.want {
			t.Errorf("%s: %q, %v; want %q", tt.name, got, err, tt.want)
		}
	}
	if got, err := handles.TypeName(windows.Handle(0x7ff0)); err == nil {
		t.Errorf("a bogus value named %q", got)
	}
}

// TestDuplicate pushes a section and an event into a peer process, which
// sees their types, takes a handle back out of it, and closes one of the
// pushed handles in the peer again; the handle count here is where it was.
func TestDuplicate(t *testing.T) {
	before, err := handles.Count()
	if err != nil {
		t.Fatal(err)
	}
	p := peertest.Start(t, "handles-hold", nil)
	proc, err := windows.OpenProcess(windows.PROCESS_DUP_HANDLE, false, uint32(p.Pid()))
	if err != nil {
		t.Fatal(err)
	}
	sec, err := windows.CreateFileMapping(windows.InvalidHandle, nil, windows.PAGE_READWRITE, 0, 4096, nil)
	if err != nil {
		t.Fatal(err)
	}
	ev, err := windows.CreateEvent(nil, 0, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	inPeer, err := handles.DuplicateTo(proc, sec, windows.FILE_MAP_READ)
	if err != nil {
		t.Fatal(err)
	}
	p.Send(strconv.FormatUint(uint64(inPeer), 10))
	p.Expect("Section")
	evInPeer, err := handles.DuplicateTo(proc, ev, windows.EVENT_MODIFY_STATE)
	if err != nil {
		t.Fatal(err)
	}
	p.Send(strconv.FormatUint(uint64(evInPeer), 10))
	p.Expect("Event")

	// Taken back out, with only the access asked for: the event can be
	// set, not waited on.
	back, err := handles.DuplicateFrom(proc, evInPeer, windows.EVENT_MODIFY_STATE)
	if err != nil {
		t.Fatal(err)
	}
	if err := windows.SetEvent(back); err != nil {
		t.Errorf("SetEvent on a duplicate with EVENT_MODIFY_STATE: %v", err)
	}
	if !handles.IsWine() {
		// Wine does not check a handle's access on waits.
		if _, err := windows.WaitForSingleObject(back, 0); err == nil {
			t.Error("waited on a duplicate without SYNCHRONIZE")
		}
	}
	windows.CloseHandle(back)

	if err := handles.CloseIn(proc, inPeer); err != nil {
		t.Fatal(err)
	}
	p.Send(strconv.FormatUint(uint64(inPeer), 10))
	if line, _ := p.Line(t.Context()); !strings.HasPrefix(line, "error") {
		t.Errorf("the peer's handle, closed there, is still a %q", line)
	}
	if _, err := handles.DuplicateFrom(proc, windows.Handle(0x7ff0), windows.FILE_MAP_READ); err == nil {
		t.Error("DuplicateFrom of a bogus value succeeded")
	}
	if _, err := handles.DuplicateTo(windows.Handle(0), sec, windows.FILE_MAP_READ); err == nil {
		t.Error("DuplicateTo into process 0 succeeded")
	}
	p.CloseStdin()
	p.WaitOK()
	handles.CloseAll([]windows.Handle{sec, ev, proc, 0})
	if after, err := handles.Count(); err != nil || after > before {
		t.Errorf("%d handles before, %d after (%v)", before, after, err)
	}
}

// TestIsWine agrees with the environment the CI script sets for Wine.
func TestIsWine(t *testing.T) {
	if os.Getenv("WINEPREFIX") != "" && !handles.IsWine() {
		t.Error("WINEPREFIX is set, but IsWine says this is not Wine")
	}
	t.Logf("IsWine: %v", handles.IsWine())
}
