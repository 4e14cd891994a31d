//go:build linux

package main

// The transports of the bench, each labelled by what runs the RPC and on
// what:
//
//	engine-shm engine-shm-spin engine-shm-block   capnshm's engine (rpc.Dial/Listen) over shared
//	                                              memory, adaptive / busy-spin / block wait strategy
//	engine-unix engine-tcp                        capnshm's engine over its stream transport
//	engine-pipe                                   capnshm's engine, both ends in this process (net.Pipe)
//	engine-mem                                    capnshm's engine, both ends in this process (rpc.Pipe:
//	                                              messages handed over by reference)
//	gocapnp-shm                                   go-capnp's rpc.Conn on both ends over capnshm's
//	                                              shared-memory Transport (rpc.NewTransport)
//	gocapnp-unix gocapnp-tcp                      go-capnp's rpc.Conn over go-capnp's own stream
//	                                              transport (transport.New over capnp.Encoder/Decoder)
//	gocapnp-pipe                                  go-capnp's rpc.Conn, both ends in this process (net.Pipe)
//	gocapnp-mem                                   go-capnp's rpc.Conn, both ends in this process
//	                                              (go-capnp's transport.NewPipe)
//	cpp-ezrpc-unix cpp-ezrpc-tcp                  Cap'n Proto C++ EZ-RPC, both ends (cpp/peer.c++)
//	engine-shm-1p engine-unix-1p gocapnp-unix-1p  the same as without -1p, with GOMAXPROCS=1 in
//	                                              both processes
//
// The -1p transports run each process on one P, as the C++ peers run on
// one thread. On a machine with few CPUs most of a Go ping's time can be
// the runtime waking idle Ps' threads for each goroutine a call passes
// through (a futex wake, a thread spinning, a thread going back to sleep:
// bench's report shows it); one P has no idle P to wake. The default
// transports are what a program gets without touching GOMAXPROCS.
//
// Every one but the pipes and C++ runs its server in a child process (this
// program, -child server -transport NAME) and its client here. The message
// limit is raised to maxMessage everywhere (go-capnp's stream transport
// refuses a 64 MiB echo by default); nothing else differs from the
// defaults.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"slices"
	"strings"
	"time"

	capnp "capnproto.org/go/capnp/v3"
	"capnproto.org/go/capnp/v3/flowcontrol"
	gorpc "capnproto.org/go/capnp/v3/rpc"
	"capnproto.org/go/capnp/v3/rpc/transport"

	"github.com/capnshm/capnshm/internal/echoproto"
	"github.com/capnshm/capnshm/internal/gostream"
	"github.com/capnshm/capnshm/ringbuf"
	"github.com/capnshm/capnshm/rpc"
)

// What runs the RPC on a transport.
const (
	implEngine  = "engine"
	implGoCapnp = "gocapnp"
	implCpp     = "cpp-ezrpc"
)

// transportDef says what a transport label means.
type transportDef struct {
	name   string
	impl   string // implEngine, implGoCapnp or implCpp
	medium string // shm, unix, tcp or pipe
	// strategy is the ring wait strategy of an shm medium.
	strategy ringbuf.WaitStrategy
	// ringLabel names the raw ring workload of this wait strategy (engine
	// shm transports only: the ring is measured once per strategy).
	ringLabel string
	// procs, if not 0, is GOMAXPROCS in both processes while the
	// transport's steps run.
	procs int
}

// transportDefs are every transport, in the order they run.
var transportDefs = []transportDef{
	{name: "engine-shm", impl: implEngine, medium: "shm", strategy: ringbuf.Adaptive, ringLabel: "shm"},
	{name: "engine-shm-spin", impl: implEngine, medium: "shm", strategy: ringbuf.BusySpin, ringLabel: "shm-spin"},
	{name: "engine-shm-block", impl: implEngine, medium: "shm", strategy: ringbuf.Block, ringLabel: "shm-block"},
	{name: "engine-unix", impl: implEngine, medium: "unix"},
	{name: "engine-tcp", impl: implEngine, medium: "tcp"},
	{name: "engine-pipe", impl: implEngine, medium: "pipe"},
	{name: "engine-mem", impl: implEngine, medium: "mem"},
	{name: "gocapnp-shm", impl: implGoCapnp, medium: "shm", strategy: ringbuf.Adaptive},
	{name: "gocapnp-unix", impl: implGoCapnp, medium: "unix"},
	{name: "gocapnp-tcp", impl: implGoCapnp, medium: "tcp"},
	{name: "gocapnp-pipe", impl: implGoCapnp, medium: "pipe"},
	{name: "gocapnp-mem", impl: implGoCapnp, medium: "mem"},
	{name: "cpp-ezrpc-unix", impl: implCpp, medium: "unix"},
	{name: "cpp-ezrpc-tcp", impl: implCpp, medium: "tcp"},
	{name: "engine-shm-1p", impl: implEngine, medium: "shm", strategy: ringbuf.Adaptive, procs: 1},
	{name: "engine-unix-1p", impl: implEngine, medium: "unix", procs: 1},
	{name: "gocapnp-unix-1p", impl: implGoCapnp, medium: "unix", procs: 1},
}

// allTransports are the transports' names, in the order they run.
var allTransports = func() []string {
	var names []string
	for _, d := range transportDefs {
		names = append(names, d.name)
	}
	return names
}()

// transportAliases are the other names -transports takes: the engine's
// transports by their names before go-capnp and C++ joined the bench, and
// one name for each implementation's group.
var transportAliases = map[string][]string{
	"shm":       {"engine-shm"},
	"shm-spin":  {"engine-shm-spin"},
	"shm-block": {"engine-shm-block"},
	"unix":      {"engine-unix"},
	"tcp":       {"engine-tcp"},
	"pipe":      {"engine-pipe"},
	implEngine:  {"engine-shm", "engine-shm-spin", "engine-shm-block", "engine-unix", "engine-tcp", "engine-pipe", "engine-mem", "engine-shm-1p", "engine-unix-1p"},
	implGoCapnp: {"gocapnp-shm", "gocapnp-unix", "gocapnp-tcp", "gocapnp-pipe", "gocapnp-mem", "gocapnp-unix-1p"},
	"1p":        {"engine-shm-1p", "engine-unix-1p", "gocapnp-unix-1p"},
	implCpp:     {"cpp-ezrpc-unix", "cpp-ezrpc-tcp"},
}

// inProcess reports whether both ends of d run in the bench's process.
func (d transportDef) inProcess() bool { return d.medium == "pipe" || d.medium == "mem" }

// lookupTransport returns the definition of a transport label.
func lookupTransport(name string) (transportDef, bool) {
	i := slices.IndexFunc(transportDefs, func(d transportDef) bool { return d.name == name })
	if i < 0 {
		return transportDef{}, false
	}
	return transportDefs[i], true
}

// parseTransports parses -transports: labels, aliases and groups, in any
// order and repeated; the result is in the order they run.
func parseTransports(s string) ([]string, error) {
	var names []string
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		switch {
		case f == "":
		case slices.Contains(allTransports, f):
			names = append(names, f)
		case transportAliases[f] != nil:
			names = append(names, transportAliases[f]...)
		default:
			return nil, fmt.Errorf("unknown transport %q (want some of %s; or %s, %s, %s for each group; shm, shm-spin, shm-block, unix, tcp, pipe are the engine's)",
				f, strings.Join(allTransports, ","), implEngine, implGoCapnp, implCpp)
		}
	}
	return parseList(strings.Join(names, ","), allTransports)
}

// supports reports whether workload runs on the transport: the C++ peer
// measures ping and echo only; an idle connected pair is two processes;
// the raw ring and the floors are not RPC; the -1p variants run ping, echo
// and clients.
func (d transportDef) supports(workload string) bool {
	if d.procs > 0 {
		// The one-P variants are there for latency and its price in
		// throughput.
		return workload == "ping" || workload == "echo" || workload == "clients"
	}
	switch workload {
	case "ping", "echo":
		return true
	case "inplace", "stream", "clients":
		return d.impl != implCpp
	case "idle":
		return d.impl != implCpp && !d.inProcess()
	}
	return false
}

// engineOptions are the options of both ends of an engine transport.
func engineOptions(d transportDef) []rpc.Option {
	opts := []rpc.Option{rpc.WithMaxMessage(maxMessage)}
	if d.medium == "shm" {
		opts = append(opts, rpc.WithWaitStrategy(d.strategy), rpc.WithFallback(rpc.FallbackRequire))
	}
	return opts
}

// shmTransportOptions are the options of both ends of gocapnp-shm's
// capnshm Transport.
func shmTransportOptions(d transportDef) []rpc.Option {
	return []rpc.Option{rpc.WithMaxMessage(maxMessage), rpc.WithWaitStrategy(d.strategy)}
}

// client is one connection of the bench to a server.
type client struct {
	boot echoproto.Echo
	// limiter is what a streaming reference gets: the engine's
	// Conn.FlowLimiter, or for go-capnp one of the window the engine would
	// choose (half the pool on shared memory, DefaultStreamFlowWindow on a
	// stream).
	limiter flowcontrol.FlowLimiter
	// stats returns the client transport's counters, and whether the
	// report shows its copies: on shared memory, where copying is what the
	// transport avoids (a stream transport copies every byte each way).
	stats func() (rpc.Stats, bool)
	// shutdown closes the connection and waits until it has shut down.
	shutdown func() error
}

// close closes the connection, within 10 s.
func (c *client) close() error { return bounded(c.shutdown) }

// bounded runs shutdown, and gives up waiting for it after 10 s.
func bounded(shutdown func() error) error {
	done := make(chan error, 1)
	go func() { done <- shutdown() }()
	t := time.NewTimer(10 * time.Second)
	defer t.Stop()
	select {
	case err := <-done:
		return err
	case <-t.C:
		return errors.New("the connection did not shut down within 10 s of Close")
	}
}

func noStats() (rpc.Stats, bool) { return rpc.Stats{}, false }

// engineClient runs capnshm's engine over an established connection.
func engineClient(ctx context.Context, conn *rpc.Conn) *client {
	boot := echoproto.Echo(conn.Bootstrap(ctx))
	return &client{
		boot:    boot,
		limiter: conn.FlowLimiter(),
		stats:   func() (rpc.Stats, bool) { return conn.Stats().Stats, conn.SharedMemory() },
		shutdown: func() error {
			boot.Release()
			conn.Close()
			<-conn.Done()
			return nil
		},
	}
}

// goCapnpClient runs go-capnp's rpc.Conn over t; window is its streaming
// flow window.
func goCapnpClient(ctx context.Context, t transport.Transport, window int64, stats func() (rpc.Stats, bool)) *client {
	conn := gorpc.NewConn(t, &gorpc.Options{Logger: quietLogger()})
	boot := echoproto.Bootstrap(ctx, conn)
	return &client{
		boot:    boot,
		limiter: rpc.NewFlowLimiter(window),
		stats:   stats,
		shutdown: func() error {
			// The bootstrap capability is released after the connection
			// closed: a release before Close races with Close in go-capnp.
			conn.Close()
			<-conn.Done()
			boot.Release()
			return nil
		},
	}
}

// quietLogger is go-capnp's and the engine's logger in the bench: warnings
// and errors on stderr.
func quietLogger() *slog.Logger {
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

// streamTransport is go-capnp's stream transport with its limits raised
// to maxMessage (gostream).
func streamTransport(rwc io.ReadWriteCloser) transport.Transport {
	return gostream.New(rwc, maxMessage)
}

// endpoint is where a transport's clients connect: a server process or,
// for the pipes, servers in this process.
type endpoint interface {
	dial(ctx context.Context) (*client, error)
	// cpu returns the CPU time the server's process has used (servers in
	// another process only).
	cpu() (time.Duration, error)
	// copied returns the bytes the server's transports copied so far, and
	// whether it counts them (capnshm's transports do).
	copied() (uint64, bool, error)
	// sleeps returns the server process's thread sleeps so far
	// (threadSleeps), and whether it has a process of its own.
	sleeps() (uint64, bool, error)
	stop()
}

// startEndpoint starts the server of a transport (not C++).
func startEndpoint(d transportDef) (endpoint, error) {
	if d.inProcess() {
		return newPipeEndpoint(d), nil
	}
	return startServer(d)
}

// pipeEndpoint serves each client in this process, over net.Pipe or (medium
// mem) each implementation's in-process pipe: the RPC layer alone, both
// ends of it.
type pipeEndpoint struct {
	def  transportDef
	boot echoproto.Echo
	// closers of the server ends, run at stop.
	closers []func() error
}

func newPipeEndpoint(d transportDef) *pipeEndpoint {
	return &pipeEndpoint{def: d, boot: echoproto.Echo_ServerToClient(&echoproto.Server{})}
}

func (p *pipeEndpoint) dial(ctx context.Context) (*client, error) {
	if p.def.medium == "mem" {
		return p.dialMem(ctx)
	}
	mine, theirs := net.Pipe()
	bootstrap := capnp.Client(p.boot.AddRef())
	if p.def.impl == implGoCapnp {
		// go-capnp logs a client's close as an ERROR ("remote abort:
		// connection closed") on the server's Conn; a failure of this
		// server reaches the bench as the client's call error.
		srv := gorpc.NewConn(streamTransport(theirs), &gorpc.Options{BootstrapClient: bootstrap, Logger: slog.New(slog.DiscardHandler)})
		p.closers = append(p.closers, func() error { srv.Close(); <-srv.Done(); return nil })
		c := goCapnpClient(ctx, streamTransport(mine), rpc.DefaultStreamFlowWindow, noStats)
		return c, checkFirstPing(ctx, c)
	}
	// NewStreamTransport fails only on an invalid option, and these are
	// constant; NewConn takes over the transport and the bootstrap.
	st, err := rpc.NewStreamTransport(theirs, rpc.WithMaxMessage(maxMessage))
	if err != nil {
		bootstrap.Release()
		return nil, errors.Join(err, mine.Close(), theirs.Close())
	}
	srv, err := rpc.NewConn(st, bootstrap, rpc.WithMaxMessage(maxMessage))
	if err != nil {
		return nil, errors.Join(err, mine.Close())
	}
	p.closers = append(p.closers, func() error { srv.Close(); <-srv.Done(); return nil })
	ct, err := rpc.NewStreamTransport(mine, rpc.WithMaxMessage(maxMessage))
	if err != nil {
		return nil, errors.Join(err, mine.Close())
	}
	conn, err := rpc.NewConn(ct, capnp.Client{}, rpc.WithMaxMessage(maxMessage))
	if err != nil {
		return nil, err
	}
	c := engineClient(ctx, conn)
	return c, checkFirstPing(ctx, c)
}

// dialMem connects a client over the implementation's in-process pipe:
// capnshm's rpc.Pipe, or go-capnp's transport.NewPipe (its read limit
// raised, as gostream does for its stream).
func (p *pipeEndpoint) dialMem(ctx context.Context) (*client, error) {
	bootstrap := capnp.Client(p.boot.AddRef())
	if p.def.impl == implGoCapnp {
		a, b := gostream.NewPipe(pipeQueue, maxMessage)
		srv := gorpc.NewConn(a, &gorpc.Options{BootstrapClient: bootstrap, Logger: slog.New(slog.DiscardHandler)})
		p.closers = append(p.closers, func() error { srv.Close(); <-srv.Done(); return nil })
		c := goCapnpClient(ctx, b, rpc.DefaultStreamFlowWindow, noStats)
		return c, checkFirstPing(ctx, c)
	}
	a, b := rpc.Pipe()
	srv, err := rpc.NewConn(a, bootstrap)
	if err != nil {
		b.Close()
		return nil, err
	}
	p.closers = append(p.closers, func() error { srv.Close(); <-srv.Done(); return nil })
	conn, err := rpc.NewConn(b, capnp.Client{})
	if err != nil {
		return nil, err
	}
	c := engineClient(ctx, conn)
	return c, checkFirstPing(ctx, c)
}

// pipeQueue is the depth of go-capnp's in-process pipe (capnshm's is its
// own).
const pipeQueue = 256

func (p *pipeEndpoint) cpu() (time.Duration, error) {
	return 0, fmt.Errorf("%s: the server runs in this process", p.def.name)
}

func (p *pipeEndpoint) copied() (uint64, bool, error) { return 0, false, nil }

// sleeps: the server's threads are the bench's own, counted with the
// client's.
func (p *pipeEndpoint) sleeps() (uint64, bool, error) { return 0, false, nil }

func (p *pipeEndpoint) stop() {
	for _, c := range p.closers {
		_ = bounded(c)
	}
	p.boot.Release()
}

// checkFirstPing pings once on a new connection (connected and serving),
// and closes it if that fails.
func checkFirstPing(ctx context.Context, c *client) error {
	if err := ping(ctx, c.boot); err != nil {
		return errors.Join(fmt.Errorf("first ping: %w", err), c.close())
	}
	return nil
}
