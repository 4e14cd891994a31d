package child

import (
	"os/exec"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/windows"
)

// passHandles makes the handles inheritable and lists them in the child's
// explicit inheritance list; inherited handles keep their values in the child.
func passHandles(cmd *exec.Cmd, handles []uintptr) (string, func(), error) {
	if len(handles) == 0 {
		return "", func() {}, nil
	}
	var names []string
	attr := &syscall.SysProcAttr{}
	for _, h := range handles {
		if err := windows.SetHandleInformation(windows.Handle(h), windows.HANDLE_FLAG_INHERIT, windows.HANDLE_FLAG_INHERIT); err != nil {
			return "", nil, err
		}
		attr.AdditionalInheritedHandles = append(attr.AdditionalInheritedHandles, syscall.Handle(h))
		names = append(names, strconv.FormatUint(uint64(h), 10))
	}
	cmd.SysProcAttr = attr
	return strings.Join(names, ","), func() {}, nil
}

// Take duplicates the handle h of process pid into this one, for handles
// that flow from a child to its parent. The caller owns the result.
func Take(pid int, h uintptr) (uintptr, error) {
	proc, err := windows.OpenProcess(windows.PROCESS_DUP_HANDLE, false, uint32(pid))
	if err != nil {
		return 0, err
	}
	defer windows.CloseHandle(proc)
	var out windows.Handle
	if err := windows.DuplicateHandle(proc, windows.Handle(h), windows.CurrentProcess(), &out, 0, false, windows.DUPLICATE_SAME_ACCESS); err != nil {
		return 0, err
	}
	return uintptr(out), nil
}
