package iocpwake

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/windows"

	"github.com/capnshm/capnshm/internal/handles"
)

// Handle is a Windows handle to the doorbell's auto-reset event: the object a
// peer rings with SetEvent.
type Handle windows.Handle

// Functions x/sys/windows v0.49.0 does not wrap.
var (
	modkernel32                         = windows.NewLazySystemDLL("kernel32.dll")
	procGetQueuedCompletionStatusEx     = modkernel32.NewProc("GetQueuedCompletionStatusEx")
	procRegisterWaitForSingleObject     = modkernel32.NewProc("RegisterWaitForSingleObject")
	procUnregisterWaitEx                = modkernel32.NewProc("UnregisterWaitEx")
	modntdll                            = windows.NewLazySystemDLL("ntdll.dll")
	procNtCreateWaitCompletionPacket    = modntdll.NewProc("NtCreateWaitCompletionPacket")
	procNtAssociateWaitCompletionPacket = modntdll.NewProc("NtAssociateWaitCompletionPacket")
	procNtCancelWaitCompletionPacket    = modntdll.NewProc("NtCancelWaitCompletionPacket")
)

// Completion keys of the packets on a bell's port.
const (
	keyRing   = 1 + iota // a ring (local, or bridged by the RegisterWait callback)
	keyEvent             // the peer's event fired (wait completion packet); re-arm
	keyQuit              // Close
	keyCancel            // a waiter's context ended; the byte count is its wait sequence
)

const (
	wtExecuteInWaitThread = 0x00000004
	genericAll            = 0x10000000
)

// PeerAccess is the access right a peer needs on a bell's Handle to ring it
// (SetEvent): a duplicate handed to a peer should carry this and no more.
const PeerAccess = windows.EVENT_MODIFY_STATE

// waitSlice bounds each GetQueuedCompletionStatusEx call. When it expires,
// Wait returns nil (a spurious wake-up the contract allows), so a lost
// completion (Wine can lose one) costs latency, never a hang.
var waitSlice = 100 * time.Millisecond

// forceRegisterWait makes New use the RegisterWaitForSingleObject bridge even
// where NtAssociateWaitCompletionPacket exists, so tests on real Windows can
// cover both paths. Wine 8 has only the RegisterWait path.
var forceRegisterWait = false

// haveWaitPackets reports whether ntdll has the wait completion packet API
// (Windows 8+; not Wine 8).
var haveWaitPackets = sync.OnceValue(func() bool {
	return procNtCreateWaitCompletionPacket.Find() == nil &&
		procNtAssociateWaitCompletionPacket.Find() == nil &&
		procNtCancelWaitCompletionPacket.Find() == nil
})

// Bell is a doorbell. Its zero value is not usable: get one from New or Open.
// All methods may be called from several goroutines.
type Bell struct {
	event    windows.Handle // auto-reset event, rung by peers
	port     windows.Handle // completion port the waiter sleeps on; 0 if ringOnly
	ringOnly bool

	// mu guards isClosed. Whoever uses port or event outside a Wait (Ring,
	// a context's wake-up) holds it shared, so Close, which sets isClosed
	// under the exclusive lock, never closes a handle that is in use.
	mu       sync.RWMutex
	isClosed bool
	closed   chan struct{} // closed by Close: wakes queued waiters

	// token admits one waiter at a time into the port, so each wake-up
	// packet (a ring, a cancellation) concerns that waiter alone; the others
	// queue here, where their contexts and Close reach them. Close takes it
	// for good once the waiter inside has left.
	token chan struct{}
	seq   uint32 // wait sequence number, used by the token holder only

	// pending is set when a ring packet is on the port and cleared by the
	// waiter that takes it, so that rings coalesce instead of flooding it.
	pending atomic.Bool

	// The bridge from event to port: a wait completion packet, or a
	// registered wait whose callback finds this bell by regID.
	waitPacket windows.Handle
	waitObject windows.Handle
	regID      uintptr

	// onWait, when a test sets it before any Wait, is called by each Wait
	// as it begins to block (queued for the token or about to sleep on the
	// port), so that tests wait for a parked waiter instead of sleeping.
	onWait func()
}

// New creates a doorbell that this process waits on: an auto-reset event (the
// Handle given to peers) bridged onto an I/O completion port that Wait sleeps
// on.
func New() (b *Bell, err error) {
	event, err := windows.CreateEvent(nil, 0, 0, nil)
	if err != nil {
		return nil, fmt.Errorf("iocpwake: CreateEvent: %w", err)
	}
	port, err := windows.CreateIoCompletionPort(windows.InvalidHandle, 0, 0, 0xffffffff)
	if err != nil {
		windows.CloseHandle(event)
		return nil, fmt.Errorf("iocpwake: CreateIoCompletionPort: %w", err)
	}
	b = &Bell{
		event:  event,
		port:   port,
		closed: make(chan struct{}),
		token:  make(chan struct{}, 1),
	}
	if haveWaitPackets() && !forceRegisterWait {
		err = b.bridgeWaitPacket()
	} else {
		err = b.bridgeRegisterWait()
	}
	if err != nil {
		windows.CloseHandle(port)
		windows.CloseHandle(event)
		return nil, err
	}
	return b, nil
}

// Open adopts h, the Handle of a peer's doorbell, so that this process can
// ring it. It takes ownership of h, closing it if Open fails. h must be an
// event (ErrNotDoorbell otherwise) opened with EVENT_MODIFY_STATE access.
// Wait on the result returns ErrRingOnly.
func Open(h Handle) (*Bell, error) {
	wh := windows.Handle(h)
	typ, err := handles.TypeName(wh)
	if err != nil {
		windows.CloseHandle(wh)
		return nil, fmt.Errorf("%w: handle %#x: %v", ErrNotDoorbell, uintptr(h), err)
	}
	if typ != "Event" {
		windows.CloseHandle(wh)
		return nil, fmt.Errorf("%w: handle %#x is a %q object, not an Event", ErrNotDoorbell, uintptr(h), typ)
	}
	return &Bell{
		event:    wh,
		ringOnly: true,
		closed:   make(chan struct{}),
		token:    make(chan struct{}, 1),
	}, nil
}

// Handle returns the event handle to hand to the peer (by inheritance or
// DuplicateHandle). The Bell still owns it.
func (b *Bell) Handle() Handle { return Handle(b.event) }

// Ring wakes the waiter, or the next Wait if nobody waits now. On a bell from
// New it posts to the port; on one from Open it sets the peer's event.
func (b *Bell) Ring() error {
	b.mu.RLock()
	defer b.mu.RUnlock()
	if b.isClosed {
		return fmt.Errorf("iocpwake: ring: %w", ErrClosed)
	}
	if b.ringOnly {
		if err := windows.SetEvent(b.event); err != nil {
			return fmt.Errorf("iocpwake: ring: SetEvent: %w", err)
		}
		return nil
	}
	if err := b.postRing(); err != nil {
		return fmt.Errorf("iocpwake: ring: %w", err)
	}
	return nil
}

// postRing queues a ring packet unless one is already queued. The caller
// guarantees that the port is open.
func (b *Bell) postRing() error {
	if !b.pending.CompareAndSwap(false, true) {
		return nil
	}
	if err := windows.PostQueuedCompletionStatus(b.port, 0, keyRing, nil); err != nil {
		b.pending.Store(false)
		return fmt.Errorf("PostQueuedCompletionStatus: %w", err)
	}
	return nil
}

// Wait blocks until the bell rings, ctx ends, or the bell is closed. It
// returns nil after a ring, and may return nil without one (at the latest
// after an internal bound of about 100 ms): callers re-check the state they
// wait for. Several goroutines may wait; a ring wakes one.
func (b *Bell) Wait(ctx context.Context) error {
	if b.onWait != nil {
		b.onWait()
	}
	if err := b.enter(ctx); err != nil {
		return err
	}
	defer func() { <-b.token }()
	select {
	case <-b.closed: // Close may have raced with taking the token
		return fmt.Errorf("iocpwake: wait: %w", ErrClosed)
	default:
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("iocpwake: wait: %w", err)
	}
	b.seq++
	seq := b.seq
	if ctx.Done() != nil {
		stop := context.AfterFunc(ctx, func() {
			b.mu.RLock()
			defer b.mu.RUnlock()
			if !b.isClosed {
				_ = windows.PostQueuedCompletionStatus(b.port, seq, keyCancel, nil)
			}
		})
		defer stop()
	}
	for {
		key, n, err := b.dequeue(waitSlice)
		if err == windows.WAIT_TIMEOUT {
			select {
			case <-b.closed:
				return fmt.Errorf("iocpwake: wait: %w", ErrClosed)
			default:
			}
			if err := ctx.Err(); err != nil {
				return fmt.Errorf("iocpwake: wait: %w", err)
			}
			return nil // spurious wake-up; bounds the cost of a lost packet
		}
		if err != nil {
			return fmt.Errorf("iocpwake: wait: GetQueuedCompletionStatusEx: %w", err)
		}
		switch key {
		case keyRing:
			b.pending.Store(false)
			return nil
		case keyEvent:
			if err := b.rearmWaitPacket(); err != nil {
				return fmt.Errorf("iocpwake: wait: re-arming the event bridge: %w", err)
			}
			return nil
		case keyQuit:
			return fmt.Errorf("iocpwake: wait: %w", ErrClosed)
		case keyCancel:
			if n == seq {
				if err := ctx.Err(); err != nil {
					return fmt.Errorf("iocpwake: wait: %w", err)
				}
			}
			// A previous waiter's cancellation that came too late: ignore.
		}
	}
}

// overlappedEntry is OVERLAPPED_ENTRY.
type overlappedEntry struct {
	key      uintptr
	ov       *windows.Overlapped
	internal uintptr
	n        uint32
}

// dequeue takes one packet from the port, waiting at most timeout. It returns
// windows.WAIT_TIMEOUT when none came.
func (b *Bell) dequeue(timeout time.Duration) (key uintptr, n uint32, err error) {
	var e overlappedEntry
	var removed uint32
	r, _, errno := procGetQueuedCompletionStatusEx.Call(uintptr(b.port), uintptr(unsafe.Pointer(&e)), 1,
		uintptr(unsafe.Pointer(&removed)), uintptr(timeout.Milliseconds()), 0)
	if r == 0 {
		if errno == windows.WAIT_TIMEOUT {
			return 0, 0, windows.WAIT_TIMEOUT
		}
		if errno == nil || errno == windows.ERROR_SUCCESS {
			errno = windows.ERROR_INVALID_FUNCTION
		}
		return 0, 0, errno
	}
	if removed == 0 {
		return 0, 0, windows.WAIT_TIMEOUT
	}
	return e.key, e.n, nil
}

// Close wakes every waiter with ErrClosed, waits for the one inside the port
// to leave, removes the event bridge and closes the port and the event. A
// second Close returns ErrClosed.
func (b *Bell) Close() error {
	b.mu.Lock()
	if b.isClosed {
		b.mu.Unlock()
		return fmt.Errorf("iocpwake: close: %w", ErrClosed)
	}
	b.isClosed = true
	close(b.closed)
	b.mu.Unlock()

	var errs []error
	if !b.ringOnly {
		// Closing a port does not wake its waiters under Wine: post a quit
		// packet, then wait (at most one waitSlice) for the waiter inside to
		// leave. Holding the token keeps everyone out from now on.
		if err := windows.PostQueuedCompletionStatus(b.port, 0, keyQuit, nil); err != nil {
			errs = append(errs, fmt.Errorf("posting the quit packet: %w", err))
		}
		b.token <- struct{}{}
		if err := b.unbridge(); err != nil {
			errs = append(errs, err)
		}
		if err := windows.CloseHandle(b.port); err != nil {
			errs = append(errs, fmt.Errorf("closing the port: %w", err))
		}
	}
	if err := windows.CloseHandle(b.event); err != nil {
		errs = append(errs, fmt.Errorf("closing the event: %w", err))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("iocpwake: close: %w", err)
	}
	return nil
}

// --- Bridge, fast path: a wait completion packet (Windows 8+) ---
//
// The packet is associated with the event and the port; when the event is
// set, the kernel satisfies the wait (resetting the auto-reset event) and
// queues the packet with key keyEvent. The waiter that takes it re-associates
// the packet. Only the token holder re-arms, and Close holds the token before
// it cancels the packet, so the two never race.

func (b *Bell) bridgeWaitPacket() error {
	var h windows.Handle
	st, _, _ := procNtCreateWaitCompletionPacket.Call(uintptr(unsafe.Pointer(&h)), genericAll, 0)
	if st != 0 {
		return fmt.Errorf("iocpwake: NtCreateWaitCompletionPacket: %w", windows.NTStatus(uint32(st)))
	}
	b.waitPacket = h
	if err := b.associate(); err != nil {
		windows.CloseHandle(h)
		b.waitPacket = 0
		return fmt.Errorf("iocpwake: %w", err)
	}
	return nil
}

func (b *Bell) associate() error {
	// AlreadySignaled is left NULL: an already set event queues the packet
	// at once, like any satisfied wait.
	st, _, _ := procNtAssociateWaitCompletionPacket.Call(uintptr(b.waitPacket), uintptr(b.port),
		uintptr(b.event), keyEvent, 0, 0, 0, 0)
	if st != 0 {
		return fmt.Errorf("NtAssociateWaitCompletionPacket: %w", windows.NTStatus(uint32(st)))
	}
	return nil
}

// rearmWaitPacket re-associates the wait packet after a waiter took it.
func (b *Bell) rearmWaitPacket() error {
	if b.waitPacket == 0 {
		return nil
	}
	b.mu.RLock()
	defer b.mu.RUnlock()
	if b.isClosed {
		return nil
	}
	return b.associate()
}

// --- Bridge, fallback: RegisterWaitForSingleObject ---
//
// A thread-pool wait calls one package-level callback (callback slots are a
// limited resource: never make one per bell) with the bell's registry ID as
// its context; the callback posts a ring. The wait re-arms by itself after
// each callback.

var (
	registryMu sync.Mutex
	registry   = map[uintptr]*Bell{}
	nextRegID  uintptr

	waitCallback = sync.OnceValue(func() uintptr { return windows.NewCallback(bellWaitCallback) })
)

// bellWaitCallback is a WAITORTIMERCALLBACK. It runs on a thread-pool
// thread. The port stays open while it can run: Close unregisters the wait,
// waiting for running callbacks, before it closes the port.
func bellWaitCallback(id uintptr, timedOut uintptr) uintptr {
	registryMu.Lock()
	b := registry[id]
	registryMu.Unlock()
	if b != nil {
		_ = b.postRing()
	}
	return 0
}

func (b *Bell) bridgeRegisterWait() error {
	registryMu.Lock()
	nextRegID++
	b.regID = nextRegID
	registry[b.regID] = b
	registryMu.Unlock()
	var w windows.Handle
	r, _, err := procRegisterWaitForSingleObject.Call(uintptr(unsafe.Pointer(&w)), uintptr(b.event),
		waitCallback(), b.regID, uintptr(windows.INFINITE), wtExecuteInWaitThread)
	if r == 0 {
		registryMu.Lock()
		delete(registry, b.regID)
		registryMu.Unlock()
		return fmt.Errorf("iocpwake: RegisterWaitForSingleObject: %w", err)
	}
	b.waitObject = w
	return nil
}

// unbridge removes the event bridge. The caller holds the token.
func (b *Bell) unbridge() error {
	var errs []error
	if b.waitPacket != 0 {
		// STATUS_CANCELLED only means the packet had already fired.
		procNtCancelWaitCompletionPacket.Call(uintptr(b.waitPacket), 1)
		if err := windows.CloseHandle(b.waitPacket); err != nil {
			errs = append(errs, fmt.Errorf("closing the wait packet: %w", err))
		}
		b.waitPacket = 0
	}
	if b.waitObject != 0 {
		// INVALID_HANDLE_VALUE: return only once no callback runs.
		r, _, err := procUnregisterWaitEx.Call(uintptr(b.waitObject), uintptr(windows.InvalidHandle))
		if r == 0 {
			errs = append(errs, fmt.Errorf("UnregisterWaitEx: %w", err))
		}
		b.waitObject = 0
	}
	if b.regID != 0 {
		registryMu.Lock()
		delete(registry, b.regID)
		registryMu.Unlock()
	}
	return errors.Join(errs...)
}

// bridgeKind names the event bridge in use, for tests.
func (b *Bell) bridgeKind() string {
	switch {
	case b.waitPacket != 0:
		return "NtAssociateWaitCompletionPacket"
	case b.waitObject != 0:
		return "RegisterWaitForSingleObject"
	}
	return "none"
}
