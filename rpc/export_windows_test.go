package rpc

import "net"

// PipeHandle returns the handle of c, a named-pipe connection from
// DialPipe or ListenPipe. Tests only.
func PipeHandle(c net.Conn) uintptr { return uintptr(c.(*pipeConn).h) }
