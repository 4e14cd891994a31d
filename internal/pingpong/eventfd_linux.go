package pingpong

import (
	"encoding/binary"
	"fmt"
	"time"

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
