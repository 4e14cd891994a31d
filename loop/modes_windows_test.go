package loop_test

import (
	"testing"

	"github.com/capnshm/capnshm/loop"
)

// eachMode runs f in the scheduled and the interactive mode.
func eachMode(t *testing.T, f func(t *testing.T, sys loop.SysOptions)) {
	for _, interactive := range []bool{false, true} {
		t.Run(mode(interactive), func(t *testing.T) { f(t, loop.SysOptions{Interactive: interactive}) })
	}
}
