package rpc

import (
	"errors"
	"sync"
	"time"

	"capnproto.org/go/capnp/v3/rpc/transport"
	rpccp "capnproto.org/go/capnp/v3/std/capnp/rpc"
)

// The sending side of a Conn.
//
// Messages go to the transport in the order they are pushed, one at a
// time: a single FIFO queue and a flusher role. Pushing is cheap and never
// blocks, so it may happen under Conn.mu, which fixes the order of a
// message relative to the table changes it goes with (a Finish after the
// calls pipelined on its question, a Disembargo after the calls it
// follows). Whoever pushes onto an idle queue takes the flusher role and
// sends, once it has released Conn.mu: an application goroutine making a
// call sends it itself, with no hand-off. The receiving goroutine never
// sends: a transport may block while the peer is not reading, and a
// receiver blocked on it could deadlock against a peer blocked the same
// way; it hands the flusher role to the connection's sending goroutine.
//
// Lock order: Conn.mu, then sender.mu.
type sender struct {
	c *Conn

	mu       sync.Mutex
	q        []outItem // pushed, not yet sent
	spare    []outItem // the flusher's batch buffer, reused
	flushing bool      // someone holds the flusher role
	stopped  bool

	kick   chan struct{} // wakes the sending goroutine to flush
	quit   chan struct{}
	exited chan struct{}
}

// outItem is a message to send and who to tell if sending it fails alone
// (nil: a failure ends the connection).
type outItem struct {
	om     transport.OutgoingMessage
	failed sendFailer
}

// sendFailer learns that its message was not sent: a question, whose call
// then fails (an interface, not a func, so that pushing a call allocates
// no method value).
type sendFailer interface{ sendFailed(error) }

// ignoreFailure is the sendFailer of a message whose failure to leave
// matters to nobody (an Abort).
type ignoreFailure struct{}

func (ignoreFailure) sendFailed(error) {}

func (s *sender) init(c *Conn) {
	s.c = c
	s.kick = make(chan struct{}, 1)
	s.quit = make(chan struct{})
	s.exited = make(chan struct{})
	go s.loop()
}

// push queues om and reports whether the caller now holds the flusher
// role, and so must call flush once it has released Conn.mu. If the
// connection has stopped sending, om is released and failed (if set) gets
// the connection's error.
func (s *sender) push(om transport.OutgoingMessage, failed sendFailer) (flush bool) {
	s.mu.Lock()
	if s.stopped {
		s.mu.Unlock()
		om.Release()
		if failed != nil {
			failed.sendFailed(disconnected(ErrClosed))
		}
		return false
	}
	s.q = append(s.q, outItem{om, failed})
	flush = !s.flushing
	s.flushing = true
	s.mu.Unlock()
	return flush
}

// handOff gives the flusher role, which push gave the caller, to the
// sending goroutine.
func (s *sender) handOff() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// flush sends what is queued until the queue is empty, then gives up the
// flusher role. Only the holder of the role calls it.
func (s *sender) flush() {
	for {
		s.mu.Lock()
		if len(s.q) == 0 || s.stopped {
			s.flushing = false
			s.mu.Unlock()
			return
		}
		batch := s.q
		s.q, s.spare = s.spare[:0], nil
		s.mu.Unlock()
		for i := range batch {
			s.sendOne(batch[i])
			batch[i] = outItem{}
		}
		s.mu.Lock()
		if s.spare == nil {
			s.spare = batch[:0]
		}
		s.mu.Unlock()
	}
}

func (s *sender) sendOne(it outItem) {
	err := it.om.Send()
	it.om.Release()
	if err == nil {
		return
	}
	// ErrTooLarge and ErrLateCall refuse one message; anything else is the
	// transport failing.
	if it.failed != nil && (errors.Is(err, ErrTooLarge) || errors.Is(err, ErrLateCall)) {
		it.failed.sendFailed(err)
		return
	}
	if it.failed != nil {
		it.failed.sendFailed(disconnected(err))
	}
	s.c.end(transportErr(err), false)
}

// transportErr is the connection's error for a failure of its transport.
func transportErr(err error) error {
	if errors.Is(err, ErrDisconnected) {
		return err
	}
	return errors.Join(ErrPeerGone, err)
}

// loop is the sending goroutine: it flushes when handed the role.
func (s *sender) loop() {
	defer close(s.exited)
	for {
		select {
		case <-s.kick:
			s.flush()
		case <-s.quit:
			return
		}
	}
}

// abortTimeout bounds how long an ending connection waits for its Abort to
// leave, for a peer that does not read.
const abortTimeout = time.Second

// abort sends the peer an Abort carrying err, waiting at most abortTimeout
// for it to leave after what was queued before it. Called by the ending
// connection, before stop.
func (s *sender) abort(err error) {
	om, rm, nerr := s.c.newMessage()
	if nerr != nil {
		return
	}
	x, nerr := rm.NewAbort()
	if nerr == nil {
		nerr = toException(x, err)
	}
	if nerr != nil {
		om.Release()
		return
	}
	m := &watchedMsg{OutgoingMessage: om, done: make(chan struct{})}
	if s.push(m, ignoreFailure{}) {
		go s.flush()
	}
	select {
	case <-m.done:
	case <-time.After(abortTimeout):
	}
}

// watchedMsg is an outgoing message that says when it has been sent or
// dropped.
type watchedMsg struct {
	transport.OutgoingMessage
	once sync.Once
	done chan struct{}
}

func (m *watchedMsg) Send() error {
	defer m.once.Do(func() { close(m.done) })
	return m.OutgoingMessage.Send()
}

func (m *watchedMsg) Release() {
	m.OutgoingMessage.Release()
	m.once.Do(func() { close(m.done) })
}

// stop stops sending: queued messages are released unsent. A send in
// progress finishes when the transport closes.
func (s *sender) stop() {
	s.mu.Lock()
	s.stopped = true
	q := s.q
	s.q = nil
	s.mu.Unlock()
	for _, it := range q {
		it.om.Release()
		if it.failed != nil {
			it.failed.sendFailed(disconnected(ErrClosed))
		}
	}
	close(s.quit)
}

// wait waits for the sending goroutine to exit (after stop).
func (s *sender) wait() { <-s.exited }

// newMessage returns a new outgoing message of the transport, or an error
// (the connection is ending, or memory is exhausted).
func (c *Conn) newMessage() (transport.OutgoingMessage, rpccp.Message, error) {
	return c.checkedMessage(c.t.NewMessage())
}

// newMessageIn is newMessage in e, room embedded in the question or
// answer the message is for (one allocation less), over capnshm's own
// transports and the first time only: a message rebuilt for the same
// question or answer gets one of its own, as e must not be used twice.
func (c *Conn) newMessageIn(e *embeddedMsg) (transport.OutgoingMessage, rpccp.Message, error) {
	switch {
	case e.used:
	case c.shm != nil:
		e.used = true
		return c.checkedMessage(c.shm.newMessageIn(&e.shm))
	case c.stream != nil:
		e.used = true
		return c.checkedMessage(c.stream.newMessageIn(&e.stream))
	}
	return c.newMessage()
}

// embeddedMsg is room for one outgoing message of either of capnshm's
// transports, in the question or answer it is for; used once taken.
type embeddedMsg struct {
	shm    outMsg
	stream streamOut
	used   bool
}

// checkedMessage returns a transport's new message and its root, or its
// error, with the message released.
func (c *Conn) checkedMessage(om transport.OutgoingMessage, err error) (transport.OutgoingMessage, rpccp.Message, error) {
	if err != nil {
		if om != nil {
			om.Release()
		}
		return nil, rpccp.Message{}, err
	}
	return om, om.Message(), nil
}
