package rpc_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	capnp "capnproto.org/go/capnp/v3"
	gorpc "capnproto.org/go/capnp/v3/rpc"
	"golang.org/x/sys/unix"

	"github.com/capnshm/capnshm/internal/echoproto"
	"github.com/capnshm/capnshm/internal/peertest"
	"github.com/capnshm/capnshm/rpc"
	"github.com/capnshm/capnshm/rpc/internal/wire"
)

func init() {
	peertest.Register("hostile", hostilePeer)
	peertest.Register("seal-client", sealClientPeer)
}

// hostilePeer misbehaves towards a capnshm server. args[0] says where the
// server is ("fd": the inherited socket; anything else: a socket path),
// args[1] names the attack, the rest are its parameters. It reports on
// stdout and, unless the attack says otherwise, stays until stdin closes.
func hostilePeer(args []string) int {
	where, attack, params := args[0], args[1], args[2:]
	num := func(i int) int64 {
		n, _ := strconv.ParseInt(params[i], 10, 64)
		return n
	}
	connect := func(h rawHello) (*rawPeer, error) {
		if where == "fd" {
			c, err := unixConn(int(peertest.Handles()[0]))
			if err != nil {
				return nil, err
			}
			return rawConnect(c, h)
		}
		return rawDial(where, h)
	}
	hold := func() int {
		in := peertest.Stdin()
		for in.Scan() {
		}
		return 0
	}
	switch attack {
	case "bells":
		p, err := connect(rawHello{})
		if err != nil {
			return peertest.Fail("handshake: %v", err)
		}
		if _, err := attackBells(p); err != nil {
			return peertest.Fail("%v", err)
		}
		peertest.Say("attacking")
		return hold()

	case "stopread":
		// Calls whose results go on the socket, which this peer never
		// reads: the server's writer blocks once the buffers are full.
		p, err := connect(rawHello{})
		if err != nil {
			return peertest.Fail("handshake: %v", err)
		}
		if err := p.send(bootstrapMsg(0)); err != nil {
			return peertest.Fail("%v", err)
		}
		for q := uint32(1); q <= 8; q++ {
			if err := p.send(fillMsg(q, 4<<20)); err != nil {
				return peertest.Fail("%v", err)
			}
		}
		for unread(p.conn) < 64<<10 {
			time.Sleep(time.Millisecond)
		}
		peertest.Say("wedged")
		return hold()

	case "rewrite":
		// Calls sent by reference from our pool, rewritten while the
		// server reads them: torn mixes of calls that differ in question
		// ID, target, method and parameters (the engine must have read
		// the envelope once, into its own memory, before it acts on it).
		p, err := connect(rawHello{poolSize: 8 << 20})
		if err != nil {
			return peertest.Fail("handshake: %v", err)
		}
		if err := p.send(bootstrapMsg(0)); err != nil {
			return peertest.Fail("%v", err)
		}
		sent, err := rewriteAttack(p, int(num(0)))
		peertest.Say("rewrote %d", sent)
		if err != nil {
			peertest.Say("ended: %v", err)
		}
		return hold()

	case "maps":
		// Dedicated mappings, never referenced, never unmapped.
		p, err := connect(rawHello{})
		if err != nil {
			return peertest.Fail("handshake: %v", err)
		}
		sent := 0
		for id := uint32(1); id <= uint32(num(0)); id++ {
			if p.sendMap(id, num(1)) != nil {
				break
			}
			sent++
		}
		peertest.Say("sent %d", sent)
		return sayEOF(p)

	case "sockmsgs":
		// Socket messages that no SOCK record ever takes.
		p, err := connect(rawHello{})
		if err != nil {
			return peertest.Fail("handshake: %v", err)
		}
		size := int(num(1))
		payload := make([]byte, size)
		copy(payload[4:], le32(uint32(size/8-1))) // one segment: the rest
		go func() {
			for seq := uint64(1); seq <= uint64(num(0)); seq++ {
				if p.fc.WriteFrame(wire.FrameMsg, seq, payload, nil) != nil {
					return
				}
			}
		}()
		peertest.Say("sending")
		return sayEOF(p)

	case "record":
		// One record whose socket frame never comes.
		p, err := connect(rawHello{})
		if err != nil {
			return peertest.Fail("handshake: %v", err)
		}
		b := make([]byte, 64)
		var n int
		switch params[0] {
		case "msg":
			n, err = wire.PutMsg(b, 1, []wire.SegRef{{Loc: 7, Offset: 0, Length: 8}})
		case "sock":
			n, err = wire.PutSock(b, 1)
		}
		if err != nil {
			return peertest.Fail("%v", err)
		}
		if err := p.publish(b[:n]); err != nil {
			return peertest.Fail("%v", err)
		}
		peertest.Say("published")
		return sayEOF(p)

	case "corrupthead":
		// An impossible head in the server's outbound ring, then calls
		// whose returns fill it.
		p, err := connect(rawHello{})
		if err != nil {
			return peertest.Fail("handshake: %v", err)
		}
		atomic.StoreUint64(word64(p.srvRingMem, ringHead), 1<<40)
		if err := p.send(bootstrapMsg(0)); err != nil {
			return peertest.Fail("%v", err)
		}
		go func() {
			for q := uint32(1); q < 10000; q++ {
				if p.send(pingMsg(q)) != nil {
					return
				}
			}
		}()
		peertest.Say("attacking")
		return sayEOF(p)

	case "hello":
		_, err := connect(rawHello{poolSize: num(0), ringCap: int(num(1))})
		if errors.Is(err, errRefusedRaw) {
			peertest.Say("%v", err)
		} else if err != nil {
			return peertest.Fail("%v", err)
		} else {
			peertest.Say("accepted")
		}
		return hold()

	case "onebyte", "silent", "partialhello":
		// n connections that send one byte (then close, with "close"),
		// nothing, or a HELLO frame header without its payload.
		n := int(num(0))
		var conns []*net.UnixConn
		for range n {
			c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: where, Net: "unix"})
			if err != nil {
				return peertest.Fail("dial: %v", err)
			}
			switch attack {
			case "onebyte":
				c.Write([]byte{0x5E})
				if len(params) > 1 && params[1] == "close" {
					c.Close()
					continue
				}
			case "partialhello":
				// The first 10 of the 16 bytes of a HELLO frame header.
				c.Write([]byte{0x5E, 0xCA, byte(wire.FrameHello), wire.HelloFDs, wire.HelloSize, 0, 0, 0, 0, 0})
			}
			conns = append(conns, c)
		}
		peertest.Say("connected %d", n)
		// Count the connections the server closes within 30 s.
		closed := 0
		start := time.Now()
		for _, c := range conns {
			c.SetReadDeadline(start.Add(30 * time.Second))
			if _, err := c.Read(make([]byte, 1)); err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
				closed++
			}
		}
		peertest.Say("closed %d of %d", closed, len(conns))
		return hold()

	case "conns":
		// n connections that send nothing: how many the server keeps,
		// refuses (and why) or just closes.
		n := int(num(0))
		held, refused, closed := 0, 0, 0
		var reason string
		var conns []*net.UnixConn
		for range n {
			c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: where, Net: "unix"})
			if err != nil {
				return peertest.Fail("dial: %v", err)
			}
			conns = append(conns, c)
		}
		var mu sync.Mutex
		var wg sync.WaitGroup
		for _, c := range conns {
			wg.Add(1)
			go func() {
				defer wg.Done()
				c.SetReadDeadline(time.Now().Add(2 * time.Second))
				hdr, payload, _, err := wire.NewFrameConn(c).ReadFrame(0)
				mu.Lock()
				defer mu.Unlock()
				switch {
				case err == nil && hdr.Type == wire.FrameRefuse:
					refused++
					r, _ := wire.ParseRefuse(payload)
					reason = r.Reason
				case errors.Is(err, os.ErrDeadlineExceeded):
					held++
				default:
					closed++
				}
			}()
		}
		wg.Wait()
		peertest.Say("held %d refused %d closed %d", held, refused, closed)
		peertest.Say("reason %s", reason)
		return hold()
	}
	return peertest.Fail("unknown attack %q", attack)
}

// attackBells makes every doorbell the server rings full and blocking, and
// keeps clearing O_NONBLOCK on every descriptor the server handed over
// (its own doorbells among them), until the returned stop is called; and
// it makes the server ring (calls, with both rings' wake-up flags held
// up).
func attackBells(p *rawPeer) (stop func(), err error) {
	fillBell(int(p.data.Handle()))
	fillBell(int(p.space.Handle()))
	var done atomic.Bool
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		fds := []int{p.srvData, p.srvSpace, p.srvPool, p.srvRing, int(p.data.Handle()), int(p.space.Handle())}
		for !done.Load() {
			for _, fd := range fds {
				clearNonblock(fd)
			}
		}
	}()
	go func() {
		defer wg.Done()
		p.wantRings(&done)
	}()
	stop = func() {
		done.Store(true)
		wg.Wait()
	}
	if err := p.send(bootstrapMsg(0)); err != nil {
		return stop, err
	}
	for q := uint32(1); q <= 20; q++ {
		if err := p.send(pingMsg(q)); err != nil {
			return stop, err
		}
	}
	return stop, nil
}

// sayEOF reports whether the server closes the connection within 30 s:
// "closed" or "open"; then it stays until stdin closes.
func sayEOF(p *rawPeer) int {
	if err := p.waitEOF(30 * time.Second); err != nil {
		peertest.Say("open")
	} else {
		peertest.Say("closed")
	}
	in := peertest.Stdin()
	for in.Scan() {
	}
	return 0
}

// unread returns how many bytes wait in c's receive buffer.
func unread(c *net.UnixConn) int {
	n := 0
	rc, _ := c.SyscallConn()
	rc.Control(func(fd uintptr) { n, _ = unix.IoctlGetInt(int(fd), unix.SIOCINQ) })
	return n
}

func le32(v uint32) []byte { return []byte{byte(v), byte(v >> 8), byte(v >> 16), byte(v >> 24)} }

// scribble tries, on the region fd of size bytes, to write 0xEE at off by
// every route a peer holding the descriptor has, and returns each route's
// outcome ("ok" or the errno).
func scribble(fd, size, off int) []string {
	var out []string
	try := func(err error) {
		switch {
		case err == nil:
			out = append(out, "ok")
		case errors.Is(err, unix.EPERM):
			out = append(out, "EPERM")
		case errors.Is(err, unix.EACCES):
			out = append(out, "EACCES")
		default:
			out = append(out, strings.ReplaceAll(err.Error(), " ", "_"))
		}
	}
	page := off &^ 4095
	try(func() error { // a new writable mapping
		m, err := unix.Mmap(fd, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
		if err != nil {
			return err
		}
		m[off] = 0xEE
		return unix.Munmap(m)
	}())
	try(func() error { // mprotect of a read-only one
		m, err := unix.Mmap(fd, 0, size, unix.PROT_READ, unix.MAP_SHARED)
		if err != nil {
			return err
		}
		defer unix.Munmap(m)
		if err := unix.Mprotect(m, unix.PROT_READ|unix.PROT_WRITE); err != nil {
			return err
		}
		m[off] = 0xEE
		return nil
	}())
	try(func() error { // reopened read-write through /proc
		f, err := os.OpenFile(fmt.Sprintf("/proc/self/fd/%d", fd), os.O_RDWR, 0)
		if err != nil {
			return err
		}
		defer f.Close()
		_, err = f.WriteAt([]byte{0xEE}, int64(off))
		return err
	}())
	try(unix.Fallocate(fd, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, int64(page), 4096))
	return out
}

// sealClientPeer is a real client (the transport and go-capnp) on the
// inherited socket that, holding a 4 MiB result (which the server sends
// in a dedicated mapping), tries to write into the server's pool and into
// that mapping by every route; it reports each route's outcome and
// whether the result is still intact.
func sealClientPeer(args []string) int {
	conn, err := unixConn(int(peertest.Handles()[0]))
	if err != nil {
		return peertest.Fail("%v", err)
	}
	tr, err := rpc.NewTransport(context.Background(), conn, rpc.Dialer, append(peerOptions(args), rpc.WithLogger(peerLogger()))...)
	if err != nil {
		return peertest.Fail("handshake: %v", err)
	}
	c := gorpc.NewConn(tr, nil)
	defer c.Close()
	ctx := context.Background()
	boot := echoproto.Bootstrap(ctx, c)
	const size = 4 << 20
	f, release := boot.Fill(ctx, func(p echoproto.Echo_fill_Params) error {
		p.SetSize(size)
		p.SetSeed(3)
		return nil
	})
	defer release()
	res, err := f.Struct()
	if err != nil {
		return peertest.Fail("fill: %v", err)
	}
	data, err := res.Data()
	if err != nil {
		return peertest.Fail("%v", err)
	}
	fds := rpc.PeerRegionFDs(tr)
	if len(fds) < 2 {
		return peertest.Fail("the result did not come in a dedicated mapping (%d regions)", len(fds))
	}
	for i, fd := range fds {
		var st unix.Stat_t
		unix.Fstat(fd, &st)
		off := int(st.Size) - 1 // the last byte: the end of the result in a mapping
		name := "pool"
		if i > 0 {
			name = "mapping"
		}
		peertest.Say("%s %s", name, strings.Join(scribble(fd, int(st.Size), off), " "))
	}
	want := make([]byte, size)
	echoproto.FillPattern(want, 3, 0)
	peertest.Say("intact %v", bytes.Equal(data, want))
	in := peertest.Stdin()
	for in.Scan() {
	}
	return 0
}

// rawConnect runs the raw handshake on an already connected socket.
func rawConnect(c *net.UnixConn, h rawHello) (*rawPeer, error) {
	return rawHandshake(c, h)
}

// rewriteVariants are calls of the same shape, and so of the same length,
// that differ in every envelope field the engine acts on: the question
// ID, the target (the bootstrap, a question never asked), the method and
// the parameters. Each carries 2 KiB of data, so that the whole call is
// over the server's InlineMax and is read in place, not copied. Torn mixes
// of them are what a reader sees that reads a field twice.
func rewriteVariants(q uint32) ([][]byte, error) {
	data := make([]byte, 2<<10)
	withData := func(size uint64) func(capnp.Struct) {
		return func(s capnp.Struct) {
			s.SetUint64(0, size)
			_ = s.SetData(0, data)
		}
	}
	msgs := []*capnp.Message{
		callMsg(q, 0, 0, withData(0)),            // ping
		callMsg(q+1<<20, 0, 1, withData(64)),     // echo
		callMsg(q, 12345, 1, withData(0)),        // on a question never asked
		callMsg(q^0xffff, 0, 3, withData(1<<40)), // fill(1 TiB)
	}
	var out [][]byte
	for _, m := range msgs {
		if m.NumSegments() != 1 {
			return nil, fmt.Errorf("a call of %d segments", m.NumSegments())
		}
		s, err := m.Segment(0)
		if err != nil {
			return nil, err
		}
		if len(out) > 0 && len(s.Data()) != len(out[0]) {
			return nil, fmt.Errorf("variants of %d and %d bytes", len(out[0]), len(s.Data()))
		}
		out = append(out, s.Data())
	}
	return out, nil
}

// rewriteAttack publishes n calls that live in our pool (MSG records, by
// reference) while a goroutine keeps rewriting each of them, a word at a
// time, with the words of a variant picked at random. It returns how many
// calls it published, and why it stopped early (the server ending the
// connection, which is allowed).
func rewriteAttack(p *rawPeer, n int) (int, error) {
	const stride = 4 << 10
	mem := p.pool.Bytes()
	if n*stride > len(mem) {
		n = len(mem) / stride
	}
	variants := make([][][]byte, n)
	diffs := make([][]int, n) // offsets of the words in which the variants differ
	for i := range n {
		v, err := rewriteVariants(uint32(i + 1))
		if err != nil {
			return 0, err
		}
		if len(v[0]) > stride {
			return 0, fmt.Errorf("a call of %d bytes", len(v[0]))
		}
		variants[i] = v
		copy(mem[i*stride:], v[0])
		for w := 0; w+8 <= len(v[0]); w += 8 {
			for _, o := range v[1:] {
				if *word64(o, w) != *word64(v[0], w) {
					diffs[i] = append(diffs[i], w)
					break
				}
			}
		}
	}
	var published atomic.Int64
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		rnd := uint64(0x9e3779b97f4a7c15)
		next := func() uint64 { rnd ^= rnd << 13; rnd ^= rnd >> 7; rnd ^= rnd << 17; return rnd }
		for {
			select {
			case <-stop:
				return
			default:
			}
			m := int(published.Load())
			for i := 0; i < m; i++ {
				v := variants[i][next()%uint64(len(variants[i]))]
				for _, w := range diffs[i] {
					atomic.StoreUint64(word64(mem, i*stride+w), *word64(v, w))
				}
			}
			if m == 0 {
				runtime.Gosched()
			}
		}
	}()
	defer func() { close(stop); <-done }()
	rec := make([]byte, wire.MsgSize(1))
	for i := range n {
		k, err := wire.PutMsg(rec, uint64(i+1), []wire.SegRef{{Loc: 0, Offset: uint64(i * stride), Length: uint64(len(variants[i][0]))}})
		if err != nil {
			return i, err
		}
		published.Add(1)
		if err := p.publish(rec[:k]); err != nil {
			return i, err
		}
	}
	// Keep rewriting while the server is still reading them.
	time.Sleep(200 * time.Millisecond)
	return n, nil
}
