package rpc

import (
	"context"
	"fmt"
	"net"
)

// checkPlatform rejects addresses and policies Windows cannot serve:
// abstract unix sockets are Linux-only, and shared memory is not built yet.
func checkPlatform(a Addr, f Fallback) error {
	if a.SharedMemory() && f == FallbackRequire {
		return fmt.Errorf("%w: %s with FallbackRequire: the Windows rendezvous (named pipes and DuplicateHandle) is not built yet", ErrUnsupported, a)
	}
	if a.Abstract() {
		return fmt.Errorf("%w: %s: abstract unix sockets exist only on Linux; use a socket file (%s:/path)", ErrUnsupported, a, a.Scheme[:len(a.Scheme)-len("-abstract")])
	}
	return nil
}

// shmRendezvous: no connection carries the shared-memory handshake on
// Windows yet (named pipes are still to come): shm: addresses run the
// stream transport on the unix socket.
func shmRendezvous(net.Conn) (rendezvous, bool) { return nil, false }

// notSpeaking is never asked on Windows yet (no handshake runs).
func notSpeaking(error) bool { return false }

// peekHello is never called on Windows yet (shmRendezvous takes no
// connection).
func peekHello(context.Context, net.Conn) (bool, error) {
	return false, fmt.Errorf("%w: the Windows rendezvous is not built yet", ErrUnsupported)
}

// peerUID: Windows connections carry no user id here yet; only the total
// connection limit applies.
func peerUID(net.Conn) (int, bool) { return 0, false }
