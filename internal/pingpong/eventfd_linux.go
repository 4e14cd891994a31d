package pingpong

import (
	"encoding/binary"
	"fmt"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Eventfds creates the two blocking eventfds of the eventfd floor: the
// client writes ping and reads pong, the server the reverse.
func Eventfds() (ping, pong int, err error) {
	if ping, err = unix.Eventfd(0, unix.EFD_CLOEXEC); err != nil {
		return 0, 0, fmt.Errorf("eventfd: %w", err)
	}
	if pong, err = unix.Eventfd(0, unix.EFD_CLOEXEC); err != nil {
		unix.Close(ping)
		return 0, 0, fmt.Errorf("eventfd: %w", err)
	}
	return ping, pong, nil
}

var one = binary.NativeEndian.AppendUint64(nil, 1)

// EventfdClient times n round trips over two blocking eventfds, both sides
// blocked in read(2) between messages: the floor for any doorbell.
func EventfdClient(ping, pong int, n int, samples []time.Duration) (time.Duration, error) {
	return eventfdClient(ping, pong, n, samples, goRead, goWrite)
}

// EventfdServer answers n round trips of EventfdClient.
func EventfdServer(ping, pong int, n int) error {
	return eventfdServer(ping, pong, n, goRead, goWrite)
}

// KernelEventfdClient is EventfdClient with reads and writes that bypass the
// Go scheduler (RawSyscall): the kernel's wake-up latency, what a C program
// would see. The calling goroutine keeps its OS thread blocked; run it only
// in a process that does nothing else.
func KernelEventfdClient(ping, pong int, n int, samples []time.Duration) (time.Duration, error) {
	return eventfdClient(ping, pong, n, samples, rawRead, rawWrite)
}

// KernelEventfdServer answers n round trips of KernelEventfdClient.
func KernelEventfdServer(ping, pong int, n int) error {
	return eventfdServer(ping, pong, n, rawRead, rawWrite)
}

type ioFunc func(fd int, b []byte) error

func goRead(fd int, b []byte) error  { _, err := unix.Read(fd, b); return err }
func goWrite(fd int, b []byte) error { _, err := unix.Write(fd, b); return err }

// rawRead reads with RawSyscall: the thread blocks in the kernel without
// telling the Go scheduler, so no P hand-off happens on the way in or out.
func rawRead(fd int, b []byte) error {
	_, _, e := unix.RawSyscall(unix.SYS_READ, uintptr(fd), uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)))
	if e != 0 {
		return e
	}
	return nil
}

func rawWrite(fd int, b []byte) error {
	_, _, e := unix.RawSyscall(unix.SYS_WRITE, uintptr(fd), uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)))
	if e != 0 {
		return e
	}
	return nil
}

func eventfdClient(ping, pong int, n int, samples []time.Duration, read, write ioFunc) (time.Duration, error) {
	var buf [8]byte
	start := time.Now()
	last := start
	for i := 0; i < n; i++ {
		if err := write(ping, one); err != nil {
			return 0, fmt.Errorf("eventfd write: %w", err)
		}
		if err := read(pong, buf[:]); err != nil {
			return 0, fmt.Errorf("eventfd read: %w", err)
		}
		if samples != nil {
			now := time.Now()
			samples[i] = now.Sub(last)
			last = now
		}
	}
	return time.Since(start), nil
}

func eventfdServer(ping, pong int, n int, read, write ioFunc) error {
	var buf [8]byte
	for i := 0; i < n; i++ {
		if err := read(ping, buf[:]); err != nil {
			return fmt.Errorf("eventfd read: %w", err)
		}
		if err := write(pong, one); err != nil {
			return fmt.Errorf("eventfd write: %w", err)
		}
	}
	return nil
}
