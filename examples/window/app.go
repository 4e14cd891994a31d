package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	capnp "capnproto.org/go/capnp/v3"

	"github.com/capnshm/capnshm/examples/window/canvas"
	"github.com/capnshm/capnshm/loop"
	"github.com/capnshm/capnshm/rpc"
)

// window is the system's window, drawn and pumped on the loop's thread.
type window interface {
	fill(rgb uint32) error // paints the window with 0xRRGGBB
	pump()                 // handles pending window-system events (X11; a no-op on Windows, whose default pump dispatches)
	id() uint64            // X window ID or HWND
	eventCount() uint64    // events or messages handled
	pingCount() uint64     // liveness checks answered
	closeRequested() <-chan struct{}
	close()
}

// app is the seed's program: a window owned by a loop's thread, drawn from
// RPC handlers that run on that thread, its events pumped about once a
// second, RPC served first.
type app struct {
	l            *loop.Loop
	w            window // set on the loop's thread before the server starts
	windowThread uint64
	windowID     uint64
	srv          *rpc.Server
	addr         string
	pumpBound    time.Duration // the loop's MaxPumpDelay

	frames    atomic.Uint64
	offThread atomic.Uint64
}

type appConfig struct {
	addr         string        // where to listen (rpc.ParseAddr)
	display      string        // X11 display ("": $DISPLAY); ignored on Windows
	maxPumpDelay time.Duration // the pump's bound (0: 1 s)
	interactive  bool          // Windows: the loop's interactive mode
	logger       *slog.Logger
}

// startApp opens the window on a new loop and serves it on cfg.addr.
func startApp(cfg appConfig) (*app, error) {
	a := &app{pumpBound: cfg.maxPumpDelay}
	if a.pumpBound <= 0 {
		a.pumpBound = loop.DefaultMaxPumpDelay
	}
	l, err := loop.New(loop.Options{Pump: pumpOf(a), MaxPumpDelay: cfg.maxPumpDelay, Logger: cfg.logger,
		Sys: sysOptions(cfg.interactive)})
	if err != nil {
		return nil, err
	}
	a.l = l
	ctx := context.Background()
	err = l.Do(ctx, loop.Normal, func(context.Context) error {
		w, err := openWindow(cfg.display, "capnshm: a window served by Cap'n Proto RPC")
		if err != nil {
			return err
		}
		a.w, a.windowThread, a.windowID = w, loop.CurrentThreadID(), w.id()
		return nil
	})
	if err != nil {
		l.Close()
		return nil, err
	}
	boot := canvas.Canvas(loop.BindServer(l, canvas.Canvas_Methods(nil, a), a))
	var opts []rpc.Option
	if cfg.logger != nil {
		opts = append(opts, rpc.WithLogger(cfg.logger))
	}
	a.srv, err = rpc.Listen(cfg.addr, capnp.Client(boot), opts...)
	if err != nil {
		a.closeWindow()
		return nil, err
	}
	a.addr = a.srv.Addrs()[0].String()
	go a.srv.Serve(context.Background())
	return a, nil
}

// Draw fills the window with the call's color. It runs on the loop's thread.
func (a *app) Draw(_ context.Context, call canvas.Canvas_draw) error {
	a.checkThread()
	if err := a.w.fill(call.Args().Color() & 0xffffff); err != nil {
		return err
	}
	res, err := call.AllocResults()
	if err != nil {
		return err
	}
	res.SetFrame(a.frames.Add(1))
	return nil
}

// Status reports what the window and the loop have done.
func (a *app) Status(_ context.Context, call canvas.Canvas_status) error {
	a.checkThread()
	res, err := call.AllocResults()
	if err != nil {
		return err
	}
	st, err := res.NewStatus()
	if err != nil {
		return err
	}
	ls := a.l.Stats()
	st.SetFrames(a.frames.Load())
	st.SetPumps(ls.Pumps)
	st.SetEvents(a.w.eventCount())
	st.SetPings(a.w.pingCount())
	st.SetWindowThread(a.windowThread)
	st.SetHandlerThread(loop.CurrentThreadID())
	st.SetOffThread(a.offThread.Load())
	st.SetMaxPumpGapMicros(uint64(ls.MaxPumpGap.Microseconds()))
	st.SetMaxPumpDelayMicros(uint64(a.pumpBound.Microseconds()))
	return nil
}

func (a *app) checkThread() {
	if loop.CurrentThreadID() != a.windowThread {
		a.offThread.Add(1)
	}
}

// closeWindow destroys the window on its thread and stops the loop.
func (a *app) closeWindow() {
	_ = a.l.Do(context.Background(), loop.Normal, func(context.Context) error {
		a.w.close()
		return nil
	})
	a.l.Close()
}

// Close stops serving, then closes the window and the loop.
func (a *app) Close() error {
	var err error
	if a.srv != nil {
		err = a.srv.Close()
		if errors.Is(err, rpc.ErrServerClosed) {
			err = nil
		}
	}
	a.closeWindow()
	return err
}

func (a *app) String() string {
	return fmt.Sprintf("window %#x on thread %d, serving %s", a.windowID, a.windowThread, a.addr)
}
