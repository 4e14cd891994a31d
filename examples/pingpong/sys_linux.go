package main

import (
	"fmt"
	"time"

	"github.com/capnshm/capnshm/internal/pingpong"
	"golang.org/x/sys/unix"
)

// eventfdFloor times n round trips over two blocking eventfds with a child.
func eventfdFloor(n int, samples []time.Duration) (time.Duration, error) {
	ping, pong, err := pingpong.Eventfds()
	if err != nil {
		return 0, err
	}
	defer unix.Close(ping)
	defer unix.Close(pong)
	c, err := startChild("eventfd", []uintptr{uintptr(ping), uintptr(pong)}, 0)
	if err != nil {
		return 0, err
	}
	defer c.kill()
	if _, err := c.line(); err != nil {
		return 0, err
	}
	d, err := pingpong.EventfdClient(ping, pong, n, samples)
	if err != nil {
		return 0, err
	}
	return d, c.wait()
}

func eventfdChild(hs []uintptr, n int) error {
	if len(hs) != 2 {
		return fmt.Errorf("want 2 eventfds, got %d handles", len(hs))
	}
	fmt.Println("ready")
	return pingpong.EventfdServer(int(hs[0]), int(hs[1]), n)
}

// cpuTime returns the CPU time this process has used (getrusage).
func cpuTime() (time.Duration, error) {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		return 0, fmt.Errorf("getrusage: %w", err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), nil
}
