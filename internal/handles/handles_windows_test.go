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
	if after[handles.RingEvents] != before[handles.RingEvents] {
		t.Errorf("%d ring-only events before, %d after", before[handles.RingEvents], after[handles.RingEvents])
	}
	t.Logf("census: %v", after)
	p.CloseStdin()
	p.WaitOK()
}

// TestCount: Census sees a section and a ring-only event come and go, and
// tells the event's access; Count counts (Wine's GetProcessHandleCount
// says 0, so there it counts by Census).
func TestCount(t *testing.T) {
	if n, err := handles.Count(); err != nil || n == 0 {
		t.Fatalf("Count = %d, %v", n, err)
	}
	c0, _ := handles.Census()
	ev, err := windows.CreateEvent(nil, 0, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer windows.CloseHandle(ev)
	p := windows.CurrentProcess()
	var ring windows.Handle
	if err := windows.DuplicateHandle(p, ev, p, &ring, windows.EVENT_MODIFY_STATE, false, 0); err != nil {
		t.Fatal(err)
	}
	sec, err := windows.CreateFileMapping(windows.InvalidHandle, nil, windows.PAGE_READWRITE, 0, 4096, nil)
	if err != nil {
		t.Fatal(err)
	}
	if acc, err := handles.GrantedAccess(ring); err != nil || acc != windows.EVENT_MODIFY_STATE {
		t.Errorf("GrantedAccess of the ring-only duplicate: %#x, %v", acc, err)
	}
	c1, _ := handles.Census()
	windows.CloseHandle(ring)
	windows.CloseHandle(sec)
	c2, _ := handles.Census()
	for _, k := range []string{handles.RingEvents, "Section"} {
		if c1[k] != c0[k]+1 || c2[k] != c0[k] {
			t.Errorf("%s: %d, %d, %d: want one more while it is open", k, c0[k], c1[k], c2[k])
		}
	}
}

// TestIsWine agrees with the environment the CI script sets for Wine.
func TestIsWine(t *testing.T) {
	if os.Getenv("WINEPREFIX") != "" && !handles.IsWine() {
		t.Error("WINEPREFIX is set, but IsWine says this is not Wine")
	}
	t.Logf("IsWine: %v", handles.IsWine())
}
