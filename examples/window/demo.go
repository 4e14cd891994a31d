package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"time"
)

// checkTimeout is how long the window system waits before it calls a
// window hung: 5 s for Windows' "not responding" and mutter's check-alive.
const checkTimeout = 5 * time.Second

// runDemo runs the server and a flooding client in this process, and plays
// the window system meanwhile: it checks that the window exists and sends it
// a liveness check every 500 ms.
func runDemo(ctx context.Context, cfg appConfig, workers int, d time.Duration) error {
	a, err := startApp(cfg)
	if err != nil {
		return err
	}
	defer a.Close()
	fmt.Printf("window: %v\n", a)
	checks, err := checkDuring(ctx, cfg.display, a.windowID, 500*time.Millisecond, func() (floodReport, error) {
		return flood(ctx, a.addr, workers, d)
	})
	if checks.report.calls > 0 {
		checks.report.print(os.Stdout)
	}
	if len(checks.rtts) > 0 {
		rtts := slices.Clone(checks.rtts)
		slices.Sort(rtts)
		fmt.Printf("liveness checks: %d sent during the flood, all answered, slowest in %v (the window system waits %v)\n",
			len(rtts), rtts[len(rtts)-1].Round(time.Millisecond), checkTimeout)
	}
	if err != nil {
		return err
	}
	return checks.report.check()
}

// checks is what checkDuring saw.
type checks struct {
	report floodReport
	rtts   []time.Duration // liveness check answers
}

// checkDuring runs work while sending the window a liveness check every
// period, first checking that it exists; it fails if a check goes
// unanswered for checkTimeout.
func checkDuring(ctx context.Context, display string, id uint64, period time.Duration, work func() (floodReport, error)) (checks, error) {
	p, err := newPinger(display)
	if err != nil {
		return checks{}, err
	}
	defer p.close()
	if err := p.windowExists(id); err != nil {
		return checks{}, err
	}
	type result struct {
		r   floodReport
		err error
	}
	done := make(chan result, 1)
	go func() {
		r, err := work()
		done <- result{r, err}
	}()
	var c checks
	var errs []error
	tick := time.NewTicker(period)
	defer tick.Stop()
	for {
		select {
		case res := <-done:
			c.report = res.r
			if res.err != nil {
				errs = append(errs, res.err)
			}
			if len(c.rtts) == 0 && len(errs) == 0 {
				// A flood shorter than one period: check once now.
				rtt, err := p.ping(id, checkTimeout)
				if err != nil {
					errs = append(errs, err)
				} else {
					c.rtts = append(c.rtts, rtt)
				}
			}
			return c, errors.Join(errs...)
		case <-tick.C:
			rtt, err := p.ping(id, checkTimeout)
			if err != nil {
				errs = append(errs, fmt.Errorf("liveness check %d: %w", len(c.rtts)+1, err))
				continue
			}
			c.rtts = append(c.rtts, rtt)
		case <-ctx.Done():
			return c, ctx.Err()
		}
	}
}
