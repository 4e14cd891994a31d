//go:build !linux

// Command blob sends a large blob between two processes over shared memory
// and over a unix socket. It needs Linux: the shared-memory transport is
// not built on other systems yet (on Windows its rendezvous, named pipes
// and DuplicateHandle, is still to do).
package main

import (
	"fmt"
	"os"
	"runtime"
)

func main() {
	fmt.Fprintf(os.Stderr, "blob: needs Linux: capnshm's shared-memory transport is not built on %s yet\n", runtime.GOOS)
	os.Exit(1)
}
