package iocpwake

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Handle is an eventfd file descriptor.
type Handle int

// one is the eventfd increment a Ring writes, in host byte order.
var one = binary.NativeEndian.AppendUint64(nil, 1)

// Bell is a doorbell. Its zero value is not usable: get one from New or Open.
// All methods may be called from several goroutines.
type Bell struct {
	f        *os.File // non-blocking eventfd, polled by the netpoller
	fd       int      // f's descriptor, kept because f.Fd() would make it blocking
	ringOnly bool

	// token admits one waiter at a time into f.Read, so that each waiter's
	// cancellation (a read deadline) concerns that waiter alone; the others
	// queue here, where their contexts and Close reach them.
	token     chan struct{}
	closed    chan struct{}
	closeOnce sync.Once
	buf       [8]byte   // read buffer, used by the token holder
	cancel    cancelReg // guarded by the token
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
			_ = b.f.SetReadDeadline(time.Unix(1, 0))
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
		_ = b.f.SetReadDeadline(time.Time{})
	}
	b.cancel = cancelReg{}
}

// New creates a doorbell that this process waits on.
func New() (*Bell, error) {
	fd, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("iocpwake: eventfd: %w", err)
	}
	return newBell(fd, false), nil
}

// Open adopts h, the Handle of a peer's doorbell, so that this process can
// ring it. It takes ownership of h, closing it if Open fails. Wait on the
// result returns ErrRingOnly.
func Open(h Handle) (*Bell, error) {
	fd := int(h)
	if err := checkEventfd(fd); err != nil {
		unix.Close(fd)
		return nil, err
	}
	// O_NONBLOCK is shared with the peer's descriptor (one open file
	// description); the peer's is non-blocking already.
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("iocpwake: making doorbell descriptor %d non-blocking: %w", fd, err)
	}
	return newBell(fd, true), nil
}

func newBell(fd int, ringOnly bool) *Bell {
	return &Bell{
		f:        os.NewFile(uintptr(fd), "eventfd"),
		fd:       fd,
		ringOnly: ringOnly,
		token:    make(chan struct{}, 1),
		closed:   make(chan struct{}),
	}
}

// checkEventfd reports whether fd is an eventfd: the kernel names its inode
// "anon_inode:[eventfd]".
func checkEventfd(fd int) error {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return fmt.Errorf("%w: descriptor %d: %v", ErrNotDoorbell, fd, err)
	}
	buf := make([]byte, 64)
	n, err := unix.Readlink(fmt.Sprintf("/proc/self/fd/%d", fd), buf)
	if err != nil {
		return fmt.Errorf("%w: descriptor %d: %v", ErrNotDoorbell, fd, err)
	}
	if got := string(buf[:n]); got != "anon_inode:[eventfd]" {
		return fmt.Errorf("%w: descriptor %d is %q, not an eventfd", ErrNotDoorbell, fd, got)
	}
	return nil
}

// Handle returns the descriptor to hand to the peer (with shm.SendHandles or
// as an inherited file). The Bell still owns it.
func (b *Bell) Handle() Handle { return Handle(b.fd) }

// Ring wakes the waiter, or the next Wait if nobody waits now.
func (b *Bell) Ring() error {
	_, err := b.f.Write(one)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, os.ErrClosed):
		return fmt.Errorf("iocpwake: ring: %w", ErrClosed)
	}
	return fmt.Errorf("iocpwake: ring: %w", err)
}

// Wait blocks until the bell rings, ctx ends, or the bell is closed. It
// returns nil after a ring, and may return nil without one: callers re-check
// the state they wait for. Several goroutines may wait; a ring wakes one.
func (b *Bell) Wait(ctx context.Context) error {
	if err := b.enter(ctx); err != nil {
		return err
	}
	defer func() { <-b.token }()

	b.arm(ctx)
	_, err := b.f.Read(b.buf[:])
	if errors.Is(err, os.ErrDeadlineExceeded) {
		// ctx ended (its registration set the deadline): the next wait,
		// with another context, must not inherit the deadline.
		b.disarm()
	}
	switch {
	case err == nil:
		return nil
	case errors.Is(err, os.ErrClosed):
		return fmt.Errorf("iocpwake: wait: %w", ErrClosed)
	case errors.Is(err, os.ErrDeadlineExceeded):
		if ctx.Err() != nil {
			return fmt.Errorf("iocpwake: wait: %w", ctx.Err())
		}
		return nil
	}
	return fmt.Errorf("iocpwake: wait: %w", err)
}

// Close wakes every waiter with ErrClosed and closes the descriptor. A second
// Close returns ErrClosed.
func (b *Bell) Close() error {
	err := fmt.Errorf("iocpwake: close: %w", ErrClosed)
	b.closeOnce.Do(func() {
		close(b.closed)
		err = b.f.Close()
		// Waiters leave at once now; take the token for good (later
		// Waits see closed) and drop the cancellation registration, so
		// that a long-lived context does not keep this bell alive.
		b.token <- struct{}{}
		b.disarm()
	})
	return err
}
