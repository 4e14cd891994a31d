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
	p := peertest.Start(t, "handles-hold", nil)
	p.Send("4")
	p.Line(t.Context()) // the peer runs: its process and pipes are open here
	before, err := handles.Census()
	if err != nil {
		t.Fatal(err)
	}
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
	handles.CloseAll([]windows.Handle{sec, ev, proc, 0})
	after, err := handles.Census()
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"Section", "Process"} {
		if after[k] != before[k] {
			t.Errorf("%d %s handles before, %d after", before[k], k, after[k])
		}
	}
	if handles.OwnEvents(after) != handles.OwnEvents(before) {
		t.Errorf("%d events of ours before, %d after", handles.OwnEvents(before), handles.OwnEvents(after))
	}
	t.Logf("census: %v", after)
	p.CloseStdin()
	p.WaitOK()
}

// TestCount: Census sees a handle come and go; Count counts (Wine's
// GetProcessHandleCount says 0, so there it counts by Census).
func TestCount(t *testing.T) {
	n0, err := handles.Count()
	if err != nil || n0 == 0 {
		t.Fatalf("Count = %d, %v", n0, err)
	}
	c0, _ := handles.Census()
	ev, err := windows.CreateEvent(nil, 0, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	n1, _ := handles.Count()
	c1, _ := handles.Census()
	windows.CloseHandle(ev)
	n2, _ := handles.Count()
	c2, _ := handles.Census()
	e0, e1, e2 := handles.OwnEvents(c0), handles.OwnEvents(c1), handles.OwnEvents(c2)
	if e1 != e0+1 || e2 != e0 {
		t.Errorf("events of ours %d, %d, %d: want one more while the event is open", e0, e1, e2)
	}
	// The totals also count the runtime's handles, which come with its
	// threads: only their sign is certain.
	if n1 <= 0 || n2 <= 0 {
		t.Errorf("counts %d, %d, %d", n0, n1, n2)
	}
}

// TestIsWine agrees with the environment the CI script sets for Wine.
func TestIsWine(t *testing.T) {
	if os.Getenv("WINEPREFIX") != "" && !handles.IsWine() {
		t.Error("WINEPREFIX is set, but IsWine says this is not Wine")
	}
	t.Logf("IsWine: %v", handles.IsWine())
}
