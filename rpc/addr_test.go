package rpc_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/capnshm/capnshm/rpc"
)

func TestParseAddr(t *testing.T) {
	long := strings.Repeat("x", 108)
	good := []addrCase{
		{"unix:/run/app.sock", rpc.SchemeUnix, "/run/app.sock", "unix", "/run/app.sock", false},
		{"unix:rel/app.sock", rpc.SchemeUnix, "rel/app.sock", "unix", "rel/app.sock", false},
		{"unix-abstract:app", rpc.SchemeUnixAbstract, "app", "unix", "@app", false},
		{"tcp:127.0.0.1:4000", rpc.SchemeTCP, "127.0.0.1:4000", "tcp", "127.0.0.1:4000", false},
		{"tcp:localhost:0", rpc.SchemeTCP, "localhost:0", "tcp", "localhost:0", false},
		{"tcp:[::1]:80", rpc.SchemeTCP, "[::1]:80", "tcp", "[::1]:80", false},
		{"tcp:*:5000", rpc.SchemeTCP, ":5000", "tcp", ":5000", false},
		{"tcp::5000", rpc.SchemeTCP, ":5000", "tcp", ":5000", false},
		{"127.0.0.1:4000", rpc.SchemeTCP, "127.0.0.1:4000", "tcp", "127.0.0.1:4000", false},
		{"localhost:4000", rpc.SchemeTCP, "localhost:4000", "tcp", "localhost:4000", false},
		{"[::1]:4000", rpc.SchemeTCP, "[::1]:4000", "tcp", "[::1]:4000", false},
		{"*:4000", rpc.SchemeTCP, ":4000", "tcp", ":4000", false},
		{"shm-abstract:app", rpc.SchemeShmAbstract, "app", "unix", "@app", true},
	}
	good = append(good, systemGoodAddrs(long)...)
	for _, g := range good {
		a, err := rpc.ParseAddr(g.in)
		if err != nil {
			t.Errorf("ParseAddr(%q): %v", g.in, err)
			continue
		}
		network, address := a.Net()
		if a.Scheme != g.scheme || a.Endpoint != g.endpoint || network != g.network || address != g.goAddr || a.SharedMemory() != g.shm || a.Network() != g.network {
			t.Errorf("ParseAddr(%q) = %+v (net %s %s, shm %v), want %s %s (net %s %s, shm %v)", g.in, a, network, address, a.SharedMemory(), g.scheme, g.endpoint, g.network, g.goAddr, g.shm)
		}
		// String round-trips.
		b, err := rpc.ParseAddr(a.String())
		if err != nil || b != a {
			t.Errorf("ParseAddr(%q.String() = %q) = %+v, %v", g.in, a.String(), b, err)
		}
	}
	bad := []badAddr{
		{"", `capnshm: address "" is empty: want unix:/path`},
		{"unix:", `capnshm: address "unix:" has no path: want unix:/path/to.sock`},
		{"unix:@name", `capnshm: address "unix:@name" names an abstract socket: want unix-abstract:name`},
		{"unix:/a\x00b", `has a NUL byte in its path`},
		{"unix-abstract:", `capnshm: address "unix-abstract:" has no name: want unix-abstract:name`},
		{"shm-abstract:", `capnshm: address "shm-abstract:" has no name: want shm-abstract:name`},
		{"shm-abstract:@x", `has an "@" before its name`},
		{"unix-abstract:" + long, `over the abstract socket limit`},
		{"tcp:", `capnshm: address "tcp:" is not host:port (missing port in address): want tcp:host:port`},
		{"tcp:localhost", `is not host:port (missing port in address): want tcp:host:port`},
		{"tcp:localhost:", `has no port: want tcp:host:port`},
		{"tcp:localhost:http", `has port "http", not a number from 0 to 65535`},
		{"tcp:localhost:70000", `has port "70000", not a number`},
		{"tcp:1.2.3.4:5:6", `is not host:port (too many colons in address)`},
		{"localhost", `capnshm: address "localhost" has no scheme and no port: want unix:/path`},
		{"/run/app.sock", `has no scheme and no port`},
		{"udp:1.2.3.4:5", `capnshm: address "udp:1.2.3.4:5" has an unknown scheme "udp": want unix:/path`},
		{"http://example.com", `has an unknown scheme "http"`},
		{"foo:bar", `has an unknown scheme "foo"`},
		{"::1:80", `is not host:port (too many colons in address): want host:port or unix:/path`},
		{"localhost:", `has no port`},
		{"shm://tmp/x.sock", `capnshm: address "shm://tmp/x.sock" is written URL-style (scheme://): want shm:/tmp/x.sock`},
		{"unix:///run/app.sock", `is written URL-style (scheme://): want unix:/run/app.sock`},
		{"tcp://127.0.0.1:4000", `is written URL-style (scheme://): want tcp:127.0.0.1:4000`},
		{"shm-abstract://name", `want shm-abstract:name`},
	}
	bad = append(bad, systemBadAddrs(long)...)
	for _, b := range bad {
		a, err := rpc.ParseAddr(b.in)
		if err == nil {
			t.Errorf("ParseAddr(%q) = %+v, want an error", b.in, a)
			continue
		}
		var ae *rpc.AddrError
		if !errors.Is(err, rpc.ErrBadAddress) || !errors.As(err, &ae) || ae.Addr != b.in {
			t.Errorf("ParseAddr(%q): %v (%T), want an *AddrError matching ErrBadAddress", b.in, err, err)
		}
		if !strings.Contains(err.Error(), b.want) {
			t.Errorf("ParseAddr(%q): %q, want it to contain %q", b.in, err, b.want)
		}
	}
}

// addrCase is an address ParseAddr takes, and what it gives.
type addrCase struct {
	in       string
	scheme   rpc.Scheme
	endpoint string
	network  string
	goAddr   string
	shm      bool
}

// badAddr is an address ParseAddr refuses, and a part of the error.
type badAddr struct{ in, want string }
