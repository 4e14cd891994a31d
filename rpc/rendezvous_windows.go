package rpc

import (
	"fmt"
	"net"
	"sync"
	"time"

	"golang.org/x/sys/windows"

	"github.com/capnshm/capnshm/internal/handles"
	"github.com/capnshm/capnshm/rpc/internal/wire"
)

// pipeRendezvous is the Windows rendezvous: a named-pipe connection
// (pipe_windows.go). Handles travel as handle values duplicated by the
// pipe's server end both ways (wire.FrameConn); the peer's identity is
// the pipe's peer process id as the system reports it and that process's
// token user; the peer's death is the end of the stream (a broken pipe)
// or its process handle signalled, whichever comes first.
//
// The server end opens the peer process with PROCESS_DUP_HANDLE, SYNCHRONIZE
// and PROCESS_QUERY_LIMITED_INFORMATION, the client end with the last two
// only: the client holds nothing that could reach into the server.
type pipeRendezvous struct {
	c *pipeConn

	mu   sync.Mutex
	proc windows.Handle // the peer process, once identified (under mu)
	fc   *wire.FrameConn
	stop func() error // ends watchPeer's watch
	done bool         // shutdown or Close ran
}

// newRendezvous returns the rendezvous on conn, which must be a named-pipe
// connection from DialPipe or ListenPipe (or Dial and Listen).
func newRendezvous(conn net.Conn, _ Side) (rendezvous, error) {
	pc, ok := conn.(*pipeConn)
	if !ok {
		return nil, fmt.Errorf("%w: a shared-memory rendezvous on Windows is a named pipe (from DialPipe or ListenPipe), not a %T", ErrUnsupported, conn)
	}
	return newPipeRendezvous(pc), nil
}

func newPipeRendezvous(c *pipeConn) *pipeRendezvous { return &pipeRendezvous{c: c} }

func (p *pipeRendezvous) setDeadline(t time.Time) error      { return p.c.SetDeadline(t) }
func (p *pipeRendezvous) setWriteDeadline(t time.Time) error { return p.c.SetWriteDeadline(t) }

// frames returns the frame connection; the server end duplicates with the
// peer process identify opened (or takes no handle before it, or if it
// could not).
func (p *pipeRendezvous) frames() *wire.FrameConn {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.fc == nil {
		p.fc = wire.NewFrameConn(p.c, p.c.server, p.proc)
	}
	return p.fc
}

// identify opens the pipe's peer process and reads its user. Call it
// before frames.
func (p *pipeRendezvous) identify() (peerID, error) {
	pid, err := p.c.peerPID()
	if err != nil {
		return peerID{}, err
	}
	access := uint32(windows.SYNCHRONIZE | windows.PROCESS_QUERY_LIMITED_INFORMATION)
	if p.c.server {
		access |= windows.PROCESS_DUP_HANDLE
	}
	proc, err := windows.OpenProcess(access, false, uint32(pid))
	if err != nil {
		return peerID{pid: pid}, fmt.Errorf("opening the peer process %d: %w", pid, err)
	}
	sid, err := processUserSID(proc)
	if err != nil {
		windows.CloseHandle(proc)
		return peerID{pid: pid}, fmt.Errorf("the user of the peer process %d: %w", pid, err)
	}
	p.mu.Lock()
	p.proc = proc
	p.mu.Unlock()
	return peerID{pid: pid, uid: userKey(sid), user: sid}, nil
}

// checkUser refuses a peer of another user unless allowOthers.
func (p *pipeRendezvous) checkUser(id peerID, allowOthers bool) error {
	if allowOthers {
		return nil
	}
	me, err := currentUserSID()
	if err != nil {
		return err
	}
	if id.user != me {
		return fmt.Errorf("%w: peer process %d runs as user %s, this process as %s (WithAllowOtherUsers permits it)", ErrRefused, id.pid, id.user, me)
	}
	return nil
}

// watchPeer calls gone when the peer process ends: its handle is
// signalled. A pipe another process also holds (an inherited handle)
// would not break when the peer dies; the process handle tells anyway.
func (p *pipeRendezvous) watchPeer(gone func(error)) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.proc == 0 || p.done {
		return
	}
	pid, _ := p.c.peerPID()
	stop, err := handles.OnSignal(p.proc, func() {
		go gone(fmt.Errorf("the peer process %d exited", pid))
	})
	if err != nil {
		// The broken pipe still tells; say why the watch is missing.
		go gone(fmt.Errorf("watching the peer process %d: %w", pid, err))
		return
	}
	p.stop = stop
}

// shutdown ends the connection at Close, after BYE. The server end
// closes the pipe at once. The client end, into which the server
// duplicates handles, gives the reader until byeTimeout to see the end
// of the stream, so that the handles of frames still in the pipe (a MAP
// the server sent before it saw BYE) are closed rather than left behind.
func (p *pipeRendezvous) shutdown() error {
	p.stopWatch()
	if !p.c.server {
		return p.c.SetReadDeadline(time.Now().Add(byeTimeout))
	}
	return p.c.Close()
}

// stopWatch ends watchPeer's watch, if any.
func (p *pipeRendezvous) stopWatch() {
	p.mu.Lock()
	stop := p.stop
	p.stop = nil
	p.done = true
	p.mu.Unlock()
	if stop != nil {
		stop()
	}
}

// detach closes the peer process handle; the pipe goes on.
func (p *pipeRendezvous) detach() {
	p.stopWatch()
	p.mu.Lock()
	proc := p.proc
	p.proc = 0
	p.mu.Unlock()
	if proc != 0 {
		windows.CloseHandle(proc)
	}
}

// Close closes the pipe and the peer process handle. The link calls it
// once nothing writes frames any more, so that no duplication uses the
// process handle after it is closed.
func (p *pipeRendezvous) Close() error {
	p.detach()
	return p.c.Close()
}

// userKeys numbers the users (SIDs) seen, for what counts connections by
// user id (WithMaxConnsPerUser): the first user seen is 1.
var userKeys struct {
	sync.Mutex
	m map[string]int
}

// userKey returns sid's number.
func userKey(sid string) int {
	userKeys.Lock()
	defer userKeys.Unlock()
	if userKeys.m == nil {
		userKeys.m = make(map[string]int)
	}
	k, ok := userKeys.m[sid]
	if !ok {
		k = len(userKeys.m) + 1
		userKeys.m[sid] = k
	}
	return k
}
