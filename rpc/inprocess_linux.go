package rpc

import (
	"sync"

	"golang.org/x/sys/unix"

	"github.com/capnshm/capnshm/shm"
)

// Rings this process created, by file (memfds): a connection whose peer's
// ring is one of them has both ends in this process. The peer's pid from
// the rendezvous cannot tell: a socket pair made here and handed to a
// child reports this process as the peer.
var ownRings struct {
	sync.Mutex
	m map[fileKey]int
}

type fileKey struct{ dev, ino uint64 }

func keyOf(r *shm.Region) (fileKey, bool) {
	var st unix.Stat_t
	if unix.Fstat(int(r.Handle()), &st) != nil {
		return fileKey{}, false
	}
	return fileKey{uint64(st.Dev), st.Ino}, true
}

// registerOwnRing records r as this process's, until the returned function
// runs.
func registerOwnRing(r *shm.Region) (unregister func()) {
	k, ok := keyOf(r)
	if !ok {
		return func() {}
	}
	ownRings.Lock()
	if ownRings.m == nil {
		ownRings.m = make(map[fileKey]int)
	}
	ownRings.m[k]++
	ownRings.Unlock()
	return func() {
		ownRings.Lock()
		if ownRings.m[k]--; ownRings.m[k] <= 0 {
			delete(ownRings.m, k)
		}
		ownRings.Unlock()
	}
}

// peerInProcess reports whether th, the peer's memory, was made by this
// process.
func peerInProcess(th *theirs, _ peerID) bool {
	k, ok := keyOf(th.ring)
	if !ok {
		return false
	}
	ownRings.Lock()
	defer ownRings.Unlock()
	return ownRings.m[k] > 0
}
