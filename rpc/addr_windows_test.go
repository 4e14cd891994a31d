package rpc_test

import (
	"strings"

	"github.com/capnshm/capnshm/rpc"
)

// systemGoodAddrs are the forms whose meaning is Windows': shm: and pipe:
// name a named pipe, \\.\pipe\NAME.
func systemGoodAddrs(long string) []addrCase {
	return []addrCase{
		{"shm:app", rpc.SchemeShm, "app", "pipe", `\\.\pipe\app`, true},
		{"shm:/run/app.sock", rpc.SchemeShm, "/run/app.sock", "pipe", `\\.\pipe\/run/app.sock`, true},
		{"pipe:app", rpc.SchemePipe, "app", "pipe", `\\.\pipe\app`, false},
		{"pipe:" + strings.Repeat("y", 247), rpc.SchemePipe, strings.Repeat("y", 247), "pipe", `\\.\pipe\` + strings.Repeat("y", 247), false},
	}
}

// systemBadAddrs are the pipe names Windows refuses.
func systemBadAddrs(long string) []badAddr {
	return []badAddr{
		{"shm:", `capnshm: address "shm:" has no pipe name: want shm:name`},
		{`shm:a\\b`, `has a backslash in its pipe name`},
		{"pipe:", `capnshm: address "pipe:" has no pipe name: want pipe:name`},
		{"pipe:" + strings.Repeat("y", 248), `has a pipe name of 248 bytes, over the limit of 247`},
		{"pipe:a\x00b", `has a NUL byte in its pipe name`},
	}
}
