package iocpwake

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Handle is the descriptor a peer rings: the write end of the waiter's pipe,
// or the peer end of its datagram socket pair (see the package
// documentation).
type Handle int

// kind is what a Linux doorbell is made of.
type kind int

const (
	kindPipe   kind = iota // pipe; rings are pwritev2(RWF_NOWAIT)
	kindSocket             // unix datagram socket pair; rings are send(MSG_DONTWAIT)
)

func (k kind) String() string {
	if k == kindPipe {
		return "pipe"
	}
	return "socket"
}

// pipeSize is the capacity a waiter gives its pipe: one page. A ring is one
// byte and a full pipe counts as rung, so this bounds what a peer can park
// there without limiting anything.
const pipeSize = 4096

// Bell is a doorbell. Its zero value is not usable: get one from New or Open.
// All methods may be called from several goroutines.
type Bell struct {
	kind     kind
	r        *os.File        // the waiter's private read end; nil if ringOnly
	rc       syscall.RawConn // r's
	ringOnly bool

	// wfd is the end rings write: handed to the peer (New) or the
	// peer's (Open). It is a plain descriptor, not in the netpoller:
	// rings never wait. wmu keeps Close from closing it under a ring
	// (rings hold it shared; their system calls never block).
	wmu     sync.RWMutex
	wfd     int
	wclosed bool // guarded by wmu

	// token admits one waiter at a time into the read, so that each
	// waiter's cancellation (a read deadline) concerns that waiter alone;
	// the others queue here, where their contexts and Close reach them.
	token     chan struct{}
	closed    chan struct{}
	closeOnce sync.Once
	buf       [1024]byte            // read buffer, used by the token holder
	cancel    cancelReg             // guarded by the token
	rerr      error                 // the read's outcome, guarded by the token
	readFn    func(fd uintptr) bool // drains into buf; made once, so that Wait does not allocate
}

// cancelReg is the registration that interrupts a read when its context
// ends. It is kept across waits with the same context (a transport waits
// with one long-lived context), so that a wait costs no allocation.
type cancelReg struct {
	ctx   context.Context
	stop  func() bool
	fired chan struct{}
}

// arm makes sure that ctx's end interrupts the read. Called by the token
// holder.
func (b *Bell) arm(ctx context.Context) {
	if ctx.Done() == nil || b.cancel.ctx == ctx {
		return
	}
	b.disarm()
	fired := make(chan struct{})
	b.cancel = cancelReg{
		ctx: ctx,
		stop: context.AfterFunc(ctx, func() {
			_ = b.r.SetReadDeadline(time.Unix(1, 0))
			close(fired)
		}),
		fired: fired,
	}
}

// disarm drops the registration; if it already fired, it undoes its
// deadline. Called by the token holder.
func (b *Bell) disarm() {
	if b.cancel.ctx == nil {
		return
	}
	if !b.cancel.stop() {
		<-b.cancel.fired
		_ = b.r.SetReadDeadline(time.Time{})
	}
	b.cancel = cancelReg{}
}

// pipeNowait reports whether this kernel writes a pipe with RWF_NOWAIT
// (FMODE_NOWAIT on pipes, Linux 6.4): a write that fails with EAGAIN instead
// of blocking, whatever O_NONBLOCK says.
var pipeNowait = sync.OnceValue(func() bool {
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
		return false
	}
	defer unix.Close(p[0])
	defer unix.Close(p[1])
	_, err := pwriteNowait(p[1], []byte{1})
	return err == nil
})

// socketBells makes New use socket pairs even where pipes would do; tests
// set it to run both kinds.
var socketBells = false

func newKind() kind {
	if socketBells || !pipeNowait() {
		return kindSocket
	}
	return kindPipe
}

// New creates a doorbell that this process waits on.
func New() (*Bell, error) {
	k := newKind()
	var fds [2]int
	switch k {
	case kindPipe:
		if err := unix.Pipe2(fds[:], unix.O_NONBLOCK|unix.O_CLOEXEC); err != nil {
			return nil, fmt.Errorf("iocpwake: pipe: %w", err)
		}
		// Best effort: a smaller pipe only bounds what a peer parks in it.
		_, _ = unix.FcntlInt(uintptr(fds[1]), unix.F_SETPIPE_SZ, pipeSize)
	case kindSocket:
		s, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return nil, fmt.Errorf("iocpwake: socketpair: %w", err)
		}
		fds = [2]int{s[0], s[1]}
	}
	return newBell(k, fds[0], fds[1])
}

// Open adopts h, the Handle of a peer's doorbell, so that this process can
// ring it. It takes ownership of h, closing it if Open fails. Wait on the
// result returns ErrRingOnly. Open never changes h's flags: they are the
// peer's as much as ours, and rings do not depend on them.
func Open(h Handle) (*Bell, error) {
	fd := int(h)
	k, err := checkHandle(fd)
	if err != nil {
		unix.Close(fd)
		return nil, err
	}
	return newBell(k, -1, fd)
}

// newBell wraps the read end r (-1 for a bell that only rings) and the
// write end w. It owns both, and closes them if it fails.
func newBell(k kind, r, w int) (*Bell, error) {
	b := &Bell{
		kind:     k,
		wfd:      w,
		ringOnly: r < 0,
		token:    make(chan struct{}, 1),
		closed:   make(chan struct{}),
	}
	if r >= 0 {
		b.r = os.NewFile(uintptr(r), "doorbell")
		rc, err := b.r.SyscallConn()
		if err != nil {
			b.r.Close()
			unix.Close(w)
			return nil, fmt.Errorf("iocpwake: doorbell descriptor %d: %w", r, err)
		}
		b.rc = rc
		b.readFn = func(fd uintptr) bool {
			for {
				b.rerr = b.kind.drain(int(fd), b.buf[:])
				if b.rerr != unix.EINTR {
					return b.rerr != unix.EAGAIN
				}
			}
		}
	}
	return b, nil
}

// checkHandle reports what kind of doorbell fd is: the write end of a pipe
// (where this kernel can write one without blocking), or a unix datagram
// socket.
func checkHandle(fd int) (kind, error) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return 0, fmt.Errorf("%w: descriptor %d: %v", ErrNotDoorbell, fd, err)
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFIFO:
		fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0)
		if err != nil {
			return 0, fmt.Errorf("%w: descriptor %d: %v", ErrNotDoorbell, fd, err)
		}
		if fl&unix.O_ACCMODE != unix.O_WRONLY {
			return 0, fmt.Errorf("%w: descriptor %d is a pipe opened with access mode %#o, not its write end", ErrNotDoorbell, fd, fl&unix.O_ACCMODE)
		}
		if !pipeNowait() {
			return 0, fmt.Errorf("%w: descriptor %d is a pipe, which this kernel cannot write without blocking (RWF_NOWAIT on pipes, Linux 6.4); doorbells here are sockets", ErrNotDoorbell, fd)
		}
		return kindPipe, nil
	case unix.S_IFSOCK:
		domain, err1 := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_DOMAIN)
		typ, err2 := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE)
		if err := errors.Join(err1, err2); err != nil {
			return 0, fmt.Errorf("%w: descriptor %d: %v", ErrNotDoorbell, fd, err)
		}
		if domain != unix.AF_UNIX || typ != unix.SOCK_DGRAM {
			return 0, fmt.Errorf("%w: descriptor %d is a socket of domain %d type %d, not a unix datagram socket", ErrNotDoorbell, fd, domain, typ)
		}
		return kindSocket, nil
	}
	return 0, fmt.Errorf("%w: descriptor %d is neither a pipe nor a socket (mode %#o)", ErrNotDoorbell, fd, st.Mode&unix.S_IFMT)
}

// Handle returns the descriptor to hand to the peer (over a unix socket with
// SCM_RIGHTS, or as an inherited file). The Bell still owns it.
func (b *Bell) Handle() Handle { return Handle(b.wfd) }

// Ring wakes the waiter, or the next Wait if nobody waits now. It never
// blocks: the write is non-blocking by itself (RWF_NOWAIT, MSG_DONTWAIT),
// whatever the descriptor's O_NONBLOCK, which the peer shares and may
// change. A full pipe or socket buffer means the bell is rung already.
func (b *Bell) Ring() error {
	b.wmu.RLock()
	if b.wclosed {
		b.wmu.RUnlock()
		return fmt.Errorf("iocpwake: ring: %w", ErrClosed)
	}
	var werr error
	for {
		werr = b.kind.ring(b.wfd)
		if werr != unix.EINTR {
			break
		}
	}
	b.wmu.RUnlock()
	switch werr {
	case nil, unix.EAGAIN:
		return nil
	}
	return fmt.Errorf("iocpwake: ring (%v): %w", b.kind, os.NewSyscallError("write", werr))
}

var one = []byte{1}

// ring writes one byte to fd without blocking.
func (k kind) ring(fd int) error {
	if k == kindPipe {
		_, err := pwriteNowait(fd, one)
		return err
	}
	// send(2) itself: unix.Sendto would do, but raw calls keep the ring
	// path free of allocations on every platform version of x/sys.
	_, _, e := unix.Syscall6(unix.SYS_SENDTO, uintptr(fd), uintptr(unsafe.Pointer(&one[0])), 1, unix.MSG_DONTWAIT|unix.MSG_NOSIGNAL, 0, 0)
	if e != 0 {
		return e
	}
	return nil
}

// pwriteNowait is pwritev2(fd, {b}, -1, RWF_NOWAIT): a write at the current
// position (pipes have none) that fails with EAGAIN rather than wait. It
// makes no allocation, unlike unix.Pwritev2.
func pwriteNowait(fd int, b []byte) (int, error) {
	iov := unix.Iovec{Base: &b[0]}
	iov.SetLen(len(b))
	// The offset -1 travels as two halves (pos_l, pos_h).
	n, _, e := unix.Syscall6(unix.SYS_PWRITEV2, uintptr(fd), uintptr(unsafe.Pointer(&iov)), 1, ^uintptr(0), ^uintptr(0), unix.RWF_NOWAIT)
	if e != 0 {
		return 0, e
	}
	return int(n), nil
}

// drain reads what rings left in the private read end fd, without blocking
// (the descriptor is non-blocking and nobody else has it): one read for a
// pipe, a bounded number of datagrams (one per read) for a socket. It
// reports EAGAIN when there was nothing.
func (k kind) drain(fd int, buf []byte) error {
	if k == kindPipe {
		_, err := unix.Read(fd, buf)
		return err
	}
	var err error
	for i := 0; i < 16; i++ {
		if _, rerr := unix.Read(fd, buf); rerr != nil {
			if i == 0 {
				err = rerr
			}
			break
		}
	}
	return err
}

// Wait blocks until the bell rings, ctx ends, or the bell is closed. It
// returns nil after a ring, and may return nil without one: callers re-check
// the state they wait for. Several goroutines may wait; a ring wakes one.
// Nothing the peer does to its handle can make it block in a system call:
// the descriptor it reads is this process's alone.
func (b *Bell) Wait(ctx context.Context) error {
	if err := b.enter(ctx); err != nil {
		return err
	}
	defer func() { <-b.token }()

	b.arm(ctx)
	err := b.rc.Read(b.readFn)
	rerr := b.rerr
	if errors.Is(err, os.ErrDeadlineExceeded) {
		// ctx ended (its registration set the deadline): the next wait,
		// with another context, must not inherit the deadline.
		b.disarm()
	}
	select {
	case <-b.closed:
		return fmt.Errorf("iocpwake: wait: %w", ErrClosed)
	default:
	}
	switch {
	case err == nil && rerr == nil:
		return nil
	case err == nil:
		return fmt.Errorf("iocpwake: wait (%v): %w", b.kind, os.NewSyscallError("read", rerr))
	case errors.Is(err, os.ErrDeadlineExceeded):
		if ctx.Err() != nil {
			return fmt.Errorf("iocpwake: wait: %w", ctx.Err())
		}
		return nil
	}
	return fmt.Errorf("iocpwake: wait: %w", err)
}

// Close wakes every waiter with ErrClosed and closes the descriptors. A
// second Close returns ErrClosed. It never waits for the peer: no call of
// this Bell blocks in a system call.
func (b *Bell) Close() error {
	err := fmt.Errorf("iocpwake: close: %w", ErrClosed)
	b.closeOnce.Do(func() {
		close(b.closed)
		var errs []error
		if b.r != nil {
			errs = append(errs, b.r.Close())
		}
		b.wmu.Lock()
		b.wclosed = true
		errs = append(errs, unix.Close(b.wfd))
		b.wmu.Unlock()
		err = errors.Join(errs...)
		// Waiters leave at once now; take the token for good (later
		// Waits see closed) and drop the cancellation registration, so
		// that a long-lived context does not keep this bell alive.
		b.token <- struct{}{}
		if b.r != nil {
			b.disarm()
		}
	})
	return err
}
