package loop

import (
	"fmt"
	"strings"

	"golang.org/x/sys/unix"
)

// Events are readiness events of a file descriptor (epoll's).
type Events uint32

// Events a WatchFD callback can see; ask for Readable and/or Writable.
const (
	Readable Events = unix.EPOLLIN
	Writable Events = unix.EPOLLOUT
	Hangup   Events = unix.EPOLLHUP | unix.EPOLLRDHUP
	Error    Events = unix.EPOLLERR
)

func (e Events) String() string {
	var s []string
	for _, n := range []struct {
		e    Events
		name string
	}{{Readable, "readable"}, {Writable, "writable"}, {Hangup, "hangup"}, {Error, "error"}} {
		if e&n.e != 0 {
			s = append(s, n.name)
		}
	}
	if len(s) == 0 {
		return "none"
	}
	return strings.Join(s, "|")
}

// watchSys is the Linux part of a Watch: its descriptor in the loop's epoll.
type watchSys struct {
	fd     int
	id     int32
	events Events // reported since the callback last ran; loop thread
}

func (s *watchSys) stop(l *Loop) error {
	if s.id == 0 {
		return nil // not in the epoll set (a doorbell watch)
	}
	return l.p.remove(s.fd, s.id)
}

// WatchFD calls f on the loop, at priority p, while fd is ready for one of
// events (level-triggered: a callback that leaves data unread is called
// again in the next turn). f gets what was reported (Hangup and Error come
// without being asked). The loop does not own fd: Stop the watch before
// closing it.
func (l *Loop) WatchFD(fd int, events Events, p Priority, f func(Events) (more bool)) (*Watch, error) {
	w := &Watch{l: l, pri: p, sys: watchSys{fd: fd}}
	w.run = func() bool {
		ev := w.sys.events
		w.sys.events = 0
		return f(ev)
	}
	want := uint32(events&(Readable|Writable)) | unix.EPOLLRDHUP
	return l.addWatch(w, func() error {
		id, err := l.p.add(fd, want, w)
		if err != nil {
			return fmt.Errorf("loop: watch fd: %w", err)
		}
		w.sys.id = id
		return nil
	})
}
