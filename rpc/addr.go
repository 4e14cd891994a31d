package rpc

import (
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
)

// Scheme is the part of an address before the first colon: what kind of
// socket it names and whether the connection may use shared memory.
type Scheme string

// Address schemes. ParseAddr also takes a bare host:port, as SchemeTCP.
const (
	// SchemeUnix, "unix:/path": a unix socket file; the stream transport.
	SchemeUnix Scheme = "unix"
	// SchemeUnixAbstract, "unix-abstract:name": a Linux abstract unix
	// socket (Go writes it "@name"); the stream transport.
	SchemeUnixAbstract Scheme = "unix-abstract"
	// SchemeTCP, "tcp:host:port" or "host:port": the stream transport.
	SchemeTCP Scheme = "tcp"
	// SchemeShm: shared memory, negotiated over the system's rendezvous:
	// on Linux "shm:/path", the unix socket file at path; on Windows
	// "shm:NAME", the named pipe \\.\pipe\NAME.
	SchemeShm Scheme = "shm"
	// SchemeShmAbstract, "shm-abstract:name": shared memory over a Linux
	// abstract unix socket.
	SchemeShmAbstract Scheme = "shm-abstract"
	// SchemePipe, "pipe:NAME": a Windows named pipe, \\.\pipe\NAME; the
	// stream transport.
	SchemePipe Scheme = "pipe"
)

// pipePrefix makes a named pipe's path from its name.
const pipePrefix = `\\.\pipe\`

// maxPipeName is the longest pipe name: a pipe's path is at most 256
// characters.
const maxPipeName = 256 - len(pipePrefix)

// maxUnixPath is the longest unix socket path or abstract name: sun_path
// holds 108 bytes, including a terminating (or, for abstract names,
// leading) NUL.
const maxUnixPath = 107

// ErrBadAddress: an address string is malformed. The error, an *AddrError,
// quotes the address and says what was expected.
var ErrBadAddress = errors.New("capnshm: bad address")

// AddrError is the error ParseAddr returns for a malformed address. It
// matches ErrBadAddress with errors.Is.
type AddrError struct {
	Addr    string // the address as given
	Problem string // what is wrong with it
	Want    string // the forms that would have been accepted
}

func (e *AddrError) Error() string {
	return fmt.Sprintf("capnshm: address %q %s: want %s", e.Addr, e.Problem, e.Want)
}

// Is reports whether target is ErrBadAddress.
func (e *AddrError) Is(target error) bool { return target == ErrBadAddress }

// allForms lists every address form, for errors.
const allForms = "unix:/path, unix-abstract:name, tcp:host:port, host:port, shm:/path, shm-abstract:name or (Windows) pipe:name"

// Addr is a parsed address. It implements net.Addr: Network is the
// network ("unix", "tcp", or "pipe" for a Windows named pipe) and String
// the address in the form ParseAddr takes, so that a Server's Addr can be
// passed to Dial.
type Addr struct {
	Scheme Scheme
	// Endpoint is what follows the scheme: the socket path (SchemeUnix,
	// SchemeShm on Linux), the abstract name without any "@"
	// (SchemeUnixAbstract, SchemeShmAbstract), host:port (SchemeTCP) or
	// the pipe name without \\.\pipe\ (SchemePipe, SchemeShm on Windows).
	Endpoint string
}

// String returns the address as ParseAddr takes it, with its scheme:
// "shm:/run/app.sock", "tcp:127.0.0.1:4000".
func (a Addr) String() string { return string(a.Scheme) + ":" + a.Endpoint }

// Network returns the network of the address: "unix", "tcp", or "pipe"
// (a Windows named pipe: pipe: addresses, and shm: on Windows).
func (a Addr) Network() string {
	switch {
	case a.Scheme == SchemeTCP:
		return "tcp"
	case a.Scheme == SchemePipe, a.Scheme == SchemeShm && shmOverPipe:
		return "pipe"
	}
	return "unix"
}

// SharedMemory reports whether the address asks for shared memory (the
// shm: and shm-abstract: schemes).
func (a Addr) SharedMemory() bool { return a.Scheme == SchemeShm || a.Scheme == SchemeShmAbstract }

// Abstract reports whether the address names a Linux abstract socket.
func (a Addr) Abstract() bool {
	return a.Scheme == SchemeUnixAbstract || a.Scheme == SchemeShmAbstract
}

// Net returns the network and address to give Go's net.Dial or
// net.Listen: ("unix", "/path"), ("unix", "@name") or ("tcp",
// "host:port"); for a named pipe ("pipe", `\\.\pipe\NAME`), which
// DialPipe and ListenPipe take by name.
func (a Addr) Net() (network, address string) {
	switch {
	case a.Abstract():
		return "unix", "@" + a.Endpoint
	case a.Network() == "pipe":
		return "pipe", pipePrefix + a.Endpoint
	}
	return a.Network(), a.Endpoint
}

// ParseAddr parses an address as Cap'n Proto users write them:
//
//	                         Linux                        Windows
//	unix:/path/to.sock       a unix socket file           the same (AF_UNIX)
//	unix-abstract:name       an abstract unix socket      -
//	tcp:host:port            TCP ("*" or an empty host: every interface)
//	host:port                the same
//	shm:/path/to.sock        shared memory, rendezvous    -
//	                         on a unix socket file
//	shm:NAME                 (the socket file NAME)       shared memory, rendezvous
//	                                                      on the pipe \\.\pipe\NAME
//	shm-abstract:name        shared memory, rendezvous    -
//	                         on an abstract socket
//	pipe:NAME                -                            the named pipe \\.\pipe\NAME
//
// Every form parses on every system; Listen and Dial refuse the forms
// marked - with an error wrapping ErrUnsupported. A shm: address's
// endpoint is checked as what it names on this system: a socket path
// (at most 107 bytes) on Linux, a pipe name (no backslash, at most 247
// bytes) on Windows.
//
// A malformed address gives an *AddrError (matching ErrBadAddress) that
// quotes it and says what was expected.
func ParseAddr(s string) (Addr, error) {
	bad := func(problem, want string) (Addr, error) {
		return Addr{}, &AddrError{Addr: s, Problem: problem, Want: want}
	}
	if s == "" {
		return bad("is empty", allForms)
	}
	scheme, rest, ok := strings.Cut(s, ":")
	if !ok {
		return bad("has no scheme and no port", allForms)
	}
	if strings.HasPrefix(rest, "//") && knownScheme(Scheme(scheme)) {
		// shm://tmp/x.sock would otherwise be the path //tmp/x.sock.
		want := scheme + ":/" + strings.TrimLeft(rest, "/") // a path
		if Scheme(scheme) == SchemeTCP || Scheme(scheme) == SchemeUnixAbstract || Scheme(scheme) == SchemeShmAbstract || Scheme(scheme) == SchemePipe {
			want = scheme + ":" + strings.TrimLeft(rest, "/")
		}
		return bad("is written URL-style (scheme://)", want+" (capnshm addresses are scheme:rest, as Cap'n Proto writes them)")
	}
	switch Scheme(scheme) {
	case SchemePipe:
		if p := checkPipeName(rest); p != "" {
			return bad(p, "pipe:name")
		}
		return Addr{Scheme: SchemePipe, Endpoint: rest}, nil
	case SchemeShm:
		if shmOverPipe {
			if p := checkPipeName(rest); p != "" {
				return bad(p, "shm:name (the pipe \\\\.\\pipe\\name)")
			}
			return Addr{Scheme: SchemeShm, Endpoint: rest}, nil
		}
		fallthrough
	case SchemeUnix:
		want := scheme + ":/path/to.sock"
		switch {
		case rest == "":
			return bad("has no path", want)
		case strings.HasPrefix(rest, "@"):
			return bad("names an abstract socket", scheme+"-abstract:"+rest[1:])
		case strings.IndexByte(rest, 0) >= 0:
			return bad("has a NUL byte in its path", want)
		case len(rest) > maxUnixPath:
			return bad(fmt.Sprintf("has a path of %d bytes, over the unix socket limit of %d", len(rest), maxUnixPath), "a shorter path")
		}
		return Addr{Scheme: Scheme(scheme), Endpoint: rest}, nil
	case SchemeUnixAbstract, SchemeShmAbstract:
		want := scheme + ":name"
		switch {
		case rest == "":
			return bad("has no name", want)
		case strings.HasPrefix(rest, "@"):
			return bad("has an \"@\" before its name", want+" (the name without \"@\")")
		case len(rest) > maxUnixPath:
			return bad(fmt.Sprintf("has a name of %d bytes, over the abstract socket limit of %d", len(rest), maxUnixPath), "a shorter name")
		}
		return Addr{Scheme: Scheme(scheme), Endpoint: rest}, nil
	case SchemeTCP:
		hp, err := hostPort(rest)
		if err != "" {
			return bad(err, "tcp:host:port")
		}
		return Addr{Scheme: SchemeTCP, Endpoint: hp}, nil
	}
	// A bare host:port.
	hp, err := hostPort(s)
	if err != "" {
		if isSchemeName(scheme) && rest != "" && !strings.Contains(rest, "]") {
			return bad(fmt.Sprintf("has an unknown scheme %q", scheme), allForms)
		}
		return bad(err, "host:port or "+allForms)
	}
	return Addr{Scheme: SchemeTCP, Endpoint: hp}, nil
}

// knownScheme reports whether s is one of the address schemes.
func knownScheme(s Scheme) bool {
	switch s {
	case SchemeUnix, SchemeUnixAbstract, SchemeTCP, SchemeShm, SchemeShmAbstract, SchemePipe:
		return true
	}
	return false
}

// hostPort checks host:port and returns it with "*" turned into the empty
// host, or a description of what is wrong.
func hostPort(s string) (string, string) {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		if ae, ok := err.(*net.AddrError); ok {
			return "", "is not host:port (" + ae.Err + ")"
		}
		return "", "is not host:port"
	}
	if port == "" {
		return "", "has no port"
	}
	n, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		return "", fmt.Sprintf("has port %q, not a number from 0 to 65535", port)
	}
	if host == "*" {
		host = ""
	}
	return net.JoinHostPort(host, strconv.FormatUint(n, 10)), ""
}

// isSchemeName reports whether s looks like a URL scheme (letters, digits,
// "+", "-", "." after a first letter) rather than a host name or address.
func isSchemeName(s string) bool {
	if s == "" || !(s[0] >= 'a' && s[0] <= 'z' || s[0] >= 'A' && s[0] <= 'Z') {
		return false
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '+' || c == '-' || c == '.') {
			return false
		}
	}
	return true
}

// checkPipeName checks a pipe name (what follows \\.\pipe\), or returns
// what is wrong with it.
func checkPipeName(name string) string {
	switch {
	case name == "":
		return "has no pipe name"
	case len(name) > maxPipeName:
		return fmt.Sprintf("has a pipe name of %d bytes, over the limit of %d", len(name), maxPipeName)
	}
	for i := 0; i < len(name); i++ {
		switch name[i] {
		case '\\':
			return "has a backslash in its pipe name"
		case 0:
			return "has a NUL byte in its pipe name"
		}
	}
	return ""
}
