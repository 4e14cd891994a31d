package rpc

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"time"
	"unsafe"

	"golang.org/x/sys/windows"
)

// Named pipes: the Windows rendezvous (shm:NAME) and the stream transport
// on pipe:NAME. A pipe end is an overlapped handle wrapped in an *os.File,
// whose reads and writes park in Go's netpoller (Go 1.25 and later
// associate overlapped handles with the runtime's completion port) and
// honour deadlines; Close cancels what is pending.
//
//	listener (pipe server)                  dialer (pipe client)
//	CreateNamedPipe(\\.\pipe\NAME,          CreateFile(\\.\pipe\NAME,
//	  FIRST_PIPE_INSTANCE (first only),       FILE_GENERIC_READ|FILE_WRITE_DATA,
//	  REJECT_REMOTE_CLIENTS,                  SQOS: identification only)
//	  DACL: this user only, or also         ERROR_PIPE_BUSY: WaitNamedPipe, again
//	  local users (WithAllowOtherUsers))
//	ConnectNamedPipe (overlapped, an event)
//	  -> next instance made, this one is a pipeConn
//
// Windows has no half-close on a pipe: a side that closes its end makes
// the other's reads end (ERROR_BROKEN_PIPE, read as EOF) once what was
// written before has been read.

var (
	procWaitNamedPipeW = windows.NewLazySystemDLL("kernel32.dll").NewProc("WaitNamedPipeW")
)

// pipeBuffer is the size of each direction's buffer in a pipe instance.
const pipeBuffer = 64 << 10

// pipeAddr is a named pipe's address.
type pipeAddr string

func (a pipeAddr) Network() string { return "pipe" }
func (a pipeAddr) String() string  { return pipePrefix + string(a) }

// pipeConn is one end of a named-pipe connection.
type pipeConn struct {
	f      *os.File
	h      windows.Handle // f's; valid until Close
	name   pipeAddr
	server bool // the server end (accepted), or the client end (dialled)

	mu     sync.Mutex
	unread []byte // bytes read ahead (a listener's first bytes), returned first
}

func newPipeConn(h windows.Handle, name string, server bool) *pipeConn {
	return &pipeConn{f: os.NewFile(uintptr(h), pipePrefix+name), h: h, name: pipeAddr(name), server: server}
}

// Read reads what was read ahead first, then the pipe.
func (c *pipeConn) Read(b []byte) (int, error) {
	c.mu.Lock()
	if len(c.unread) > 0 {
		n := copy(b, c.unread)
		c.unread = c.unread[n:]
		c.mu.Unlock()
		return n, nil
	}
	c.mu.Unlock()
	n, err := c.f.Read(b)
	return n, pipeError(err)
}

// unreadBytes puts b back in front of what Read returns next.
func (c *pipeConn) unreadBytes(b []byte) {
	c.mu.Lock()
	c.unread = append(append([]byte(nil), b...), c.unread...)
	c.mu.Unlock()
}

func (c *pipeConn) Write(b []byte) (int, error) {
	n, err := c.f.Write(b)
	return n, pipeError(err)
}

func (c *pipeConn) Close() error                       { return c.f.Close() }
func (c *pipeConn) LocalAddr() net.Addr                { return c.name }
func (c *pipeConn) RemoteAddr() net.Addr               { return c.name }
func (c *pipeConn) SetDeadline(t time.Time) error      { return c.f.SetDeadline(t) }
func (c *pipeConn) SetReadDeadline(t time.Time) error  { return c.f.SetReadDeadline(t) }
func (c *pipeConn) SetWriteDeadline(t time.Time) error { return c.f.SetWriteDeadline(t) }

// pipeError makes the errors of a pipe's end what a socket's would be:
// the peer's end closed is the end of the stream for a reader
// (os.File does that for ERROR_BROKEN_PIPE already) and a broken pipe for
// a writer (ERROR_NO_DATA: the pipe is being closed).
func pipeError(err error) error {
	var pe *os.PathError
	if errors.As(err, &pe) && (pe.Err == windows.ERROR_NO_DATA || pe.Err == windows.ERROR_PIPE_NOT_CONNECTED) {
		return fmt.Errorf("%w: %w", io.ErrClosedPipe, err)
	}
	return err
}

// peerPID returns the process id of the other end, as the system knows it
// (GetNamedPipeClientProcessId on the server end,
// GetNamedPipeServerProcessId on the client end).
func (c *pipeConn) peerPID() (int, error) {
	var pid uint32
	var err error
	if c.server {
		err = windows.GetNamedPipeClientProcessId(c.h, &pid)
	} else {
		err = windows.GetNamedPipeServerProcessId(c.h, &pid)
	}
	if err != nil {
		return 0, fmt.Errorf("the pipe's peer process id: %w", err)
	}
	return int(pid), nil
}

// pipeSDDL is the security descriptor of a listener's pipe: full access
// for this process's user, and none for anyone else (the default DACL
// grants read to Everyone and to anonymous logons). With others, local
// users (authenticated, and REJECT_REMOTE_CLIENTS keeps remote ones out)
// may connect: read and write the pipe, not create instances of it
// (FILE_CREATE_PIPE_INSTANCE, which FILE_GENERIC_WRITE includes, is left
// out, so that nobody else can serve on the name while we do).
func pipeSDDL(user string, others bool) string {
	sddl := "D:P(A;;GA;;;" + user + ")"
	if others {
		sddl += fmt.Sprintf("(A;;%#x;;;AU)", windows.FILE_GENERIC_READ|windows.FILE_WRITE_DATA|windows.SYNCHRONIZE)
	}
	return sddl
}

// dialAccess is what a dialer asks for on a pipe: read and write its
// data, and no more (GENERIC_WRITE would include FILE_CREATE_PIPE_INSTANCE,
// which a listener grants nobody else).
const dialAccess = windows.FILE_GENERIC_READ | windows.FILE_WRITE_DATA

// pipeListener accepts connections on a named pipe. One instance waits
// for a client at a time; the next is made before a connected one is
// returned, so the name is always served while the listener is open.
type pipeListener struct {
	name string
	path *uint16
	sa   *windows.SecurityAttributes

	mu      sync.Mutex
	next    windows.Handle // the instance waiting for a client (under mu)
	closed  bool
	stop    windows.Handle // manual-reset event: set by Close, ends Accept's wait
	accepts sync.Mutex     // one Accept at a time
}

// ListenPipe listens on the named pipe \\.\pipe\name, for DialPipe's
// connections from this machine only, as this process's user only unless
// WithAllowOtherUsers is given: the stream of a pipe: address, or the
// rendezvous of a shm: address (see NewTransport). A name another process
// already serves is an error wrapping ErrAddrInUse. Only Windows has it.
func ListenPipe(name string, opts ...Option) (net.Listener, error) {
	if p := checkPipeName(name); p != "" {
		return nil, &AddrError{Addr: "pipe:" + name, Problem: p, Want: "pipe:name"}
	}
	cfg, err := newConfig(nil, opts)
	if err != nil {
		return nil, err
	}
	l, err := listenPipe(name, cfg.opts.AllowOtherUsers)
	if err != nil {
		if errors.Is(err, ErrAddrInUse) {
			return nil, err
		}
		return nil, fmt.Errorf("capnshm: listening on pipe:%s: %w", name, err)
	}
	return l, nil
}

func listenPipe(name string, others bool) (*pipeListener, error) {
	user, err := currentUserSID()
	if err != nil {
		return nil, err
	}
	sd, err := windows.SecurityDescriptorFromString(pipeSDDL(user, others))
	if err != nil {
		return nil, fmt.Errorf("the pipe's security descriptor: %w", err)
	}
	path, err := windows.UTF16PtrFromString(pipePrefix + name)
	if err != nil {
		return nil, fmt.Errorf("pipe name %q: %w", name, err)
	}
	stop, err := windows.CreateEvent(nil, 1, 0, nil)
	if err != nil {
		return nil, fmt.Errorf("CreateEvent: %w", err)
	}
	l := &pipeListener{
		name: name,
		path: path,
		sa:   &windows.SecurityAttributes{Length: uint32(unsafe.Sizeof(windows.SecurityAttributes{})), SecurityDescriptor: sd},
		stop: stop,
	}
	if l.next, err = l.instance(true); err != nil {
		windows.CloseHandle(stop)
		if errors.Is(err, windows.ERROR_ACCESS_DENIED) || errors.Is(err, windows.ERROR_PIPE_BUSY) {
			return nil, fmt.Errorf("%w: another process serves the pipe %s%s: %w", ErrAddrInUse, pipePrefix, name, err)
		}
		return nil, fmt.Errorf("creating the pipe %s%s: %w", pipePrefix, name, err)
	}
	return l, nil
}

// instance makes a pipe instance; the first one of the listener with
// FILE_FLAG_FIRST_PIPE_INSTANCE, which fails if anyone already has the
// name.
func (l *pipeListener) instance(first bool) (windows.Handle, error) {
	flags := uint32(windows.PIPE_ACCESS_DUPLEX | windows.FILE_FLAG_OVERLAPPED)
	if first {
		flags |= windows.FILE_FLAG_FIRST_PIPE_INSTANCE
	}
	return windows.CreateNamedPipe(l.path, flags,
		windows.PIPE_TYPE_BYTE|windows.PIPE_READMODE_BYTE|windows.PIPE_WAIT|windows.PIPE_REJECT_REMOTE_CLIENTS,
		windows.PIPE_UNLIMITED_INSTANCES, pipeBuffer, pipeBuffer, 0, l.sa)
}

// Accept waits for a client and returns its connection (a *pipeConn).
func (l *pipeListener) Accept() (net.Conn, error) {
	l.accepts.Lock()
	defer l.accepts.Unlock()
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil, net.ErrClosed
	}
	h := l.next
	l.mu.Unlock()
	if err := l.connect(h); err != nil {
		return nil, err
	}
	// The next instance, before this one leaves: clients keep finding
	// the name served.
	next, err := l.instance(false)
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		if err == nil {
			windows.CloseHandle(next)
		}
		windows.CloseHandle(h)
		l.next = 0
		return nil, net.ErrClosed
	}
	if err != nil {
		// Keep h for the next Accept: it fails the client that just
		// connected, but the name stays ours.
		windows.DisconnectNamedPipe(h)
		return nil, fmt.Errorf("a new instance of %s%s: %w", pipePrefix, l.name, err)
	}
	l.next = next
	return newPipeConn(h, l.name, true), nil
}

// connect waits until a client connects to h, or Close.
func (l *pipeListener) connect(h windows.Handle) error {
	ev, err := windows.CreateEvent(nil, 1, 0, nil)
	if err != nil {
		return fmt.Errorf("CreateEvent: %w", err)
	}
	defer windows.CloseHandle(ev)
	ov := windows.Overlapped{HEvent: ev}
	switch err := windows.ConnectNamedPipe(h, &ov); err {
	case nil, windows.ERROR_PIPE_CONNECTED:
		return nil
	case windows.ERROR_IO_PENDING:
	default:
		return fmt.Errorf("ConnectNamedPipe on %s%s: %w", pipePrefix, l.name, err)
	}
	w, err := windows.WaitForMultipleObjects([]windows.Handle{ev, l.stop}, false, windows.INFINITE)
	if err == nil && w == windows.WAIT_OBJECT_0 {
		var n uint32
		if err := windows.GetOverlappedResult(h, &ov, &n, false); err != nil && err != windows.ERROR_PIPE_CONNECTED {
			return fmt.Errorf("ConnectNamedPipe on %s%s: %w", pipePrefix, l.name, err)
		}
		return nil
	}
	// Closed (or the wait failed): cancel the connect and wait for it to
	// end, since ov lives on this stack.
	windows.CancelIoEx(h, &ov)
	var n uint32
	windows.GetOverlappedResult(h, &ov, &n, true)
	if err != nil {
		return fmt.Errorf("waiting for a client on %s%s: %w", pipePrefix, l.name, err)
	}
	return net.ErrClosed
}

// Close stops Accept and closes the waiting instance; connections
// accepted stay open.
func (l *pipeListener) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	l.closed = true
	windows.SetEvent(l.stop)
	l.mu.Unlock()
	l.accepts.Lock() // Accept has left
	defer l.accepts.Unlock()
	l.mu.Lock()
	defer l.mu.Unlock()
	var err error
	if l.next != 0 {
		err = windows.CloseHandle(l.next)
		l.next = 0
	}
	windows.CloseHandle(l.stop)
	return err
}

func (l *pipeListener) Addr() net.Addr { return pipeAddr(l.name) }

// DialPipe connects to the named pipe \\.\pipe\name on this machine, for
// ListenPipe's listener: the stream of a pipe: address, or the rendezvous
// of a shm: address (see NewTransport). While every instance is busy it
// waits, until ctx ends. Only Windows has it.
func DialPipe(ctx context.Context, name string) (net.Conn, error) {
	if p := checkPipeName(name); p != "" {
		return nil, &AddrError{Addr: "pipe:" + name, Problem: p, Want: "pipe:name"}
	}
	c, err := dialPipeName(ctx, name)
	if err != nil {
		return nil, fmt.Errorf("capnshm: dialing pipe:%s: %w", name, err)
	}
	return c, nil
}

func dialPipeName(ctx context.Context, name string) (*pipeConn, error) {
	path, err := windows.UTF16PtrFromString(pipePrefix + name)
	if err != nil {
		return nil, fmt.Errorf("pipe name %q: %w", name, err)
	}
	for {
		h, err := windows.CreateFile(path, dialAccess, 0, nil, windows.OPEN_EXISTING,
			windows.FILE_FLAG_OVERLAPPED|windows.SECURITY_SQOS_PRESENT|windows.SECURITY_IDENTIFICATION, 0)
		if err == nil {
			return newPipeConn(h, name, false), nil
		}
		if err != windows.ERROR_PIPE_BUSY {
			return nil, &os.PathError{Op: "open", Path: pipePrefix + name, Err: err}
		}
		// Every instance is taken: wait for one, a slice at a time, so
		// that ctx is seen.
		wait := 50 * time.Millisecond
		if d, ok := ctx.Deadline(); ok {
			wait = min(wait, time.Until(d))
		}
		if ctx.Err() != nil || wait <= 0 {
			return nil, fmt.Errorf("every instance of %s%s is busy: %w", pipePrefix, name, context.Cause(ctx))
		}
		procWaitNamedPipeW.Call(uintptr(unsafe.Pointer(path)), uintptr(max(wait.Milliseconds(), 1)))
	}
}

// currentUserSID returns this process's user, as a SID string.
func currentUserSID() (string, error) {
	u, err := windows.GetCurrentProcessToken().GetTokenUser()
	if err != nil {
		return "", fmt.Errorf("this process's user: %w", err)
	}
	return u.User.Sid.String(), nil
}

// processUserSID returns the user of process (opened with
// PROCESS_QUERY_LIMITED_INFORMATION), as a SID string.
func processUserSID(process windows.Handle) (string, error) {
	var tok windows.Token
	if err := windows.OpenProcessToken(process, windows.TOKEN_QUERY, &tok); err != nil {
		return "", fmt.Errorf("OpenProcessToken: %w", err)
	}
	defer tok.Close()
	u, err := tok.GetTokenUser()
	if err != nil {
		return "", fmt.Errorf("the token's user: %w", err)
	}
	return u.User.Sid.String(), nil
}
