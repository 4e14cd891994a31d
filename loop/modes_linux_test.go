package loop_test

import (
	"testing"

	"github.com/capnshm/capnshm/loop"
)

// eachMode runs f once per backend mode of this system: Linux has one.
func eachMode(t *testing.T, f func(t *testing.T, sys loop.SysOptions)) {
	f(t, loop.SysOptions{})
}
