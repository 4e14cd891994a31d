// Command pingpong is capnshm's demo: it starts a second process, exchanges
// records with it through a shared-memory ring, and prints the round-trip
// latency of each wait strategy next to the floors of this machine measured
// in the same run: a spin on one shared cache line, and two blocking
// eventfds (Linux). It ends with the CPU an idle waiting process uses.
//
//	go run ./examples/pingpong            # about 15 s
//	go run ./examples/pingpong -quick     # about 3 s
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/capnshm/capnshm/internal/child"
	"github.com/capnshm/capnshm/internal/pingpong"
	"github.com/capnshm/capnshm/iocpwake"
	"github.com/capnshm/capnshm/ringbuf"
	"github.com/capnshm/capnshm/shm"
)

const capacity = 64 << 10

var (
	rounds  = flag.Int("n", 200_000, "round trips per workload")
	size    = flag.Int("size", 64, "record size in bytes")
	quick   = flag.Bool("quick", false, "fewer round trips and a shorter idle measurement (for CI)")
	idleFor = flag.Duration("idle", 3*time.Second, "how long to measure an idle waiter's CPU (0 skips it)")
	role    = flag.String("child", "", "internal: run as the peer for this workload")
)

func main() {
	flag.Parse()
	if *role != "" {
		if err := runChild(*role); err != nil {
			fmt.Fprintln(os.Stderr, "pingpong child:", err)
			os.Exit(1)
		}
		return
	}
	if *quick {
		*rounds = 20_000
		*idleFor = time.Second
	}
	if err := run(os.Stdout); err != nil {
		slog.Error("pingpong failed", "err", err)
		os.Exit(1)
	}
}

type result struct {
	name    string
	samples []time.Duration
	total   time.Duration
	note    string
}

func run(w io.Writer) error {
	fmt.Fprintf(w, "capnshm ping-pong: %d round trips of %d-byte records between two processes\n\n", *rounds, *size)
	var results []result
	add := func(name string, d time.Duration, samples []time.Duration, err error) error {
		if errors.Is(err, errUnsupported) {
			results = append(results, result{name: name, note: err.Error()})
			return nil
		}
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		results = append(results, result{name: name, samples: samples, total: d})
		return nil
	}
	samples := func() []time.Duration { return make([]time.Duration, *rounds) }

	s := samples()
	d, err := pairRun("spin", func(r *shm.Region, _, _ *iocpwake.Bell, _ *childProc) (time.Duration, error) {
		return pingpong.SpinClient(pingpong.SpinWord(r.Bytes()), *rounds, s), nil
	})
	if err := add("floor: spin on a shared cache line", d, s, err); err != nil {
		return err
	}
	s = samples()
	d, err = eventfdFloor(*rounds, s)
	if err := add("floor: blocking eventfd pair", d, s, err); err != nil {
		return err
	}
	for _, st := range []ringbuf.WaitStrategy{ringbuf.BusySpin, ringbuf.Adaptive, ringbuf.Block} {
		s := samples()
		d, err := pairRun(strconv.Itoa(int(st)), func(r *shm.Region, mine, peer *iocpwake.Bell, _ *childProc) (time.Duration, error) {
			reqMem, respMem := pingpong.Rings(r.Bytes(), capacity)
			req, err1 := ringbuf.Attach(reqMem)
			resp, err2 := ringbuf.Attach(respMem)
			if err := errors.Join(err1, err2); err != nil {
				return 0, err
			}
			opts := ringbuf.Options{Strategy: st, Waiter: mine, Ringer: peer}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
			defer cancel()
			return pingpong.RingClient(ctx, req.Producer(opts), resp.Consumer(opts), *size, *rounds, s)
		})
		if err := add("ring, "+st.String(), d, s, err); err != nil {
			return err
		}
	}
	printTable(w, results)

	if *idleFor > 0 {
		pct, err := idleCPU()
		if errors.Is(err, errUnsupported) {
			fmt.Fprintf(w, "\nidle waiter: %v\n", err)
		} else if err != nil {
			return fmt.Errorf("idle: %w", err)
		} else {
			fmt.Fprintf(w, "\nidle waiter (Adaptive, %v with no traffic): %.3f%% of one core\n", *idleFor, pct)
		}
	}
	return nil
}

func printTable(w io.Writer, results []result) {
	var spin, efd float64
	for _, r := range results {
		if r.samples == nil {
			continue
		}
		mean := float64(r.total.Nanoseconds()) / float64(len(r.samples))
		switch {
		case strings.HasPrefix(r.name, "floor: spin"):
			spin = mean
		case strings.HasPrefix(r.name, "floor: blocking eventfd"):
			efd = mean
		}
	}
	ratio := func(v, floor float64) string {
		if floor == 0 {
			return "-"
		}
		return fmt.Sprintf("%.2fx", v/floor)
	}
	fmt.Fprintf(w, "%-36s %10s %10s %10s %10s %12s %14s\n", "workload", "mean", "p50", "p99", "p99.9", "vs spin", "vs eventfd")
	for _, r := range results {
		if r.samples == nil {
			fmt.Fprintf(w, "%-36s %s\n", r.name, r.note)
			continue
		}
		slices.Sort(r.samples)
		pct := func(p float64) time.Duration { return r.samples[int(p*float64(len(r.samples)-1))] }
		mean := float64(r.total.Nanoseconds()) / float64(len(r.samples))
		fmt.Fprintf(w, "%-36s %10s %10s %10s %10s %12s %14s\n", r.name,
			time.Duration(mean).Round(time.Nanosecond), pct(0.5), pct(0.99), pct(0.999),
			ratio(mean, spin), ratio(mean, efd))
	}
}

var errUnsupported = errors.New("not measured on this system")

// pairRun creates a region holding two rings and a doorbell, starts the
// child for workload with them, opens the doorbell the child reports, and
// runs client.
func pairRun(workload string, client func(r *shm.Region, mine, peer *iocpwake.Bell, c *childProc) (time.Duration, error)) (time.Duration, error) {
	size, _ := pingpong.RegionSize(capacity)
	region, err := shm.Create(int64(size), &shm.Options{Prefault: true, Name: "pingpong"})
	if err != nil {
		return 0, err
	}
	defer region.Close()
	reqMem, respMem := pingpong.Rings(region.Bytes(), capacity)
	for _, m := range [][]byte{reqMem, respMem} {
		if _, err := ringbuf.Init(m); err != nil {
			return 0, err
		}
	}
	mine, err := iocpwake.New()
	if err != nil {
		return 0, err
	}
	defer mine.Close()
	c, err := startChild(workload, []uintptr{uintptr(region.Handle()), uintptr(mine.Handle())}, size)
	if err != nil {
		return 0, err
	}
	defer c.kill()
	line, err := c.line()
	if err != nil {
		return 0, err
	}
	v, err := strconv.ParseUint(line, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("child said %q, want its doorbell's handle", line)
	}
	h, err := child.Take(c.cmd.Process.Pid, uintptr(v))
	if err != nil {
		return 0, err
	}
	peer, err := iocpwake.Open(iocpwake.Handle(h))
	if err != nil {
		return 0, err
	}
	defer peer.Close()
	d, err := client(region, mine, peer, c)
	if err != nil {
		return 0, err
	}
	return d, c.wait()
}

type childProc struct {
	cmd    *exec.Cmd
	out    *lineReader
	stderr strings.Builder
}

func startChild(workload string, handles []uintptr, regionSize int) (*childProc, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	args := []string{"-child", workload, "-n", strconv.Itoa(*rounds), "-size", strconv.Itoa(regionSize), "-idle", idleFor.String()}
	cmd, started, err := child.Command(exe, args, handles)
	if err != nil {
		return nil, err
	}
	c := &childProc{cmd: cmd}
	cmd.Stderr = &c.stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	c.out = newLineReader(out)
	err = cmd.Start()
	started()
	if err != nil {
		return nil, fmt.Errorf("starting the child: %w", err)
	}
	return c, nil
}

func (c *childProc) line() (string, error) {
	l, err := c.out.line(time.Minute)
	if err != nil {
		return "", fmt.Errorf("reading from the child: %w (its stderr: %s)", err, c.stderr.String())
	}
	return l, nil
}

func (c *childProc) wait() error {
	if err := c.cmd.Wait(); err != nil {
		return fmt.Errorf("child: %w (its stderr: %s)", err, c.stderr.String())
	}
	return nil
}

func (c *childProc) kill() {
	if c.cmd.ProcessState == nil {
		_ = c.cmd.Process.Kill()
		_ = c.cmd.Wait()
	}
}

// runChild is the peer side of every workload.
func runChild(workload string) error {
	hs := child.Handles()
	switch workload {
	case "eventfd":
		return eventfdChild(hs, *rounds)
	}
	regionSize := int64(*size)
	region, err := shm.Open(shm.Handle(hs[0]), regionSize, shm.ReadWrite, &shm.Options{Prefault: true})
	if err != nil {
		return err
	}
	defer region.Close()
	peer, err := iocpwake.Open(iocpwake.Handle(hs[1]))
	if err != nil {
		return err
	}
	defer peer.Close()
	mine, err := iocpwake.New()
	if err != nil {
		return err
	}
	defer mine.Close()
	fmt.Println(mine.Handle())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	reqMem, respMem := pingpong.Rings(region.Bytes(), capacity)
	switch workload {
	case "spin":
		pingpong.SpinServer(pingpong.SpinWord(region.Bytes()), *rounds)
		return nil
	case "idle":
		return idleChild(ctx, reqMem, mine, peer)
	}
	st, err := strconv.Atoi(workload)
	if err != nil {
		return fmt.Errorf("unknown workload %q", workload)
	}
	req, err1 := ringbuf.Attach(reqMem)
	resp, err2 := ringbuf.Attach(respMem)
	if err := errors.Join(err1, err2); err != nil {
		return err
	}
	opts := ringbuf.Options{Strategy: ringbuf.WaitStrategy(st), Waiter: mine, Ringer: peer}
	return pingpong.RingServer(ctx, req.Consumer(opts), resp.Producer(opts), *rounds)
}

// idleChild waits on an empty ring with the Adaptive strategy for -idle and
// prints the CPU it used, in percent of one core.
func idleChild(ctx context.Context, reqMem []byte, mine, peer *iocpwake.Bell) error {
	r, err := ringbuf.Attach(reqMem)
	if err != nil {
		return err
	}
	c := r.Consumer(ringbuf.Options{Strategy: ringbuf.Adaptive, Waiter: mine, Ringer: peer})
	before, err := cpuTime()
	if err != nil {
		return err
	}
	start := time.Now()
	wctx, cancel := context.WithTimeout(ctx, *idleFor)
	defer cancel()
	for {
		err := c.Wait(wctx)
		if errors.Is(err, context.DeadlineExceeded) {
			break
		}
		if err != nil {
			return err
		}
	}
	after, err := cpuTime()
	if err != nil {
		return err
	}
	fmt.Printf("%f\n", 100*(after-before).Seconds()/time.Since(start).Seconds())
	return nil
}

// idleCPU runs idleChild and returns what it measured.
func idleCPU() (float64, error) {
	var pct float64
	_, err := pairRun("idle", func(_ *shm.Region, _, _ *iocpwake.Bell, c *childProc) (time.Duration, error) {
		line, err := c.line()
		if err != nil {
			return 0, err
		}
		pct, err = strconv.ParseFloat(line, 64)
		return 0, err
	})
	return pct, err
}

// lineReader reads lines from a child's stdout with a time limit.
type lineReader struct{ lines chan string }

func newLineReader(r io.Reader) *lineReader {
	l := &lineReader{lines: make(chan string, 4)}
	go func() {
		sc := bufio.NewScanner(r)
		for sc.Scan() {
			l.lines <- sc.Text()
		}
		close(l.lines)
	}()
	return l
}

func (l *lineReader) line(limit time.Duration) (string, error) {
	select {
	case s, ok := <-l.lines:
		if !ok {
			return "", io.ErrUnexpectedEOF
		}
		return s, nil
	case <-time.After(limit):
		return "", fmt.Errorf("no line within %v", limit)
	}
}
