package rpc

import (
	"errors"
	"fmt"

	"github.com/capnshm/capnshm/iocpwake"
	"github.com/capnshm/capnshm/ringbuf"
	"github.com/capnshm/capnshm/rpc/internal/wire"
	"github.com/capnshm/capnshm/segalloc"
	"github.com/capnshm/capnshm/shm"
)

// endpoint is what a handshake hands the link: both sides' memory and
// doorbells, who the peer is, and the rendezvous connection with its
// frames. It is complete or it does not exist: the handshake closes what
// it made when it fails, and the link owns it after.
type endpoint struct {
	rv      rendezvous
	fc      *wire.FrameConn // rv's frames
	mine    *mine
	theirs  *theirs
	in      *ringbuf.Consumer // of the peer's ring: the link's receiving side's
	out     *ringbuf.Producer // of ours: the link's sending side's
	peer    peerID            // as the system reported it
	peerMax uint64            // the largest message the peer accepts (its HELLO)
	// peerTailCalls: the peer's HELLO says FeatureTailCalls (its RPC
	// layer takes takeFromOtherQuestion).
	peerTailCalls bool
}

// newEndpoint puts an endpoint together once both sides' memory is there.
// It attaches to both rings now, before this side's HELLO goes out (the
// listener) or right after the peer's arrived (the dialer): a producer
// reads its ring's head when it attaches, and the peer can write that
// head as soon as it has the ring.
func newEndpoint(rv rendezvous, fc *wire.FrameConn, m *mine, th *theirs, id peerID, peer wire.Hello, o *transportConfig) *endpoint {
	yield := o.yieldTime()
	if peerInProcess(th, id) {
		// Both ends in this process: their receivers would yield against
		// each other on the same Ps. One run of rpc's
		// BenchmarkLoopBoundPing (four connections, both ends in the test
		// process, two CPUs): a plain ping took 150-175 µs yielding and
		// 24-35 µs parking; one yield slot shared by the process's
		// receivers did not help.
		yield = -1
	}
	return &endpoint{
		rv: rv, fc: fc, mine: m, theirs: th, peer: id, peerMax: peer.MaxMessage,
		peerTailCalls: peer.Features&wire.FeatureTailCalls != 0,
		in:            th.ringView.Consumer(ringbuf.Options{Strategy: o.Strategy, SpinTime: o.SpinTime, YieldTime: yield, Waiter: m.dataBell, Ringer: th.spaceBell}),
		out:           m.ringView.Producer(ringbuf.Options{Strategy: o.Strategy, SpinTime: o.SpinTime, YieldTime: yield, Waiter: m.spaceBell, Ringer: th.dataBell}),
	}
}

// close releases everything; the caller has stopped using it.
func (ep *endpoint) close() {
	ep.theirs.close()
	ep.mine.close()
}

// mine is this side's memory and doorbells: the pool it allocates
// messages in, the ring it publishes records in, the bells it waits on.
type mine struct {
	pool, ring          *shm.Region
	ringView            *ringbuf.Ring
	dataBell, spaceBell *iocpwake.Bell // we wait on them; the peer rings them
	alloc               *segalloc.Allocator
	mapper              *mapper
	unregisterRing      func() // registerOwnRing's
}

// makeMine creates this side's pool, ring and doorbells, or nothing.
func makeMine(o *transportConfig) (_ *mine, err error) {
	m := &mine{}
	defer func() {
		if err != nil {
			m.close()
		}
	}()
	// The pool is written by this side only: sealed against the peer's
	// writes once mapped here. The ring is shared read-write by design
	// (the peer publishes its head and wake-up flags in it).
	if m.pool, err = shm.Create(o.PoolSize, &shm.Options{Name: "capnshm-pool", PeerReadOnly: true}); err != nil {
		return nil, fmt.Errorf("capnshm: creating the pool: %w", err)
	}
	if !o.NoPrefault {
		// Mapping a 32 MiB pool's pages takes tens of milliseconds, which
		// a connection's setup would wait for; they are mapped meanwhile.
		m.pool.PrefaultInBackground()
	}
	if m.ring, err = shm.Create(int64(ringbuf.SizeFor(o.RingCapacity)), &shm.Options{Name: "capnshm-ring", Prefault: true}); err != nil {
		return nil, fmt.Errorf("capnshm: creating the ring: %w", err)
	}
	m.unregisterRing = registerOwnRing(m.ring)
	if m.ringView, err = ringbuf.Init(m.ring.Bytes()); err != nil {
		return nil, fmt.Errorf("capnshm: ring capacity %d: %w", o.RingCapacity, err)
	}
	if m.dataBell, err = iocpwake.New(); err != nil {
		return nil, err
	}
	if m.spaceBell, err = iocpwake.New(); err != nil {
		return nil, err
	}
	m.mapper = &mapper{regions: make(map[uint32]*shm.Region), announced: make(map[uint32]bool)}
	if m.alloc, err = segalloc.New(m.pool.Bytes(), segalloc.Options{
		Mapper:       m.mapper,
		MaxBlock:     poolMaxBlock(o.PoolSize),
		MaxDedicated: o.MaxDedicated,
		MaxHeap:      o.MaxHeap,
		MaxCached:    o.MappingCache,
		CacheIdle:    o.MappingIdle,
		// go-capnp v3.0.1-alpha.2 zeroes every object it allocates
		// (message.go, alloc): zeroing freed memory too would clear each
		// byte twice on the sender's side.
		NoScrub: true,
	}); err != nil {
		return nil, fmt.Errorf("capnshm: pool of %d bytes: %w", o.PoolSize, err)
	}
	return m, nil
}

// handles returns what the peer needs of this side, in HELLO's order.
func (m *mine) handles() []wire.FD {
	return []wire.FD{wire.FD(m.pool.Handle()), wire.FD(m.ring.Handle()), wire.FD(m.dataBell.Handle()), wire.FD(m.spaceBell.Handle())}
}

// close releases what makeMine made; the allocator first, which gives its
// dedicated mappings back to the mapper.
func (m *mine) close() {
	m.forgetRing()
	if m.alloc != nil {
		m.alloc.Close()
	}
	if m.mapper != nil {
		m.mapper.closeAll()
	}
	for _, c := range []interface{ Close() error }{m.pool, m.ring, m.dataBell, m.spaceBell} {
		if !isNilCloser(c) {
			c.Close()
		}
	}
}

// closeBells closes this side's doorbells (Close, once nobody waits on
// them any more); its regions stay mapped until finalize.
func (m *mine) closeBells() []error {
	var errs []error
	for _, b := range []*iocpwake.Bell{m.dataBell, m.spaceBell} {
		if err := b.Close(); err != nil && !errors.Is(err, iocpwake.ErrClosed) {
			errs = append(errs, err)
		}
	}
	return errs
}

// forgetRing takes the ring out of this process's registry
// (registerOwnRing), once.
func (m *mine) forgetRing() {
	if m.unregisterRing != nil {
		m.unregisterRing()
		m.unregisterRing = nil
	}
}

// finalize unmaps this side's memory: every message built in it is gone.
func (m *mine) finalize() {
	m.forgetRing()
	m.alloc.Close()
	m.mapper.closeAll()
	m.pool.Close()
	m.ring.Close()
}

// theirs is the peer's memory and doorbells, as mapped and opened here:
// its pool read-only, its ring read-write, its bells to ring.
type theirs struct {
	pool                *mapped
	ring                *shm.Region
	ringView            *ringbuf.Ring
	dataBell, spaceBell *iocpwake.Bell // the peer's: we ring them
}

// adoptTheirs maps what the peer handed over in its HELLO h: fds, in
// HELLO's order. It takes ownership of fds, and returns everything or
// nothing (the error wraps ErrProtocol and names what was wrong).
func adoptTheirs(h wire.Hello, fds []wire.FD, o *transportConfig) (_ *theirs, err error) {
	if len(fds) != wire.HelloFDs {
		wire.CloseFDs(fds)
		return nil, fmt.Errorf("%w: hello carried %d handles, want %d", ErrProtocol, len(fds), wire.HelloFDs)
	}
	th := &theirs{}
	next := 0 // fds[next:] are still ours to close
	defer func() {
		if err != nil {
			wire.CloseFDs(fds[next:])
			th.close()
		}
	}()
	take := func() wire.FD { next++; return fds[next-1] }
	pool, err := shm.Open(shm.Handle(take()), int64(h.PoolSize), shm.ReadOnly, &shm.Options{MaxSize: o.MaxPeerPool})
	if err != nil {
		return nil, fmt.Errorf("%w: the peer's pool: %w", ErrProtocol, err)
	}
	th.pool = &mapped{r: pool}
	th.pool.ref()
	maxRing := int64(ringbuf.SizeFor(min(o.MaxPeerRing, ringbuf.MaxCapacity)))
	if th.ring, err = shm.Open(shm.Handle(take()), int64(h.RingSize), shm.ReadWrite, &shm.Options{MaxSize: maxRing}); err != nil {
		return nil, fmt.Errorf("%w: the peer's ring: %w", ErrProtocol, err)
	}
	if th.ringView, err = ringbuf.Attach(th.ring.Bytes()); err != nil {
		return nil, fmt.Errorf("%w: the peer's ring: %w", ErrProtocol, err)
	}
	if th.dataBell, err = iocpwake.Open(iocpwake.Handle(take())); err != nil {
		return nil, fmt.Errorf("%w: the peer's data doorbell: %w", ErrProtocol, err)
	}
	if th.spaceBell, err = iocpwake.Open(iocpwake.Handle(take())); err != nil {
		return nil, fmt.Errorf("%w: the peer's space doorbell: %w", ErrProtocol, err)
	}
	return th, nil
}

// close releases what adoptTheirs opened, except the pool, which the
// messages that refer to it hold (dropRefs releases the link's reference).
func (th *theirs) close() {
	for _, c := range []interface{ Close() error }{th.ring, th.dataBell, th.spaceBell} {
		if !isNilCloser(c) {
			c.Close()
		}
	}
	if th.pool != nil {
		th.pool.unref()
		th.pool = nil
	}
}

// closeForLink releases the peer's ring and bells at Close, and the
// link's reference to its pool; messages still held keep the pool mapped.
func (th *theirs) closeForLink() []error {
	var errs []error
	for _, b := range []*iocpwake.Bell{th.dataBell, th.spaceBell} {
		if err := b.Close(); err != nil && !errors.Is(err, iocpwake.ErrClosed) {
			errs = append(errs, err)
		}
	}
	if err := th.ring.Close(); err != nil {
		errs = append(errs, err)
	}
	th.pool.unref()
	return errs
}

func isNilCloser(c interface{ Close() error }) bool {
	switch v := c.(type) {
	case nil:
		return true
	case *shm.Region:
		return v == nil
	case *iocpwake.Bell:
		return v == nil
	}
	return false
}

// poolMaxBlock is the largest block of a pool of size bytes (a multiple of
// PoolSizeUnit): the largest power of two that divides it, at most a quarter
// of it and at most 16 MiB, as segalloc needs.
func poolMaxBlock(size int64) int {
	b := int64(16 << 20)
	for b > 1<<10 && (size%b != 0 || b > size/4) {
		b >>= 1
	}
	return int(b)
}
