package rpc_test

import "github.com/capnshm/capnshm/rpc"

// systemGoodAddrs are the forms whose meaning is Linux's: shm: names a
// unix socket file.
func systemGoodAddrs(long string) []addrCase {
	return []addrCase{
		{"shm:/run/app.sock", rpc.SchemeShm, "/run/app.sock", "unix", "/run/app.sock", true},
		{"shm:" + long[:107], rpc.SchemeShm, long[:107], "unix", long[:107], true},
		{"pipe:app", rpc.SchemePipe, "app", "pipe", `\\.\pipe\app`, false},
	}
}

// systemBadAddrs are the forms Linux refuses for what shm: names here.
func systemBadAddrs(long string) []badAddr {
	return []badAddr{
		{"shm:", `capnshm: address "shm:" has no path: want shm:/path/to.sock`},
		{"shm:@name", `capnshm: address "shm:@name" names an abstract socket: want shm-abstract:name`},
		{"shm:" + long, `has a path of 108 bytes, over the unix socket limit of 107`},
	}
}
