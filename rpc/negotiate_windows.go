package rpc

import (
	"context"
	"fmt"
	"log/slog"
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

// dialEstablish connects to a. Shared memory is not built on Windows yet:
// shm: addresses run the stream transport on the unix socket, or fail with
// ErrUnsupported under FallbackRequire (checkPlatform).
func dialEstablish(ctx context.Context, a Addr, cfg *config) (established, error) {
	raw, err := dial(ctx, a)
	if err != nil {
		return established{}, err
	}
	return streamOver(raw, cfg, 0), nil
}

// acceptEstablish serves every connection with the stream transport on
// Windows.
func acceptEstablish(_ context.Context, raw net.Conn, _ Addr, cfg *config, _ *slog.Logger) (established, error) {
	return streamOver(raw, cfg, 0), nil
}

// peerUID: Windows connections carry no user id here yet; only the total
// connection limit applies.
func peerUID(net.Conn) (int, bool) { return 0, false }

// refuseAtAccept: the stream transport's clients would not understand a
// reason, so they just see the connection close.
func refuseAtAccept(net.Conn, Addr, string) {}
