package main

import "fmt"

// defaultAddr: shared memory, negotiated on the named pipe
// \\.\pipe\capnshm-window.
const defaultAddr = "shm:capnshm-window"

// privateAddr is an address for one run of the demo or a test.
func privateAddr(tag string) string { return fmt.Sprintf("shm:capnshm-window-%s", tag) }
