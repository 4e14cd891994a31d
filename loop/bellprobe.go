package loop

import (
	"context"
	"errors"
	"fmt"

	"github.com/capnshm/capnshm/iocpwake"
)

// probeTries is how many ended-context Waits probeBell makes: a closed bell
// answers each with ErrClosed or, at random (Wait selects among ready
// channels), with the context's error, so one in 2^probeTries goes unseen.
const probeTries = 32

// probeBell checks that b is a bell this process may wait on, and open: a
// Wait with an ended context fails at once with ErrRingOnly if b only rings,
// and with ErrClosed (see probeTries) if it is closed. It reports whether
// such a Wait took a ring (the caller then runs the callback once, so that
// the ring is not lost).
func probeBell(b *iocpwake.Bell) (rang bool, err error) {
	if b == nil {
		return false, errors.New("loop: watch bell: nil bell")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	for range probeTries {
		err := b.Wait(ctx)
		switch {
		case err == nil:
			rang = true
		case errors.Is(err, iocpwake.ErrRingOnly), errors.Is(err, iocpwake.ErrClosed):
			return false, fmt.Errorf("loop: watch bell: %w", err)
		}
	}
	return rang, nil
}
