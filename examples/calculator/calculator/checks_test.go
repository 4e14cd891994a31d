package calculator

import (
	"errors"
	"fmt"
	"testing"

	"github.com/capnshm/capnshm/rpc"
)

// TestRunRepeatsLateCalls: a check whose answers meet rpc.ErrLateCall is run
// again, and each of its results is reported once, from the attempt that
// succeeded; other errors end the run at once.
func TestRunRepeatsLateCalls(t *testing.T) {
	late := fmt.Errorf("call: %w", rpc.ErrLateCall)
	other := errors.New("disconnected")
	for _, tc := range []struct {
		name     string
		fails    []error // the second answer's error on each attempt; nil: it succeeds
		attempts int
		reported int
		err      error
	}{
		{"first attempt", []error{nil}, 1, 2, nil},
		{"one late call", []error{late, nil}, 2, 2, nil},
		{"late every time", []error{late, late, late}, lateCallAttempts, 0, rpc.ErrLateCall},
		{"other error", []error{other}, 1, 0, other},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var reported []Result
			c := &checker{report: func(r Result) { reported = append(reported, r) }}
			attempts := 0
			check := func() error {
				fail := tc.fails[attempts]
				attempts++
				c.pending = append(c.pending,
					pending{name: "a", want: 1, answer: func() (float64, error) { return 1, nil }},
					pending{name: "b", want: 2, answer: func() (float64, error) { return 2, fail }})
				return nil
			}
			err := c.run(check)
			if !errors.Is(err, tc.err) || (tc.err == nil) != (err == nil) {
				t.Errorf("run: %v, want %v", err, tc.err)
			}
			if attempts != tc.attempts || len(reported) != tc.reported {
				t.Errorf("%d attempts, %d results reported (%v); want %d, %d", attempts, len(reported), reported, tc.attempts, tc.reported)
			}
			if len(c.wrong) != 0 || len(c.pending) != 0 {
				t.Errorf("wrong %v, pending %d after run", c.wrong, len(c.pending))
			}
		})
	}
}
