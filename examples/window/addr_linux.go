package main

import "fmt"

// defaultAddr: shared memory, negotiated on a Linux abstract unix socket.
const defaultAddr = "shm-abstract:capnshm-window"

// privateAddr is an address for one run of the demo or a test.
func privateAddr(tag string) string { return fmt.Sprintf("shm-abstract:capnshm-window-%s", tag) }
