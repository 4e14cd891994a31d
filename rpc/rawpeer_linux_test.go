package rpc_test

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	capnp "capnproto.org/go/capnp/v3"
	rpccp "capnproto.org/go/capnp/v3/std/capnp/rpc"
	"golang.org/x/sys/unix"

	"github.com/capnshm/capnshm/internal/echoproto"
	"github.com/capnshm/capnshm/iocpwake"
	"github.com/capnshm/capnshm/ringbuf"
	"github.com/capnshm/capnshm/rpc/internal/wire"
	"github.com/capnshm/capnshm/shm"
)

// rawPeer is a client that speaks the shared-memory handshake by hand, with
// the formats of rpc/internal/wire and the building blocks (shm, ringbuf,
// iocpwake), so that it can break every rule afterwards. It never runs an
// RPC layer: the messages it sends are built by hand too.
type rawPeer struct {
	conn        *net.UnixConn
	fc          *wire.FrameConn
	pool, ring  *shm.Region
	out         *ringbuf.Producer
	data, space *iocpwake.Bell // ours, handed to the server; space wakes publish
	hello       wire.Hello     // the server's
	// The server's handles: pool, ring, data bell, space bell.
	srvPool, srvRing, srvData, srvSpace int
	srvRingMem                          []byte         // the server's outbound ring, mapped read-write
	srvBell                             *iocpwake.Bell // rings the server's data bell
}

// rawHello is the HELLO a rawPeer sends; tests change fields to lie.
type rawHello struct {
	poolSize int64 // the pool made and announced
	ringCap  int   // the ring capacity made and announced
}

// rawDial connects to the unix socket at path and runs the handshake. A
// REFUSE gives an error wrapping errRefusedRaw with the reason.
func rawDial(path string, h rawHello) (*rawPeer, error) {
	c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, err
	}
	return rawHandshake(c, h)
}

// rawHandshake runs the handshake, as the dialer, on the connected socket c.
func rawHandshake(c *net.UnixConn, h rawHello) (*rawPeer, error) {
	if h.poolSize == 0 {
		h.poolSize = 1 << 20
	}
	if h.ringCap == 0 {
		h.ringCap = 64 << 10
	}
	var err error
	p := &rawPeer{conn: c, fc: wire.NewFrameConn(c)}
	if p.pool, err = shm.Create(h.poolSize, &shm.Options{Name: "rawpeer-pool"}); err != nil {
		return nil, err
	}
	if p.ring, err = shm.Create(int64(ringbuf.SizeFor(h.ringCap)), &shm.Options{Name: "rawpeer-ring"}); err != nil {
		return nil, err
	}
	r, err := ringbuf.Init(p.ring.Bytes())
	if err != nil {
		return nil, err
	}
	if p.data, err = iocpwake.New(); err != nil {
		return nil, err
	}
	if p.space, err = iocpwake.New(); err != nil {
		return nil, err
	}
	// The server rings space when it frees room in our ring.
	p.out = r.Producer(ringbuf.Options{Strategy: ringbuf.Block, Waiter: p.space})
	var b [wire.HelloSize]byte
	n, err := wire.PutHello(b[:], wire.Hello{
		Version: wire.Version, Features: wire.FeatureDedicated,
		PoolSize: uint64(h.poolSize), RingSize: uint64(p.ring.Len()),
		MaxMessage: 1 << 30, PID: uint32(os.Getpid()),
	})
	if err != nil {
		return nil, err
	}
	fds := []int{int(p.pool.Handle()), int(p.ring.Handle()), int(p.data.Handle()), int(p.space.Handle())}
	if err := p.fc.WriteFrame(wire.FrameHello, 0, b[:n], fds); err != nil {
		return nil, err
	}
	hdr, payload, got, err := p.fc.ReadFrame(0)
	if err != nil {
		return nil, fmt.Errorf("reading the server's answer: %w", err)
	}
	if hdr.Type == wire.FrameRefuse {
		r, _ := wire.ParseRefuse(payload)
		return nil, fmt.Errorf("%w: %s", errRefusedRaw, r.Reason)
	}
	if p.hello, err = wire.ParseHello(payload); err != nil {
		return nil, err
	}
	p.srvPool, p.srvRing, p.srvData, p.srvSpace = got[0], got[1], got[2], got[3]
	if p.srvRingMem, err = unix.Mmap(p.srvRing, 0, int(p.hello.RingSize), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED); err != nil {
		return nil, fmt.Errorf("mapping the server's ring: %w", err)
	}
	dup, err := unix.FcntlInt(uintptr(p.srvData), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	if p.srvBell, err = iocpwake.Open(iocpwake.Handle(dup)); err != nil {
		return nil, err
	}
	return p, nil
}

var errRefusedRaw = errors.New("refused")

// close releases everything the peer holds.
func (p *rawPeer) close() {
	p.conn.Close()
	p.srvBell.Close()
	unix.Munmap(p.srvRingMem)
	for _, fd := range []int{p.srvPool, p.srvRing, p.srvData, p.srvSpace} {
		unix.Close(fd)
	}
	p.data.Close()
	p.space.Close()
	p.pool.Close()
	p.ring.Close()
}

// publish puts rec in our ring and rings the server. A full ring waits,
// a minute at most, for the server to free room.
func (p *rawPeer) publish(rec []byte) error {
	for {
		b, err := p.out.Claim(len(rec))
		if errors.Is(err, ringbuf.ErrFull) {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			err = p.out.WaitSpace(ctx, len(rec))
			cancel()
			if err != nil {
				return fmt.Errorf("our ring stays full: %w", err)
			}
			continue
		}
		if err != nil {
			return err
		}
		copy(b, rec)
		if err := p.out.Commit(); err != nil {
			return err
		}
		return p.srvBell.Ring()
	}
}

// inline returns an INLINE record carrying msg.
func inline(msg *capnp.Message) ([]byte, error) {
	var segs [][]byte
	var lengths []int
	for i := int64(0); i < msg.NumSegments(); i++ {
		s, err := msg.Segment(capnp.SegmentID(i))
		if err != nil {
			return nil, err
		}
		segs = append(segs, s.Data())
		lengths = append(lengths, len(s.Data()))
	}
	b := make([]byte, wire.InlineSize(lengths))
	n, err := wire.PutInline(b, segs)
	return b[:n], err
}

// bootstrapMsg is an rpc Bootstrap with question id q.
func bootstrapMsg(q uint32) *capnp.Message {
	msg, seg := capnp.NewSingleSegmentMessage(nil)
	m, _ := rpccp.NewRootMessage(seg)
	bs, _ := m.NewBootstrap()
	bs.SetQuestionId(q)
	return msg
}

// callMsg is a call of Echo method on the answer to question on (the
// bootstrap), question id q; params sets its parameters.
func callMsg(q, on uint32, method uint16, params func(capnp.Struct)) *capnp.Message {
	msg, seg := capnp.NewSingleSegmentMessage(nil)
	m, _ := rpccp.NewRootMessage(seg)
	call, _ := m.NewCall()
	call.SetQuestionId(q)
	tgt, _ := call.NewTarget()
	pa, _ := tgt.NewPromisedAnswer()
	pa.SetQuestionId(on)
	call.SetInterfaceId(echoproto.Echo_TypeID)
	call.SetMethodId(method)
	payload, _ := call.NewParams()
	st, _ := capnp.NewStruct(seg, capnp.ObjectSize{DataSize: 16, PointerCount: 1})
	if params != nil {
		params(st)
	}
	payload.SetContent(st.ToPtr())
	return msg
}

// fillMsg is a call of Echo.fill(size) (method 3: size is the first u64 of
// the parameters).
func fillMsg(q uint32, size uint64) *capnp.Message {
	return callMsg(q, 0, 3, func(s capnp.Struct) { s.SetUint64(0, size) })
}

// pingMsg is a call of Echo.ping (method 0).
func pingMsg(q uint32) *capnp.Message { return callMsg(q, 0, 0, nil) }

// send publishes msg inline.
func (p *rawPeer) send(msg *capnp.Message) error {
	rec, err := inline(msg)
	if err != nil {
		return err
	}
	return p.publish(rec)
}

// Offsets in a ring's header (ringbuf's layout).
const (
	ringHead        = 256
	ringDataWanted  = 384
	ringSpaceWanted = 512
)

func word32(b []byte, off int) *uint32 { return (*uint32)(unsafe.Pointer(&b[off])) }
func word64(b []byte, off int) *uint64 { return (*uint64)(unsafe.Pointer(&b[off])) }

// wantRings keeps asking the server to ring us on every commit and every
// release (the wake-up flags of both rings set) until stop is set.
func (p *rawPeer) wantRings(stop *atomic.Bool) {
	for !stop.Load() {
		atomic.StoreUint32(word32(p.srvRingMem, ringDataWanted), 1)
		atomic.StoreUint32(word32(p.ring.Bytes(), ringSpaceWanted), 1)
		runtime.Gosched()
	}
}

// fdKind names what fd is, as /proc shows it.
func fdKind(fd int) string {
	link, _ := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", fd))
	return link
}

// fillBell makes the doorbell handle fd full (an eventfd counter at its
// maximum, a pipe or socket buffer full) and leaves it blocking, as a
// hostile peer holding it can.
func fillBell(fd int) {
	unix.SetNonblock(fd, true)
	if strings.Contains(fdKind(fd), "eventfd") {
		unix.Write(fd, binary.NativeEndian.AppendUint64(nil, 0xfffffffffffffffe))
	} else {
		b := make([]byte, 4096)
		for len(b) > 0 {
			if _, err := unix.Write(fd, b); err != nil {
				b = b[:len(b)/2]
			}
		}
	}
	clearNonblock(fd)
}

// clearNonblock clears O_NONBLOCK on fd: the flag belongs to the open file
// description, which the other process shares.
func clearNonblock(fd int) {
	if fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0); err == nil {
		unix.FcntlInt(uintptr(fd), unix.F_SETFL, fl&^unix.O_NONBLOCK)
	}
}

// sendMap sends a MAP frame announcing a dedicated mapping id of size
// bytes: a sealed, sparse memfd (nothing is allocated).
func (p *rawPeer) sendMap(id uint32, size int64) error {
	fd, err := unix.MemfdCreate("rawpeer-map", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if err := unix.Ftruncate(fd, size); err != nil {
		return err
	}
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, unix.F_SEAL_SHRINK|unix.F_SEAL_GROW|unix.F_SEAL_SEAL); err != nil {
		return err
	}
	var b [wire.MappingSize]byte
	if _, err := wire.PutMapping(b[:], wire.Mapping{ID: id, Size: uint64(size)}); err != nil {
		return err
	}
	return p.fc.WriteFrame(wire.FrameMap, 0, b[:], []int{fd})
}

// waitEOF waits until the server closes the connection, reading (and
// closing the descriptors of) whatever frames it sends meanwhile.
func (p *rawPeer) waitEOF(d time.Duration) error {
	p.conn.SetReadDeadline(time.Now().Add(d))
	for {
		_, _, fds, err := p.fc.ReadFrame(1 << 30)
		for _, fd := range fds {
			unix.Close(fd)
		}
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				return err
			}
			return nil
		}
	}
}

// ---- resources of this process ----

// usage is what a server in this process holds: descriptors, capnshm
// mappings (count and bytes, from /proc/self/maps) and goroutines.
type usage struct {
	fds, maps  int
	mapBytes   int64
	goroutines int
}

// atMost reports whether u uses no more of anything than base.
func (u usage) atMost(base usage) bool {
	return u.fds <= base.fds && u.maps <= base.maps && u.mapBytes <= base.mapBytes && u.goroutines <= base.goroutines
}

func (u usage) String() string {
	return fmt.Sprintf("%d fds, %d capnshm mappings (%d MiB), %d goroutines", u.fds, u.maps, u.mapBytes>>20, u.goroutines)
}

func measure(t testing.TB) usage {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile("/proc/self/maps")
	if err != nil {
		t.Fatal(err)
	}
	u := usage{fds: len(ents), goroutines: runtime.NumGoroutine()}
	for _, line := range strings.Split(string(b), "\n") {
		if !strings.Contains(line, "memfd:capnshm") {
			continue
		}
		u.maps++
		var lo, hi uint64
		fmt.Sscanf(line, "%x-%x", &lo, &hi)
		u.mapBytes += int64(hi - lo)
	}
	return u
}

// settle waits until this process's usage is back at base or below (after
// an attack its connection ends asynchronously), failing after a bound.
// Below is fine: a goroutine that was finishing when base was measured (a
// pool's background prefault, say) may have ended since.
func settle(t testing.TB, base usage) usage {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		runtime.GC()
		u := measure(t)
		if u.atMost(base) {
			return u
		}
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			n := runtime.Stack(buf, true)
			t.Fatalf("resources did not return to their base: %v, base %v\n%s", u, base, buf[:n])
		}
		time.Sleep(20 * time.Millisecond)
	}
}
