package rpc

import (
	"fmt"
	"net"
)

// newRendezvous: the Windows rendezvous (named pipes and DuplicateHandle)
// is not built yet.
func newRendezvous(net.Conn, Side) (rendezvous, error) {
	return nil, fmt.Errorf("%w: the Windows rendezvous (named pipes and DuplicateHandle) is not built yet", ErrUnsupported)
}
