package rpc

import (
	"errors"
	"log/slog"
	"math"
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

	// Limits on what one peer can make this side spend: see the Options
	// fields of the same names.
	DefaultMaxConns            = 1024
	DefaultMaxConnsPerUser     = 256
	DefaultMaxPeerMappings     = 256
	DefaultMaxPeerMappingBytes = 16 << 30
	DefaultMaxSocketBytes      = 64 << 20
	DefaultMaxPeerPool         = 1 << 30
	DefaultMaxPeerRing         = 64 << 20
	DefaultFrameTimeout        = 10 * time.Second
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
	// HandshakeTimeout bounds the handshake. A server counts it from
	// accept: a client that has not completed its handshake by then (for a
	// plain Cap'n Proto client: sent its first bytes) is disconnected.
	// Default DefaultHandshake.
	HandshakeTimeout time.Duration
	// Logger receives the transport's logs; nil discards them.
	Logger *slog.Logger

	// Limits. Each bounds what one peer can make this side spend; hitting
	// one refuses or ends that connection only, with an error that names
	// the limit. Zero means the default; negative means no limit.

	// MaxConns (a Server's) caps the connections it holds at once on all
	// its addresses, counting those still in their handshake; one more is
	// refused at accept. Each shared-memory connection costs this side
	// its pool (PoolSize, prefaulted unless NoPrefault) and ring, and about
	// a dozen descriptors. Default DefaultMaxConns.
	MaxConns int
	// MaxConnsPerUser (a Server's) caps the connections of the clients of
	// one user id (SO_PEERCRED; unix sockets only), as MaxConns does for
	// all. Default DefaultMaxConnsPerUser.
	MaxConnsPerUser int
	// MaxPeerMappings caps the peer's dedicated mappings mapped here at
	// once; one more ends the connection. This side keeps its own below a
	// quarter of the default (further messages go to the heap and the
	// socket), so that two sides with default limits never trip each
	// other. Default DefaultMaxPeerMappings.
	MaxPeerMappings int
	// MaxPeerMappingBytes caps the bytes of the peer's dedicated mappings
	// mapped here at once. Default DefaultMaxPeerMappingBytes.
	MaxPeerMappingBytes int64
	// MaxSocketBytes caps the bytes of the peer's socket messages (those
	// that found its shared memory exhausted) received and not yet taken
	// in order: the socket is not read further until they are (one message
	// alone may be larger, up to MaxMessage). Default DefaultMaxSocketBytes.
	MaxSocketBytes int64
	// MaxPeerPool caps the pool a peer may announce (it is mapped here,
	// read-only); a larger one is refused in the handshake. Default
	// DefaultMaxPeerPool.
	MaxPeerPool int64
	// MaxPeerRing caps the data capacity of the ring a peer may announce.
	// Default DefaultMaxPeerRing.
	MaxPeerRing int
	// FrameTimeout bounds how long a record in the ring waits for the
	// socket frame it depends on (a dedicated mapping, a socket message)
	// while nothing arrives on the socket, and how long a socket message
	// waits for the record that takes it while the ring is idle; then the
	// connection ends. A sender writes the frame just before the record,
	// so an honest peer never comes near it. Default DefaultFrameTimeout.
	FrameTimeout time.Duration
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
	v.MaxConns = limitInt(v.MaxConns, DefaultMaxConns)
	v.MaxConnsPerUser = limitInt(v.MaxConnsPerUser, DefaultMaxConnsPerUser)
	v.MaxPeerMappings = limitInt(v.MaxPeerMappings, DefaultMaxPeerMappings)
	v.MaxPeerMappingBytes = limit64(v.MaxPeerMappingBytes, DefaultMaxPeerMappingBytes)
	v.MaxSocketBytes = limit64(v.MaxSocketBytes, DefaultMaxSocketBytes)
	v.MaxPeerPool = limit64(v.MaxPeerPool, DefaultMaxPeerPool)
	v.MaxPeerRing = limitInt(v.MaxPeerRing, DefaultMaxPeerRing)
	if v.FrameTimeout <= 0 {
		v.FrameTimeout = DefaultFrameTimeout
	}
	return v
}

// noLimit stands for a negative limit (none) once defaults are applied.
const noLimit = math.MaxInt64

// limit64 resolves a limit: zero takes def, negative means none.
func limit64(v, def int64) int64 {
	switch {
	case v == 0:
		return def
	case v < 0:
		return noLimit
	}
	return v
}

func limitInt(v, def int) int { return int(limit64(int64(v), int64(def))) }

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
	// ErrLimit: the peer reached one of this side's limits on what one peer
	// may make it spend (Options.MaxConns, MaxPeerMappings, MaxSocketBytes,
	// MaxPeerPool and the others): that connection is refused or ended, and
	// the error names the limit.
	ErrLimit = errors.New("capnshm: limit reached")
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
