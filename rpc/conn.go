package rpc

import (
	"context"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"

	capnp "capnproto.org/go/capnp/v3"
	"capnproto.org/go/capnp/v3/flowcontrol"
	capnprpc "capnproto.org/go/capnp/v3/rpc"
	"capnproto.org/go/capnp/v3/rpc/transport"
	rpccp "capnproto.org/go/capnp/v3/std/capnp/rpc"
)

// Conn is a Cap'n Proto connection made by Dial: go-capnp's rpc.Conn over
// shared memory or over the stream transport.
type Conn struct {
	rpc    *capnprpc.Conn
	shm    *Transport   // nil on the stream transport
	stream *streamStats // nil on shared memory
	addr   Addr

	flowWindow int64 // WithFlowWindow; 0: the default
	flowOnce   sync.Once
	flow       flowcontrol.FlowLimiter

	closeOnce sync.Once
	closeErr  error
}

// Dial connects to addr (see ParseAddr) and returns the connection, on
// shared memory when the address is shm: or shm-abstract: and both sides
// can (see Fallback), on go-capnp's unpacked stream transport otherwise,
// which is wire-compatible with C++ EZ-RPC. ctx bounds the connection and
// the handshake, not the connection's life.
func Dial(ctx context.Context, addr string, opts ...Option) (*Conn, error) {
	a, err := ParseAddr(addr)
	if err != nil {
		return nil, err
	}
	cfg, err := newConfig(nil, opts)
	if err != nil {
		return nil, err
	}
	if err := cfg.check(a); err != nil {
		return nil, err
	}
	est, err := dialEstablish(ctx, a, cfg)
	if err != nil {
		return nil, err
	}
	c := &Conn{shm: est.shm, stream: est.stream, addr: a, flowWindow: cfg.flowWindow}
	c.rpc = capnprpc.NewConn(est.tr, &capnprpc.Options{Logger: rpcLogger(cfg)})
	return c, nil
}

// dial opens the socket of a.
func dial(ctx context.Context, a Addr) (net.Conn, error) {
	var d net.Dialer
	network, address := a.Net()
	c, err := d.DialContext(ctx, network, address)
	if err != nil {
		return nil, fmt.Errorf("capnshm: dialing %s: %w", a, err)
	}
	return c, nil
}

// rpcLogger returns the logger for go-capnp: nil (its default) unless one
// was given.
func rpcLogger(cfg *config) capnprpc.Logger {
	if cfg.logger == nil {
		return nil
	}
	return cfg.logger
}

// Bootstrap returns the peer's bootstrap capability, once the peer has
// answered (or ctx ended): go-capnp v3.0.1-alpha.2 peers can fail, or
// panic, on calls pipelined on a bootstrap capability they are still
// returning. The caller releases it; calls on it fail if the bootstrap
// failed.
func (c *Conn) Bootstrap(ctx context.Context) capnp.Client {
	boot := c.rpc.Bootstrap(ctx)
	_ = boot.Resolve(ctx)
	return boot
}

// Done is closed when the connection has ended: closed here, by the peer,
// or because the peer died.
func (c *Conn) Done() <-chan struct{} { return c.rpc.Done() }

// Close ends the connection: outstanding calls fail with a disconnected
// error. Later calls return nil.
func (c *Conn) Close() error {
	c.closeOnce.Do(func() { c.closeErr = c.rpc.Close() })
	return c.closeErr
}

// SharedMemory reports whether the connection runs on shared memory (as
// opposed to the stream transport on the socket).
func (c *Conn) SharedMemory() bool { return c.shm != nil }

// Stats returns the transport's counters: all of them on shared memory;
// on the stream transport, only the message and byte counts.
func (c *Conn) Stats() Stats {
	if c.shm != nil {
		return c.shm.Stats()
	}
	return c.stream.stats()
}

// RPC returns go-capnp's connection, for what Conn does not wrap.
func (c *Conn) RPC() *capnprpc.Conn { return c.rpc }

// RemoteAddr returns the address that was dialled.
func (c *Conn) RemoteAddr() Addr { return c.addr }

// established is a negotiated connection, ready for capnprpc.NewConn.
type established struct {
	tr     transport.Transport
	shm    *Transport
	stream *streamStats
}

// streamOver returns the stream transport on conn; peerMax is the largest
// message the peer said it accepts (0: unknown, taken to be this side's).
func streamOver(conn net.Conn, cfg *config, peerMax uint64) established {
	tr, st := newStreamTransport(conn, cfg.opts.MaxMessage, peerMax)
	return established{tr: tr, stream: st}
}

// streamStats counts a stream transport's messages.
type streamStats struct {
	msgsSent, msgsRecv   atomic.Uint64
	bytesSent, bytesRecv atomic.Uint64
}

func (s *streamStats) stats() Stats {
	return Stats{
		MessagesSent:     s.msgsSent.Load(),
		MessagesReceived: s.msgsRecv.Load(),
		BytesSent:        s.bytesSent.Load(),
		BytesReceived:    s.bytesRecv.Load(),
	}
}

// NewStreamTransport returns go-capnp's unpacked stream transport on rwc
// (the one rpc.NewStreamTransport makes, wire-compatible with C++ EZ-RPC),
// with the checks capnshm makes on every incoming message: a message that
// would crash a go-capnp v3.0.1-alpha.2 connection ends that connection
// with an error wrapping ErrProtocol instead. It is what Listen and Dial
// run on stream addresses, for callers that build their own rpc.Conn.
// Messages are limited to DefaultMaxMessage, as on every capnshm transport.
func NewStreamTransport(rwc io.ReadWriteCloser) transport.Transport {
	tr, _ := newStreamTransport(rwc, 0, 0)
	return tr
}

// newStreamTransport returns go-capnp's unpacked stream transport on rwc
// (what rpc.NewStreamTransport makes, so wire-compatible with C++ EZ-RPC),
// with maxMessage (if positive) as its size limit and counters.
func newStreamTransport(rwc io.ReadWriteCloser, maxMessage int64, peerMax uint64) (transport.Transport, *streamStats) {
	max := uint64(DefaultMaxMessage)
	if maxMessage > 0 {
		max = uint64(maxMessage)
	}
	d := capnp.NewDecoder(rwc)
	d.MaxMessageSize = max
	st := &streamStats{}
	return transport.New(&countingCodec{dec: d, enc: capnp.NewEncoder(rwc), c: rwc, max: max, st: st}), st
}

// countingCodec is go-capnp's unpacked stream codec with counters, a
// traversal limit that follows the size limit, and capnshm's checks:
// readRoot's on what arrives (messages that would crash go-capnp end the
// connection instead), questionGuard's on what leaves.
type countingCodec struct {
	dec *capnp.Decoder
	enc *capnp.Encoder
	c   io.Closer
	max uint64
	st  *streamStats

	questions questionGuard // Encode's
}

func (cc *countingCodec) Encode(m *capnp.Message) error {
	rm, err := rpccp.ReadRootMessage(m)
	if err != nil {
		return err
	}
	if err := cc.questions.check(rm); err != nil {
		return err
	}
	// Counted before the write, as the shared-memory Send counts before
	// its commit: the answer can arrive, and Stats be read, before a
	// count made after Encode returns.
	n, _ := m.TotalSize()
	cc.st.msgsSent.Add(1)
	cc.st.bytesSent.Add(n)
	return cc.enc.Encode(m)
}

func (cc *countingCodec) Decode() (*capnp.Message, error) {
	m, err := cc.dec.Decode()
	if err != nil {
		return nil, err
	}
	n, _ := m.TotalSize()
	if _, err := readRoot(m); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrProtocol, err)
	}
	m.ResetReadLimit(traverseLimit(n, cc.max)) // go-capnp's reads start afresh
	cc.st.msgsRecv.Add(1)
	cc.st.bytesRecv.Add(n)
	return m, nil
}

func (cc *countingCodec) Close() error { return cc.c.Close() }

// traverseLimit is the traversal limit of a message of total bytes:
// generous for a message read several times, capped by four times the
// largest message.
func traverseLimit(total, max uint64) uint64 {
	return min(total*8+64<<10, max*4)
}
