package rpc

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	capnp "capnproto.org/go/capnp/v3"
	"capnproto.org/go/capnp/v3/rpc/transport"
	rpccp "capnproto.org/go/capnp/v3/std/capnp/rpc"
	"golang.org/x/sys/unix"

	"github.com/capnshm/capnshm/iocpwake"
	"github.com/capnshm/capnshm/ringbuf"
	"github.com/capnshm/capnshm/rpc/internal/wire"
	"github.com/capnshm/capnshm/segalloc"
	"github.com/capnshm/capnshm/shm"
)

// Transport carries go-capnp's rpc.Conn over shared memory: it implements
// capnproto.org/go/capnp/v3/rpc/transport.Transport. Get one from
// NewTransport on each end of a connected unix socket.
type Transport struct {
	opts transportConfig
	side Side
	log  *slog.Logger
	conn *net.UnixConn
	fc   *wire.FrameConn

	myPool, myRing      *shm.Region
	myRingView          *ringbuf.Ring
	dataBell, spaceBell *iocpwake.Bell // ours: we wait on them
	peerData, peerSpace *iocpwake.Bell // the peer's, opened to ring
	peerPool            *mapped
	peerRing            *shm.Region

	questions         questionGuard // outgoing questions; Send checks under outMu
	noGuards          atomic.Bool   // capnshm's engine runs here (ownedByEngine): go-capnp's guards off
	peerPID           int
	peerMax           uint64 // the largest message the peer accepts (its hello)
	alloc             *segalloc.Allocator
	mapper            *mapper
	out               *ringbuf.Producer // guarded by outMu
	in                *ringbuf.Consumer // used by RecvMessage only (recvMu)
	outMu, recvMu     sync.Mutex
	sockSeq           uint64 // guarded by outMu: socket messages sent
	recvSeq           uint64 // guarded by recvMu: socket messages taken
	frameSeq          uint64 // used by readSocket only: socket messages read
	ctx               context.Context
	cancel            context.CancelCauseFunc
	closed            atomic.Bool
	closeOnce         sync.Once
	closeErr          error
	wg                sync.WaitGroup
	finalLocal        atomic.Bool
	liveLocal, liveIn atomic.Int64
	sentMu            sync.Mutex
	sent              map[uint64]*outMsg
	nextID            uint64
	pendMu            sync.Mutex
	frees             []uint64
	unmaps            []uint32
	kick              chan struct{}
	peerMu            sync.Mutex
	peerMaps          map[uint32]*mapped
	sockMsgs          map[uint64]*sockMsg
	sockBytes         int64              // guarded by peerMu: payload bytes in sockMsgs
	peerChanged       chan struct{}      // guarded by peerMu: closed when peerMaps or sockMsgs change
	mapsLive          atomic.Int64       // the peer's dedicated mappings mapped here
	mapBytesLive      atomic.Int64       // their bytes
	aheadSince        time.Time          // used by RecvMessage only: since when the ring is idle with socket messages held
	recvCtx           context.Context    // guarded by peerMu: what RecvMessage waits on while nothing is held
	recvWake          context.CancelFunc // guarded by peerMu: ends recvCtx (a socket message arrived)
	recvRec           wire.Msg
	stats             counters
}

// mapped is a peer's region mapped read-only here, shared by the messages
// that refer to it: unmapped when the last reference goes. A dedicated
// mapping counts against its transport's limits until then.
type mapped struct {
	r    *shm.Region
	refs atomic.Int64
	t    *Transport // for a dedicated mapping: whose limits it counts against
}

func (m *mapped) ref() { m.refs.Add(1) }
func (m *mapped) unref() {
	if m.refs.Add(-1) == 0 {
		size := int64(m.r.Len())
		m.r.Close()
		if m.t != nil {
			m.t.mapsLive.Add(-1)
			m.t.mapBytesLive.Add(-size)
		}
	}
}

// NewTransport runs the handshake on conn, a connected unix socket, as side,
// and returns a transport that carries messages through shared memory. conn
// stays open for the transport's life (it detects the peer's death, carries
// handles and fallback messages); the transport closes it. On error
// (including an invalid option, ErrBadOption) conn is closed and everything
// made so far is released. The options that apply are listed under Option.
func NewTransport(ctx context.Context, conn *net.UnixConn, side Side, opts ...Option) (*Transport, error) {
	cfg, err := newConfig(nil, opts)
	if err != nil {
		conn.Close()
		return nil, err
	}
	t, _, err := newTransport(ctx, conn, side, &cfg.opts)
	if err != nil {
		conn.Close()
		return nil, err
	}
	return t, nil
}

// newTransport is NewTransport, except that a handshake that ended
// cleanly without shared memory leaves conn open: fallbackOK is true when
// this side refused the peer (and said so with REFUSE), the peer refused
// (REFUSE received), or the dialer could not set up shared memory before
// sending anything. conn is then positioned after the handshake's frames,
// ready for a stream transport. On any other error conn is closed.
func newTransport(ctx context.Context, conn *net.UnixConn, side Side, opts *transportConfig) (t *Transport, fallbackOK bool, err error) {
	o := opts.withDefaults()
	t = &Transport{
		opts:        o,
		side:        side,
		log:         o.Logger.With("side", side.String()),
		conn:        conn,
		fc:          wire.NewFrameConn(conn),
		sent:        make(map[uint64]*outMsg),
		kick:        make(chan struct{}, 1),
		peerMaps:    make(map[uint32]*mapped),
		sockMsgs:    make(map[uint64]*sockMsg),
		peerChanged: make(chan struct{}),
	}
	t.ctx, t.cancel = context.WithCancelCause(context.Background())
	if fallbackOK, err := t.handshake(ctx); err != nil {
		t.abandon()
		if !fallbackOK {
			conn.Close()
		}
		return nil, fallbackOK, err
	}
	t.wg.Add(2)
	go t.readSocket()
	go t.flushLoop()
	return t, false, nil
}

// abandon releases what a failed handshake made, except the socket.
func (t *Transport) abandon() {
	t.cancel(ErrClosed)
	for _, c := range []interface{ Close() error }{t.myPool, t.myRing, t.peerRing, t.dataBell, t.spaceBell, t.peerData, t.peerSpace} {
		if c != nil && !isNilCloser(c) {
			c.Close()
		}
	}
	if t.peerPool != nil {
		t.peerPool.unref()
	}
	if t.alloc != nil {
		t.alloc.Close()
	}
}

func isNilCloser(c interface{ Close() error }) bool {
	switch v := c.(type) {
	case *shm.Region:
		return v == nil
	case *iocpwake.Bell:
		return v == nil
	}
	return false
}

// handshake runs the handshake. On error, fallbackOK says whether it ended
// cleanly, the socket left usable for a stream transport (see
// newTransport).
func (t *Transport) handshake(ctx context.Context) (fallbackOK bool, err error) {
	deadline := time.Now().Add(t.opts.HandshakeTimeout)
	ctxDeadline := false // the context's deadline comes first
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline, ctxDeadline = d, true
	}
	t.conn.SetDeadline(deadline)
	defer t.conn.SetDeadline(time.Time{})
	stop := context.AfterFunc(ctx, func() { t.conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	defer func() {
		// A read or write cut short by the deadline: say which one ran out.
		if err == nil || !errors.Is(err, os.ErrDeadlineExceeded) {
			return
		}
		cerr := context.Cause(ctx)
		if cerr == nil && ctxDeadline {
			// The socket's deadline, which is the context's, can pass a
			// moment before the context's own timer fires.
			cerr = context.DeadlineExceeded
		}
		if cerr != nil {
			err = fmt.Errorf("capnshm: the handshake did not finish before the context ended: %w: %w", cerr, err)
		} else {
			err = fmt.Errorf("capnshm: the handshake did not finish within %v (WithHandshakeTimeout): %w", t.opts.HandshakeTimeout, err)
		}
	}()

	if t.side == Listener {
		// The dialer speaks first; check who it is before making anything.
		peer, fds, err := t.readHello()
		if errors.Is(err, wire.ErrVersion) {
			// A whole HELLO of another version: say so, so that the
			// dialer can fall back.
			return t.refuse(0, err.Error(), err)
		}
		if err != nil {
			return false, err
		}
		if err := t.checkPeer(peer); err != nil {
			closeFDs(fds)
			return t.refuse(peer.MaxMessage, err.Error(), err)
		}
		if err := t.makeMine(); err != nil {
			closeFDs(fds)
			return t.refuse(peer.MaxMessage, "listener could not set up shared memory", err)
		}
		if err := t.adoptPeer(peer, fds); err != nil {
			return t.refuse(peer.MaxMessage, err.Error(), err)
		}
		return false, t.sendHello()
	}
	if err := t.makeMine(); err != nil {
		return true, err // nothing sent yet
	}
	if err := t.sendHello(); err != nil {
		return false, err
	}
	peer, fds, err := t.readHello()
	if err != nil {
		// A REFUSE frame was read whole: the stream is at a frame
		// boundary, and the stream transport follows unless the listener
		// said it closes.
		var rf *refusal
		return errors.As(err, &rf) && !rf.noFallback, err
	}
	if err := t.checkPeer(peer); err != nil {
		closeFDs(fds)
		return false, err
	}
	return false, t.adoptPeer(peer, fds)
}

func closeFDs(fds []int) {
	for _, fd := range fds {
		closeFD(fd)
	}
}

// makeMine creates this side's pool, ring and doorbells.
func (t *Transport) makeMine() error {
	var err error
	// The pool is written by this side only: sealed against the peer's
	// writes once mapped here. The ring is shared read-write by design
	// (the peer publishes its head and wake-up flags in it).
	if t.myPool, err = shm.Create(t.opts.PoolSize, &shm.Options{Name: "capnshm-pool", PeerReadOnly: true}); err != nil {
		return fmt.Errorf("capnshm: creating the pool: %w", err)
	}
	if !t.opts.NoPrefault {
		// Mapping a 32 MiB pool's pages takes tens of milliseconds, which
		// a connection's setup would wait for; they are mapped meanwhile.
		t.myPool.PrefaultInBackground()
	}
	if t.myRing, err = shm.Create(int64(ringbuf.SizeFor(t.opts.RingCapacity)), &shm.Options{Name: "capnshm-ring", Prefault: true}); err != nil {
		return fmt.Errorf("capnshm: creating the ring: %w", err)
	}
	ring, err := ringbuf.Init(t.myRing.Bytes())
	if err != nil {
		return fmt.Errorf("capnshm: ring capacity %d: %w", t.opts.RingCapacity, err)
	}
	if t.dataBell, err = iocpwake.New(); err != nil {
		return err
	}
	if t.spaceBell, err = iocpwake.New(); err != nil {
		return err
	}
	t.mapper = &mapper{t: t, regions: make(map[uint32]*shm.Region), announced: make(map[uint32]bool)}
	if t.alloc, err = segalloc.New(t.myPool.Bytes(), segalloc.Options{
		Mapper:       t.mapper,
		MaxBlock:     poolMaxBlock(t.opts.PoolSize),
		MaxDedicated: t.opts.MaxDedicated,
		MaxHeap:      t.opts.MaxHeap,
		MaxCached:    t.opts.MappingCache,
		CacheIdle:    t.opts.MappingIdle,
		// go-capnp v3.0.1-alpha.2 zeroes every object it allocates
		// (message.go, alloc): zeroing freed memory too would clear each
		// byte twice on the sender's side.
		NoScrub: true,
	}); err != nil {
		return fmt.Errorf("capnshm: pool of %d bytes: %w", t.opts.PoolSize, err)
	}
	t.myRingView = ring
	return nil
}

func (t *Transport) sendHello() error {
	var b [wire.HelloSize]byte
	n, err := wire.PutHello(b[:], wire.Hello{
		Version:    wire.Version,
		Features:   wire.FeatureDedicated,
		PoolSize:   uint64(t.myPool.Len()),
		RingSize:   uint64(t.myRing.Len()),
		MaxMessage: uint64(t.opts.MaxMessage),
		PID:        uint32(os.Getpid()),
	})
	if err != nil {
		return fmt.Errorf("capnshm: encoding hello: %w", err)
	}
	fds := []int{int(t.myPool.Handle()), int(t.myRing.Handle()), int(t.dataBell.Handle()), int(t.spaceBell.Handle())}
	if err := t.fc.WriteFrame(wire.FrameHello, 0, b[:n], fds); err != nil {
		return fmt.Errorf("capnshm: sending hello: %w", err)
	}
	return nil
}

func (t *Transport) readHello() (wire.Hello, []int, error) {
	hdr, payload, fds, err := t.fc.ReadFrame(0) // no MSG frame before the handshake ends
	if errors.Is(err, wire.ErrMalformed) {
		return wire.Hello{}, nil, fmt.Errorf("%w: the peer's hello: %w", ErrProtocol, err)
	}
	if err != nil {
		return wire.Hello{}, nil, fmt.Errorf("capnshm: reading the peer's hello: %w", err)
	}
	switch hdr.Type {
	case wire.FrameRefuse:
		closeFDs(fds)
		r, err := wire.ParseRefuse(payload)
		if err != nil {
			return wire.Hello{}, nil, &refusal{err: fmt.Errorf("%w: %v", ErrRefused, err)}
		}
		return wire.Hello{}, nil, &refusal{
			err:        fmt.Errorf("%w by the peer: %s", ErrRefused, r.Reason),
			peerMax:    r.MaxMessage,
			noFallback: r.Flags&wire.RefuseNoFallback != 0,
		}
	case wire.FrameHello:
	default:
		closeFDs(fds)
		return wire.Hello{}, nil, fmt.Errorf("%w: expected a hello, got frame type %d", ErrProtocol, hdr.Type)
	}
	h, err := wire.ParseHello(payload)
	if err != nil {
		closeFDs(fds)
		return wire.Hello{}, nil, fmt.Errorf("%w: %w", ErrProtocol, err)
	}
	return h, fds, nil
}

// refuse answers REFUSE with reason, for err: it returns whether the
// stream transport may follow (the REFUSE was sent and offers it) and err
// as a refusal that knows the peer's limit (peerMax, from its HELLO).
func (t *Transport) refuse(peerMax uint64, reason string, err error) (bool, error) {
	sent := sendRefuse(t.fc, wire.Refuse{Reason: reason, Flags: t.opts.refuseFlags(), MaxMessage: uint64(t.opts.withDefaults().MaxMessage)}) == nil
	return sent && !t.opts.NoFallback, &refusal{err: err, peerMax: peerMax, noFallback: t.opts.NoFallback}
}

// checkPeer applies the credential and size policy to the peer's hello.
func (t *Transport) checkPeer(h wire.Hello) error {
	uid, _, pid, err := wire.PeerCred(t.conn)
	if err != nil {
		return fmt.Errorf("capnshm: reading the peer's credentials: %w", err)
	}
	if !t.opts.AllowOtherUsers && int(uid) != os.Getuid() {
		return fmt.Errorf("%w: peer process %d runs as uid %d, this process as %d (WithAllowOtherUsers permits it)", ErrRefused, pid, uid, os.Getuid())
	}
	t.peerPID = int(pid)
	t.peerMax = h.MaxMessage
	if h.PoolSize > uint64(t.opts.MaxPeerPool) {
		return fmt.Errorf("%w: %w: the peer's pool of %d bytes is over this side's limit of %d (WithMaxPeerPool)", ErrRefused, ErrLimit, h.PoolSize, t.opts.MaxPeerPool)
	}
	if maxRing := uint64(ringbuf.SizeFor(min(t.opts.MaxPeerRing, ringbuf.MaxCapacity))); h.RingSize > maxRing {
		return fmt.Errorf("%w: %w: the peer's ring of %d bytes is over this side's limit of %d (WithMaxPeerRing, a capacity of %d)", ErrRefused, ErrLimit, h.RingSize, maxRing, min(t.opts.MaxPeerRing, ringbuf.MaxCapacity))
	}
	return nil
}

// adoptPeer maps what the peer handed over: its pool read-only, its ring
// read-write, its doorbells to ring. It takes ownership of fds.
func (t *Transport) adoptPeer(h wire.Hello, fds []int) error {
	if len(fds) != 4 {
		closeFDs(fds)
		return fmt.Errorf("%w: hello carried %d handles, want 4", ErrProtocol, len(fds))
	}
	pool, err := shm.Open(shm.Handle(fds[0]), int64(h.PoolSize), shm.ReadOnly, &shm.Options{MaxSize: t.opts.MaxPeerPool})
	if err != nil {
		closeFDs(fds[1:])
		return fmt.Errorf("%w: the peer's pool: %w", ErrProtocol, err)
	}
	t.peerPool = &mapped{r: pool}
	t.peerPool.ref()
	if t.peerRing, err = shm.Open(shm.Handle(fds[1]), int64(h.RingSize), shm.ReadWrite, &shm.Options{MaxSize: int64(ringbuf.SizeFor(min(t.opts.MaxPeerRing, ringbuf.MaxCapacity)))}); err != nil {
		closeFDs(fds[2:])
		return fmt.Errorf("%w: the peer's ring: %w", ErrProtocol, err)
	}
	ring, err := ringbuf.Attach(t.peerRing.Bytes())
	if err != nil {
		closeFDs(fds[2:])
		return fmt.Errorf("%w: the peer's ring: %w", ErrProtocol, err)
	}
	if t.peerData, err = iocpwake.Open(iocpwake.Handle(fds[2])); err != nil {
		closeFD(fds[3])
		return fmt.Errorf("%w: the peer's data doorbell: %w", ErrProtocol, err)
	}
	if t.peerSpace, err = iocpwake.Open(iocpwake.Handle(fds[3])); err != nil {
		return fmt.Errorf("%w: the peer's space doorbell: %w", ErrProtocol, err)
	}
	t.in = ring.Consumer(ringbuf.Options{Strategy: t.opts.Strategy, SpinTime: t.opts.SpinTime, Waiter: t.dataBell, Ringer: t.peerSpace})
	t.out = t.myRingView.Producer(ringbuf.Options{Strategy: t.opts.Strategy, SpinTime: t.opts.SpinTime, Waiter: t.spaceBell, Ringer: t.peerData})
	t.log.Debug("capnshm: connected", "peer_pid", t.peerPID, "peer_pool", h.PoolSize, "peer_ring", h.RingSize)
	return nil
}

// PeerPID returns the process id of the peer, from its credentials.
func (t *Transport) PeerPID() int { return t.peerPID }

// PeerMaxMessage returns the largest message the peer accepts (its HELLO).
func (t *Transport) PeerMaxMessage() uint64 { return t.peerMax }

// ownedByEngine drops the guards only go-capnp's Conn needs: capnshm's
// engine runs on this transport (see engineOwned). Called before the first
// message.
func (t *Transport) ownedByEngine() { t.noGuards.Store(true) }

// Stats returns the transport's counters.
func (t *Transport) Stats() Stats {
	s := Stats{
		MessagesSent:     t.stats.messagesSent.Load(),
		MessagesReceived: t.stats.messagesReceived.Load(),
		BytesSent:        t.stats.bytesSent.Load(),
		BytesReceived:    t.stats.bytesReceived.Load(),
		SentByReference:  t.stats.sentByReference.Load(),
		SentInline:       t.stats.sentInline.Load(),
		SentOnSocket:     t.stats.sentOnSocket.Load(),
		BytesCopied:      t.stats.bytesCopied.Load(),
		FreesSent:        t.stats.freesSent.Load(),
		FreesReceived:    t.stats.freesReceived.Load(),
		Pool:             t.alloc.Stats(),
		PeerMappings:     t.mapsLive.Load(),
		PeerMappingBytes: t.mapBytesLive.Load(),
	}
	t.sentMu.Lock()
	s.PeerHeld = uint64(len(t.sent))
	t.sentMu.Unlock()
	return s
}

// Err returns why the transport stopped: nil while it runs, ErrClosed after
// Close, or the error that ended it (ErrPeerGone, ErrProtocol, ...).
func (t *Transport) Err() error {
	if t.ctx.Err() == nil {
		return nil
	}
	return context.Cause(t.ctx)
}

// errPeerBye: the peer closed the connection in order (a BYE frame).
var errPeerBye = errors.New("the peer closed the connection")

// fail ends the connection with err (the first cause wins).
func (t *Transport) fail(err error) {
	if t.ctx.Err() == nil {
		if errors.Is(err, errPeerBye) {
			t.log.Info("capnshm: connection closed by the peer")
		} else {
			t.log.Warn("capnshm: connection failed", "err", err)
		}
	}
	t.cancel(err)
}

// cause returns why the transport stopped.
func (t *Transport) cause() error {
	if err := context.Cause(t.ctx); err != nil {
		return err
	}
	return ErrClosed
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

// ---- sending ----

// outMsg is a message this side builds and sends.
type outMsg struct {
	t        *Transport
	msg      *capnp.Message
	arena    *segalloc.Arena
	rm       rpccp.Message
	refs     atomic.Int32 // go-capnp's reference, plus the peer's after Send by reference
	released atomic.Bool
	sent     bool
	err      error
}

// NewMessage starts a message in this side's pool. It never blocks. When
// even the heap fallback is exhausted it returns a message that cannot be
// sent, with an error, never a nil message (go-capnp requires that).
func (t *Transport) NewMessage() (transport.OutgoingMessage, error) {
	om := &outMsg{t: t}
	om.refs.Store(1)
	if t.closed.Load() {
		return t.deadMessage(om, t.cause())
	}
	om.arena = t.alloc.NewArena()
	msg, seg, err := capnp.NewMessage(om.arena)
	if err != nil {
		om.arena.Release()
		return t.deadMessage(om, fmt.Errorf("capnshm: new message: %w", err))
	}
	rm, err := rpccp.NewRootMessage(seg)
	if err != nil {
		msg.Release()
		return t.deadMessage(om, fmt.Errorf("capnshm: new message: %w", err))
	}
	om.msg, om.rm = msg, rm
	t.liveLocal.Add(1)
	return om, nil
}

// deadMessage returns a heap message that Send refuses with err.
func (t *Transport) deadMessage(om *outMsg, err error) (transport.OutgoingMessage, error) {
	msg, seg := capnp.NewSingleSegmentMessage(nil)
	om.msg, om.arena, om.err = msg, nil, err
	om.rm, _ = rpccp.NewRootMessage(seg)
	return om, err
}

func (om *outMsg) Message() rpccp.Message { return om.rm }

// Release drops go-capnp's reference. The segments return to the pool when
// the peer has released its reference too.
func (om *outMsg) Release() {
	if om.released.Swap(true) {
		return
	}
	if om.arena == nil {
		om.msg.Release()
		return
	}
	// If it was never sent, record the lengths used so that scrubbing
	// zeroes only what capnp wrote.
	if !om.sent {
		om.arena.SetUsed(segmentLengths(om.msg, nil))
	}
	om.msg.Release() // drops the arena's local reference
	t := om.t
	t.liveLocal.Add(-1)
	t.maybeFinalize()
}

// dropPeerRef drops the peer's reference after its FREE.
func (om *outMsg) dropPeerRef() { om.arena.Release() }

func segmentLengths(msg *capnp.Message, buf []int) []int {
	n := int(msg.NumSegments())
	buf = buf[:0]
	for i := 0; i < n; i++ {
		s, err := msg.Segment(capnp.SegmentID(i))
		if err != nil {
			buf = append(buf, 0)
			continue
		}
		buf = append(buf, len(s.Data()))
	}
	return buf
}

// Send transmits the message: inline in the ring if small, by reference to
// its segments in shared memory otherwise, or on the socket if part of it
// had to go to the heap. All three keep FIFO order. It blocks only while
// the ring is full, and returns when the transport closes.
func (om *outMsg) Send() error {
	if om.released.Load() {
		panic("capnshm: Send after Release")
	}
	if om.err != nil {
		return om.err
	}
	if om.sent {
		return errors.New("capnshm: message sent twice")
	}
	om.sent = true
	t := om.t
	var lbuf [8]int
	lengths := segmentLengths(om.msg, lbuf[:0])
	om.arena.SetUsed(lengths)
	var total int
	for _, n := range lengths {
		total += n
	}
	if uint64(total) > t.peerMax {
		return t.tooLarge(om, total)
	}
	var sbuf [8]segalloc.Segment
	segs := om.arena.AppendSegments(sbuf[:0])
	heap := false
	for i := range lengths {
		if segs[i].Loc == segalloc.LocHeap {
			heap = true
		}
	}

	t.outMu.Lock()
	defer t.outMu.Unlock()
	if t.closed.Load() || t.ctx.Err() != nil {
		return t.cause()
	}
	if !t.noGuards.Load() {
		if err := t.questions.check(om.rm); err != nil {
			return err
		}
	}
	t.flushPendingLocked(false)
	switch {
	case total <= t.opts.InlineMax && !heap:
		return t.sendInline(om.msg, lengths, total)
	case heap:
		return t.sendOnSocket(om.msg, total)
	default:
		return t.sendByReference(om, segs, lengths, total)
	}
}

// tooLarge handles a message larger than the peer accepts, which the peer
// would have to abort the connection for. A call fails with ErrTooLarge and
// the connection goes on; a Return with results is replaced by a Return
// with an exception that says why (the caller fails alone, too); anything
// else ends the connection with the error, because the peer would be left
// waiting for something that never comes.
func (t *Transport) tooLarge(om *outMsg, total int) error {
	repl, err := tooLarge(om.rm, uint64(total), t.peerMax)
	switch {
	case repl != nil:
		defer repl.Release()
		lengths := segmentLengths(repl, nil)
		n := 0
		for _, l := range lengths {
			n += l
		}
		t.outMu.Lock()
		defer t.outMu.Unlock()
		if t.closed.Load() || t.ctx.Err() != nil {
			return t.cause()
		}
		return t.sendInline(repl, lengths, n)
	case om.rm.Which() != rpccp.Message_Which_call:
		t.fail(err)
	}
	return err
}

// countSent counts a message about to be published: before the commit,
// because the peer may answer (and a caller read Stats) at once after it.
func (t *Transport) countSent(total int) {
	t.stats.messagesSent.Add(1)
	t.stats.bytesSent.Add(uint64(total))
}

// claim claims an n-byte record in the outbound ring, waiting for space.
// Called with outMu held.
func (t *Transport) claim(n int) ([]byte, error) {
	for {
		b, err := t.out.Claim(n)
		if !errors.Is(err, ringbuf.ErrFull) {
			if err != nil {
				return nil, t.claimError(err)
			}
			return b, nil
		}
		if err := t.out.Commit(); err != nil {
			return nil, t.ringError(err)
		}
		if err := t.out.WaitSpace(t.ctx, n); err != nil {
			if t.ctx.Err() != nil {
				return nil, t.cause()
			}
			return nil, t.ringError(err)
		}
	}
}

func (t *Transport) commit() error {
	if err := t.out.Commit(); err != nil {
		return t.ringError(err)
	}
	return nil
}

// claimError is what a failed claim (other than ErrFull) gives: a corrupt
// outbound ring (the peer wrote an impossible head) ends the connection,
// once, with ErrProtocol; a payload too large for the ring is the caller's
// error alone.
func (t *Transport) claimError(err error) error {
	if errors.Is(err, ringbuf.ErrCorrupt) {
		if t.ctx.Err() != nil {
			return t.cause()
		}
		return t.ringError(err)
	}
	return fmt.Errorf("capnshm: outbound ring: %w", err)
}

// ringError turns an error from the outbound ring into the connection's end.
func (t *Transport) ringError(err error) error {
	if errors.Is(err, ringbuf.ErrCorrupt) {
		err = fmt.Errorf("%w: %w", ErrProtocol, err)
	}
	t.fail(err)
	return err
}

func (t *Transport) sendInline(msg *capnp.Message, lengths []int, total int) error {
	var sbuf [8][]byte
	segs := sbuf[:0]
	for i := range lengths {
		s, err := msg.Segment(capnp.SegmentID(i))
		if err != nil {
			return err
		}
		segs = append(segs, s.Data())
	}
	b, err := t.claim(wire.InlineSize(lengths))
	if err != nil {
		return err
	}
	if _, err := wire.PutInline(b, segs); err != nil {
		return err
	}
	t.stats.sentInline.Add(1)
	t.stats.bytesCopied.Add(uint64(total))
	t.countSent(total)
	return t.commit()
}

func (t *Transport) sendByReference(om *outMsg, segs []segalloc.Segment, lengths []int, total int) error {
	var rbuf [8]wire.SegRef
	refs := rbuf[:0]
	for i, n := range lengths {
		s := segs[i]
		if s.Loc != segalloc.LocPool {
			if err := t.mapper.announce(s.Mapping); err != nil {
				return err
			}
		}
		refs = append(refs, wire.SegRef{Loc: uint32(s.Loc), Offset: uint64(s.Offset), Length: uint64(n)})
	}
	t.sentMu.Lock()
	t.nextID++
	id := t.nextID
	t.sent[id] = om
	t.sentMu.Unlock()
	om.arena.Retain() // the peer's reference, dropped by its FREE
	b, err := t.claim(wire.MsgSize(len(refs)))
	if err != nil {
		return err
	}
	if _, err := wire.PutMsg(b, id, refs); err != nil {
		return err
	}
	t.stats.sentByReference.Add(1)
	t.countSent(total)
	return t.commit()
}

func (t *Transport) sendOnSocket(msg *capnp.Message, total int) error {
	data, err := msg.Marshal()
	if err != nil {
		return fmt.Errorf("capnshm: marshalling a message for the socket: %w", err)
	}
	t.sockSeq++
	if err := t.fc.WriteFrame(wire.FrameMsg, t.sockSeq, data, nil); err != nil {
		t.fail(fmt.Errorf("%w: writing to the socket: %w", ErrPeerGone, err))
		return t.cause()
	}
	b, err := t.claim(wire.SockSize)
	if err != nil {
		return err
	}
	if _, err := wire.PutSock(b, t.sockSeq); err != nil {
		return err
	}
	t.stats.sentOnSocket.Add(1)
	t.stats.bytesCopied.Add(uint64(len(data)))
	t.countSent(total)
	return t.commit()
}

// queueFree schedules a FREE of the peer's message id.
func (t *Transport) queueFree(id uint64) {
	t.pendMu.Lock()
	t.frees = append(t.frees, id)
	t.pendMu.Unlock()
	t.flushPending()
}

// queueUnmap schedules an UNMAP of our dedicated mapping id.
func (t *Transport) queueUnmap(id uint32) {
	t.pendMu.Lock()
	t.unmaps = append(t.unmaps, id)
	t.pendMu.Unlock()
	t.flushPending()
}

// flushPending writes pending FREE and UNMAP records if the ring is free
// now, else leaves them to the flush goroutine. It never blocks.
func (t *Transport) flushPending() {
	if t.closed.Load() {
		return
	}
	if !t.outMu.TryLock() {
		t.kickFlusher()
		return
	}
	defer t.outMu.Unlock()
	if t.ctx.Err() != nil {
		return
	}
	if !t.flushPendingLocked(false) {
		t.kickFlusher()
	}
}

func (t *Transport) kickFlusher() {
	select {
	case t.kick <- struct{}{}:
	default:
	}
}

// flushPendingLocked writes pending records; with wait it waits for ring
// space, else it stops at the first full claim. It reports whether nothing
// is left pending. Called with outMu held.
func (t *Transport) flushPendingLocked(wait bool) bool {
	t.pendMu.Lock()
	frees, unmaps := t.frees, t.unmaps
	t.frees, t.unmaps = nil, nil
	t.pendMu.Unlock()
	if len(frees) == 0 && len(unmaps) == 0 {
		return true
	}
	claim := func(n int) ([]byte, error) {
		if wait {
			return t.claim(n)
		}
		b, err := t.out.Claim(n)
		if err != nil && !errors.Is(err, ringbuf.ErrFull) {
			return nil, t.claimError(err)
		}
		return b, err
	}
	putBack := func() bool {
		t.pendMu.Lock()
		t.frees = append(frees, t.frees...)
		t.unmaps = append(unmaps, t.unmaps...)
		t.pendMu.Unlock()
		return false
	}
	for len(frees) > 0 {
		n := min(len(frees), wire.MaxFreeIDs, (t.myRingView.MaxPayload()-8)/8)
		b, err := claim(wire.FreeSize(n))
		if err != nil {
			t.commit()
			return putBack()
		}
		if _, err := wire.PutFree(b, frees[:n]); err != nil {
			t.fail(err)
			return false
		}
		frees = frees[n:]
		t.stats.freesSent.Add(uint64(n))
	}
	for len(unmaps) > 0 {
		b, err := claim(wire.UnmapSize)
		if err != nil {
			t.commit()
			return putBack()
		}
		if _, err := wire.PutUnmap(b, unmaps[0]); err != nil {
			t.fail(err)
			return false
		}
		unmaps = unmaps[1:]
	}
	return t.commit() == nil
}

// flushLoop writes pending records that found the ring full.
func (t *Transport) flushLoop() {
	defer t.wg.Done()
	for {
		select {
		case <-t.ctx.Done():
			return
		case <-t.kick:
		}
		t.outMu.Lock()
		if t.ctx.Err() == nil {
			t.flushPendingLocked(true)
		}
		t.outMu.Unlock()
	}
}

// ---- receiving ----

// inMsg is a message received from the peer.
type inMsg struct {
	t        *Transport
	msg      *capnp.Message
	rm       rpccp.Message
	id       uint64 // peer's message id to FREE, 0 if copied
	maps     []*mapped
	released atomic.Bool
}

func (im *inMsg) Message() rpccp.Message { return im.rm }

// Release gives the message's memory back to the peer, and releases the
// capabilities go-capnp put in its cap table (the RPC layer relies on
// Release for that, as the transport.IncomingMessage interface says).
func (im *inMsg) Release() {
	if im.released.Swap(true) {
		return
	}
	im.msg.Release() // the cap table's clients; roArena's Release is a no-op
	t := im.t
	if im.id != 0 {
		t.queueFree(im.id)
	}
	for _, m := range im.maps {
		m.unref()
	}
	t.liveIn.Add(-1)
	t.maybeFinalize()
}

// RecvMessage returns the next message from the peer. Its segments are the
// peer's shared memory (mapped read-only), not a copy, unless the message is
// small. When the peer closes the connection or dies, the messages it
// published before are returned first, then an error wrapping ErrPeerGone.
func (t *Transport) RecvMessage() (transport.IncomingMessage, error) {
	t.recvMu.Lock()
	defer t.recvMu.Unlock()
	for {
		if t.closed.Load() || (t.ctx.Err() != nil && !t.peerGone()) {
			return nil, t.cause()
		}
		// Once the peer is gone, what it published before it left is
		// still delivered: the ring is drained before the cause is
		// reported (a closing go-capnp's last message is its Abort).
		rec, err := t.in.Poll()
		if errors.Is(err, ringbuf.ErrEmpty) {
			if err := t.in.Release(); err != nil {
				return nil, t.recvFail(err)
			}
			if t.ctx.Err() != nil {
				return nil, t.cause()
			}
			wctx, cancel, err := t.idleContext()
			if err != nil {
				return nil, t.recvFail(err)
			}
			err = t.in.Wait(wctx)
			cancel()
			if err != nil && !t.peerGone() && (t.ctx.Err() != nil || wctx.Err() == nil) {
				return nil, t.recvFail(err)
			}
			continue
		}
		t.aheadSince = time.Time{}
		if err != nil {
			return nil, t.recvFail(err)
		}
		m, err := t.handleRecord(rec)
		if rerr := t.in.Release(); rerr != nil && err == nil {
			err = rerr
		}
		if err != nil {
			return nil, t.recvFail(err)
		}
		if m != nil {
			t.stats.messagesReceived.Add(1)
			return m, nil
		}
	}
}

// idleContext returns the context RecvMessage waits on when the ring is
// empty: the transport's, or, while socket messages are held that no SOCK
// record has taken, one that ends when they have waited WithFrameTimeout
// since the ring went idle. A sender publishes the SOCK record right after
// the frame, so by then it never will: the error says so.
func (t *Transport) idleContext() (context.Context, context.CancelFunc, error) {
	t.peerMu.Lock()
	// Socket messages come numbered in order, and each is taken by the
	// SOCK record of its number, in order: those held are the next ones.
	var oldest uint64
	if len(t.sockMsgs) > 0 {
		oldest = t.recvSeq + 1
	}
	if oldest == 0 {
		// Nothing held: wait until the ring has something, or a socket
		// message arrives (the reader cancels recvCtx), which starts the
		// clock. The context lives until then, so that the doorbell's
		// wait does not register a new one each time.
		if t.recvCtx == nil || t.recvCtx.Err() != nil {
			t.recvCtx, t.recvWake = context.WithCancel(t.ctx)
		}
		ctx := t.recvCtx
		t.peerMu.Unlock()
		t.aheadSince = time.Time{}
		return ctx, func() {}, nil
	}
	t.peerMu.Unlock()
	if t.aheadSince.IsZero() {
		t.aheadSince = time.Now()
	}
	left := t.opts.FrameTimeout - time.Since(t.aheadSince)
	if left <= 0 {
		return nil, nil, fmt.Errorf("%w: socket message %d arrived, and the ring has been idle for %v without the SOCK record that takes it (WithFrameTimeout)", ErrProtocol, oldest, t.opts.FrameTimeout)
	}
	ctx, cancel := context.WithTimeout(t.ctx, left)
	return ctx, cancel, nil
}

// peerGone reports whether the connection ended because the peer closed it
// or died, rather than by Close or a fault found here.
func (t *Transport) peerGone() bool {
	return t.ctx.Err() != nil && errors.Is(context.Cause(t.ctx), ErrPeerGone)
}

// recvFail ends the connection because of err met while receiving; a
// refused message (see checkIncoming) leaves it to go-capnp to end it.
func (t *Transport) recvFail(err error) error {
	if t.ctx.Err() != nil {
		return t.cause()
	}
	if refused(err) {
		t.log.Warn("capnshm: refused a message from the peer", "err", err)
		return err
	}
	if errors.Is(err, ringbuf.ErrCorrupt) {
		err = fmt.Errorf("%w: %w", ErrProtocol, err)
	}
	t.fail(err)
	return err
}

// handleRecord processes one record; it returns a message for go-capnp, or
// nil for records that carry none.
func (t *Transport) handleRecord(rec []byte) (*inMsg, error) {
	kind, err := wire.Peek(rec)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrProtocol, err)
	}
	switch kind {
	case wire.KindInline:
		return t.recvInline(rec)
	case wire.KindMsg:
		return t.recvByReference(rec)
	case wire.KindFree:
		return nil, t.recvFree(rec)
	case wire.KindSock:
		return t.recvFromSocket(rec)
	case wire.KindUnmap:
		id, err := wire.ParseUnmap(rec)
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrProtocol, err)
		}
		t.peerMu.Lock()
		m := t.peerMaps[id]
		delete(t.peerMaps, id)
		t.peerMu.Unlock()
		if m == nil {
			return nil, fmt.Errorf("%w: UNMAP of mapping %d, which the peer never announced", ErrProtocol, id)
		}
		m.unref()
		return nil, nil
	}
	return nil, fmt.Errorf("%w: record kind %d", ErrProtocol, kind)
}

func (t *Transport) recvInline(rec []byte) (*inMsg, error) {
	var sbuf [8][]byte
	segs, err := wire.ParseInline(rec, sbuf[:0])
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrProtocol, err)
	}
	return t.copyOut(segs, 0, nil)
}

// copyOut builds a private copy of segs, which the peer may change at any
// time; id, if not zero, is freed at once.
func (t *Transport) copyOut(segs [][]byte, id uint64, maps []*mapped) (*inMsg, error) {
	var total int
	for _, s := range segs {
		total += len(s)
	}
	buf := make([]byte, total)
	own := make([][]byte, len(segs))
	off := 0
	for i, s := range segs {
		own[i] = buf[off : off+len(s) : off+len(s)]
		off += copy(own[i], s)
	}
	t.stats.bytesCopied.Add(uint64(total))
	if id != 0 {
		t.queueFree(id)
	}
	for _, m := range maps {
		m.unref()
	}
	return t.newIn(own, total, 0, nil)
}

func (t *Transport) newIn(segs [][]byte, total int, id uint64, maps []*mapped) (*inMsg, error) {
	msg := &capnp.Message{Arena: &roArena{segs: segs}, TraverseLimit: t.readLimit(total)}
	rm, err := readRootGuarded(msg, !t.noGuards.Load())
	if err != nil {
		if id != 0 {
			t.queueFree(id)
		}
		for _, m := range maps {
			m.unref()
		}
		return nil, fmt.Errorf("%w: %w", ErrProtocol, err)
	}
	t.stats.bytesReceived.Add(uint64(total))
	t.liveIn.Add(1)
	return &inMsg{t: t, msg: msg, rm: rm, id: id, maps: maps}, nil
}

// readLimit is the traversal limit of a total-byte message: generous for
// a message read a few times, capped by MaxMessage.
func (t *Transport) readLimit(total int) uint64 {
	return min(uint64(total)*8+64<<10, uint64(t.opts.MaxMessage)*4)
}

func (t *Transport) recvByReference(rec []byte) (*inMsg, error) {
	if err := wire.ParseMsg(rec, &t.recvRec); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrProtocol, err)
	}
	m := &t.recvRec
	var total uint64
	segs := make([][]byte, len(m.Segs))
	var maps []*mapped
	fail := func(err error) (*inMsg, error) {
		for _, mm := range maps {
			mm.unref()
		}
		return nil, err
	}
	for i, s := range m.Segs {
		var region *mapped
		if s.Loc == 0 {
			region = t.peerPool
		} else {
			r, err := t.peerMapping(s.Loc)
			if err != nil {
				return fail(err)
			}
			region = r
		}
		b := region.r.Bytes()
		if !s.Within(uint64(len(b))) {
			return fail(fmt.Errorf("%w: message %d segment %d at %d+%d lies outside %s of %d bytes", ErrProtocol, m.ID, i, s.Offset, s.Length, locName(s.Loc), len(b)))
		}
		total += s.Length
		if total > uint64(t.opts.MaxMessage) {
			return fail(fmt.Errorf("%w: message %d is over %d bytes (WithMaxMessage)", ErrTooLarge, m.ID, t.opts.MaxMessage))
		}
		segs[i] = b[s.Offset : s.Offset+s.Length : s.Offset+s.Length]
		region.ref()
		maps = append(maps, region)
	}
	if int(total) <= t.opts.InlineMax || t.opts.CopyOnReceive {
		return t.copyOut(segs, m.ID, maps)
	}
	return t.newIn(segs, int(total), m.ID, maps)
}

func locName(loc uint32) string {
	if loc == 0 {
		return "the peer's pool"
	}
	return fmt.Sprintf("dedicated mapping %d", loc)
}

// peerMapping waits until the socket reader has mapped the peer's
// dedicated mapping id (the peer sends it before any record that uses it).
func (t *Transport) peerMapping(id uint32) (*mapped, error) {
	var m *mapped
	err := t.awaitFrame(func() bool {
		m = t.peerMaps[id]
		return m != nil
	}, func() string {
		return fmt.Sprintf("a MSG record names dedicated mapping %d, which the peer never sent", id)
	})
	return m, err
}

// awaitFrame waits until ready, called with peerMu held, reports that the
// socket reader has received what a record depends on. It fails the wait
// (the caller ends the connection) with ErrProtocol and what() when
// nothing at all has arrived on the socket for WithFrameTimeout: the
// peer writes a frame before the record that refers to it, so a frame that
// does not come was never sent. A large frame still arriving restarts the
// clock.
func (t *Transport) awaitFrame(ready func() bool, what func() string) error {
	var timer *time.Timer
	var seen uint64
	for {
		t.peerMu.Lock()
		ok, ch := ready(), t.peerChanged
		t.peerMu.Unlock()
		if ok {
			if timer != nil {
				timer.Stop()
			}
			return nil
		}
		if t.ctx.Err() != nil {
			return t.cause()
		}
		if timer == nil {
			seen = t.fc.BytesRead()
			timer = time.NewTimer(t.opts.FrameTimeout)
			defer timer.Stop()
		}
		select {
		case <-ch:
		case <-t.ctx.Done():
			return t.cause()
		case <-timer.C:
			if now := t.fc.BytesRead(); now != seen {
				seen = now
				timer.Reset(t.opts.FrameTimeout)
				continue
			}
			return fmt.Errorf("%w: %s: nothing arrived on the socket for %v (WithFrameTimeout)", ErrProtocol, what(), t.opts.FrameTimeout)
		}
	}
}

func (t *Transport) recvFree(rec []byte) error {
	var ibuf [64]uint64
	ids, err := wire.ParseFree(rec, ibuf[:0])
	if err != nil {
		return fmt.Errorf("%w: %w", ErrProtocol, err)
	}
	for _, id := range ids {
		t.sentMu.Lock()
		om := t.sent[id]
		delete(t.sent, id)
		t.sentMu.Unlock()
		if om == nil {
			return fmt.Errorf("%w: FREE of message %d, which the peer does not hold", ErrProtocol, id)
		}
		om.dropPeerRef()
	}
	t.stats.freesReceived.Add(uint64(len(ids)))
	return nil
}

func (t *Transport) recvFromSocket(rec []byte) (*inMsg, error) {
	seq, err := wire.ParseSock(rec)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrProtocol, err)
	}
	if seq != t.recvSeq+1 {
		return nil, fmt.Errorf("%w: socket message %d announced, expected %d", ErrProtocol, seq, t.recvSeq+1)
	}
	t.recvSeq = seq
	var msg *sockMsg
	err = t.awaitFrame(func() bool {
		msg = t.sockMsgs[seq]
		if msg == nil {
			return false
		}
		delete(t.sockMsgs, seq)
		t.sockBytes -= msg.size
		// The reader may be waiting for room.
		close(t.peerChanged)
		t.peerChanged = make(chan struct{})
		return true
	}, func() string {
		return fmt.Sprintf("a SOCK record announces socket message %d, which the peer never sent", seq)
	})
	if err != nil {
		return nil, err
	}
	rm, err := readRootGuarded(msg.msg, !t.noGuards.Load())
	if err != nil {
		return nil, fmt.Errorf("%w: socket message: %w", ErrProtocol, err)
	}
	size, _ := msg.msg.TotalSize()
	t.stats.bytesReceived.Add(size)
	t.stats.bytesCopied.Add(size)
	t.liveIn.Add(1)
	return &inMsg{t: t, msg: msg.msg, rm: rm}, nil
}

// sockMsg is a socket message received ahead of the SOCK record that takes
// it.
type sockMsg struct {
	msg  *capnp.Message
	size int64 // what it counts against WithMaxSocketBytes
}

// sockMsgOverhead is what a held socket message counts against
// WithMaxSocketBytes beyond its payload: the message and map entry
// that hold it, so that many tiny messages are bounded too.
const sockMsgOverhead = 1 << 10

// readSocket reads frames from the rendezvous socket: the peer's dedicated
// mappings and fallback messages. EOF means the peer is gone.
func (t *Transport) readSocket() {
	defer t.wg.Done()
	for {
		hdr, fds, err := t.fc.ReadHeader(int(min(t.opts.MaxMessage, 1<<31-1)))
		if err == nil && hdr.Type == wire.FrameMsg {
			err = t.admit(int64(hdr.Length) + sockMsgOverhead)
		}
		var payload []byte
		if err == nil {
			payload, err = t.fc.ReadPayload(hdr)
		}
		if err != nil {
			closeFDs(fds)
			if t.closed.Load() || t.ctx.Err() != nil {
				return
			}
			if errors.Is(err, wire.ErrMalformed) {
				t.fail(fmt.Errorf("%w: %w", ErrProtocol, err))
				return
			}
			t.fail(fmt.Errorf("%w: %w", ErrPeerGone, err))
			return
		}
		if err := t.handleFrame(hdr, payload, fds); err != nil {
			t.fail(err)
			return
		}
	}
}

// admit waits until the socket messages held ahead of the ring leave room
// for n more bytes (WithMaxSocketBytes; one message alone may be
// larger), so that a peer cannot pile them up here: the socket is not read
// meanwhile, which holds an honest sender back until its SOCK records are
// taken (they are ahead of anything else it is waiting for).
func (t *Transport) admit(n int64) error {
	for {
		t.peerMu.Lock()
		held, ch := t.sockBytes, t.peerChanged
		t.peerMu.Unlock()
		if held == 0 || held+n <= t.opts.MaxSocketBytes {
			return nil
		}
		select {
		case <-ch:
		case <-t.ctx.Done():
			return t.cause()
		}
	}
}

func (t *Transport) handleFrame(hdr wire.FrameHeader, payload []byte, fds []int) error {
	switch hdr.Type {
	case wire.FrameMap:
		mp, err := wire.ParseMapping(payload)
		id, size := mp.ID, mp.Size
		if err != nil {
			closeFDs(fds)
			return fmt.Errorf("%w: %w", ErrProtocol, err)
		}
		if size > uint64(t.opts.MaxMessage)+1<<20 {
			closeFDs(fds)
			return fmt.Errorf("%w: dedicated mapping %d of %d bytes is over the largest message accepted (WithMaxMessage)", ErrTooLarge, id, size)
		}
		if n := t.mapsLive.Load(); n >= int64(t.opts.MaxPeerMappings) {
			closeFDs(fds)
			return fmt.Errorf("%w: dedicated mapping %d would be the peer's %d-th mapped here; the limit is %d (WithMaxPeerMappings)", ErrLimit, id, n+1, t.opts.MaxPeerMappings)
		}
		if b := t.mapBytesLive.Load(); b+int64(size) > t.opts.MaxPeerMappingBytes {
			closeFDs(fds)
			return fmt.Errorf("%w: dedicated mapping %d of %d bytes would bring the peer's mappings here to %d bytes; the limit is %d (WithMaxPeerMappingBytes)", ErrLimit, id, size, b+int64(size), t.opts.MaxPeerMappingBytes)
		}
		r, err := shm.Open(shm.Handle(fds[0]), int64(size), shm.ReadOnly, nil)
		if err != nil {
			return fmt.Errorf("%w: dedicated mapping %d: %w", ErrProtocol, id, err)
		}
		t.mapsLive.Add(1)
		t.mapBytesLive.Add(int64(size))
		m := &mapped{r: r, t: t}
		m.ref()
		t.peerMu.Lock()
		dup := t.peerMaps[id] != nil
		if !dup {
			t.peerMaps[id] = m
			close(t.peerChanged)
			t.peerChanged = make(chan struct{})
		}
		t.peerMu.Unlock()
		if dup {
			m.unref()
			return fmt.Errorf("%w: dedicated mapping %d announced twice", ErrProtocol, id)
		}
		return nil
	case wire.FrameMsg:
		closeFDs(fds)
		if hdr.Seq != t.frameSeq+1 {
			return fmt.Errorf("%w: socket message %d, expected %d (they are numbered in order)", ErrProtocol, hdr.Seq, t.frameSeq+1)
		}
		t.frameSeq = hdr.Seq
		msg, err := capnp.Unmarshal(payload)
		if err != nil {
			return fmt.Errorf("%w: socket message %d: %w", ErrProtocol, hdr.Seq, err)
		}
		msg.TraverseLimit = t.readLimit(len(payload))
		t.peerMu.Lock()
		m := &sockMsg{msg: msg, size: int64(len(payload)) + sockMsgOverhead}
		t.sockMsgs[hdr.Seq] = m
		t.sockBytes += m.size
		if t.recvWake != nil {
			t.recvWake() // RecvMessage starts the clock for its record
		}
		close(t.peerChanged)
		t.peerChanged = make(chan struct{})
		t.peerMu.Unlock()
		return nil
	case wire.FrameBye:
		closeFDs(fds)
		return fmt.Errorf("%w: %w", ErrPeerGone, errPeerBye)
	}
	closeFDs(fds)
	return fmt.Errorf("%w: unexpected frame type %d", ErrProtocol, hdr.Type)
}

// ---- closing ----

// Close ends the connection: blocked Send and RecvMessage calls return, the
// peer sees the connection end. Shared memory is unmapped once no message
// refers to it any more (a received message held by user code keeps the
// peer's memory mapped until it is released).
func (t *Transport) Close() error {
	t.closeOnce.Do(func() {
		t.closed.Store(true)
		t.cancel(ErrClosed)
		// A peer that does not read cannot hold Close: the deadline ends
		// any socket write under way (a Send's frame, which holds the
		// frame lock BYE needs) and the BYE itself.
		_ = t.conn.SetWriteDeadline(time.Now().Add(byeTimeout))
		_ = t.fc.WriteFrame(wire.FrameBye, 0, nil, nil)
		t.conn.CloseRead()
		t.conn.Close()
		t.wg.Wait()
		// Send and RecvMessage return once the context is cancelled;
		// holding their locks keeps them out of the rings from here on.
		t.outMu.Lock()
		defer t.outMu.Unlock()
		t.recvMu.Lock()
		defer t.recvMu.Unlock()
		var errs []error
		for _, c := range []interface{ Close() error }{t.dataBell, t.spaceBell, t.peerData, t.peerSpace, t.peerRing} {
			if err := c.Close(); err != nil && !errors.Is(err, iocpwake.ErrClosed) {
				errs = append(errs, err)
			}
		}
		t.peerMu.Lock()
		for id, m := range t.peerMaps {
			delete(t.peerMaps, id)
			m.unref()
		}
		t.peerMu.Unlock()
		t.peerPool.unref()
		t.closeErr = errors.Join(errs...)
		t.maybeFinalize()
	})
	return t.closeErr
}

// byeTimeout bounds how long Close tries to tell the peer (BYE) before it
// closes the socket regardless.
const byeTimeout = 250 * time.Millisecond

// maybeFinalize unmaps this side's memory once the transport is closed and
// go-capnp has released every message it built here.
func (t *Transport) maybeFinalize() {
	if !t.closed.Load() || t.liveLocal.Load() != 0 || t.finalLocal.Swap(true) {
		return
	}
	t.alloc.Close()
	t.mapper.closeAll()
	t.myPool.Close()
	t.myRing.Close()
}

// ---- dedicated mappings ----

// mapper makes this side's dedicated mappings for segalloc and announces
// each to the peer (its descriptor, on the socket) before first use.
type mapper struct {
	t         *Transport
	mu        sync.Mutex
	making    int // Map calls under way
	next      uint32
	regions   map[uint32]*shm.Region
	announced map[uint32]bool
}

type mapping struct {
	id uint32
	r  *shm.Region
}

func (m *mapping) ID() uint32    { return m.id }
func (m *mapping) Bytes() []byte { return m.r.Bytes() }

// maxMappings caps this side's dedicated mappings alive at once: a quarter
// of DefaultMaxPeerMappings, so that a peer with the default limit never
// sees too many, even with UNMAP records still on their way. Beyond it
// segalloc falls back to the heap (and the socket).
const maxMappings = DefaultMaxPeerMappings / 4

func (mp *mapper) Map(size int) (segalloc.Mapping, error) {
	mp.mu.Lock()
	n := len(mp.regions) + mp.making
	if n >= maxMappings {
		mp.mu.Unlock()
		return nil, fmt.Errorf("capnshm: %d dedicated mappings alive, the most this side keeps", n)
	}
	mp.making++
	mp.mu.Unlock()
	// Written by this side only: sealed against the peer's writes.
	r, err := shm.Create(int64(size), &shm.Options{Name: "capnshm-dedicated", Prefault: true, PeerReadOnly: true})
	mp.mu.Lock()
	defer mp.mu.Unlock()
	mp.making--
	if err != nil {
		return nil, err
	}
	mp.next++
	mp.regions[mp.next] = r
	return &mapping{id: mp.next, r: r}, nil
}

func (mp *mapper) Unmap(sm segalloc.Mapping) {
	m := sm.(*mapping)
	mp.mu.Lock()
	announced := mp.announced[m.id]
	delete(mp.announced, m.id)
	delete(mp.regions, m.id)
	mp.mu.Unlock()
	m.r.Close()
	if announced {
		mp.t.queueUnmap(m.id)
	}
}

// announce sends the mapping's descriptor to the peer if not done yet.
// Called with outMu held, before the record that refers to it.
func (mp *mapper) announce(sm segalloc.Mapping) error {
	m := sm.(*mapping)
	mp.mu.Lock()
	done := mp.announced[m.id]
	mp.announced[m.id] = true
	mp.mu.Unlock()
	if done {
		return nil
	}
	var b [wire.MappingSize]byte
	if _, err := wire.PutMapping(b[:], wire.Mapping{ID: m.id, Size: uint64(m.r.Len())}); err != nil {
		return err
	}
	if err := mp.t.fc.WriteFrame(wire.FrameMap, 0, b[:], []int{int(m.r.Handle())}); err != nil {
		mp.t.fail(fmt.Errorf("%w: sending a dedicated mapping: %w", ErrPeerGone, err))
		return mp.t.cause()
	}
	return nil
}

func (mp *mapper) closeAll() {
	mp.mu.Lock()
	defer mp.mu.Unlock()
	for id, r := range mp.regions {
		r.Close()
		delete(mp.regions, id)
	}
}

func closeFD(fd int) { unix.Close(fd) }

type counters struct {
	messagesSent, messagesReceived atomic.Uint64
	bytesSent, bytesReceived       atomic.Uint64
	sentByReference, sentInline    atomic.Uint64
	sentOnSocket, bytesCopied      atomic.Uint64
	freesSent, freesReceived       atomic.Uint64
}
