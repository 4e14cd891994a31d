package wire

import (
	"fmt"
	"net"

	"golang.org/x/sys/unix"
)

// PeerCred returns the credentials of the process at the other end of c
// as the kernel recorded them when the connection was made (SO_PEERCRED):
// they cannot be forged by the peer, unlike Hello.PID.
func PeerCred(c *net.UnixConn) (uid, gid uint32, pid int32, err error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return 0, 0, 0, fmt.Errorf("wire: peer credentials: %w", err)
	}
	var cred *unix.Ucred
	var serr error
	if err := rc.Control(func(fd uintptr) {
		cred, serr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return 0, 0, 0, fmt.Errorf("wire: peer credentials: %w", err)
	}
	if serr != nil {
		return 0, 0, 0, fmt.Errorf("wire: peer credentials (SO_PEERCRED): %w", serr)
	}
	return cred.Uid, cred.Gid, cred.Pid, nil
}
