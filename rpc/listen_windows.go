package rpc

import (
	"errors"
	"fmt"
	"net"
	"syscall"
)

// listenSocket opens the listening socket of a. (Windows: a socket file
// left by a dead server is not taken over yet; Listen reports it in use.)
func listenSocket(a Addr) (net.Listener, error) {
	network, address := a.Net()
	l, err := net.Listen(network, address)
	if errors.Is(err, syscall.Errno(10048)) { // WSAEADDRINUSE
		return nil, fmt.Errorf("%w: %s: %w", ErrAddrInUse, a, err)
	}
	return l, err
}
