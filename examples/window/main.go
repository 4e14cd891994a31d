// Command window is the program capnshm was started for ("Using Cap'n Proto
// in an event loop", see README.md): a Cap'n Proto RPC server that owns a
// window on its event loop's thread, draws into it from its RPC handlers,
// pumps the window's events about once a second so that the window system
// never finds it hung, and serves RPC before window events.
//
//	go run ./examples/window                  # the server: opens the window, serves on -addr
//	go run ./examples/window -client          # floods a server with draw calls, then prints its status
//	go run ./examples/window -demo            # both in one process, plus the window system's liveness checks
//
// Linux: an X11 window (pure-Go X client, github.com/jezek/xgb); without an X
// display the program says so and exits with status 1 (run it under Xvfb:
// xvfb-run go run ./examples/window -demo). Windows: a Win32 window painted
// with GDI.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/capnshm/capnshm/examples/window/canvas"
	"github.com/capnshm/capnshm/rpc"
)

func main() {
	var (
		addr     = flag.String("addr", defaultAddr, "address to serve on or dial (rpc.ParseAddr): shm:, shm-abstract:, unix:, tcp:")
		client   = flag.Bool("client", false, "be the client: flood the server at -addr with draw calls")
		demo     = flag.Bool("demo", false, "run the server and the client in one process, with the window system's liveness checks, and report")
		duration = flag.Duration("duration", 5*time.Second, "how long the client floods")
		workers  = flag.Int("workers", 4, "client goroutines calling at once")
		pump     = flag.Duration("pump", time.Second, "the loop's MaxPumpDelay: the longest the window's events wait")
		display  = flag.String("display", "", "X11 display (default $DISPLAY); Linux only")
		interact = flag.Bool("interactive", false, "Windows: the loop's interactive mode (MsgWaitForMultipleObjectsEx) instead of the scheduled one (a completion port)")
		verbose  = flag.Bool("v", false, "log the loop's slow tasks and the RPC server's connections")
	)
	flag.Parse()
	quietWindowSystem(*verbose)
	var log *slog.Logger
	if *verbose {
		log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var err error
	switch {
	case *client:
		var r floodReport
		r, err = flood(ctx, *addr, *workers, *duration)
		if err == nil {
			r.print(os.Stdout)
			err = r.check()
		}
	case *demo:
		err = runDemo(ctx, appConfig{addr: privateAddr(fmt.Sprint(os.Getpid())), display: *display, maxPumpDelay: *pump,
			interactive: *interact, logger: log}, *workers, *duration)
	default:
		err = serve(ctx, appConfig{addr: *addr, display: *display, maxPumpDelay: *pump, interactive: *interact, logger: log})
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "window:", err)
		os.Exit(1)
	}
}

// serve runs the server until ctx ends or the window is closed.
func serve(ctx context.Context, cfg appConfig) error {
	a, err := startApp(cfg)
	if err != nil {
		return err
	}
	defer a.Close()
	fmt.Printf("window: %v (Ctrl-C or close the window to stop)\n", a)
	select {
	case <-ctx.Done():
	case <-a.w.closeRequested():
	case <-a.l.Done():
	}
	return nil
}

// floodReport is what a flood measured, and the server's status after it.
type floodReport struct {
	addr         string
	sharedMemory bool // the flood's connection runs on shared memory
	calls        int
	elapsed      time.Duration
	lat          []time.Duration // sorted
	status       statusReport
}

type statusReport struct {
	frames, pumps, events, pings, offThread uint64
	windowThread, handlerThread             uint64
	maxPumpGap, maxPumpDelay                time.Duration
}

// flood calls draw from workers goroutines for d, then asks for the status.
func flood(ctx context.Context, addr string, workers int, d time.Duration) (floodReport, error) {
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	conn, err := rpc.Dial(dctx, addr)
	cancel()
	if err != nil {
		return floodReport{}, err
	}
	defer conn.Close()
	c := canvas.Canvas(conn.Bootstrap(ctx))
	defer c.Release()

	fctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	var mu sync.Mutex
	var lat []time.Duration
	var firstErr error
	var wg sync.WaitGroup
	start := time.Now()
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var mine []time.Duration
			for i := 0; fctx.Err() == nil; i++ {
				color := uint32(w*0x3f0000+i*0x010203) & 0xffffff
				t0 := time.Now()
				f, rel := c.Draw(ctx, func(p canvas.Canvas_draw_Params) error { p.SetColor(color); return nil })
				_, err := f.Struct()
				rel()
				if err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = fmt.Errorf("draw: %w", err)
					}
					mu.Unlock()
					return
				}
				mine = append(mine, time.Since(t0))
			}
			mu.Lock()
			lat = append(lat, mine...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	r := floodReport{addr: addr, sharedMemory: conn.SharedMemory(), calls: len(lat), elapsed: time.Since(start), lat: lat}
	slices.Sort(r.lat)
	if firstErr != nil {
		return r, firstErr
	}
	r.status, err = status(ctx, c)
	return r, err
}

func status(ctx context.Context, c canvas.Canvas) (statusReport, error) {
	f, rel := c.Status(ctx, nil)
	defer rel()
	res, err := f.Struct()
	if err != nil {
		return statusReport{}, fmt.Errorf("status: %w", err)
	}
	st, err := res.Status()
	if err != nil {
		return statusReport{}, fmt.Errorf("status: %w", err)
	}
	return statusReport{
		frames: st.Frames(), pumps: st.Pumps(), events: st.Events(), pings: st.Pings(), offThread: st.OffThread(),
		windowThread: st.WindowThread(), handlerThread: st.HandlerThread(),
		maxPumpGap:   time.Duration(st.MaxPumpGapMicros()) * time.Microsecond,
		maxPumpDelay: time.Duration(st.MaxPumpDelayMicros()) * time.Microsecond,
	}, nil
}

func (r floodReport) percentile(p float64) time.Duration {
	if len(r.lat) == 0 {
		return 0
	}
	return r.lat[min(len(r.lat)-1, int(p*float64(len(r.lat))))]
}

func (r floodReport) print(out *os.File) {
	s := r.status
	fmt.Fprintf(out, "connection:     %s, shared memory: %v\n", r.addr, r.sharedMemory)
	fmt.Fprintf(out, "draw calls:     %d in %v (%.0f/s), latency p50 %v, p99 %v\n", r.calls, r.elapsed.Round(time.Millisecond),
		float64(r.calls)/r.elapsed.Seconds(), r.percentile(0.5).Round(time.Microsecond), r.percentile(0.99).Round(time.Microsecond))
	fmt.Fprintf(out, "window:         %d frames drawn, %d events handled, %d liveness checks answered by the flood's end\n", s.frames, s.events, s.pings)
	fmt.Fprintf(out, "pump:           %d runs, longest gap %v (bound %v)\n", s.pumps, s.maxPumpGap.Round(time.Millisecond), s.maxPumpDelay)
	fmt.Fprintf(out, "threads:        window %d, status handler %d, handlers off the window's thread: %d\n", s.windowThread, s.handlerThread, s.offThread)
}

// check fails if the server broke its promises: a handler off the window's
// thread, or a pump gap far beyond its bound.
func (r floodReport) check() error {
	s := r.status
	var errs []error
	if strings.HasPrefix(r.addr, "shm") && !r.sharedMemory {
		errs = append(errs, fmt.Errorf("the connection to %s fell back to its socket", r.addr))
	}
	if s.offThread != 0 || s.handlerThread != s.windowThread {
		errs = append(errs, fmt.Errorf("%d handlers ran off the window's thread (status ran on %d, window %d)", s.offThread, s.handlerThread, s.windowThread))
	}
	if r.calls > 0 && s.frames < uint64(r.calls) {
		errs = append(errs, fmt.Errorf("%d draw calls answered but only %d frames counted", r.calls, s.frames))
	}
	if s.maxPumpGap > 2*s.maxPumpDelay {
		errs = append(errs, fmt.Errorf("the pump waited %v, more than twice its bound %v", s.maxPumpGap, s.maxPumpDelay))
	}
	return errors.Join(errs...)
}
