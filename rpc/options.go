package rpc

import (
	"errors"
	"log/slog"
	"runtime"
	"time"

	"github.com/capnshm/capnshm/ringbuf"
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

// Defaults for the zero fields of Options.
const (
	DefaultPoolSize     = 32 << 20
	DefaultRingCapacity = 256 << 10
	DefaultMaxMessage   = 4 << 30
	DefaultInlineMax    = 1024
	DefaultHandshake    = 10 * time.Second
)

// Options configure a Transport. The zero value (and a nil *Options) is
// usable: every zero field takes its default.
type Options struct {
	// PoolSize is the size of this side's pool, where the messages it sends
	// are built. Default DefaultPoolSize.
	PoolSize int64
	// RingCapacity is the data capacity of this side's outbound ring, a
	// power of two. Default DefaultRingCapacity.
	RingCapacity int
	// MaxMessage is the largest message this side accepts from the peer,
	// and caps the read limit of every message. Default DefaultMaxMessage.
	MaxMessage int64
	// InlineMax: messages up to this many bytes are copied into the ring
	// instead of being referenced, and copied out by the receiver, so they
	// never pin the pool. Default DefaultInlineMax; negative disables.
	InlineMax int
	// MaxDedicated caps the bytes of dedicated mappings (segments too large
	// for the pool, or overflow when it is exhausted). Zero: segalloc's
	// default.
	MaxDedicated int64
	// MaxHeap caps the bytes of heap memory used when shared memory is
	// exhausted (such messages are copied onto the socket). Zero:
	// segalloc's default.
	MaxHeap int64
	// Strategy is how both rings wait. The zero value is ringbuf.Adaptive.
	Strategy ringbuf.WaitStrategy
	// SpinTime is how long the Adaptive strategy polls before it parks.
	// Zero: ringbuf.DefaultSpinTime on machines with more than two CPUs,
	// none (park at once) on smaller ones, where a spinning reader takes
	// the CPU that the goroutines it waits for need. Negative: no spin.
	SpinTime time.Duration
	// AllowOtherUsers accepts a peer running as another user. By default
	// the handshake refuses it.
	AllowOtherUsers bool
	// NoPrefault skips mapping every page of the pool up front.
	NoPrefault bool
	// HandshakeTimeout bounds the handshake. Default DefaultHandshake.
	HandshakeTimeout time.Duration
	// Logger receives the transport's logs; nil discards them.
	Logger *slog.Logger
}

func (o *Options) withDefaults() Options {
	var v Options
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

// defaultSpinTime picks Adaptive's spin for this machine: measured on two
// vCPUs, spinning readers (one per process) made an RPC ping 1.6x slower
// than parking at once; with spare cores, spinning skips the doorbell.
func defaultSpinTime() time.Duration {
	if runtime.NumCPU() <= 2 {
		return -1
	}
	return ringbuf.DefaultSpinTime
}

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
