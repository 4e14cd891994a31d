package rpc

import (
	"errors"
	"fmt"
	"net"
	"syscall"
)

// listenSocket opens the listening socket of a, or its named pipe (pipe:
// and shm: addresses; with WithAllowOtherUsers, other local users may
// connect to it too). A socket file left by a dead server is not taken
// over: Listen reports it in use.
func listenSocket(a Addr, cfg *config) (net.Listener, error) {
	if a.Network() == "pipe" {
		l, err := listenPipe(a.Endpoint, cfg.opts.AllowOtherUsers)
		if err != nil {
			return nil, err
		}
		return l, nil
	}
	network, address := a.Net()
	l, err := net.Listen(network, address)
	if errors.Is(err, syscall.Errno(10048)) { // WSAEADDRINUSE
		return nil, fmt.Errorf("%w: %s: %w", ErrAddrInUse, a, err)
	}
	return l, err
}
