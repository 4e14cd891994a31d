package rpc

import (
	"fmt"
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
	SpinTime time.Duration
	// YieldTime: zero picks by the machine, negative does not yield
	// beyond ringbuf's default count.
	YieldTime        time.Duration
	AllowOtherUsers  bool
	NoPrefault       bool
	CopyOnReceive    bool
	HandshakeTimeout time.Duration
	Logger           *slog.Logger
	// NoFallback: this side closes a connection whose handshake it
	// refuses (FallbackRequire on a listener), and says so in its REFUSE.
	NoFallback bool
	// Engine: capnshm's engine runs on the connection (Dial, Listen),
	// and this side's HELLO says FeatureTailCalls; a Transport of
	// NewTransport may carry go-capnp's Conn, so its HELLO does not.
	Engine bool

	// Limits on what one peer can make this side spend (see the With...
	// options of the same names). Zero: the default; noLimit: none.
	MaxConns            int
	MaxConnsPerUser     int
	MaxPeerMappings     int
	MaxPeerMappingBytes int64
	MaxSocketBytes      int64
	MaxPeerPool         int64
	MaxPeerRing         int
	FrameTimeout        time.Duration
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
	v.YieldTime = v.yieldTime()
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

// noLimit is a limit that is off, once defaults are applied.
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
// than parking at once (a spinning goroutine holds its P from the handler
// it waits for; the yield phase does not, see defaultYieldTime); with
// spare cores, spinning skips the doorbell.
func defaultSpinTime() time.Duration {
	if runtime.NumCPU() <= 2 {
		return -1
	}
	return ringbuf.DefaultSpinTime
}

// DefaultYieldTime is how long the Adaptive strategy polls, yielding its
// P between polls, before it parks, on a machine of two CPUs (see
// WithYieldTime).
const DefaultYieldTime = 100 * time.Microsecond

// yieldTime is o's yield time, resolved: positive, or negative for none.
func (o *transportConfig) yieldTime() time.Duration {
	if o.YieldTime == 0 {
		return defaultYieldTime()
	}
	return o.YieldTime
}

// defaultYieldTime picks how long Adaptive yields before it parks. On two
// CPUs, 100 µs: both processes stay awake between a call and its answer,
// where parking costs each a thread wake-up that on a small virtual
// machine takes longer than the round trip (one run, engine ping over
// shared memory: 87 µs p50 parking, 10.3 µs yielding 100 µs; 50 and
// 200 µs gave the same). On one CPU, none: a yielding process keeps the
// CPU from the peer it waits for (the same ping took 0.5 ms). On more,
// none: the spin covers the round trip with a core to spare.
func defaultYieldTime() time.Duration {
	if runtime.NumCPU() == 2 {
		return DefaultYieldTime
	}
	return -1
}
