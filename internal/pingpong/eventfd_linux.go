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
	var buf [8]byte
	start := time.Now()
	last := start
	for i := 0; i < n; i++ {
		if _, err := unix.Write(ping, one); err != nil {
			return 0, fmt.Errorf("eventfd write: %w", err)
		}
		if _, err := unix.Read(pong, buf[:]); err != nil {
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

// EventfdServer answers n round trips of EventfdClient.
func EventfdServer(ping, pong int, n int) error {
	var buf [8]byte
	for i := 0; i < n; i++ {
		if _, err := unix.Read(ping, buf[:]); err != nil {
			return fmt.Errorf("eventfd read: %w", err)
		}
		if _, err := unix.Write(pong, one); err != nil {
			return fmt.Errorf("eventfd write: %w", err)
		}
	}
	return nil
}

// rawRead reads with RawSyscall: the thread blocks in the kernel without
// telling the Go scheduler, so no P hand-off happens on the way in or out.
// Only for measuring the kernel's own wake-up latency.
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

// KernelEventfdClient is EventfdClient with reads and writes that bypass the
// Go scheduler (RawSyscall): the kernel's wake-up latency, what a C program
// would see. The calling goroutine keeps its OS thread blocked; run it only
// in a process that does nothing else.
func KernelEventfdClient(ping, pong int, n int, samples []time.Duration) (time.Duration, error) {
	var buf [8]byte
	start := time.Now()
	last := start
	for i := 0; i < n; i++ {
		if err := rawWrite(ping, one); err != nil {
			return 0, fmt.Errorf("eventfd write: %w", err)
		}
		if err := rawRead(pong, buf[:]); err != nil {
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

// KernelEventfdServer answers n round trips of KernelEventfdClient.
func KernelEventfdServer(ping, pong int, n int) error {
	var buf [8]byte
	for i := 0; i < n; i++ {
		if err := rawRead(ping, buf[:]); err != nil {
			return fmt.Errorf("eventfd read: %w", err)
		}
		if err := rawWrite(pong, one); err != nil {
			return fmt.Errorf("eventfd write: %w", err)
		}
	}
	return nil
}
