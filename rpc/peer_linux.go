package rpc

import (
	"net"
	"strconv"

	"github.com/capnshm/capnshm/rpc/internal/wire"
)

// connCreds returns the credentials of the peer of c, a unix socket.
func connCreds(c net.Conn) (ok bool, pid, uid, gid int, user string) {
	uc, isUnix := c.(*net.UnixConn)
	if !isUnix {
		return false, 0, 0, 0, ""
	}
	u, g, p, err := wire.PeerCred(uc)
	if err != nil {
		return false, 0, 0, 0, ""
	}
	return true, int(p), int(u), int(g), strconv.Itoa(int(u))
}
