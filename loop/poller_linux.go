package loop

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"golang.org/x/sys/unix"
)

// SysOptions are the Linux options of a loop: none yet. The window
// system's connection is watched with Loop.WatchPumpFD.
type SysOptions struct{}

// IDs in the epoll data of the loop's own descriptors; watches count up
// from idFirstWatch.
const (
	idWake       = 0
	idPump       = 1
	idFirstWatch = 2
)

// poller is the Linux backend: the loop thread blocks in epoll_wait; an
// eventfd wakes it.
type poller struct {
	sys    SysOptions
	l      *Loop
	epfd   int
	wakefd int
	pumpfd int
	nextID int32
	byID   map[int32]*Watch // loop thread
	events [128]unix.EpollEvent
}

var one = binary.NativeEndian.AppendUint64(nil, 1)

func (p *poller) init(l *Loop) error {
	p.l, p.epfd, p.wakefd, p.pumpfd = l, -1, -1, -1
	p.byID = map[int32]*Watch{}
	p.nextID = idFirstWatch
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return fmt.Errorf("epoll_create1: %w", err)
	}
	wfd, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		unix.Close(epfd)
		return fmt.Errorf("eventfd: %w", err)
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: idWake}
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, wfd, &ev); err != nil {
		unix.Close(wfd)
		unix.Close(epfd)
		return fmt.Errorf("epoll_ctl(ADD eventfd): %w", err)
	}
	p.epfd, p.wakefd = epfd, wfd
	return nil
}

// defaultPump: Linux has no window system of its own to pump.
func (p *poller) defaultPump() func() { return nil }

// wake writes the eventfd. Called with l.mu held.
func (p *poller) wake() error {
	for {
		_, err := unix.Write(p.wakefd, one)
		switch err {
		case nil, unix.EAGAIN: // EAGAIN: the counter is full, so it is readable
			return nil
		case unix.EINTR:
			continue
		}
		return fmt.Errorf("eventfd write: %w", err)
	}
}

// poll waits up to timeout (negative: no limit) and marks what is ready.
func (p *poller) poll(timeout time.Duration) error {
	msec := -1
	if timeout >= 0 {
		// Round up: waking early would only spin until the deadline.
		msec = int(min((timeout+time.Millisecond-1)/time.Millisecond, 1<<30))
	}
	n, err := unix.EpollWait(p.epfd, p.events[:], msec)
	if err != nil {
		if errors.Is(err, unix.EINTR) {
			return nil
		}
		return fmt.Errorf("epoll_wait: %w", err)
	}
	for _, ev := range p.events[:n] {
		switch id := ev.Fd; id {
		case idWake:
			drainEventfd(p.wakefd)
		case idPump:
			p.l.pumpPending.Store(true)
		default:
			w := p.byID[id]
			if w == nil {
				continue
			}
			w.sys.events |= Events(ev.Events)
			p.l.markReady(w)
		}
	}
	return nil
}

// drainEventfd reads and clears an eventfd's counter.
func drainEventfd(fd int) {
	var buf [8]byte
	for {
		_, err := unix.Read(fd, buf[:])
		if err != unix.EINTR {
			return
		}
	}
}

// spinPoll polls the epoll set without blocking, during the loop's spin:
// descriptors are watched there, not by markReady. It reports whether
// anything came.
func (p *poller) spinPoll() bool {
	before := p.l.work.Load()
	if err := p.poll(0); err != nil {
		return true // let wait report it
	}
	return p.l.work.Load() != before || p.l.pumpPending.Load()
}

func (p *poller) checkPending() {}
func (p *poller) pumpEnter()    {}
func (p *poller) pumpLeave()    {}

// add registers fd with the loop's epoll for w. Loop thread.
func (p *poller) add(fd int, events uint32, w *Watch) (int32, error) {
	id := p.nextID
	p.nextID++
	ev := unix.EpollEvent{Events: events, Fd: id}
	if err := unix.EpollCtl(p.epfd, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
		return 0, fmt.Errorf("epoll_ctl(ADD %d): %w", fd, err)
	}
	p.byID[id] = w
	return id, nil
}

// remove unregisters fd. Loop thread.
func (p *poller) remove(fd int, id int32) error {
	delete(p.byID, id)
	if err := unix.EpollCtl(p.epfd, unix.EPOLL_CTL_DEL, fd, nil); err != nil && err != unix.EBADF && err != unix.ENOENT {
		return fmt.Errorf("epoll_ctl(DEL %d): %w", fd, err)
	}
	return nil
}

func (p *poller) close() error {
	var errs []error
	if p.wakefd >= 0 {
		if err := unix.Close(p.wakefd); err != nil {
			errs = append(errs, fmt.Errorf("closing the eventfd: %w", err))
		}
	}
	if p.epfd >= 0 {
		if err := unix.Close(p.epfd); err != nil {
			errs = append(errs, fmt.Errorf("closing the epoll descriptor: %w", err))
		}
	}
	p.wakefd, p.epfd = -1, -1
	return errors.Join(errs...)
}

// WatchPumpFD makes the loop watch fd, the window system's connection (an
// X11 or Wayland socket that this program reads on the loop thread, in its
// Pump): when fd has data, the pump runs as soon as the loop has nothing
// else to do. fd is watched edge-triggered; the loop never reads it. A
// window system library that reads its socket on a goroutine of its own
// (xgb does) should call WakePump instead, or rely on MaxPumpDelay.
func (l *Loop) WatchPumpFD(fd int) error {
	var err error
	if cerr := l.control("watch pump fd", func() {
		p := &l.p
		if !l.hasPump {
			err = errors.New("loop: watch pump fd: the loop has no pump (Options.Pump)")
			return
		}
		if p.pumpfd >= 0 {
			err = fmt.Errorf("loop: watch pump fd: already watching descriptor %d", p.pumpfd)
			return
		}
		ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLET, Fd: idPump}
		if e := unix.EpollCtl(p.epfd, unix.EPOLL_CTL_ADD, fd, &ev); e != nil {
			err = fmt.Errorf("loop: watch pump fd: epoll_ctl(ADD %d): %w", fd, e)
			return
		}
		p.pumpfd = fd
	}); cerr != nil {
		return cerr
	}
	return err
}
