// Command bench measures capnshm's transports; it runs on Linux only.
package main

import (
	"fmt"
	"os"
)

func main() {
	fmt.Fprintln(os.Stderr, "bench: needs Linux (the floors and workloads use eventfd, memfd and pidfd)")
	os.Exit(1)
}
