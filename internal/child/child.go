// Package child starts a copy of the running program as a child process and
// hands it operating-system handles: file descriptors on Linux (as
// inherited descriptors 3, 4, ...), handles on Windows (inherited through an
// explicit handle list). The child finds them with Handles. Tests use it
// through internal/peertest; programs such as the demo use it directly.
package child

import (
	"os"
	"os/exec"
	"strconv"
	"strings"
)

// EnvHandles is the environment variable that lists, in the child, the
// handle values it inherited, in the order the parent passed them.
const EnvHandles = "CAPNSHM_CHILD_HANDLES"

// Command returns a command that runs exe with args and hands it handles,
// which stay open and owned by the caller. Call started after cmd.Start
// (whether it failed or not) to release what Command set up.
func Command(exe string, args []string, handles []uintptr) (cmd *exec.Cmd, started func(), err error) {
	cmd = exec.Command(exe, args...)
	cmd.Env = os.Environ()
	list, started, err := passHandles(cmd, handles)
	if err != nil {
		return nil, nil, err
	}
	if list != "" {
		cmd.Env = append(cmd.Env, EnvHandles+"="+list)
	}
	return cmd, started, nil
}

// Handles returns, in a child, the handles its parent passed to Command, as
// valid handle values in this process.
func Handles() []uintptr {
	s := os.Getenv(EnvHandles)
	if s == "" {
		return nil
	}
	var hs []uintptr
	for _, f := range strings.Split(s, ",") {
		v, err := strconv.ParseUint(f, 10, 64)
		if err != nil {
			panic("child: bad handle list " + s)
		}
		hs = append(hs, uintptr(v))
	}
	return hs
}
