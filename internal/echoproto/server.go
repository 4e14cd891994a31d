package echoproto

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	capnp "capnproto.org/go/capnp/v3"
)

// Pattern returns byte i of the pattern that fill and fillChunks write.
func Pattern(seed byte, i uint64) byte { return seed + byte(i*7) }

// FillPattern writes the fill pattern for offset off into b.
func FillPattern(b []byte, seed byte, off uint64) {
	for i := range b {
		b[i] = Pattern(seed, off+uint64(i))
	}
}

// Sum is the checksum that sum and sumChunks return: the sum of all bytes.
func Sum(b []byte) uint64 {
	var s uint64
	for _, c := range b {
		s += uint64(c)
	}
	return s
}

// NewData allocates an n-byte Data in seg's message and returns it as a
// pointer to store with SetPtr and as the bytes to fill in place: unlike
// SetData, nothing is copied.
func NewData(seg *capnp.Segment, n int) (capnp.Ptr, []byte, error) {
	l, err := capnp.NewUInt8List(seg, int32(n))
	if err != nil {
		return capnp.Ptr{}, nil, err
	}
	p := l.ToPtr()
	return p, p.Data(), nil
}

// Server implements Echo. Its zero value is ready to use.
type Server struct {
	pushedBytes atomic.Uint64
	pushedCount atomic.Uint64
	live        atomic.Int64 // counter capabilities not yet shut down

	mu       sync.Mutex
	promises []func()      // fulfil the promises of Promise
	gate     chan struct{} // closed by OpenGate; nil: none yet
}

// gateChan returns the channel the gate calls wait on.
func (s *Server) gateChan() chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.gate == nil {
		s.gate = make(chan struct{})
	}
	return s.gate
}

// Gate returns a new counter once OpenGate has been called, or fails when
// its context ends first.
func (s *Server) Gate(ctx context.Context, call Echo_gate) error {
	start := call.Args().Start()
	gate := s.gateChan() // before Go: an openGate after this call opens this gate
	call.Go()            // other calls to this object proceed meanwhile
	select {
	case <-gate:
	case <-ctx.Done():
		return ctx.Err()
	}
	res, err := call.AllocResults()
	if err != nil {
		return err
	}
	c := &counter{srv: s}
	c.value.Store(start)
	return res.SetCounter(c.client())
}

// OpenGate lets the waiting gate calls return.
func (s *Server) OpenGate(context.Context, Echo_openGate) error {
	s.mu.Lock()
	if s.gate == nil {
		s.gate = make(chan struct{})
	}
	close(s.gate)
	s.gate = nil
	s.mu.Unlock()
	return nil
}

// Live returns the number of capabilities the server made that are still
// alive (what liveObjects answers).
func (s *Server) Live() int64 { return s.live.Load() }

// LiveObjects answers with Server.Live.
func (s *Server) LiveObjects(_ context.Context, call Echo_liveObjects) error {
	res, err := call.AllocResults()
	if err != nil {
		return err
	}
	res.SetCount(s.Live())
	return nil
}

// Ping does nothing.
func (s *Server) Ping(context.Context, Echo_ping) error { return nil }

// Echo copies data into the results.
func (s *Server) Echo(_ context.Context, call Echo_echo) error {
	d, err := call.Args().Data()
	if err != nil {
		return err
	}
	res, err := call.AllocResults()
	if err != nil {
		return err
	}
	p, b, err := NewData(res.Segment(), len(d))
	if err != nil {
		return err
	}
	copy(b, d)
	return capnp.Struct(res).SetPtr(0, p)
}

// Sum reads every byte of data.
func (s *Server) Sum(_ context.Context, call Echo_sum) error {
	d, err := call.Args().Data()
	if err != nil {
		return err
	}
	res, err := call.AllocResults()
	if err != nil {
		return err
	}
	res.SetSum(Sum(d))
	res.SetLength(uint64(len(d)))
	return nil
}

// Fill writes the pattern into size bytes of results, in place.
func (s *Server) Fill(_ context.Context, call Echo_fill) error {
	n := call.Args().Size()
	if n >= 1<<29 {
		return fmt.Errorf("fill: %d bytes is over what one Data holds; use fillChunks", n)
	}
	res, err := call.AllocResults()
	if err != nil {
		return err
	}
	p, b, err := NewData(res.Segment(), int(n))
	if err != nil {
		return err
	}
	FillPattern(b, call.Args().Seed(), 0)
	return capnp.Struct(res).SetPtr(0, p)
}

// Push counts what it receives.
func (s *Server) Push(_ context.Context, call Echo_push) error {
	d, err := call.Args().Data()
	if err != nil {
		return err
	}
	s.pushedBytes.Add(uint64(len(d)))
	s.pushedCount.Add(1)
	return nil
}

// Pushed reports what Push has received.
func (s *Server) Pushed(_ context.Context, call Echo_pushed) error {
	res, err := call.AllocResults()
	if err != nil {
		return err
	}
	res.SetBytes(s.pushedBytes.Load())
	res.SetCount(s.pushedCount.Load())
	return nil
}

// Fail returns an error carrying the message.
func (s *Server) Fail(_ context.Context, call Echo_fail) error {
	m, err := call.Args().Reason()
	if err != nil {
		return err
	}
	return errors.New(m)
}

// Block returns when the call's context ends.
func (s *Server) Block(ctx context.Context, call Echo_block) error {
	call.Go() // let other calls to this object proceed meanwhile
	<-ctx.Done()
	return ctx.Err()
}

// Counter returns a new counter capability.
func (s *Server) Counter(_ context.Context, call Echo_counter) error {
	res, err := call.AllocResults()
	if err != nil {
		return err
	}
	c := &counter{srv: s}
	c.value.Store(call.Args().Start())
	return res.SetCounter(c.client())
}

// CallBack calls the client's callback and returns its answer plus one.
func (s *Server) CallBack(ctx context.Context, call Echo_callBack) error {
	cb := call.Args().Callback()
	v := call.Args().Value()
	call.Go()
	f, release := cb.Call(ctx, func(p Callback_call_Params) error {
		p.SetValue(v)
		return nil
	})
	defer release()
	r, err := f.Struct()
	if err != nil {
		return err
	}
	res, err := call.AllocResults()
	if err != nil {
		return err
	}
	res.SetResult(r.Result() + 1)
	return nil
}

// SumChunks reads every byte of every chunk.
func (s *Server) SumChunks(_ context.Context, call Echo_sumChunks) error {
	chunks, err := call.Args().Chunks()
	if err != nil {
		return err
	}
	var sum, n uint64
	for i := 0; i < chunks.Len(); i++ {
		d, err := chunks.At(i)
		if err != nil {
			return err
		}
		sum += Sum(d)
		n += uint64(len(d))
	}
	res, err := call.AllocResults()
	if err != nil {
		return err
	}
	res.SetSum(sum)
	res.SetLength(n)
	return nil
}

// FillChunks writes count chunks of the pattern into the results, in place.
func (s *Server) FillChunks(_ context.Context, call Echo_fillChunks) error {
	size, count, seed := call.Args().ChunkSize(), call.Args().Count(), call.Args().Seed()
	if size >= 1<<29 {
		return fmt.Errorf("fillChunks: %d-byte chunks are over what one Data holds", size)
	}
	res, err := call.AllocResults()
	if err != nil {
		return err
	}
	l, err := res.NewChunks(int32(count))
	if err != nil {
		return err
	}
	for i := 0; i < int(count); i++ {
		p, b, err := NewData(res.Segment(), int(size))
		if err != nil {
			return err
		}
		FillPattern(b, seed, uint64(i)*size)
		if err := capnp.PointerList(l).Set(i, p); err != nil {
			return err
		}
	}
	return nil
}

// Reflect returns the callback it was given.
func (s *Server) Reflect(_ context.Context, call Echo_reflect) error {
	res, err := call.AllocResults()
	if err != nil {
		return err
	}
	return res.SetCallback(call.Args().Callback().AddRef())
}

// Open returns a session named name.
func (s *Server) Open(_ context.Context, call Echo_open) error {
	name, err := call.Args().Name()
	if err != nil {
		return err
	}
	res, err := call.AllocResults()
	if err != nil {
		return err
	}
	return res.SetSession(Session_ServerToClient(session(name)))
}

// Add adds delta to the counter it was given.
func (s *Server) Add(ctx context.Context, call Echo_add) error {
	c := call.Args().Counter().AddRef()
	defer c.Release()
	delta := call.Args().Delta()
	call.Go() // the counter may be a promise: other calls proceed meanwhile
	f, release := c.Add(ctx, func(p Counter_add_Params) error {
		p.SetDelta(delta)
		return nil
	})
	defer release()
	r, err := f.Struct()
	if err != nil {
		return err
	}
	res, err := call.AllocResults()
	if err != nil {
		return err
	}
	res.SetValue(r.Value())
	return nil
}

// Promise returns a promise of a new counter, fulfilled once the call has
// returned.
func (s *Server) Promise(_ context.Context, call Echo_promise) error {
	res, err := call.AllocResults()
	if err != nil {
		return err
	}
	p, r := capnp.NewLocalPromise[Counter]()
	c := &counter{srv: s}
	c.value.Store(call.Args().Start())
	s.mu.Lock()
	s.promises = append(s.promises, func() { r.Fulfill(c.client()) })
	s.mu.Unlock()
	return res.SetCounter(p)
}

// ResolvePromises fulfils the promises made by Promise.
func (s *Server) ResolvePromises(_ context.Context, call Echo_resolvePromises) error {
	s.mu.Lock()
	ps := s.promises
	s.promises = nil
	s.mu.Unlock()
	for _, f := range ps {
		f()
	}
	res, err := call.AllocResults()
	if err != nil {
		return err
	}
	res.SetResolved(uint32(len(ps)))
	return nil
}

// session is a Session; its name is what it answers.
type session string

func (s session) Name(_ context.Context, call Session_name) error {
	res, err := call.AllocResults()
	if err != nil {
		return err
	}
	return res.SetName(string(s))
}

func (s session) Sub(_ context.Context, call Session_sub) error {
	res, err := call.AllocResults()
	if err != nil {
		return err
	}
	return res.SetSession(Session_ServerToClient(s + "/sub"))
}

type counter struct {
	value atomic.Int64
	srv   *Server
}

// client returns a new capability for c, counted live until its last
// reference is released (go-capnp then calls Shutdown).
func (c *counter) client() Counter {
	c.srv.live.Add(1)
	return Counter_ServerToClient(c)
}

// Shutdown is called once per capability made by client.
func (c *counter) Shutdown() { c.srv.live.Add(-1) }

func (c *counter) Add(_ context.Context, call Counter_add) error {
	res, err := call.AllocResults()
	if err != nil {
		return err
	}
	res.SetValue(c.value.Add(call.Args().Delta()))
	return nil
}

func (c *counter) Get(_ context.Context, call Counter_get) error {
	res, err := call.AllocResults()
	if err != nil {
		return err
	}
	res.SetValue(c.value.Load())
	return nil
}

func (c *counter) Self(_ context.Context, call Counter_self) error {
	res, err := call.AllocResults()
	if err != nil {
		return err
	}
	return res.SetCounter(c.client())
}

// DataEcho is Callback.echoData for a Callback server that embeds it: it
// returns the call's data.
type DataEcho struct{}

// EchoData returns the call's data in its results.
func (DataEcho) EchoData(_ context.Context, call Callback_echoData) error {
	d, err := call.Args().Data()
	if err != nil {
		return err
	}
	res, err := call.AllocResults()
	if err != nil {
		return err
	}
	return res.SetData(d)
}
