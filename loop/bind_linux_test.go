package loop_test

import (
	"io"
	"net"
	"os"
	"testing"

	"golang.org/x/sys/unix"
)

// connections are the streams the ping benchmark runs over.
var connections = []connection{{"pipe", pipePair}, {"unix", unixPair}}

// unixPair is a connected pair of unix stream sockets.
func unixPair(t testing.TB) (io.ReadWriteCloser, io.ReadWriteCloser) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	conn := func(fd int) net.Conn {
		f := os.NewFile(uintptr(fd), "socketpair")
		defer f.Close()
		c, err := net.FileConn(f)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	return conn(fds[0]), conn(fds[1])
}
