//go:build linux

package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	capnp "capnproto.org/go/capnp/v3"
	gorpc "capnproto.org/go/capnp/v3/rpc"
	"capnproto.org/go/capnp/v3/rpc/transport"
	"golang.org/x/sys/unix"

	"github.com/capnshm/capnshm/internal/child"
	"github.com/capnshm/capnshm/internal/echoproto"
	"github.com/capnshm/capnshm/internal/pingpong"
	"github.com/capnshm/capnshm/iocpwake"
	"github.com/capnshm/capnshm/ringbuf"
	"github.com/capnshm/capnshm/rpc"
	"github.com/capnshm/capnshm/shm"
)

// ringCapacity is the capacity of each raw ring of the ring workload.
const ringCapacity = 64 << 10

// maxMessage is the message limit of both sides on every transport: the
// stream transport's default (64 MiB) refuses a 64 MiB echo.
const maxMessage = 1 << 30

// peer is a child process: this program run with -child.
type peer struct {
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	lines  chan string
	stderr lockedBuffer
}

func startPeer(args []string, handles []uintptr) (*peer, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd, started, err := child.Command(exe, args, handles)
	if err != nil {
		return nil, err
	}
	p := &peer{cmd: cmd, lines: make(chan string, 4)}
	cmd.Stderr = &p.stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		started()
		return nil, err
	}
	if p.stdin, err = cmd.StdinPipe(); err != nil {
		started()
		return nil, err
	}
	err = cmd.Start()
	started()
	if err != nil {
		return nil, fmt.Errorf("starting the peer: %w", err)
	}
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			p.lines <- sc.Text()
		}
		close(p.lines)
	}()
	return p, nil
}

// line returns the peer's next line of output.
func (p *peer) line() (string, error) {
	select {
	case s, ok := <-p.lines:
		if !ok {
			return "", fmt.Errorf("the peer exited: %v (its stderr: %s)", p.cmd.Wait(), p.stderr.String())
		}
		return s, nil
	case <-time.After(time.Minute):
		return "", fmt.Errorf("no answer from the peer within a minute (its stderr: %s)", p.stderr.String())
	}
}

// wait waits for the peer to exit on its own.
func (p *peer) wait() error {
	p.stdin.Close()
	if err := p.cmd.Wait(); err != nil {
		return fmt.Errorf("peer: %w (its stderr: %s)", err, p.stderr.String())
	}
	return nil
}

// stop ends the peer: it exits when its stdin closes; it is killed if it
// has not within 5 s.
func (p *peer) stop() {
	if p.cmd.ProcessState != nil {
		return
	}
	p.stdin.Close()
	done := make(chan struct{})
	go func() { _ = p.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		_ = p.cmd.Process.Kill()
		<-done
	}
}

// server is a server child for one transport: it implements endpoint.
type server struct {
	*peer
	def transportDef
	// addr is what the child printed: an address for rpc.Dial (engine), or
	// "NETWORK ADDRESS" for net.Dial (go-capnp).
	addr string
}

func startServer(d transportDef) (*server, error) {
	p, err := startPeer([]string{"-child", "server", "-transport", d.name}, nil)
	if err != nil {
		return nil, err
	}
	addr, err := p.line()
	if err != nil {
		p.stop()
		return nil, err
	}
	return &server{peer: p, def: d, addr: addr}, nil
}

// query sends the server a command line and returns its answer.
func (s *server) query(cmd string) (string, error) {
	if _, err := io.WriteString(s.stdin, cmd+"\n"); err != nil {
		return "", fmt.Errorf("asking the server for %s: %w", cmd, err)
	}
	return s.line()
}

// cpu returns the CPU time the server process has used.
func (s *server) cpu() (time.Duration, error) {
	l, err := s.query("cpu")
	if err != nil {
		return 0, err
	}
	ns, err := strconv.ParseInt(l, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("server said %q, want its CPU time", l)
	}
	return time.Duration(ns), nil
}

// copied returns the bytes the server's transports have copied (rpc.Stats
// BytesCopied, summed over its connections), if they count them.
func (s *server) copied() (uint64, bool, error) {
	l, err := s.query("copied")
	if err != nil {
		return 0, false, err
	}
	if l == "-" {
		return 0, false, nil
	}
	n, err := strconv.ParseUint(l, 10, 64)
	if err != nil {
		return 0, false, fmt.Errorf("server said %q, want the bytes it copied", l)
	}
	return n, true, nil
}

// sleeps returns the server process's thread sleeps so far.
func (s *server) sleeps() (uint64, bool, error) {
	l, err := s.query("sleeps")
	if err != nil {
		return 0, false, err
	}
	n, err := strconv.ParseUint(l, 10, 64)
	if err != nil {
		return 0, false, fmt.Errorf("server said %q, want its thread sleeps", l)
	}
	return n, true, nil
}

// dial connects to the server; ctx bounds the connection's life, and
// connecting takes at most 30 s of it.
func (s *server) dial(ctx context.Context) (*client, error) {
	dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var c *client
	switch s.def.impl {
	case implEngine:
		conn, err := rpc.Dial(dctx, s.addr, engineOptions(s.def)...)
		if err != nil {
			return nil, err
		}
		if shmWanted := s.def.medium == "shm"; conn.SharedMemory() != shmWanted {
			conn.Close()
			return nil, fmt.Errorf("connection on shared memory: %v, want %v", conn.SharedMemory(), shmWanted)
		}
		c = engineClient(ctx, conn)
	case implGoCapnp:
		network, address, ok := strings.Cut(s.addr, " ")
		if !ok {
			return nil, fmt.Errorf("server said %q, want NETWORK ADDRESS", s.addr)
		}
		var d net.Dialer
		conn, err := d.DialContext(dctx, network, address)
		if err != nil {
			return nil, err
		}
		if s.def.medium != "shm" {
			c = goCapnpClient(ctx, streamTransport(conn), rpc.DefaultStreamFlowWindow, noStats)
			break
		}
		uc, ok := conn.(*net.UnixConn)
		if !ok {
			conn.Close()
			return nil, fmt.Errorf("%s is not a unix socket", s.addr)
		}
		tr, err := rpc.NewTransport(dctx, uc, rpc.Dialer, shmTransportOptions(s.def)...)
		if err != nil {
			return nil, err
		}
		c = goCapnpClient(ctx, tr, rpc.DefaultPoolSize/2, func() (rpc.Stats, bool) { return tr.Stats(), true })
	default:
		return nil, fmt.Errorf("%s: no Go client", s.def.name)
	}
	if err := ping(dctx, c.boot); err != nil {
		return nil, errors.Join(fmt.Errorf("first ping: %w", err), c.close())
	}
	return c, nil
}

// cpuTime returns the CPU time this process has used.
func cpuTime() (time.Duration, error) {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		return 0, fmt.Errorf("getrusage: %w", err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), nil
}

// threadSleeps returns the voluntary context switches of all this
// process's threads so far (getrusage's ru_nvcsw): each is a thread that
// blocked (on a futex, in epoll_wait, in a read, in nanosleep) and had to
// be woken, by a doorbell, a socket or the Go runtime.
func threadSleeps() (uint64, error) {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		return 0, fmt.Errorf("getrusage: %w", err)
	}
	return uint64(ru.Nvcsw), nil
}

// runChild is the peer side of every workload.
func runChild(role, transport string, rounds, strategy, regionSize int) error {
	switch role {
	case "server":
		return serverChild(transport)
	case "eventfd":
		hs := child.Handles()
		if len(hs) != 2 {
			return fmt.Errorf("want 2 eventfds, got %d handles", len(hs))
		}
		fmt.Println("ready")
		return pingpong.EventfdServer(int(hs[0]), int(hs[1]), rounds)
	case "spin", "ring":
	default:
		return fmt.Errorf("unknown child role %q", role)
	}
	hs := child.Handles()
	if len(hs) != 2 {
		return fmt.Errorf("want a region and a doorbell, got %d handles", len(hs))
	}
	region, err := shm.Open(shm.Handle(hs[0]), int64(regionSize), shm.ReadWrite, &shm.Options{Prefault: true})
	if err != nil {
		return err
	}
	defer region.Close()
	peerBell, err := iocpwake.Open(iocpwake.Handle(hs[1]))
	if err != nil {
		return err
	}
	defer peerBell.Close()
	mine, err := iocpwake.New()
	if err != nil {
		return err
	}
	defer mine.Close()
	fmt.Println(mine.Handle())
	if role == "spin" {
		pingpong.SpinServer(pingpong.SpinWord(region.Bytes()), rounds)
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	reqMem, respMem := pingpong.Rings(region.Bytes(), ringCapacity)
	req, err1 := ringbuf.Attach(reqMem)
	resp, err2 := ringbuf.Attach(respMem)
	if err := errors.Join(err1, err2); err != nil {
		return err
	}
	opts := ringbuf.Options{Strategy: ringbuf.WaitStrategy(strategy), Waiter: mine, Ringer: peerBell}
	return pingpong.RingServer(ctx, req.Consumer(opts), resp.Producer(opts), rounds)
}

// serverChild serves echoproto.Echo for transport on a fresh address,
// prints the address, answers "cpu" lines on stdin with its CPU time in
// nanoseconds and "copied" lines with the bytes its transports copied (or
// "-"), and exits when stdin ends.
func serverChild(transport string) error {
	d, ok := lookupTransport(transport)
	if !ok || d.inProcess() || d.impl == implCpp {
		return fmt.Errorf("no server child for transport %q", transport)
	}
	if d.procs > 0 {
		runtime.GOMAXPROCS(d.procs)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var copied func() (uint64, bool)
	if d.impl == implEngine {
		stop, c, err := serveEngine(ctx, d)
		if err != nil {
			return err
		}
		defer stop()
		copied = c
	} else {
		stop, c, err := serveGoCapnp(ctx, d)
		if err != nil {
			return err
		}
		defer stop()
		copied = c
	}
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		switch sc.Text() {
		case "cpu":
			d, err := cpuTime()
			if err != nil {
				return err
			}
			fmt.Println(d.Nanoseconds())
		case "sleeps":
			n, err := threadSleeps()
			if err != nil {
				return err
			}
			fmt.Println(n)
		case "copied":
			if n, ok := copied(); ok {
				fmt.Println(n)
			} else {
				fmt.Println("-")
			}
		default:
			return fmt.Errorf("unknown command %q on stdin", sc.Text())
		}
	}
	return nil
}

// statsSet sums the transports' copied bytes of a server's connections.
type statsSet struct {
	mu    sync.Mutex
	stats []func() rpc.Stats
}

func (s *statsSet) add(f func() rpc.Stats) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stats = append(s.stats, f)
}

func (s *statsSet) copied() (uint64, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var n uint64
	for _, f := range s.stats {
		n += f().BytesCopied
	}
	return n, true
}

// serveEngine serves with capnshm's engine (rpc.Listen) and prints the
// address rpc.Dial takes.
func serveEngine(ctx context.Context, d transportDef) (stop func(), copied func() (uint64, bool), err error) {
	var addr string
	switch d.medium {
	case "shm":
		addr = fmt.Sprintf("shm-abstract:capnshm-bench-%d", os.Getpid())
	case "unix":
		addr = fmt.Sprintf("unix-abstract:capnshm-bench-%d", os.Getpid())
	case "tcp":
		addr = "tcp:127.0.0.1:0"
	}
	var set statsSet
	opts := append(engineOptions(d), rpc.WithConnState(func(info rpc.ConnInfo, st rpc.ConnState) {
		// The stream transport does not count copies (see client.stats).
		if st == rpc.StateActive && info.Conn != nil && info.Conn.SharedMemory() {
			conn := info.Conn
			set.add(func() rpc.Stats { return conn.Stats().Stats })
		}
	}))
	boot := echoproto.Echo_ServerToClient(&echoproto.Server{})
	srv, err := rpc.Listen(addr, capnp.Client(boot), opts...)
	if err != nil {
		return nil, nil, err
	}
	go func() { _ = srv.Serve(ctx) }()
	fmt.Println(srv.Addr().String())
	copied = func() (uint64, bool) { return 0, false }
	if d.medium == "shm" {
		copied = set.copied
	}
	return func() { srv.Close() }, copied, nil
}

// serveGoCapnp serves with go-capnp's rpc.Conn, one per accepted
// connection, and prints the listener's network and address.
func serveGoCapnp(ctx context.Context, d transportDef) (stop func(), copied func() (uint64, bool), err error) {
	network, address := "unix", fmt.Sprintf("@capnshm-bench-gocapnp-%d", os.Getpid())
	if d.medium == "tcp" {
		network, address = "tcp", "127.0.0.1:0"
	}
	l, err := net.Listen(network, address)
	if err != nil {
		return nil, nil, err
	}
	boot := echoproto.Echo_ServerToClient(&echoproto.Server{})
	var set statsSet
	var mu sync.Mutex
	var conns []*gorpc.Conn
	serve := func(c net.Conn) {
		var t transport.Transport
		if d.medium == "shm" {
			hctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			tr, err := rpc.NewTransport(hctx, c.(*net.UnixConn), rpc.Listener, shmTransportOptions(d)...)
			cancel()
			if err != nil {
				fmt.Fprintln(os.Stderr, "bench server: handshake:", err)
				return
			}
			set.add(tr.Stats)
			t = tr
		} else {
			t = streamTransport(c)
		}
		conn := gorpc.NewConn(t, &gorpc.Options{BootstrapClient: capnp.Client(boot.AddRef()), Logger: quietLogger()})
		mu.Lock()
		conns = append(conns, conn)
		mu.Unlock()
	}
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go serve(c)
		}
	}()
	fmt.Println(l.Addr().Network(), l.Addr().String())
	copied = func() (uint64, bool) { return 0, false }
	if d.medium == "shm" {
		copied = set.copied
	}
	return func() {
		l.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			_ = bounded(func() error { c.Close(); <-c.Done(); return nil })
		}
		boot.Release()
	}, copied, nil
}

// pairRun creates a ping-pong region and a doorbell, starts the peer for
// role with them, opens the doorbell the peer reports, and runs client.
func pairRun(role string, rounds int, strategy ringbuf.WaitStrategy, client func(r *shm.Region, mine, peerBell *iocpwake.Bell) error) error {
	size, _ := pingpong.RegionSize(ringCapacity)
	region, err := shm.Create(int64(size), &shm.Options{Prefault: true, Name: "capnshm-bench"})
	if err != nil {
		return err
	}
	defer region.Close()
	reqMem, respMem := pingpong.Rings(region.Bytes(), ringCapacity)
	for _, m := range [][]byte{reqMem, respMem} {
		if _, err := ringbuf.Init(m); err != nil {
			return err
		}
	}
	mine, err := iocpwake.New()
	if err != nil {
		return err
	}
	defer mine.Close()
	args := []string{"-child", role, "-rounds", strconv.Itoa(rounds), "-strategy", strconv.Itoa(int(strategy)), "-region-size", strconv.Itoa(size)}
	p, err := startPeer(args, []uintptr{uintptr(region.Handle()), uintptr(mine.Handle())})
	if err != nil {
		return err
	}
	defer p.stop()
	line, err := p.line()
	if err != nil {
		return err
	}
	v, err := strconv.ParseUint(line, 10, 64)
	if err != nil {
		return fmt.Errorf("peer said %q, want its doorbell's handle", line)
	}
	h, err := child.Take(p.cmd.Process.Pid, uintptr(v))
	if err != nil {
		return err
	}
	peerBell, err := iocpwake.Open(iocpwake.Handle(h))
	if err != nil {
		return err
	}
	defer peerBell.Close()
	if err := client(region, mine, peerBell); err != nil {
		return err
	}
	return p.wait()
}

// spinFloor times rounds round trips on one shared cache line.
func spinFloor(rounds int) ([]time.Duration, error) {
	s := make([]time.Duration, rounds)
	err := pairRun("spin", rounds, 0, func(r *shm.Region, _, _ *iocpwake.Bell) error {
		pingpong.SpinClient(pingpong.SpinWord(r.Bytes()), rounds, s)
		return nil
	})
	return s, err
}

// eventfdFloor times rounds round trips over two blocking eventfds.
func eventfdFloor(rounds int) ([]time.Duration, error) {
	ping, pong, err := pingpong.Eventfds()
	if err != nil {
		return nil, err
	}
	defer unix.Close(ping)
	defer unix.Close(pong)
	p, err := startPeer([]string{"-child", "eventfd", "-rounds", strconv.Itoa(rounds)}, []uintptr{uintptr(ping), uintptr(pong)})
	if err != nil {
		return nil, err
	}
	defer p.stop()
	if _, err := p.line(); err != nil {
		return nil, err
	}
	s := make([]time.Duration, rounds)
	if _, err := pingpong.EventfdClient(ping, pong, rounds, s); err != nil {
		return nil, err
	}
	return s, p.wait()
}

// ringRoundTrips times rounds raw ring round trips of 8-byte records with
// the given wait strategy on both sides.
func ringRoundTrips(rounds int, st ringbuf.WaitStrategy) ([]time.Duration, error) {
	s := make([]time.Duration, rounds)
	err := pairRun("ring", rounds, st, func(r *shm.Region, mine, peerBell *iocpwake.Bell) error {
		reqMem, respMem := pingpong.Rings(r.Bytes(), ringCapacity)
		req, err1 := ringbuf.Attach(reqMem)
		resp, err2 := ringbuf.Attach(respMem)
		if err := errors.Join(err1, err2); err != nil {
			return err
		}
		opts := ringbuf.Options{Strategy: st, Waiter: mine, Ringer: peerBell}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		defer cancel()
		_, err := pingpong.RingClient(ctx, req.Producer(opts), resp.Consumer(opts), 8, rounds, s)
		return err
	})
	return s, err
}
