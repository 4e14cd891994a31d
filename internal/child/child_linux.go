package child

import (
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// passHandles hands file descriptors to the child as ExtraFiles, which appear
// there as descriptors 3, 4, ... in order. The child gets duplicates, which
// the returned function closes once the child has started: the caller's
// descriptors stay open and owned by the caller.
func passHandles(cmd *exec.Cmd, handles []uintptr) (string, func(), error) {
	var names []string
	var files []*os.File
	done := func() {
		for _, f := range files {
			f.Close()
		}
	}
	for i, h := range handles {
		dup, err := unix.FcntlInt(h, unix.F_DUPFD_CLOEXEC, 0)
		if err != nil {
			done()
			return "", nil, fmt.Errorf("duplicating descriptor %d: %w", h, err)
		}
		f := os.NewFile(uintptr(dup), fmt.Sprintf("peer-handle-%d", i))
		files = append(files, f)
		cmd.ExtraFiles = append(cmd.ExtraFiles, f)
		names = append(names, strconv.Itoa(3+i))
	}
	return strings.Join(names, ","), done, nil
}

// Take duplicates the descriptor h of process pid into this one
// (pidfd_getfd), for handles that flow from a child to its parent. The caller
// owns the result.
func Take(pid int, h uintptr) (uintptr, error) {
	pidfd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return 0, fmt.Errorf("pidfd_open(%d): %w", pid, err)
	}
	defer unix.Close(pidfd)
	fd, err := unix.PidfdGetfd(pidfd, int(h), 0)
	if err != nil {
		return 0, fmt.Errorf("pidfd_getfd(%d, %d): %w", pid, h, err)
	}
	return uintptr(fd), nil
}
