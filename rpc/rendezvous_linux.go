package rpc

import (
	"fmt"
	"net"
	"os"
	"strconv"
	"time"

	"github.com/capnshm/capnshm/rpc/internal/wire"
)

// unixRendezvous is the Linux rendezvous: a connected SOCK_STREAM unix
// socket. Handles travel with SCM_RIGHTS, attached to frame headers; the
// peer's identity is the kernel's SO_PEERCRED, recorded when the
// connection was made; the peer's death is the end of the stream (the
// kernel closes its end of the socket with its last descriptor).
type unixRendezvous struct {
	conn *net.UnixConn
	fc   *wire.FrameConn
}

// newRendezvous returns the rendezvous on conn, which must be a unix
// socket.
func newRendezvous(conn net.Conn, _ Side) (rendezvous, error) {
	uc, ok := conn.(*net.UnixConn)
	if !ok {
		return nil, fmt.Errorf("%w: a shared-memory rendezvous on Linux is a unix socket (*net.UnixConn), not a %T", ErrUnsupported, conn)
	}
	return newUnixRendezvous(uc), nil
}

func newUnixRendezvous(c *net.UnixConn) *unixRendezvous {
	return &unixRendezvous{conn: c, fc: wire.NewFrameConn(c)}
}

func (u *unixRendezvous) frames() *wire.FrameConn            { return u.fc }
func (u *unixRendezvous) setDeadline(t time.Time) error      { return u.conn.SetDeadline(t) }
func (u *unixRendezvous) setWriteDeadline(t time.Time) error { return u.conn.SetWriteDeadline(t) }
func (u *unixRendezvous) watchPeer(func(error))              {}
func (u *unixRendezvous) Close() error                       { return u.conn.Close() }
func (u *unixRendezvous) detach()                            {}

func (u *unixRendezvous) identify() (peerID, error) {
	uid, _, pid, err := wire.PeerCred(u.conn)
	if err != nil {
		return peerID{}, err
	}
	return peerID{pid: int(pid), uid: int(uid), user: strconv.Itoa(int(uid))}, nil
}

// checkUser refuses a peer of another user unless allowOthers.
func (u *unixRendezvous) checkUser(id peerID, allowOthers bool) error {
	if !allowOthers && id.uid != os.Getuid() {
		return fmt.Errorf("%w: peer process %d runs as uid %d, this process as %d (WithAllowOtherUsers permits it)", ErrRefused, id.pid, id.uid, os.Getuid())
	}
	return nil
}

// shutdown stops reading (the reader goroutine sees the end at once) and
// closes the socket.
func (u *unixRendezvous) shutdown() error {
	u.conn.CloseRead()
	return u.conn.Close()
}
