package rpc

import (
	"runtime"
	"testing"
	"time"
)

// TestWaitDefaults checks how the ring waits by default and what the
// options make of it: a timed yield phase on two CPUs only, 0 meaning
// none.
func TestWaitDefaults(t *testing.T) {
	wantYield := time.Duration(-1)
	if runtime.NumCPU() == 2 {
		wantYield = DefaultYieldTime
	}
	for _, c := range []struct {
		name      string
		opts      []Option
		wantYield time.Duration
	}{
		{"default", nil, wantYield},
		{"none", []Option{WithYieldTime(0)}, -1},
		{"set", []Option{WithYieldTime(time.Millisecond)}, time.Millisecond},
	} {
		t.Run(c.name, func(t *testing.T) {
			var cfg config
			for _, o := range c.opts {
				o(&cfg)
			}
			if cfg.err != nil {
				t.Fatal(cfg.err)
			}
			if got := cfg.opts.withDefaults().YieldTime; got != c.wantYield {
				t.Errorf("YieldTime %v, want %v", got, c.wantYield)
			}
		})
	}
}
