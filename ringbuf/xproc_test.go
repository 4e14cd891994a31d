package ringbuf_test

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"math/rand/v2"
	"strconv"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"github.com/capnshm/capnshm/internal/peertest"
	"github.com/capnshm/capnshm/internal/pingpong"
	"github.com/capnshm/capnshm/iocpwake"
	"github.com/capnshm/capnshm/ringbuf"
	"github.com/capnshm/capnshm/shm"
)

func init() {
	peertest.Register("ring-consumer", consumerPeer)
	peertest.Register("ring-corrupter", corrupterPeer)
	peertest.Register("ring-echo", echoPeer)
}

func TestMain(m *testing.M) { peertest.Main(m) }

// A pair is what two processes share for one ring exchange: a region with
// the spin word and two rings, and a doorbell on each side.
type pair struct {
	region   *shm.Region
	mine     *iocpwake.Bell // this process waits on it
	peer     *iocpwake.Bell // the peer's, opened for ringing
	p        *peertest.Peer
	capacity int
}

// startPair creates a region and a doorbell, starts the peer with them and
// args, and opens the doorbell the peer reports back.
func startPair(t testing.TB, name string, capacity int, args ...string) *pair {
	t.Helper()
	size, _ := pingpong.RegionSize(capacity)
	region, err := shm.Create(int64(size), &shm.Options{Prefault: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { region.Close() })
	req, resp := pingpong.Rings(region.Bytes(), capacity)
	for _, m := range [][]byte{req, resp} {
		if _, err := ringbuf.Init(m); err != nil {
			t.Fatal(err)
		}
	}
	mine, err := iocpwake.New()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mine.Close() })
	args = append([]string{strconv.Itoa(size), strconv.Itoa(capacity)}, args...)
	p := peertest.Start(t, name, []uintptr{uintptr(region.Handle()), uintptr(mine.Handle())}, args...)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	peer, err := iocpwake.Open(iocpwake.Handle(p.ReceiveHandle(ctx)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { peer.Close() })
	return &pair{region: region, mine: mine, peer: peer, p: p, capacity: capacity}
}

// peerSide is the peer's view of a pair.
type peerSide struct {
	region   *shm.Region
	mine     *iocpwake.Bell
	peer     *iocpwake.Bell
	capacity int
	rest     []string
}

func openPeerSide(args []string) (*peerSide, error) {
	size, _ := strconv.Atoi(args[0])
	capacity, _ := strconv.Atoi(args[1])
	hs := peertest.Handles()
	region, err := shm.Open(shm.Handle(hs[0]), int64(size), shm.ReadWrite, &shm.Options{Prefault: true})
	if err != nil {
		return nil, err
	}
	peer, err := iocpwake.Open(iocpwake.Handle(hs[1]))
	if err != nil {
		return nil, err
	}
	mine, err := iocpwake.New()
	if err != nil {
		return nil, err
	}
	peertest.SayHandle(uintptr(mine.Handle()))
	return &peerSide{region: region, mine: mine, peer: peer, capacity: capacity, rest: args[2:]}, nil
}

// record fills b with the record numbered seq: its sequence number, a CRC of
// the rest, and bytes derived from seq.
func record(b []byte, seq uint64) {
	binary.LittleEndian.PutUint64(b, seq)
	for i := 12; i < len(b); i++ {
		b[i] = byte(seq>>(i%8)) ^ byte(i)
	}
	binary.LittleEndian.PutUint32(b[8:], crc32.ChecksumIEEE(b[12:]))
}

func recordSize(rng *rand.Rand) int { return 12 + rng.IntN(500) }

// consumerPeer consumes records from the request ring and checks that they
// arrive complete, once each, in order; it reports how many it saw.
func consumerPeer(args []string) int {
	s, err := openPeerSide(args)
	if err != nil {
		return peertest.Fail("%v", err)
	}
	n, _ := strconv.ParseUint(s.rest[0], 10, 64)
	strategy, _ := strconv.Atoi(s.rest[1])
	req, _ := pingpong.Rings(s.region.Bytes(), s.capacity)
	r, err := ringbuf.Attach(req)
	if err != nil {
		return peertest.Fail("attach: %v", err)
	}
	c := r.Consumer(ringbuf.Options{Strategy: ringbuf.WaitStrategy(strategy), Waiter: s.mine, Ringer: s.peer})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	for seq := uint64(0); seq < n; {
		b, err := c.Poll()
		if errors.Is(err, ringbuf.ErrEmpty) {
			if err := c.Release(); err != nil {
				return peertest.Fail("release: %v", err)
			}
			if err := c.Wait(ctx); err != nil {
				return peertest.Fail("wait after %d records: %v", seq, err)
			}
			continue
		}
		if err != nil {
			return peertest.Fail("poll after %d records: %v", seq, err)
		}
		if len(b) < 12 {
			return peertest.Fail("record %d is %d bytes", seq, len(b))
		}
		if got := binary.LittleEndian.Uint64(b); got != seq {
			return peertest.Fail("record %d arrived as number %d (loss, duplicate or reordering)", seq, got)
		}
		if crc32.ChecksumIEEE(b[12:]) != binary.LittleEndian.Uint32(b[8:]) {
			return peertest.Fail("record %d: checksum mismatch", seq)
		}
		seq++
	}
	if err := c.Release(); err != nil {
		return peertest.Fail("release: %v", err)
	}
	peertest.Say("received %d", n)
	return 0
}

// TestCrossProcessStress sends checksummed records of random sizes, in random
// batches, to a consumer in another process, for each wait strategy.
func TestCrossProcessStress(t *testing.T) {
	n := 1_000_000
	if testing.Short() {
		n = 100_000
	}
	for _, st := range []ringbuf.WaitStrategy{ringbuf.Adaptive, ringbuf.Block, ringbuf.BusySpin} {
		t.Run(st.String(), func(t *testing.T) {
			count := n
			if st != ringbuf.Adaptive {
				count = n / 10 // the full count runs once, on the default strategy
			}
			const capacity = 64 << 10
			pr := startPair(t, "ring-consumer", capacity, strconv.Itoa(count), strconv.Itoa(int(st)))
			req, _ := pingpong.Rings(pr.region.Bytes(), capacity)
			r, err := ringbuf.Attach(req)
			if err != nil {
				t.Fatal(err)
			}
			p := r.Producer(ringbuf.Options{Strategy: st, Waiter: pr.mine, Ringer: pr.peer})
			seed := rand.Uint64()
			rng := rand.New(rand.NewPCG(seed, 1))
			ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
			defer cancel()
			for seq := 0; seq < count; {
				batch := 1 + rng.IntN(16)
				for i := 0; i < batch && seq < count; i++ {
					size := recordSize(rng)
					b, err := p.Claim(size)
					if errors.Is(err, ringbuf.ErrFull) {
						if err := p.Commit(); err != nil {
							t.Fatal(err)
						}
						if err := p.WaitSpace(ctx, size); err != nil {
							t.Fatalf("seed %d: waiting for space at record %d: %v; peer: %s", seed, seq, err, pr.p.Stderr())
						}
						i--
						continue
					}
					if err != nil {
						t.Fatal(err)
					}
					record(b, uint64(seq))
					seq++
				}
				if err := p.Commit(); err != nil {
					t.Fatal(err)
				}
			}
			pr.p.Expect(fmt.Sprintf("received %d", count))
			pr.p.WaitOK()
			t.Logf("%d records, producer %+v", count, p.Stats())
		})
	}
}

// corrupterPeer publishes a record header at the start of the data area
// whose length is far beyond what the ring can hold.
func corrupterPeer(args []string) int {
	s, err := openPeerSide(args)
	if err != nil {
		return peertest.Fail("%v", err)
	}
	if in := peertest.Stdin(); !in.Scan() { // until the test has our doorbell
		return peertest.Fail("no go-ahead")
	}
	req, _ := pingpong.Rings(s.region.Bytes(), s.capacity)
	// The first record header (see the layout): flags "present" (bit 1 of
	// the high word), length 1<<30, over MaxPayload.
	const present = 2 << 32
	atomic.StoreUint64((*uint64)(unsafe.Pointer(&req[ringbuf.HeaderSize])), present|1<<30)
	if err := s.peer.Ring(); err != nil {
		return peertest.Fail("ring: %v", err)
	}
	peertest.Say("corrupted")
	return 0
}

// TestCorruptingPeer: a peer that writes an impossible record gets an error
// that names it on our side, and this process goes on working.
func TestCorruptingPeer(t *testing.T) {
	const capacity = 4096
	pr := startPair(t, "ring-corrupter", capacity)
	req, _ := pingpong.Rings(pr.region.Bytes(), capacity)
	r, err := ringbuf.Attach(req)
	if err != nil {
		t.Fatal(err)
	}
	c := r.Consumer(ringbuf.Options{Strategy: ringbuf.Block, Waiter: pr.mine})
	pr.p.Send("go")
	pr.p.Expect("corrupted")
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	err = c.Wait(ctx)
	if err == nil {
		_, err = c.Poll()
	}
	if !errors.Is(err, ringbuf.ErrCorrupt) {
		t.Fatalf("got %v, want ErrCorrupt", err)
	}
	t.Logf("error: %v", err)
	if _, err := c.Poll(); !errors.Is(err, ringbuf.ErrCorrupt) {
		t.Fatalf("the ring is not poisoned after corruption: %v", err)
	}
	// The process keeps working: a fresh ring in the same region works.
	if _, err := ringbuf.Init(req); err != nil {
		t.Fatal(err)
	}
	r2, _ := ringbuf.Attach(req)
	if err := r2.Producer(ringbuf.Options{}).Write([]byte("still fine")); err != nil {
		t.Fatal(err)
	}
	b, err := r2.Consumer(ringbuf.Options{}).Poll()
	if err != nil || string(b) != "still fine" {
		t.Fatalf("after corruption: %q, %v", b, err)
	}
}

// echoPeer answers ping-pong rounds: args are the workload and the count.
func echoPeer(args []string) int {
	s, err := openPeerSide(args)
	if err != nil {
		return peertest.Fail("%v", err)
	}
	workload := s.rest[0]
	n, _ := strconv.Atoi(s.rest[1])
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	switch workload {
	case "spin":
		pingpong.SpinServer(pingpong.SpinWord(s.region.Bytes()), n)
	default:
		st, err := strconv.Atoi(workload)
		if err != nil {
			return peertest.Fail("unknown workload %q", workload)
		}
		reqMem, respMem := pingpong.Rings(s.region.Bytes(), s.capacity)
		req, err1 := ringbuf.Attach(reqMem)
		resp, err2 := ringbuf.Attach(respMem)
		if err := errors.Join(err1, err2); err != nil {
			return peertest.Fail("attach: %v", err)
		}
		opts := ringbuf.Options{Strategy: ringbuf.WaitStrategy(st), Waiter: s.mine, Ringer: s.peer}
		if err := pingpong.RingServer(ctx, req.Consumer(opts), resp.Producer(opts), n); err != nil {
			return peertest.Fail("%v", err)
		}
	}
	peertest.Say("done")
	return 0
}

// TestPingPong runs a few round trips of every ping-pong workload, so that the
// benchmarks' code is tested too.
func TestPingPong(t *testing.T) {
	for _, w := range []string{"spin", "0", "1", "2"} {
		t.Run(w, func(t *testing.T) {
			d, err := runPingPong(t, w, 64, 1000)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("%v per round trip", d/1000)
		})
	}
}

// runPingPong runs n round trips of workload ("spin", or a WaitStrategy as
// a number) with a peer process and returns the client's time.
func runPingPong(t testing.TB, workload string, size, n int) (time.Duration, error) {
	const capacity = 64 << 10
	pr := startPair(t, "ring-echo", capacity, workload, strconv.Itoa(n))
	var d time.Duration
	var err error
	if workload == "spin" {
		d = pingpong.SpinClient(pingpong.SpinWord(pr.region.Bytes()), n, nil)
	} else {
		st, _ := strconv.Atoi(workload)
		reqMem, respMem := pingpong.Rings(pr.region.Bytes(), capacity)
		req, _ := ringbuf.Attach(reqMem)
		resp, _ := ringbuf.Attach(respMem)
		opts := ringbuf.Options{Strategy: ringbuf.WaitStrategy(st), Waiter: pr.mine, Ringer: pr.peer}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		defer cancel()
		d, err = pingpong.RingClient(ctx, req.Producer(opts), resp.Consumer(opts), size, n, nil)
	}
	if err != nil {
		return 0, fmt.Errorf("%w; peer: %s", err, pr.p.Stderr())
	}
	pr.p.Expect("done")
	pr.p.WaitOK()
	return d, nil
}
