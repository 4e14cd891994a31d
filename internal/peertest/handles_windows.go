package peertest

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
