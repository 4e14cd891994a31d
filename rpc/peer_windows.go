package rpc

import "net"

// connCreds returns the credentials of the peer of c, a named pipe: its
// process and that process's user (UID is the user's number here,
// userKey). Unix sockets on Windows carry none.
func connCreds(c net.Conn) (ok bool, pid, uid, gid int, user string) {
	pc, isPipe := c.(*pipeConn)
	if !isPipe {
		return false, 0, 0, 0, ""
	}
	pid, sid, err := pipePeerUser(pc)
	if err != nil {
		return false, 0, 0, 0, ""
	}
	return true, pid, userKey(sid), 0, sid
}
