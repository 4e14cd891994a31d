package shm

import (
	"fmt"
	"net"

	"golang.org/x/sys/unix"
)

// MaxHandles is the most handles SendHandles sends and RecvHandles accepts
// in one message.
const MaxHandles = 16

// SendHandles sends payload and the descriptors hs over c in one message
// (SCM_RIGHTS). The descriptors stay open in this process. payload must not
// be empty: a message with no data cannot carry descriptors reliably.
func SendHandles(c *net.UnixConn, payload []byte, hs ...Handle) error {
	if len(payload) == 0 {
		return fmt.Errorf("%w: sending handles needs a non-empty payload", ErrHandoff)
	}
	if len(hs) > MaxHandles {
		return fmt.Errorf("%w: %d handles, at most %d per message", ErrHandoff, len(hs), MaxHandles)
	}
	fds := make([]int, len(hs))
	for i, h := range hs {
		fds[i] = int(h)
	}
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	n, oobn, err := c.WriteMsgUnix(payload, oob, nil)
	if err != nil {
		return fmt.Errorf("shm: sending %d handles: %w", len(hs), err)
	}
	if n != len(payload) || oobn != len(oob) {
		return fmt.Errorf("%w: short send: %d of %d payload bytes, %d of %d control bytes", ErrHandoff, n, len(payload), oobn, len(oob))
	}
	return nil
}

// RecvHandles receives one message sent by SendHandles into buf and returns
// the payload length and exactly want descriptors. It fails, closing every
// descriptor it received, when the message carries a different number of
// descriptors, when its control data or payload was truncated, or when it
// carries anything but descriptors. The caller owns the returned descriptors.
func RecvHandles(c *net.UnixConn, buf []byte, want int) (int, []Handle, error) {
	if want < 0 || want > MaxHandles {
		return 0, nil, fmt.Errorf("%w: asked for %d handles, at most %d per message", ErrHandoff, want, MaxHandles)
	}
	// Room for more than MaxHandles, so that a sender who sends too many is
	// detected as such rather than as truncation.
	oob := make([]byte, unix.CmsgSpace(4*(MaxHandles+1)))
	n, oobn, flags, _, err := c.ReadMsgUnix(buf, oob)
	if err != nil {
		return 0, nil, fmt.Errorf("shm: receiving handles: %w", err)
	}
	fds, perr := parseRights(oob[:oobn])
	hs := make([]Handle, len(fds))
	for i, fd := range fds {
		hs[i] = Handle(fd)
	}
	fail := func(format string, a ...any) (int, []Handle, error) {
		for _, fd := range fds {
			unix.Close(fd)
		}
		return 0, nil, fmt.Errorf("%w: "+format, append([]any{ErrHandoff}, a...)...)
	}
	switch {
	case perr != nil:
		return fail("%v", perr)
	case flags&unix.MSG_CTRUNC != 0:
		return fail("control message truncated (sender sent more than %d handles)", MaxHandles)
	case flags&unix.MSG_TRUNC != 0:
		return fail("payload truncated (over %d bytes)", len(buf))
	case n == 0:
		return fail("empty message (peer closed the connection?)")
	case len(fds) != want:
		return fail("got %d handles, want %d", len(fds), want)
	}
	return n, hs, nil
}

// parseRights extracts the descriptors of every SCM_RIGHTS message in oob.
// It returns the descriptors it found even when it also reports an error, so
// that the caller can close them.
func parseRights(oob []byte) ([]int, error) {
	if len(oob) == 0 {
		return nil, nil
	}
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil, fmt.Errorf("malformed control message: %v", err)
	}
	var fds []int
	var bad error
	for _, m := range msgs {
		if m.Header.Level != unix.SOL_SOCKET || m.Header.Type != unix.SCM_RIGHTS {
			bad = fmt.Errorf("unexpected control message level %d type %d", m.Header.Level, m.Header.Type)
			continue
		}
		got, err := unix.ParseUnixRights(&m)
		if err != nil {
			bad = fmt.Errorf("malformed SCM_RIGHTS message: %v", err)
			continue
		}
		fds = append(fds, got...)
	}
	return fds, bad
}
