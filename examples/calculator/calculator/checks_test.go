package calculator

import (
	"errors"
	"testing"
)

// TestRunReportsOnce: a check whose answers all arrive reports each result
// once; a check with a failed answer reports none and returns its error;
// either way the check runs once and nothing stays pending.
func TestRunReportsOnce(t *testing.T) {
	failed := errors.New("disconnected")
	for _, tc := range []struct {
		name     string
		fail     error // the second answer's error; nil: it succeeds
		reported int
	}{
		{"every answer", nil, 2},
		{"a failed answer", failed, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var reported []Result
			c := &checker{report: func(r Result) { reported = append(reported, r) }}
			runs := 0
			check := func() error {
				runs++
				c.pending = append(c.pending,
					pending{name: "a", want: 1, answer: func() (float64, error) { return 1, nil }},
					pending{name: "b", want: 2, answer: func() (float64, error) { return 2, tc.fail }})
				return nil
			}
			err := c.run(check)
			if !errors.Is(err, tc.fail) || (tc.fail == nil) != (err == nil) {
				t.Errorf("run: %v, want %v", err, tc.fail)
			}
			if runs != 1 || len(reported) != tc.reported {
				t.Errorf("check ran %d times, %d results reported (%v); want 1, %d", runs, len(reported), reported, tc.reported)
			}
			seen := map[string]bool{}
			for _, r := range reported {
				if seen[r.Name] {
					t.Errorf("%s reported twice", r.Name)
				}
				seen[r.Name] = true
			}
			if len(c.wrong) != 0 || len(c.pending) != 0 {
				t.Errorf("wrong %v, pending %d after run", c.wrong, len(c.pending))
			}
		})
	}
}
