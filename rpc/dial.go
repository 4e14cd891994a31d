package rpc

import (
	"context"
	"fmt"
	"net"

	capnp "capnproto.org/go/capnp/v3"
	"capnproto.org/go/capnp/v3/rpc/transport"
)

// Dial connects to addr (see ParseAddr) and returns the connection: on
// shared memory when the address is shm: or shm-abstract: and both sides
// can (see Fallback), on the stream transport otherwise, which is
// wire-compatible with C++ EZ-RPC. ctx bounds the connection and the
// handshake, not the connection's life. An invalid option is an error
// wrapping ErrBadOption.
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
		cfg.boot.Release()
		return nil, err
	}
	est, err := dialEstablish(ctx, a, cfg)
	if err != nil {
		cfg.boot.Release()
		return nil, err
	}
	c := newConn(est.tr, cfg, cfg.boot, est.peer(a))
	c.addr = a
	return c, nil
}

// WithBootstrap sets the capability the peer gets when it asks this side
// for its bootstrap (Dial: the server calling back; a Server's comes from
// Listen). Dial takes over the reference, and releases it if it fails.
func WithBootstrap(c capnp.Client) Option { return func(cfg *config) { cfg.boot = c } }

// dial opens the socket of a, or its named pipe.
func dial(ctx context.Context, a Addr) (net.Conn, error) {
	if a.Network() == "pipe" {
		return dialPipe(ctx, a)
	}
	var d net.Dialer
	network, address := a.Net()
	c, err := d.DialContext(ctx, network, address)
	if err != nil {
		return nil, fmt.Errorf("capnshm: dialing %s: %w", a, err)
	}
	return c, nil
}

// established is a negotiated connection, ready for newConn.
type established struct {
	tr     transport.Transport
	shm    *Transport
	stream *StreamTransport
	raw    net.Conn // the socket
}

// streamOver returns the stream transport on conn; peerMax is the largest
// message the peer said it accepts (0: unknown, taken to be this side's).
func streamOver(conn net.Conn, cfg *config, peerMax uint64) established {
	st := newStreamTransport(conn, &cfg.opts, peerMax)
	return established{tr: st, stream: st, raw: conn}
}

// peer describes the other end of est, made on address a.
func (est established) peer(a Addr) Peer {
	p := Peer{Addr: a, SharedMemory: est.shm != nil}
	if est.raw != nil {
		if ra := est.raw.RemoteAddr(); ra != nil && ra.Network() == "tcp" {
			p.Remote = ra.String()
		}
		p.Creds, p.PID, p.UID, p.GID, p.User = connCreds(est.raw)
	}
	return p
}
