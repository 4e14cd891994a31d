package rpc

import (
	"testing"

	"golang.org/x/sys/unix"

	"github.com/capnshm/capnshm/shm"
)

// TestPeerInProcess: a peer ring that is one this process created (the
// same memfd, opened again through another descriptor, as the handshake
// hands it over) is known as ours until it is unregistered; another ring
// is not.
func TestPeerInProcess(t *testing.T) {
	ours, err := shm.Create(64<<10, &shm.Options{Name: "test-ring"})
	if err != nil {
		t.Fatal(err)
	}
	defer ours.Close()
	other, err := shm.Create(64<<10, &shm.Options{Name: "test-ring"})
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	fd, err := unix.Dup(int(ours.Handle()))
	if err != nil {
		t.Fatal(err)
	}
	again, err := shm.Open(shm.Handle(fd), 64<<10, shm.ReadWrite, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer again.Close()

	if peerInProcess(&theirs{ring: again}, peerID{}) {
		t.Fatal("a ring not registered is taken for ours")
	}
	unregister := registerOwnRing(ours)
	if !peerInProcess(&theirs{ring: again}, peerID{}) {
		t.Error("our own ring, opened again, is not known as ours")
	}
	if peerInProcess(&theirs{ring: other}, peerID{}) {
		t.Error("another ring is taken for ours")
	}
	unregister()
	if peerInProcess(&theirs{ring: again}, peerID{}) {
		t.Error("our ring is still known after unregistering it")
	}
}
