package rpc

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"syscall"

	"golang.org/x/sys/unix"
)

// listenSocket opens the listening socket of a. A unix socket file left
// behind by a server that died (nothing accepts on it) is taken over:
// removed and bound again. A file that accepts connections belongs to a
// live server, and a path that is not a socket is someone else's: both are
// ErrAddrInUse, and nothing is removed.
//
// The check and the takeover run under an exclusive flock of the socket's
// directory, so that two servers starting at once on the same stale file
// cannot both remove it: the second finds the first's live socket.
func listenSocket(a Addr, _ *config) (net.Listener, error) {
	network, address := a.Net()
	if a.Network() != "unix" || a.Abstract() {
		l, err := net.Listen(network, address)
		if errors.Is(err, syscall.EADDRINUSE) {
			return nil, fmt.Errorf("%w: %s: %w", ErrAddrInUse, a, err)
		}
		return l, err
	}
	unlock, err := lockDir(filepath.Dir(address))
	if err != nil {
		return nil, err
	}
	defer unlock()
	l, err := net.Listen(network, address)
	if !errors.Is(err, syscall.EADDRINUSE) {
		return l, err
	}
	if err := checkStale(a, address); err != nil {
		return nil, err
	}
	if err := os.Remove(address); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("capnshm: removing the stale socket file of %s: %w", a, err)
	}
	return net.Listen(network, address)
}

// checkStale returns nil if path is a unix socket that nobody accepts on,
// and ErrAddrInUse (saying why) otherwise.
func checkStale(a Addr, path string) error {
	fi, err := os.Lstat(path)
	if err != nil {
		return fmt.Errorf("%w: %s: %w", ErrAddrInUse, a, err)
	}
	if fi.Mode().Type() != fs.ModeSocket {
		return fmt.Errorf("%w: %s: %s exists and is not a socket (a %s); it is not removed", ErrAddrInUse, a, path, fileKind(fi.Mode()))
	}
	// Probe with a raw non-blocking connect: ECONNREFUSED means no listener
	// is bound to the file, EAGAIN means one is, with its backlog full.
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("capnshm: probing the socket file of %s: %w", a, os.NewSyscallError("socket", err))
	}
	defer unix.Close(fd)
	switch err := unix.Connect(fd, &unix.SockaddrUnix{Name: path}); {
	case errors.Is(err, unix.ECONNREFUSED):
		return nil
	case err == nil, errors.Is(err, unix.EAGAIN), errors.Is(err, unix.EINPROGRESS):
		return fmt.Errorf("%w: %s: another server accepts connections on %s", ErrAddrInUse, a, path)
	default:
		return fmt.Errorf("%w: %s: probing %s: %w", ErrAddrInUse, a, path, os.NewSyscallError("connect", err))
	}
}

// fileKind names the type of a file for errors.
func fileKind(m fs.FileMode) string {
	switch m.Type() {
	case 0:
		return "regular file"
	case fs.ModeDir:
		return "directory"
	case fs.ModeSymlink:
		return "symbolic link"
	case fs.ModeNamedPipe:
		return "named pipe"
	case fs.ModeDevice, fs.ModeDevice | fs.ModeCharDevice:
		return "device"
	}
	return m.Type().String()
}

// lockDir takes an exclusive flock of dir and returns its release.
func lockDir(dir string) (func(), error) {
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("capnshm: opening the socket's directory %s: %w", dir, &fs.PathError{Op: "open", Path: dir, Err: err})
	}
	for {
		err = unix.Flock(fd, unix.LOCK_EX)
		if err != unix.EINTR {
			break
		}
	}
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("capnshm: locking the socket's directory %s: %w", dir, os.NewSyscallError("flock", err))
	}
	return func() { unix.Close(fd) }, nil // closing releases the lock
}
