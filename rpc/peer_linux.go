package rpc

import (
	"net"

	"github.com/capnshm/capnshm/rpc/internal/wire"
)

// unixCreds returns the credentials of the peer of a unix socket.
func unixCreds(c *net.UnixConn) (ok bool, pid, uid, gid int) {
	u, g, p, err := wire.PeerCred(c)
	if err != nil {
		return false, 0, 0, 0
	}
	return true, int(p), int(u), int(g)
}
