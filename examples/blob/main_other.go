//go:build !linux && !windows

// Command blob sends a large blob between two processes over shared memory
// and over a stream. It needs Linux or Windows: capnshm's shared-memory
// transport has a rendezvous for those two systems only.
package main

import (
	"fmt"
	"os"
	"runtime"
)

func main() {
	fmt.Fprintf(os.Stderr, "blob: needs Linux or Windows: capnshm's shared-memory transport has no rendezvous for %s\n", runtime.GOOS)
	os.Exit(1)
}
