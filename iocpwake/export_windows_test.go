package iocpwake

import "time"

// Test hooks for the external test package (Windows only).

// SetWaitSlice sets the bound of one internal wait and returns a function
// that restores the previous one. A long slice makes Wait return only for a
// real wake-up, which lets tests tell a ring from a spurious return.
func SetWaitSlice(d time.Duration) (restore func()) {
	old := waitSlice
	waitSlice = d
	return func() { waitSlice = old }
}

// ForceRegisterWait makes New use the RegisterWaitForSingleObject bridge
// even where wait completion packets exist, until restore is called.
func ForceRegisterWait(force bool) (restore func()) {
	old := forceRegisterWait
	forceRegisterWait = force
	return func() { forceRegisterWait = old }
}

// HaveWaitPackets reports whether NtAssociateWaitCompletionPacket exists.
func HaveWaitPackets() bool { return haveWaitPackets() }

// BridgeKind names the event bridge of a bell from New.
func BridgeKind(b *Bell) string { return b.bridgeKind() }

// NotifyWaits returns a channel that receives a value each time a Wait on b
// begins to block. Call it before any goroutine waits on b.
func NotifyWaits(b *Bell) <-chan struct{} {
	c := make(chan struct{}, 1024)
	b.onWait = func() { c <- struct{}{} }
	return c
}
