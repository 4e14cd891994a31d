package rpc

import (
	"errors"
	"fmt"
	"log/slog"
	"time"

	capnp "capnproto.org/go/capnp/v3"

	"github.com/capnshm/capnshm/ringbuf"
	"github.com/capnshm/capnshm/shm"
)

// Options are functional: Listen, Server.Listen, Dial and NewTransport take
// a list of them, apply them in order, and check each one. A value out of
// its range is an error from that call, wrapping ErrBadOption and naming the
// option, the value and the range; nothing is connected. (Only a refusal by
// the peer makes a shm: address fall back to the stream transport, never a
// local configuration error.)
//
// Which options apply where:
//
//	option                    Listen/Dial  NewTransport  stream transport
//	WithPoolSize              yes          yes           -
//	WithRingCapacity          yes          yes           -
//	WithMaxMessage            yes          yes           yes (the decoder's limit)
//	WithInlineMax             yes          yes           -
//	WithMaxDedicated/Heap     yes          yes           -
//	WithMappingCache          yes          yes           -
//	WithWaitStrategy          yes          yes           -
//	WithSpinTime              yes          yes           -
//	WithYieldTime             yes          yes           yes (Linux: polls the socket)
//	WithAllowOtherUsers       yes          yes           -
//	WithPrefault              yes          yes           -
//	WithCopyOnReceive         yes          yes           -
//	WithHandshakeTimeout      yes          yes           -
//	WithMaxConns(PerUser)     Listen       -             yes
//	WithMaxPeer..., WithMaxSocketBytes, WithFrameTimeout
//	                          yes          yes           -
//	WithLogger                yes          yes           yes
//	WithFallback              yes          -             -
//	WithFlowWindow            Dial         -             yes
type Option func(*config)

// ErrBadOption: an option's value is outside its valid range. The error
// names the option, the value and the range.
var ErrBadOption = errors.New("capnshm: invalid option")

// Limits of the options' values.
const (
	// MinPoolSize and MaxPoolSize bound WithPoolSize, which must also be a
	// multiple of PoolSizeUnit.
	MinPoolSize  = 64 << 10
	MaxPoolSize  = shm.DefaultMaxSize
	PoolSizeUnit = 64 << 10
	// MinMaxMessage and MaxMaxMessage bound WithMaxMessage.
	MinMaxMessage = 4 << 10
	MaxMaxMessage = 1 << 62
	// MaxInlineMax bounds WithInlineMax (and it must fit the ring).
	MaxInlineMax = 64 << 10
)

// Defaults of the options.
const (
	DefaultPoolSize     = 32 << 20
	DefaultRingCapacity = 256 << 10
	// DefaultMaxMessage is the largest message accepted from the peer on
	// every transport, shared memory and stream alike (see WithMaxMessage).
	DefaultMaxMessage = 4 << 30
	DefaultInlineMax  = 1024
	DefaultHandshake  = 10 * time.Second
	// DefaultMappingCache is the bytes of idle dedicated mappings a side
	// keeps for reuse, and DefaultMappingIdle how long an idle one is kept
	// (see WithMappingCache).
	DefaultMappingCache = 256 << 20
	DefaultMappingIdle  = 5 * time.Second

	// Limits on what one peer can make this side spend: see the With...
	// options of the same names.
	DefaultMaxConns            = 1024
	DefaultMaxConnsPerUser     = 256
	DefaultMaxPeerMappings     = 256
	DefaultMaxPeerMappingBytes = 16 << 30
	DefaultMaxSocketBytes      = 64 << 20
	DefaultMaxPeerPool         = 1 << 30
	DefaultMaxPeerRing         = 64 << 20
	DefaultFrameTimeout        = 10 * time.Second
)

// NoLimit, given to a limit's option (WithMaxConns and the others), turns
// that limit off.
const NoLimit = -1

// config is what Options set.
type config struct {
	opts     transportConfig // the shared-memory transport's
	fallback Fallback
	logger   *slog.Logger // nil: no logs

	flowWindow int64         // Conn.FlowLimiter's window; 0: the default
	liveness   time.Duration // WithLiveness; 0: off
	boot       capnp.Client  // WithBootstrap (Dial)
	connState  func(ConnInfo, ConnState)

	err error // the first invalid option
}

// newConfig applies opts on top of base (or the defaults) and returns the
// configuration, or the first option's error.
func newConfig(base *config, opts []Option) (*config, error) {
	c := &config{}
	if base != nil {
		*c = *base
	}
	for _, o := range opts {
		if o != nil {
			o(c)
		}
	}
	if c.err != nil {
		return nil, c.err
	}
	if err := c.opts.check(); err != nil {
		return nil, err
	}
	return c, nil
}

// bad records an invalid option (the first one wins).
func (c *config) bad(format string, args ...any) {
	if c.err == nil {
		c.err = fmt.Errorf("%w: "+format, append([]any{ErrBadOption}, args...)...)
	}
}

// WithPoolSize sets the size of this side's shared pool, where it builds
// the messages it sends (default DefaultPoolSize): a multiple of
// PoolSizeUnit from MinPoolSize to MaxPoolSize. Each connection has its own.
func WithPoolSize(n int64) Option {
	return func(c *config) {
		if n < MinPoolSize || n > MaxPoolSize || n%PoolSizeUnit != 0 {
			c.bad("WithPoolSize(%d): want a multiple of %d from %d to %d bytes", n, PoolSizeUnit, MinPoolSize, int64(MaxPoolSize))
			return
		}
		c.opts.PoolSize = n
	}
}

// WithRingCapacity sets the capacity of this side's outbound ring of
// message descriptors (default DefaultRingCapacity): a power of two from
// ringbuf.MinCapacity to ringbuf.MaxCapacity.
func WithRingCapacity(n int) Option {
	return func(c *config) {
		if n < ringbuf.MinCapacity || n > ringbuf.MaxCapacity || n&(n-1) != 0 {
			c.bad("WithRingCapacity(%d): want a power of two from %d to %d", n, ringbuf.MinCapacity, ringbuf.MaxCapacity)
			return
		}
		c.opts.RingCapacity = n
	}
}

// WithMaxMessage sets the largest message accepted from the peer, from
// MinMaxMessage to MaxMaxMessage bytes (default DefaultMaxMessage). One rule
// holds on every transport: the same default and the same option, on
// shared memory and on the stream transport alike, so that a connection
// that falls back to a socket accepts what shared memory did. It also caps
// each message's traversal (read) limit.
//
// Between two capnshm sides each announces its limit in the handshake (its
// HELLO, or the REFUSE that turns a shm: connection into a stream one), and
// a side never sends the peer a message over the peer's limit: a call that
// large fails alone with ErrTooLarge, and results that large are answered
// with an exception in their place; the connection goes on. A plain Cap'n
// Proto peer announces nothing, so its limit is taken to be this side's:
// set WithMaxMessage to what it accepts (C++ EZ-RPC reads at most 64 MiB by
// default, and sends no more than 64 MiB).
//
// A single Data or Text field holds less than 512 MiB (Cap'n Proto's list
// limit of 2^29 elements); larger payloads travel as a list of parts.
func WithMaxMessage(n int64) Option {
	return func(c *config) {
		if n < MinMaxMessage || n > MaxMaxMessage {
			c.bad("WithMaxMessage(%d): want %d to %d bytes", n, MinMaxMessage, int64(MaxMaxMessage))
			return
		}
		c.opts.MaxMessage = n
	}
}

// WithInlineMax sets the size up to which messages are copied into the ring
// instead of being referenced in the pool, and copied out by the receiver,
// so that they never pin the pool (default DefaultInlineMax; 0 disables).
// From 0 to MaxInlineMax, and the record must fit the ring.
func WithInlineMax(n int) Option {
	return func(c *config) {
		if n < 0 || n > MaxInlineMax {
			c.bad("WithInlineMax(%d): want 0 (never inline) to %d bytes", n, MaxInlineMax)
			return
		}
		c.opts.InlineMax = n
		if n == 0 {
			c.opts.InlineMax = -1
		}
	}
}

// WithMaxDedicated caps the bytes of this side's dedicated mappings alive at
// once (segments too large for the pool, and overflow when the pool is
// exhausted): 0 disables them; default 8 GiB.
func WithMaxDedicated(n int64) Option {
	return func(c *config) {
		if n < 0 {
			c.bad("WithMaxDedicated(%d): want 0 (none) or more bytes", n)
			return
		}
		c.opts.MaxDedicated = n
		if n == 0 {
			c.opts.MaxDedicated = -1
		}
	}
}

// WithMaxHeap caps the bytes of heap memory used for messages when shared
// memory is exhausted (such messages are copied onto the socket): 0
// disables the heap fallback; default 256 MiB.
func WithMaxHeap(n int64) Option {
	return func(c *config) {
		if n < 0 {
			c.bad("WithMaxHeap(%d): want 0 (none) or more bytes", n)
			return
		}
		c.opts.MaxHeap = n
		if n == 0 {
			c.opts.MaxHeap = -1
		}
	}
}

// WithMappingCache sets how many bytes of idle dedicated mappings a side
// keeps for reuse (default DefaultMappingCache; 0 keeps none) and how long
// an idle one is kept before it is unmapped here and, through an UNMAP
// record, in the peer (default DefaultMappingIdle; at least a millisecond).
// A cached mapping costs memory in both processes: after one 200 MiB
// result, each side stays about 200 MiB larger until the mapping is reused,
// evicted or idle for that long.
func WithMappingCache(maxBytes int64, idle time.Duration) Option {
	return func(c *config) {
		if maxBytes < 0 {
			c.bad("WithMappingCache(%d, %v): want 0 (none) or more bytes", maxBytes, idle)
			return
		}
		if idle < time.Millisecond {
			c.bad("WithMappingCache(%d, %v): want an idle time of at least 1ms", maxBytes, idle)
			return
		}
		c.opts.MappingCache = maxBytes
		if maxBytes == 0 {
			c.opts.MappingCache = -1
		}
		c.opts.MappingIdle = idle
	}
}

// WithWaitStrategy sets how the rings wait for the peer: ringbuf.Adaptive
// (the default: spin for WithSpinTime, poll yielding the P for
// WithYieldTime, then park on the doorbell), ringbuf.BusySpin or
// ringbuf.Block.
//
// BusySpin pays only with a core to spare for each spinning side: on a
// 2-CPU machine (docs/bench/report.md, one run) an engine ping over shared
// memory took 169 µs busy-spinning against 87.6 µs blocking, two clients
// busy-spinning got a few hundred calls/s, and an idle pair burned two
// cores. Keep the default there; measure before choosing BusySpin on
// larger machines.
func WithWaitStrategy(s ringbuf.WaitStrategy) Option {
	return func(c *config) {
		switch s {
		case ringbuf.Adaptive, ringbuf.BusySpin, ringbuf.Block:
			c.opts.Strategy = s
		default:
			c.bad("WithWaitStrategy(%v): want ringbuf.Adaptive, ringbuf.BusySpin or ringbuf.Block", s)
		}
	}
}

// WithYieldTime sets how long the Adaptive strategy, after its spin, goes
// on polling the ring with runtime.Gosched between polls before it parks
// (0: no timed yield phase). On Linux the stream transport does the same
// with its socket before it blocks in a read. The yielding poll leaves the
// P to the process's other goroutines and keeps its thread awake, so that
// an answer within that time costs neither side a doorbell nor a thread
// wake-up; it costs up to that much CPU after the last message of a burst,
// on each side. The default is DefaultYieldTime on a machine of two CPUs,
// where it took an engine ping over shared memory from 87 µs to 10 µs p50
// (one run), and none on one CPU (a yielding process keeps the CPU from the
// peer it waits for) or on more (the spin covers the round trip). A
// connection with both ends in this process never yields.
func WithYieldTime(d time.Duration) Option {
	return func(c *config) { c.waitPhase("WithYieldTime", d, &c.opts.YieldTime) }
}

// WithSpinTime sets how long the Adaptive strategy polls, holding its P,
// before it yields and parks (0: no spin). By default it spins
// ringbuf.DefaultSpinTime on machines with more than two CPUs and not at
// all on smaller ones, where a spinning reader takes the CPU that the
// goroutines it waits for need.
func WithSpinTime(d time.Duration) Option {
	return func(c *config) { c.waitPhase("WithSpinTime", d, &c.opts.SpinTime) }
}

// waitPhase sets *dst, the length of a phase of the Adaptive wait, from
// option name's d: 0 is none (stored as negative, as zero means the
// machine's default), negative is an error.
func (c *config) waitPhase(name string, d time.Duration, dst *time.Duration) {
	if d < 0 {
		c.bad("%s(%v): want 0 (none) or more", name, d)
		return
	}
	*dst = d
	if d == 0 {
		*dst = -1
	}
}

// WithAllowOtherUsers accepts shared memory with a peer that runs as
// another user. By default such a peer gets the stream transport
// (FallbackAuto) or is refused (FallbackRequire).
func WithAllowOtherUsers() Option { return func(c *config) { c.opts.AllowOtherUsers = true } }

// WithCopyOnReceive copies every message received over shared memory out of
// the peer's pool before it is read, instead of reading it in place: for
// peers trusted less than that (a message costs a copy: bulk data is no
// longer zero-copy on receipt).
//
// What each mode guarantees against a peer that rewrites its memory while
// this side reads (it cannot write this side's memory: the pool and
// mappings it reads are sealed against it):
//
//   - Always, in both modes: what the transport and the RPC engine act on
//     (the ring's records, the message's kind, IDs, targets, transforms
//     and cap table) is read once into private memory, then checked, then
//     used; a change after that check changes nothing. Reading the payload
//     can never panic or read out of bounds: every segment's bounds are
//     fixed in private memory and go-capnp checks every access against
//     them.
//   - In place (the default): payload bytes are the peer's, read where
//     they lie; a peer that rewrites them while a handler reads can make
//     it see inconsistent values (a field read twice may differ).
//   - Copied (WithCopyOnReceive): the handler reads a private copy taken
//     at receipt; what it reads cannot change under it.
func WithCopyOnReceive() Option { return func(c *config) { c.opts.CopyOnReceive = true } }

// WithPrefault sets whether every page of this side's pool is mapped as
// soon as the connection is made (the default: true), in the background so
// that the connection does not wait for it, which keeps page faults off the
// message path at the cost of committing the pool's memory at once.
func WithPrefault(on bool) Option { return func(c *config) { c.opts.NoPrefault = !on } }

// WithHandshakeTimeout bounds the shared-memory handshake (default
// DefaultHandshake). A Server counts it from accept: a client that has not
// completed its handshake by then (for a plain Cap'n Proto client: sent
// its first bytes) is disconnected.
func WithHandshakeTimeout(d time.Duration) Option {
	return func(c *config) {
		if d <= 0 {
			c.bad("WithHandshakeTimeout(%v): want a positive duration", d)
			return
		}
		c.opts.HandshakeTimeout = d
	}
}

// limitOption is an option setting a limit: n at least 1, or NoLimit.
func limitOption(name string, n int64, set func(*config, int64)) Option {
	return func(c *config) {
		if n < 1 && n != NoLimit {
			c.bad("%s(%d): want at least 1, or NoLimit", name, n)
			return
		}
		set(c, n)
	}
}

// The limits on what one peer can make this side spend. Hitting one
// refuses or ends that connection only, with an error wrapping ErrLimit
// that names the limit; the server goes on.

// WithMaxConns caps the connections a Server holds at once on all its
// addresses, counting those still in their handshake; one more is refused
// at accept (default DefaultMaxConns). Each shared-memory connection costs
// this side its pool (WithPoolSize, prefaulted unless WithPrefault(false))
// and ring, and about a dozen descriptors.
func WithMaxConns(n int) Option {
	return limitOption("WithMaxConns", int64(n), func(c *config, v int64) { c.opts.MaxConns = int(v) })
}

// WithMaxConnsPerUser caps the connections a Server holds at once for the
// clients of one user id (SO_PEERCRED; unix sockets only), as WithMaxConns
// does for all (default DefaultMaxConnsPerUser).
func WithMaxConnsPerUser(n int) Option {
	return limitOption("WithMaxConnsPerUser", int64(n), func(c *config, v int64) { c.opts.MaxConnsPerUser = int(v) })
}

// WithMaxPeerMappings caps the peer's dedicated mappings mapped here at
// once on a connection; one more ends it (default DefaultMaxPeerMappings).
// This side keeps its own below a quarter of the default (further
// messages go to the heap and the socket), so that two sides with the
// default never trip each other.
func WithMaxPeerMappings(n int) Option {
	return limitOption("WithMaxPeerMappings", int64(n), func(c *config, v int64) { c.opts.MaxPeerMappings = int(v) })
}

// WithMaxPeerMappingBytes caps the bytes of the peer's dedicated mappings
// mapped here at once on a connection (default DefaultMaxPeerMappingBytes).
func WithMaxPeerMappingBytes(n int64) Option {
	return limitOption("WithMaxPeerMappingBytes", n, func(c *config, v int64) { c.opts.MaxPeerMappingBytes = v })
}

// WithMaxSocketBytes caps the bytes of the peer's socket messages (those
// that found its shared memory exhausted) received and not yet taken in
// order on a connection: the socket is not read further until they are
// (one message alone may be larger, up to WithMaxMessage). Default
// DefaultMaxSocketBytes.
func WithMaxSocketBytes(n int64) Option {
	return limitOption("WithMaxSocketBytes", n, func(c *config, v int64) { c.opts.MaxSocketBytes = v })
}

// WithMaxPeerPool caps the pool a peer may announce (it is mapped here,
// read-only); a larger one is refused in the handshake (default
// DefaultMaxPeerPool).
func WithMaxPeerPool(n int64) Option {
	return limitOption("WithMaxPeerPool", n, func(c *config, v int64) { c.opts.MaxPeerPool = v })
}

// WithMaxPeerRing caps the data capacity of the ring a peer may announce
// (default DefaultMaxPeerRing).
func WithMaxPeerRing(n int) Option {
	return limitOption("WithMaxPeerRing", int64(n), func(c *config, v int64) { c.opts.MaxPeerRing = int(v) })
}

// WithFrameTimeout bounds how long a record in the ring waits for the
// socket frame it depends on (a dedicated mapping, a socket message) while
// nothing arrives on the socket, and how long a socket message waits for
// the record that takes it while the ring is idle; then the connection
// ends (default DefaultFrameTimeout). A sender writes the frame just
// before the record, so an honest peer never comes near it.
func WithFrameTimeout(d time.Duration) Option {
	return func(c *config) {
		if d <= 0 {
			c.bad("WithFrameTimeout(%v): want a positive duration", d)
			return
		}
		c.opts.FrameTimeout = d
	}
}

// WithFallback sets the policy of shm: addresses (FallbackAuto by default).
// On unix:, unix-abstract: and tcp: addresses, which always use the stream
// transport, FallbackRequire is an error.
func WithFallback(f Fallback) Option {
	return func(c *config) {
		switch f {
		case FallbackAuto, FallbackRequire, FallbackNever:
			c.fallback = f
		default:
			c.bad("WithFallback(%v): want FallbackAuto, FallbackRequire or FallbackNever", f)
		}
	}
}

// WithLogger sends the logs of the server, of the connections and of the
// transports to l. By default nothing is logged. Faults are logged at
// ERROR or WARN, connections' normal ends at DEBUG.
func WithLogger(l *slog.Logger) Option {
	return func(c *config) {
		c.logger = l
		c.opts.Logger = l
	}
}

// Fallback is the policy of a shm: or shm-abstract: address when shared
// memory cannot be had: the peer refused it, cannot do it, or does not
// speak the handshake at all (a plain Cap'n Proto peer).
type Fallback int

const (
	// FallbackAuto, the default: shared memory when both sides can, else
	// Cap'n Proto's stream transport on the same socket.
	FallbackAuto Fallback = iota
	// FallbackRequire: shared memory or nothing. Dial fails with an error
	// wrapping ErrRefused (the peer's reason) or ErrUnsupported; a Server
	// sends clients that cannot use shared memory an Abort that says why,
	// then closes their connections.
	FallbackRequire
	// FallbackNever: always the stream transport, even on a shm: address.
	FallbackNever
)

func (f Fallback) String() string {
	switch f {
	case FallbackAuto:
		return "auto"
	case FallbackRequire:
		return "require"
	case FallbackNever:
		return "never"
	}
	return fmt.Sprintf("Fallback(%d)", int(f))
}

// check rejects a policy the address cannot satisfy.
func (c *config) check(a Addr) error {
	if c.fallback == FallbackRequire && !a.SharedMemory() {
		return fmt.Errorf("%w: WithFallback(FallbackRequire) on %s: only shm: and shm-abstract: addresses carry shared memory; %s: always runs the stream transport", ErrBadOption, a, a.Scheme)
	}
	return checkPlatform(a, c.fallback)
}
