package rpc

import (
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"time"

	"github.com/capnshm/capnshm/ringbuf"
	"github.com/capnshm/capnshm/rpc/internal/wire"
)

// Side says which end of a rendezvous connection a transport is: the side
// that dialled speaks first in the handshake.
type Side int

const (
	// Dialer is the side that connected.
	Dialer Side = iota
	// Listener is the side that accepted.
	Listener
)

func (s Side) String() string {
	if s == Dialer {
		return "dialer"
	}
	return "listener"
}

// transportConfig is the shared-memory transport's part of a config. Its
// zero fields take their defaults in withDefaults; the With... options set
// them after checking each value.
type transportConfig struct {
	PoolSize     int64
	RingCapacity int
	MaxMessage   int64
	// InlineMax: messages up to this many bytes are copied into the ring;
	// negative disables.
	InlineMax int
	// MaxDedicated, MaxHeap, MappingCache: segalloc's caps (zero: its
	// default; negative: none).
	MaxDedicated int64
	MaxHeap      int64
	MappingCache int64
	MappingIdle  time.Duration
	Strategy     ringbuf.WaitStrategy
	// SpinTime: zero picks by the machine, negative does not spin.
	SpinTime         time.Duration
	AllowOtherUsers  bool
	NoPrefault       bool
	HandshakeTimeout time.Duration
	Logger           *slog.Logger
	// NoFallback: this side closes a connection whose handshake it
	// refuses (FallbackRequire on a listener), and says so in its REFUSE.
	NoFallback bool
}

// refuseFlags are the flags of this side's REFUSE frames.
func (o *transportConfig) refuseFlags() uint32 {
	if o.NoFallback {
		return wire.RefuseNoFallback
	}
	return 0
}

func (o *transportConfig) withDefaults() transportConfig {
	var v transportConfig
	if o != nil {
		v = *o
	}
	if v.PoolSize <= 0 {
		v.PoolSize = DefaultPoolSize
	}
	if v.RingCapacity <= 0 {
		v.RingCapacity = DefaultRingCapacity
	}
	if v.MaxMessage <= 0 {
		v.MaxMessage = DefaultMaxMessage
	}
	if v.InlineMax == 0 {
		v.InlineMax = DefaultInlineMax
	}
	if v.MappingCache == 0 {
		v.MappingCache = DefaultMappingCache
	}
	if v.MappingIdle <= 0 {
		v.MappingIdle = DefaultMappingIdle
	}
	if v.SpinTime == 0 {
		v.SpinTime = defaultSpinTime()
	}
	if v.HandshakeTimeout <= 0 {
		v.HandshakeTimeout = DefaultHandshake
	}
	if v.Logger == nil {
		v.Logger = slog.New(slog.DiscardHandler)
	}
	return v
}

// check rejects combinations of options that are each valid alone.
func (o *transportConfig) check() error {
	v := o.withDefaults()
	if v.InlineMax > 0 {
		// An inline record carries up to InlineMax bytes of segments plus
		// its header; the ring must hold it.
		if need := v.InlineMax + 64; need > ringbuf.MaxPayloadFor(v.RingCapacity) {
			return fmt.Errorf("%w: WithInlineMax(%d) does not fit a ring of capacity %d (WithRingCapacity): its records hold at most %d bytes", ErrBadOption, v.InlineMax, v.RingCapacity, ringbuf.MaxPayloadFor(v.RingCapacity))
		}
	}
	return nil
}

// defaultSpinTime picks Adaptive's spin for this machine: measured on two
// vCPUs, spinning readers (one per process) made an RPC ping 1.6x slower
// than parking at once; with spare cores, spinning skips the doorbell.
func defaultSpinTime() time.Duration {
	if runtime.NumCPU() <= 2 {
		return -1
	}
	return ringbuf.DefaultSpinTime
}

// refusal is the error of a handshake that ended with a REFUSE, sent or
// received: the socket is at a frame boundary, and the stream transport
// may run on it unless noFallback.
type refusal struct {
	err        error
	peerMax    uint64 // the largest message the peer accepts; 0: unknown
	noFallback bool   // the refusing side closes the connection
}

func (r *refusal) Error() string { return r.err.Error() }
func (r *refusal) Unwrap() error { return r.err }

// Errors of the transport, wrapped with details. Match them with errors.Is.
var (
	// ErrRefused: the peer refused the handshake (the error carries its
	// reason), or this side refused the peer's.
	ErrRefused = errors.New("capnshm: handshake refused")
	// ErrProtocol: the peer broke the protocol (a corrupt ring, record or
	// frame). The connection is aborted; the error names what was wrong.
	ErrProtocol = errors.New("capnshm: protocol violation by the peer")
	// ErrPeerGone: the peer closed the connection or died.
	ErrPeerGone = errors.New("capnshm: peer disconnected")
	// ErrClosed: the transport was closed.
	ErrClosed = errors.New("capnshm: transport closed")
	// ErrTooLarge: a message is larger than the receiver's MaxMessage.
	ErrTooLarge = errors.New("capnshm: message too large")
	// ErrLateCall: go-capnp v3.0.1-alpha.2 tried to send a call pipelined
	// on a question it had already finished: a call on a pipelined
	// capability that raced the Return resolving it (go-capnp #626). The
	// transport does not send it, since the peer would abort the connection
	// (or, if it is go-capnp and the call took the finished question's
	// ID, crash); that call fails with this error, the connection goes on,
	// and the same call made again goes to the resolved capability.
	ErrLateCall = errors.New("capnshm: call pipelined on a finished question")
	// ErrUnsupported: the shared-memory transport is not available on this
	// system.
	ErrUnsupported = errors.New("capnshm: shared-memory transport not supported on this system")
)
