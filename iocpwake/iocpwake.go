// Package iocpwake provides doorbells: a way to wake a peer that may be
// asleep, within one process or across two.
//
// A Bell is created by the side that waits (New) and rung by either side: the
// waiter's own process rings it directly, and a peer rings the copy it opened
// from the waiter's Handle (Open). Rings coalesce: many rings before a Wait
// wake it once. A Wait may also return without a ring (a spurious wake-up),
// so a waiter always re-checks the shared state it waits for; in exchange a
// lost wake-up costs latency, never a hang, because waits are bounded
// internally where the system can lose one.
//
//	waiter process                         peer process
//	Bell from New()                        Bell from Open(h)
//	  Wait(ctx) <-- wakes --+                Ring()
//	  Ring()  ---- local ---+                  |
//	                        +---- cross-process+
//
// Linux: a pipe, or a unix datagram socket pair. A descriptor handed to a
// peer shares its open file description with ours, flags included: a peer
// holding an eventfd of ours can clear its O_NONBLOCK and make our read(2)
// block, or fill its counter and make our write(2) block, and an eventfd
// cannot be reopened to get a description of our own. So a doorbell has two
// ends, and each side's system calls cannot block whatever the peer does:
//
//	waiter (New)                                   peer (Open)
//	read end: private, O_NONBLOCK, in the   <---   write end: handed over
//	netpoller; Wait reads what rings left          (the waiter keeps a copy
//	(one read of up to 1 KiB, or up to 16          for its own rings)
//	datagrams)                                     Ring: pwritev2(RWF_NOWAIT)
//	                                               or send(MSG_DONTWAIT)
//
// The read end never leaves the waiter, so its flags are the waiter's alone
// and Wait parks in Go's netpoller without pinning an OS thread. Rings use a
// write that is non-blocking by itself (RWF_NOWAIT on a pipe, Linux 6.4;
// MSG_DONTWAIT on a socket, where pipes cannot do it): a full pipe (one
// page) or socket buffer means the bell is already rung, and Ring returns
// nil. New makes a pipe where the kernel can write one that way and a socket
// pair otherwise; Open accepts either (a pipe's write end only where it can
// be written that way). Close never waits for the peer.
//
// Windows: the waiter owns an I/O completion port and waits in
// GetQueuedCompletionStatusEx. A local Ring posts a packet to the port with
// PostQueuedCompletionStatus. A peer rings an auto-reset event, which is
// bridged onto the port (NtAssociateWaitCompletionPacket where the system
// has it, otherwise RegisterWaitForSingleObject): an IOCP handle cannot be
// shared between processes. Close posts a quit packet, because closing a port
// does not wake its waiters everywhere (Wine).
package iocpwake

import (
	"context"
	"errors"
	"fmt"
)

// Errors returned by Bell methods, wrapped with details. Match them with
// errors.Is.
var (
	// ErrClosed: the bell was closed (before or during the call).
	ErrClosed = errors.New("iocpwake: doorbell closed")
	// ErrRingOnly: Wait was called on a bell opened from a peer's handle;
	// only the process that created a bell waits on it.
	ErrRingOnly = errors.New("iocpwake: doorbell opened from a peer's handle can only ring")
	// ErrNotDoorbell: the handle given to Open is not a doorbell.
	ErrNotDoorbell = errors.New("iocpwake: handle is not a doorbell")
)

// enter admits the caller as the one waiter: it takes the token, which the
// caller gives back with <-b.token once it has waited. It fails if the bell
// only rings, is closed, or ctx ends first.
func (b *Bell) enter(ctx context.Context) error {
	if b.ringOnly {
		return ErrRingOnly
	}
	select {
	case b.token <- struct{}{}:
		return nil
	case <-b.closed:
		return fmt.Errorf("iocpwake: wait: %w", ErrClosed)
	case <-ctx.Done():
		return fmt.Errorf("iocpwake: wait: %w", ctx.Err())
	}
}
