package rpc

import (
	"context"
	"sync/atomic"
	"time"
)

// Peer says who is at the other end of a connection, as far as its
// transport knows.
type Peer struct {
	// Addr is the address the connection was made on: the one dialled, or
	// the listener's.
	Addr Addr
	// Remote is the peer's network address (TCP: host:port), if any.
	Remote string
	// SharedMemory reports whether the connection runs on shared memory.
	SharedMemory bool
	// Creds reports whether PID, UID, GID and User are known: the
	// system's credentials of a peer on a unix socket (SO_PEERCRED) or a
	// named pipe (the pipe's peer process and its token), which it cannot
	// forge. On Windows UID is a number this process gives each user it
	// sees, and GID is 0.
	Creds         bool
	PID, UID, GID int
	// User names the peer's user: the uid in decimal (Linux), the token's
	// user SID (Windows).
	User string
}

// peerKey is the context key of the Peer in a handler's context.
type peerKey struct{}

// PeerFromContext returns the peer whose call a handler is running, from
// the handler's context: every call a capnshm Conn delivers carries it.
func PeerFromContext(ctx context.Context) (Peer, bool) {
	p, ok := ctx.Value(peerKey{}).(*Peer)
	if !ok {
		return Peer{}, false
	}
	return *p, true
}

// atomicTime is a time read and written atomically.
type atomicTime struct{ ns atomic.Int64 }

func (t *atomicTime) store(v time.Time) { t.ns.Store(v.UnixNano()) }
func (t *atomicTime) load() time.Time   { return time.Unix(0, t.ns.Load()) }
