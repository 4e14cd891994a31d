package rpc

import (
	"fmt"
	"log/slog"
	"time"

	"github.com/capnshm/capnshm/ringbuf"
)

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
	// closes the connections of clients that cannot use shared memory.
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

// Option configures Listen, Server.Listen and Dial.
type Option func(*config)

// config is what Options set.
type config struct {
	opts     Options // the shared-memory transport's
	fallback Fallback
	logger   *slog.Logger // nil: go-capnp's default, and no transport logs

	flowWindow int64 // Conn.FlowLimiter's window; 0: the default
}

func newConfig(base *config, opts []Option) *config {
	c := &config{}
	if base != nil {
		*c = *base
	}
	for _, o := range opts {
		if o != nil {
			o(c)
		}
	}
	return c
}

// WithTransportOptions sets every option of the shared-memory transport at
// once (InlineMax, MaxDedicated, HandshakeTimeout and so on). It replaces
// what earlier options set for the transport: give it first.
func WithTransportOptions(o Options) Option { return func(c *config) { c.opts = o } }

// WithPoolSize sets the size of this side's shared pool, where it builds
// the messages it sends (Options.PoolSize). Each connection has its own.
func WithPoolSize(n int64) Option { return func(c *config) { c.opts.PoolSize = n } }

// WithRingCapacity sets the capacity of this side's outbound ring, a power
// of two (Options.RingCapacity).
func WithRingCapacity(n int) Option { return func(c *config) { c.opts.RingCapacity = n } }

// WithMaxMessage sets the largest message accepted from the peer, which
// also caps each message's traversal (read) limit: Options.MaxMessage on
// shared memory, the decoder's limit on the stream transport (whose
// default is go-capnp's, 64 MiB).
func WithMaxMessage(n int64) Option { return func(c *config) { c.opts.MaxMessage = n } }

// WithWaitStrategy sets how the rings wait for the peer (Options.Strategy).
func WithWaitStrategy(s ringbuf.WaitStrategy) Option {
	return func(c *config) { c.opts.Strategy = s }
}

// WithFallback sets the policy of shm: addresses (FallbackAuto by default).
// On unix:, unix-abstract: and tcp: addresses, which always use the stream
// transport, FallbackRequire is an error.
func WithFallback(f Fallback) Option { return func(c *config) { c.fallback = f } }

// WithAllowOtherUsers accepts shared memory with a peer that runs as
// another user (Options.AllowOtherUsers). By default such a peer gets the
// stream transport (FallbackAuto) or is refused (FallbackRequire).
func WithAllowOtherUsers() Option { return func(c *config) { c.opts.AllowOtherUsers = true } }

// WithHandshakeTimeout bounds the handshake (Options.HandshakeTimeout); a
// Server counts it from accept.
func WithHandshakeTimeout(d time.Duration) Option {
	return func(c *config) { c.opts.HandshakeTimeout = d }
}

// WithMaxConns caps the connections a Server holds at once, handshakes
// included (Options.MaxConns; negative: no limit).
func WithMaxConns(n int) Option { return func(c *config) { c.opts.MaxConns = n } }

// WithMaxConnsPerUser caps the connections a Server holds at once for the
// clients of one user id (Options.MaxConnsPerUser; negative: no limit).
func WithMaxConnsPerUser(n int) Option { return func(c *config) { c.opts.MaxConnsPerUser = n } }

// WithMaxPeerMappings caps the peer's dedicated mappings mapped at once on
// each connection (Options.MaxPeerMappings; negative: no limit).
func WithMaxPeerMappings(n int) Option { return func(c *config) { c.opts.MaxPeerMappings = n } }

// WithMaxPeerMappingBytes caps the bytes of the peer's dedicated mappings
// mapped at once on each connection (Options.MaxPeerMappingBytes).
func WithMaxPeerMappingBytes(n int64) Option {
	return func(c *config) { c.opts.MaxPeerMappingBytes = n }
}

// WithMaxSocketBytes caps the bytes of socket messages received ahead of
// the ring on each connection (Options.MaxSocketBytes).
func WithMaxSocketBytes(n int64) Option { return func(c *config) { c.opts.MaxSocketBytes = n } }

// WithMaxPeerPool caps the pool a peer may announce (Options.MaxPeerPool).
func WithMaxPeerPool(n int64) Option { return func(c *config) { c.opts.MaxPeerPool = n } }

// WithMaxPeerRing caps the ring capacity a peer may announce
// (Options.MaxPeerRing).
func WithMaxPeerRing(n int) Option { return func(c *config) { c.opts.MaxPeerRing = n } }

// WithFrameTimeout bounds the wait of a record for its socket frame and of
// a socket message for its record (Options.FrameTimeout).
func WithFrameTimeout(d time.Duration) Option { return func(c *config) { c.opts.FrameTimeout = d } }

// WithLogger sends the logs of the server, of the transports and of
// go-capnp's connections to l.
func WithLogger(l *slog.Logger) Option { return func(c *config) { c.logger = l } }

// check rejects a policy the address cannot satisfy.
func (c *config) check(a Addr) error {
	switch c.fallback {
	case FallbackAuto, FallbackNever:
	case FallbackRequire:
		if !a.SharedMemory() {
			return fmt.Errorf("%w: FallbackRequire on %s: only shm: and shm-abstract: addresses carry shared memory (it needs a unix rendezvous)", ErrUnsupported, a)
		}
	default:
		return fmt.Errorf("capnshm: unknown fallback policy %v", c.fallback)
	}
	return checkPlatform(a, c.fallback)
}
