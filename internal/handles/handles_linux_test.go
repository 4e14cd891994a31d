package handles_test

import (
	"os"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/capnshm/capnshm/internal/handles"
)

// TestParseRights: descriptors come back from every SCM_RIGHTS message;
// anything else in the control data is an error that names it, with the
// descriptors found still returned (so that the caller closes them).
func TestParseRights(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	a, b := int(r.Fd()), int(w.Fd())
	creds := unix.UnixCredentials(&unix.Ucred{Pid: 1, Uid: 2, Gid: 3})
	for _, tt := range []struct {
		name    string
		oob     []byte
		want    []int
		wantErr string
	}{
		{"none", nil, nil, ""},
		{"one message, two fds", unix.UnixRights(a, b), []int{a, b}, ""},
		{"two messages", append(unix.UnixRights(a), unix.UnixRights(b)...), []int{a, b}, ""},
		{"credentials", creds, nil, "unexpected control message level 1 type 2"},
		{"rights then credentials", append(unix.UnixRights(b), creds...), []int{b}, "unexpected control message"},
		{"truncated", unix.UnixRights(a, b)[:20], nil, "control message"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got, err := handles.ParseRights(tt.oob)
			if tt.wantErr == "" && err != nil || tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
				t.Fatalf("error %v, want %q", err, tt.wantErr)
			}
			if len(got) != len(tt.want) {
				t.Fatalf("got %v, want %v", got, tt.want)
			}
			for i := range got {
				if got[i] != tt.want[i] {
					t.Fatalf("got %v, want %v", got, tt.want)
				}
			}
		})
	}
}

// TestCloseFDs: every descriptor given is closed.
func TestCloseFDs(t *testing.T) {
	var fds []int
	for range 3 {
		fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC)
		if err != nil {
			t.Fatal(err)
		}
		fds = append(fds, fd)
	}
	handles.CloseFDs(fds)
	for _, fd := range fds {
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); err != unix.EBADF {
			t.Errorf("descriptor %d still open after CloseFDs (%v)", fd, err)
		}
	}
}
