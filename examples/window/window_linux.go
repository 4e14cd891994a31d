package main

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log"
	"os"
	"sync/atomic"
	"time"

	"github.com/jezek/xgb"
	"github.com/jezek/xgb/xproto"

	"github.com/capnshm/capnshm/loop"
)

// errNoDisplay: there is no X display to open a window on.
var errNoDisplay = errors.New("no X display: $DISPLAY is not set (run under Xvfb, e.g. xvfb-run, or on a desktop)")

const (
	winWidth, winHeight = 320, 240
)

// x11Window is an X11 window drawn through a pure-Go X client (xgb). Its
// methods run on the loop's thread, except the counters.
type x11Window struct {
	X      *xgb.Conn
	screen *xproto.ScreenInfo
	wid    xproto.Window
	gc     xproto.Gcontext
	color  uint32

	wmProtocols, wmDelete, netWMPing xproto.Atom

	events, pings atomic.Uint64
	closed        chan struct{} // the window manager asked us to close (WM_DELETE_WINDOW)
	closeOnce     bool
}

// openWindow opens a window on display ("" means $DISPLAY). Loop thread.
func openWindow(display, title string) (window, error) {
	if display == "" && os.Getenv("DISPLAY") == "" {
		return nil, errNoDisplay
	}
	X, err := xgb.NewConnDisplay(display)
	if err != nil {
		return nil, fmt.Errorf("connecting to the X display %q: %w", displayName(display), err)
	}
	w := &x11Window{X: X, closed: make(chan struct{})}
	if err := w.create(title); err != nil {
		X.Close()
		return nil, err
	}
	return w, nil
}

func displayName(d string) string {
	if d == "" {
		return os.Getenv("DISPLAY")
	}
	return d
}

func intern(X *xgb.Conn, name string) (xproto.Atom, error) {
	r, err := xproto.InternAtom(X, false, uint16(len(name)), name).Reply()
	if err != nil {
		return 0, fmt.Errorf("interning %s: %w", name, err)
	}
	return r.Atom, nil
}

func (w *x11Window) create(title string) error {
	X := w.X
	w.screen = xproto.Setup(X).DefaultScreen(X)
	var err error
	if w.wid, err = xproto.NewWindowId(X); err != nil {
		return err
	}
	if w.gc, err = xproto.NewGcontextId(X); err != nil {
		return err
	}
	for _, a := range []struct {
		p    *xproto.Atom
		name string
	}{{&w.wmProtocols, "WM_PROTOCOLS"}, {&w.wmDelete, "WM_DELETE_WINDOW"}, {&w.netWMPing, "_NET_WM_PING"}} {
		if *a.p, err = intern(X, a.name); err != nil {
			return err
		}
	}
	w.color = 0xffffff
	if err := xproto.CreateWindowChecked(X, w.screen.RootDepth, w.wid, w.screen.Root, 0, 0, winWidth, winHeight, 0,
		xproto.WindowClassInputOutput, w.screen.RootVisual, xproto.CwBackPixel|xproto.CwEventMask,
		[]uint32{w.color, xproto.EventMaskExposure | xproto.EventMaskStructureNotify | xproto.EventMaskKeyPress}).Check(); err != nil {
		return fmt.Errorf("creating the window: %w", err)
	}
	// WM_PROTOCOLS: the window manager may ask us to close (WM_DELETE_WINDOW)
	// and pings us to see that we are alive (_NET_WM_PING, EWMH).
	protos := make([]byte, 8)
	binary.LittleEndian.PutUint32(protos, uint32(w.wmDelete))
	binary.LittleEndian.PutUint32(protos[4:], uint32(w.netWMPing))
	xproto.ChangeProperty(X, xproto.PropModeReplace, w.wid, w.wmProtocols, xproto.AtomAtom, 32, 2, protos)
	xproto.ChangeProperty(X, xproto.PropModeReplace, w.wid, xproto.AtomWmName, xproto.AtomString, 8, uint32(len(title)), []byte(title))
	if err := xproto.CreateGCChecked(X, w.gc, xproto.Drawable(w.wid), xproto.GcForeground|xproto.GcGraphicsExposures,
		[]uint32{w.color, 0}).Check(); err != nil {
		return fmt.Errorf("creating the graphics context: %w", err)
	}
	if err := xproto.MapWindowChecked(X, w.wid).Check(); err != nil {
		return fmt.Errorf("mapping the window: %w", err)
	}
	return nil
}

// fill paints the window with rgb and waits for the X server to have done it.
func (w *x11Window) fill(rgb uint32) error {
	w.color = rgb
	return w.paint()
}

func (w *x11Window) paint() error {
	xproto.ChangeGC(w.X, w.gc, xproto.GcForeground, []uint32{w.color})
	err := xproto.PolyFillRectangleChecked(w.X, xproto.Drawable(w.wid), w.gc,
		[]xproto.Rectangle{{X: 0, Y: 0, Width: winWidth, Height: winHeight}}).Check()
	if err != nil {
		return fmt.Errorf("drawing: %w", err)
	}
	return nil
}

// pump reads the events xgb has received since the last run and handles
// them: repaint on Expose, answer the window manager's pings, note a close
// request. It never blocks. xgb reads the socket on a goroutine of its own,
// so the loop does not watch the X connection's descriptor (see
// loop.WatchPumpFD for a client library that leaves the reading to us).
func (w *x11Window) pump() {
	for {
		ev, xerr := w.X.PollForEvent()
		if ev == nil && xerr == nil {
			return
		}
		w.events.Add(1)
		switch ev := ev.(type) {
		case xproto.ExposeEvent:
			if ev.Count == 0 {
				_ = w.paint()
			}
		case xproto.ClientMessageEvent:
			w.clientMessage(ev)
		}
	}
}

func (w *x11Window) clientMessage(ev xproto.ClientMessageEvent) {
	if ev.Type != w.wmProtocols || ev.Format != 32 {
		return
	}
	switch xproto.Atom(ev.Data.Data32[0]) {
	case w.netWMPing:
		// EWMH: send the message back to the root window.
		ev.Window = w.screen.Root
		xproto.SendEvent(w.X, false, w.screen.Root,
			xproto.EventMaskSubstructureNotify|xproto.EventMaskSubstructureRedirect, string(ev.Bytes()))
		w.pings.Add(1)
	case w.wmDelete:
		if !w.closeOnce {
			w.closeOnce = true
			close(w.closed)
		}
	}
}

func (w *x11Window) id() uint64                      { return uint64(w.wid) }
func (w *x11Window) eventCount() uint64              { return w.events.Load() }
func (w *x11Window) pingCount() uint64               { return w.pings.Load() }
func (w *x11Window) closeRequested() <-chan struct{} { return w.closed }

func (w *x11Window) close() {
	xproto.DestroyWindow(w.X, w.wid)
	w.X.Close()
}

// sysOptions: Linux has one mode.
func sysOptions(bool) loop.SysOptions { return loop.SysOptions{} }

// pumpOf returns the loop's pump: the window's event pump, once it exists.
func pumpOf(a *app) func() {
	return func() {
		if a.w != nil {
			a.w.pump()
		}
	}
}

// pinger plays the window manager's liveness check (mutter's check-alive,
// every few seconds, "not responding" after 5 s): it sends _NET_WM_PING to a
// window from a connection of its own and waits for the reply on the root
// window.
type pinger struct {
	X                     *xgb.Conn
	root                  xproto.Window
	wmProtocols, netWMPin xproto.Atom
	events                chan xproto.ClientMessageEvent
	seq                   uint32
}

func newPinger(display string) (*pinger, error) {
	if display == "" && os.Getenv("DISPLAY") == "" {
		return nil, errNoDisplay
	}
	X, err := xgb.NewConnDisplay(display)
	if err != nil {
		return nil, fmt.Errorf("connecting to the X display %q: %w", displayName(display), err)
	}
	p := &pinger{X: X, root: xproto.Setup(X).DefaultScreen(X).Root, events: make(chan xproto.ClientMessageEvent, 64)}
	if p.wmProtocols, err = intern(X, "WM_PROTOCOLS"); err == nil {
		p.netWMPin, err = intern(X, "_NET_WM_PING")
	}
	if err == nil {
		err = xproto.ChangeWindowAttributesChecked(X, p.root, xproto.CwEventMask,
			[]uint32{xproto.EventMaskSubstructureNotify}).Check()
	}
	if err != nil {
		X.Close()
		return nil, err
	}
	go func() {
		defer close(p.events)
		for {
			ev, xerr := X.WaitForEvent()
			if ev == nil && xerr == nil {
				return
			}
			if cm, ok := ev.(xproto.ClientMessageEvent); ok {
				p.events <- cm
			}
		}
	}()
	return p, nil
}

// windowExists reports whether window id exists and is mapped (viewable).
func (p *pinger) windowExists(id uint64) error {
	r, err := xproto.GetWindowAttributes(p.X, xproto.Window(id)).Reply()
	if err != nil {
		return fmt.Errorf("window %#x: %w", id, err)
	}
	if r.MapState != xproto.MapStateViewable {
		return fmt.Errorf("window %#x is not viewable (map state %d)", id, r.MapState)
	}
	return nil
}

// ping sends one _NET_WM_PING to window id and returns how long the answer
// took, or an error after timeout.
func (p *pinger) ping(id uint64, timeout time.Duration) (time.Duration, error) {
	p.seq++
	ts := p.seq
	ev := xproto.ClientMessageEvent{Format: 32, Window: xproto.Window(id), Type: p.wmProtocols,
		Data: xproto.ClientMessageDataUnionData32New([]uint32{uint32(p.netWMPin), ts, uint32(id), 0, 0})}
	start := time.Now()
	if err := xproto.SendEventChecked(p.X, false, xproto.Window(id), xproto.EventMaskNoEvent, string(ev.Bytes())).Check(); err != nil {
		return 0, fmt.Errorf("sending _NET_WM_PING: %w", err)
	}
	deadline := time.After(timeout)
	for {
		select {
		case cm, ok := <-p.events:
			if !ok {
				return 0, errors.New("the X connection closed")
			}
			d := cm.Data.Data32
			if cm.Type == p.wmProtocols && xproto.Atom(d[0]) == p.netWMPin && d[1] == ts && uint64(d[2]) == id {
				return time.Since(start), nil
			}
		case <-deadline:
			return 0, fmt.Errorf("no answer to _NET_WM_PING within %v: a window manager would mark the window not responding", timeout)
		}
	}
}

func (p *pinger) close() { p.X.Close() }

// quietWindowSystem silences xgb's own log (it reports, for instance, that
// there is no ~/.Xauthority, as Xvfb runs without one) unless verbose.
func quietWindowSystem(verbose bool) {
	if !verbose {
		xgb.Logger = log.New(io.Discard, "", 0)
	}
}
