package rpc

import (
	"context"
	"fmt"
	"net"

	"capnproto.org/go/capnp/v3/rpc/transport"
)

// Transport is the shared-memory transport. On Windows it is not built yet:
// handles travel by DuplicateHandle over a named pipe there, which the
// rendezvous layer does not do yet.
type Transport struct{}

// NewTransport returns ErrUnsupported on Windows.
func NewTransport(ctx context.Context, conn *net.UnixConn, side Side, opts ...Option) (*Transport, error) {
	conn.Close()
	if _, err := newConfig(nil, opts); err != nil {
		return nil, err
	}
	return nil, fmt.Errorf("%w: the Windows rendezvous (named pipes and DuplicateHandle) is not built yet", ErrUnsupported)
}

// NewMessage returns ErrUnsupported.
func (t *Transport) NewMessage() (transport.OutgoingMessage, error) { return nil, ErrUnsupported }

// RecvMessage returns ErrUnsupported.
func (t *Transport) RecvMessage() (transport.IncomingMessage, error) { return nil, ErrUnsupported }

// Close does nothing.
func (t *Transport) Close() error { return nil }

// Stats returns zero counters.
func (t *Transport) Stats() Stats { return Stats{} }

// Err returns ErrUnsupported.
func (t *Transport) Err() error { return ErrUnsupported }
