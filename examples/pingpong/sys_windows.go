package main

import (
	"fmt"
	"time"

	"golang.org/x/sys/windows"
)

// eventfdFloor: Windows has no eventfd.
func eventfdFloor(int, []time.Duration) (time.Duration, error) {
	return 0, fmt.Errorf("eventfd floor: %w (no eventfd on Windows)", errUnsupported)
}

func eventfdChild([]uintptr, int) error {
	return fmt.Errorf("eventfd floor: %w (no eventfd on Windows)", errUnsupported)
}

// cpuTime returns the CPU time this process has used (GetProcessTimes).
func cpuTime() (time.Duration, error) {
	var creation, exit, kernel, user windows.Filetime
	if err := windows.GetProcessTimes(windows.CurrentProcess(), &creation, &exit, &kernel, &user); err != nil {
		return 0, fmt.Errorf("GetProcessTimes: %w", err)
	}
	ft := func(f windows.Filetime) time.Duration {
		return time.Duration((int64(f.HighDateTime)<<32 | int64(f.LowDateTime)) * 100)
	}
	return ft(kernel) + ft(user), nil
}
