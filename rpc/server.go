package rpc

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"time"

	capnp "capnproto.org/go/capnp/v3"
)

// ErrServerClosed is what Server.Serve and Server.Listen return once the
// server is closed.
var ErrServerClosed = errors.New("capnshm: server closed")

// ErrAddrInUse: another process is serving the address (a unix socket
// file that accepts connections, or a TCP port), or the path is taken by
// something that is not a socket, which Listen never removes. A socket
// file left by a server that died, on which nothing accepts, is not in
// use: Listen takes it over.
var ErrAddrInUse = errors.New("capnshm: address in use")

// Server serves a bootstrap capability on one or more addresses. Each
// accepted connection negotiates shared memory or the stream transport on
// its own (see Fallback), gets its own pools, and ends on its own: one
// client's death never disturbs the others.
type Server struct {
	boot capnp.Client
	cfg  *config
	log  *slog.Logger

	ctx    context.Context // ends at Close
	cancel context.CancelFunc

	mu        sync.Mutex
	listeners []*listener
	conns     map[*serverConn]struct{} // accepted, negotiating or served
	perUser   map[int]int              // len(conns) by the clients' user id (unix sockets)
	serving   bool
	closed    bool
	wg        sync.WaitGroup // accept loops and connections
}

type listener struct {
	l    net.Listener
	addr Addr // with the endpoint the system chose (tcp port 0)
	cfg  *config
}

// serverConn is one accepted connection.
type serverConn struct {
	raw      net.Conn
	accepted time.Time // the handshake deadline counts from here
	uid      int       // the client's user id, if hasUID
	hasUID   bool      // a unix socket: counted in Server.perUser
	conn     *Conn     // set once negotiated; guarded by Server.mu
}

// ConnState is a state of a server's connection, as WithConnState reports
// it.
type ConnState int

const (
	// StateNew: a connection was accepted; it is negotiating.
	StateNew ConnState = iota
	// StateActive: the connection is established (ConnInfo.Peer says on
	// shared memory or on a socket, and who the peer is).
	StateActive
	// StateClosed: the connection ended, or was never established
	// (ConnInfo.Err says why; ErrServerClosed when the server closed).
	StateClosed
)

func (s ConnState) String() string {
	switch s {
	case StateNew:
		return "new"
	case StateActive:
		return "active"
	case StateClosed:
		return "closed"
	}
	return fmt.Sprintf("ConnState(%d)", int(s))
}

// ConnInfo describes a server connection for WithConnState.
type ConnInfo struct {
	Peer Peer
	// Conn is the connection, from StateActive on; nil for one that was
	// never established.
	Conn *Conn
	// Err is why the connection ended (StateClosed).
	Err error
}

// WithConnState sets a function a Server calls as each of its connections
// changes state, as net/http's ConnState: accepted (StateNew), established
// (StateActive), ended (StateClosed, with the reason). The calls for one
// connection come in that order, from its own goroutine; f must not block.
func WithConnState(f func(ConnInfo, ConnState)) Option { return func(c *config) { c.connState = f } }

// notify reports a connection's state to WithConnState's function.
func (c *config) notify(info ConnInfo, st ConnState) {
	if c.connState != nil {
		c.connState(info, st)
	}
}

// Listen listens on addr (see ParseAddr) and returns a Server that serves
// bootstrap to every client once Serve runs. Listen takes over the
// reference bootstrap: the Server releases it when it closes (or at once
// if Listen fails). More addresses can be added with Server.Listen.
func Listen(addr string, bootstrap capnp.Client, opts ...Option) (*Server, error) {
	cfg, err := newConfig(nil, opts)
	if err != nil {
		bootstrap.Release()
		return nil, err
	}
	s := &Server{
		boot:    bootstrap,
		cfg:     cfg,
		log:     cfg.logger,
		conns:   make(map[*serverConn]struct{}),
		perUser: make(map[int]int),
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	if err := s.Listen(addr); err != nil {
		s.cancel()
		bootstrap.Release()
		return nil, err
	}
	return s, nil
}

// Listen adds an address: the server accepts on it too, with the server's
// options and then opts. It may be called before or while Serve runs.
func (s *Server) Listen(addr string, opts ...Option) error {
	a, err := ParseAddr(addr)
	if err != nil {
		return err
	}
	cfg, err := newConfig(s.cfg, opts)
	if err != nil {
		return err
	}
	if err := cfg.check(a); err != nil {
		return err
	}
	l, err := listenSocket(a, cfg)
	if err != nil {
		if errors.Is(err, ErrAddrInUse) {
			return err
		}
		return fmt.Errorf("capnshm: listening on %s: %w", a, err)
	}
	if ul, ok := l.(*net.UnixListener); ok {
		ul.SetUnlinkOnClose(!a.Abstract())
	}
	ln := &listener{l: l, addr: resolved(a, l.Addr()), cfg: cfg}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		l.Close()
		return ErrServerClosed
	}
	s.listeners = append(s.listeners, ln)
	if s.serving {
		s.startAccept(ln)
	}
	s.log.Info("capnshm: listening", "addr", ln.addr.String(), "fallback", cfg.fallback.String())
	return nil
}

// resolved returns a with the endpoint the listener got (a TCP port 0
// becomes the port chosen).
func resolved(a Addr, na net.Addr) Addr {
	if a.Scheme == SchemeTCP {
		if ta, ok := na.(*net.TCPAddr); ok {
			host, _, _ := net.SplitHostPort(a.Endpoint)
			if host == "" {
				host = ta.IP.String()
			}
			return Addr{Scheme: SchemeTCP, Endpoint: net.JoinHostPort(host, fmt.Sprint(ta.Port))}
		}
	}
	return a
}

// Addr returns the first address the server listens on, with the port the
// system chose for tcp:host:0. Its String can be passed to Dial.
func (s *Server) Addr() net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.listeners) == 0 {
		return nil
	}
	return s.listeners[0].addr
}

// Addrs returns every address the server listens on, as Addr returns the
// first.
func (s *Server) Addrs() []Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	as := make([]Addr, len(s.listeners))
	for i, l := range s.listeners {
		as[i] = l.addr
	}
	return as
}

// Serve accepts and serves connections on every address until ctx ends or
// Close is called. When ctx ends, Serve closes the server and returns the
// context's cause; after Close it returns nil. Calling it again, or after
// Close, returns an error.
func (s *Server) Serve(ctx context.Context) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return ErrServerClosed
	}
	if s.serving {
		s.mu.Unlock()
		return errors.New("capnshm: Server.Serve called twice")
	}
	s.serving = true
	for _, l := range s.listeners {
		s.startAccept(l)
	}
	s.mu.Unlock()
	select {
	case <-ctx.Done():
		s.Close()
		return context.Cause(ctx)
	case <-s.ctx.Done():
		return nil
	}
}

// startAccept runs l's accept loop. Called with s.mu held.
func (s *Server) startAccept(l *listener) {
	s.wg.Add(1)
	go s.accept(l)
}

func (s *Server) accept(l *listener) {
	defer s.wg.Done()
	var backoff time.Duration
	for {
		raw, err := l.l.Accept()
		if err != nil {
			if s.ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of descriptors, or the like: wait, as net/http does.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			s.log.Warn("capnshm: accept failed; retrying", "addr", l.addr.String(), "err", err, "retry_in", backoff)
			select {
			case <-time.After(backoff):
			case <-s.ctx.Done():
				return
			}
			continue
		}
		backoff = 0
		sc := &serverConn{raw: raw, accepted: time.Now()}
		sc.uid, sc.hasUID = peerUID(raw)
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			raw.Close()
			return
		}
		if err := s.admitLocked(l.cfg, sc); err != nil {
			s.mu.Unlock()
			s.log.Warn("capnshm: connection refused", "addr", l.addr.String(), "remote", remoteName(raw), "err", err)
			refuseAtAccept(raw, l.addr, err.Error())
			raw.Close()
			l.cfg.notify(ConnInfo{Peer: Peer{Addr: l.addr, Remote: remoteName(raw)}, Err: err}, StateClosed)
			continue
		}
		s.conns[sc] = struct{}{}
		if sc.hasUID {
			s.perUser[sc.uid]++
		}
		s.wg.Add(1)
		s.mu.Unlock()
		go s.serveConn(l, sc)
	}
}

// admitLocked applies the connection limits of cfg to a new connection sc
// (WithMaxConns, WithMaxConnsPerUser): the connections held count those
// still in their handshake. Called with s.mu held.
func (s *Server) admitLocked(cfg *config, sc *serverConn) error {
	o := cfg.opts.withDefaults()
	if n := len(s.conns); n >= o.MaxConns {
		return fmt.Errorf("%w: the server holds %d connections, its limit (WithMaxConns)", ErrLimit, n)
	}
	if sc.hasUID {
		if n := s.perUser[sc.uid]; n >= o.MaxConnsPerUser {
			return fmt.Errorf("%w: the server holds %d connections of user %d, its limit per user (WithMaxConnsPerUser)", ErrLimit, n, sc.uid)
		}
	}
	return nil
}

// serveConn negotiates the transport of sc, serves it, and forgets it
// when it ends.
func (s *Server) serveConn(l *listener, sc *serverConn) {
	defer s.wg.Done()
	defer func() {
		s.mu.Lock()
		delete(s.conns, sc)
		if sc.hasUID {
			if s.perUser[sc.uid]--; s.perUser[sc.uid] == 0 {
				delete(s.perUser, sc.uid)
			}
		}
		s.mu.Unlock()
	}()
	log := s.log.With("addr", l.addr.String(), "remote", remoteName(sc.raw))
	l.cfg.notify(ConnInfo{Peer: Peer{Addr: l.addr, Remote: remoteName(sc.raw)}}, StateNew)
	// The handshake, whatever transport it ends in, counts from accept: a
	// client that sends nothing (or not enough) holds a descriptor that
	// long and no longer.
	timeout := l.cfg.opts.withDefaults().HandshakeTimeout
	hctx, cancel := context.WithDeadlineCause(s.ctx, sc.accepted.Add(timeout),
		fmt.Errorf("capnshm: the client did not complete its handshake within %v of accept (WithHandshakeTimeout): %w", timeout, os.ErrDeadlineExceeded))
	est, err := acceptEstablish(hctx, sc.raw, l.addr, l.cfg, log)
	cancel()
	if err != nil {
		sc.raw.Close()
		if s.ctx.Err() == nil {
			log.Warn("capnshm: connection not established", "err", err)
		} else {
			err = ErrServerClosed
		}
		l.cfg.notify(ConnInfo{Peer: Peer{Addr: l.addr, Remote: remoteName(sc.raw)}, Err: err}, StateClosed)
		return
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		est.tr.Close()
		l.cfg.notify(ConnInfo{Peer: est.peer(l.addr), Err: ErrServerClosed}, StateClosed)
		return
	}
	c := newConn(est.tr, l.cfg, s.boot.AddRef(), est.peer(l.addr))
	c.addr = l.addr
	sc.conn = c
	s.mu.Unlock()
	log.Debug("capnshm: connection established", "shared_memory", c.SharedMemory())
	l.cfg.notify(ConnInfo{Peer: c.Peer(), Conn: c}, StateActive)
	<-c.Done()
	log.Debug("capnshm: connection ended", "reason", c.Err())
	l.cfg.notify(ConnInfo{Peer: c.Peer(), Conn: c, Err: c.Err()}, StateClosed)
}

func remoteName(c net.Conn) string {
	if a := c.RemoteAddr(); a != nil && a.String() != "" && a.String() != "@" {
		return a.String()
	}
	return "unix"
}

// Close stops accepting on every address, closes every connection (the
// clients' outstanding calls fail with disconnected errors, the handlers'
// contexts end) and waits until they have ended. Later calls return nil.
func (s *Server) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.cancel()
	var errs []error
	for _, l := range s.listeners {
		if err := l.l.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
			errs = append(errs, fmt.Errorf("capnshm: closing %s: %w", l.addr, err))
		}
	}
	var conns []*serverConn
	for sc := range s.conns {
		conns = append(conns, sc)
	}
	s.mu.Unlock()
	// Close the connections at once: each may wait a little for a peer
	// that does not read.
	var wg sync.WaitGroup
	for _, sc := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.mu.Lock()
			c := sc.conn
			s.mu.Unlock()
			if c != nil {
				c.Close()
			} else {
				sc.raw.Close() // still negotiating (s.ctx ended too)
			}
		}()
	}
	wg.Wait()
	s.wg.Wait()
	s.boot.Release()
	return errors.Join(errs...)
}
