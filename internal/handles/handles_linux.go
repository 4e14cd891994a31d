package handles

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// ParseRights returns the descriptors of every SCM_RIGHTS message in oob,
// the control data of one recvmsg. It returns the descriptors it found even
// when it also reports an error (a control message that is not SCM_RIGHTS,
// or a malformed one), so that the caller can close them.
func ParseRights(oob []byte) ([]int, error) {
	if len(oob) == 0 {
		return nil, nil
	}
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil, fmt.Errorf("control message: %v", err)
	}
	var fds []int
	var bad error
	for i := range msgs {
		m := &msgs[i]
		if m.Header.Level != unix.SOL_SOCKET || m.Header.Type != unix.SCM_RIGHTS {
			bad = fmt.Errorf("unexpected control message level %d type %d", m.Header.Level, m.Header.Type)
			continue
		}
		got, err := unix.ParseUnixRights(m)
		if err != nil {
			bad = fmt.Errorf("SCM_RIGHTS message: %v", err)
			continue
		}
		fds = append(fds, got...)
	}
	return fds, bad
}

// CloseFDs closes every descriptor of fds, ignoring errors: for descriptors
// received from a peer and refused, or left over on an error path.
func CloseFDs(fds []int) {
	for _, fd := range fds {
		unix.Close(fd)
	}
}
