package rpc_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/windows"

	"github.com/capnshm/capnshm/internal/peertest"
	"github.com/capnshm/capnshm/iocpwake"
	"github.com/capnshm/capnshm/ringbuf"
	"github.com/capnshm/capnshm/rpc"
	"github.com/capnshm/capnshm/rpc/internal/wire"
	"github.com/capnshm/capnshm/shm"
)

// A client written by hand that misbehaves on purpose (win-raw): it
// speaks the handshake frames itself over DialPipe's connection, with
// handles of its own choosing, and reports what the listener answered.

func init() { peertest.Register("win-raw", winRawPeer) }

// winRawPeer connects to the pipe args[0] and runs the misbehaviour
// args[1]. It says "refused <reason>" when the listener refuses its
// HELLO, "accepted" when it answers HELLO, then "done" after what it does
// next; it holds the connection until stdin ends.
func winRawPeer(args []string) int {
	name, mode := args[0], args[1]
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := rpc.DialPipe(ctx, name)
	if err != nil {
		return peertest.Fail("dial: %v", err)
	}
	defer conn.Close()
	fc := wire.NewFrameConn(conn, false, 0) // the listener takes our values
	const poolSize, ringCap = 1 << 20, 1 << 16
	pool, err := shm.Create(poolSize, nil)
	if err != nil {
		return peertest.Fail("%v", err)
	}
	ring, err := shm.Create(int64(ringbuf.SizeFor(ringCap)), nil)
	if err != nil {
		return peertest.Fail("%v", err)
	}
	rview, err := ringbuf.Init(ring.Bytes())
	if err != nil {
		return peertest.Fail("%v", err)
	}
	data, err := iocpwake.New()
	if err != nil {
		return peertest.Fail("%v", err)
	}
	space, err := iocpwake.New()
	if err != nil {
		return peertest.Fail("%v", err)
	}
	small, err := shm.Create(64<<10, nil)
	if err != nil {
		return peertest.Fail("%v", err)
	}
	fds := []wire.FD{wire.FD(pool.Handle()), wire.FD(ring.Handle()), wire.FD(data.Handle()), wire.FD(space.Handle())}
	announced := uint64(poolSize)
	var raw []uint64 // handle values written as they are, bypassing checks
	switch mode {
	case "event-as-pool":
		fds[wire.HelloFDPool] = wire.FD(data.Handle())
	case "section-as-bell":
		fds[wire.HelloFDDataBell] = wire.FD(small.Handle())
	case "small-pool":
		fds[wire.HelloFDPool] = wire.FD(small.Handle())
	case "unknown-value":
		raw = []uint64{0x3fffff0, uint64(ring.Handle()), uint64(data.Handle()), uint64(space.Handle())}
	case "zero-value":
		raw = []uint64{uint64(pool.Handle()), 0, uint64(data.Handle()), uint64(space.Handle())}
	case "corrupt-msg", "event-as-mapping":
	default:
		return peertest.Fail("unknown mode %q", mode)
	}
	var hb [wire.HelloSize]byte
	wire.PutHello(hb[:], wire.Hello{Version: wire.Version, Features: wire.FeatureDedicated, PoolSize: announced,
		RingSize: uint64(ring.Len()), MaxMessage: 64 << 20, PID: uint32(os.Getpid())})
	if raw != nil {
		// Header and values by hand: WriteFrame would refuse a 0.
		b := make([]byte, wire.FrameHeaderSize, wire.FrameHeaderSize+len(raw)*8+wire.HelloSize)
		wire.PutFrameHeader(b, wire.FrameHeader{Type: wire.FrameHello, NFDs: 4, Length: wire.HelloSize})
		for _, v := range raw {
			var vb [8]byte
			for i := range vb {
				vb[i] = byte(v >> (8 * i))
			}
			b = append(b, vb[:]...)
		}
		if _, err := conn.Write(append(b, hb[:]...)); err != nil {
			return peertest.Fail("writing hello: %v", err)
		}
	} else if err := fc.WriteFrame(wire.FrameHello, 0, hb[:], fds); err != nil {
		return peertest.Fail("writing hello: %v", err)
	}
	hdr, payload, theirs, err := fc.ReadFrame(0)
	if err != nil {
		peertest.Say("connection ended: %v", err)
		return hold()
	}
	switch hdr.Type {
	case wire.FrameRefuse:
		rf, err := wire.ParseRefuse(payload)
		if err != nil {
			return peertest.Fail("%v", err)
		}
		peertest.Say("refused %s", rf.Reason)
		return hold()
	case wire.FrameHello:
		peertest.Say("accepted")
	default:
		return peertest.Fail("the listener answered a %v frame", hdr.Type)
	}
	out := rview.Producer(ringbuf.Options{})
	bell, err := iocpwake.Open(iocpwake.Handle(theirs[wire.HelloFDDataBell]))
	if err != nil {
		return peertest.Fail("the listener's data bell: %v", err)
	}
	switch mode {
	case "corrupt-msg":
		// A MSG record whose segment lies far outside our pool.
		b, err := out.Claim(wire.MsgSize(1))
		if err != nil {
			return peertest.Fail("%v", err)
		}
		wire.PutMsg(b, 1, []wire.SegRef{{Loc: 0, Offset: 1 << 40, Length: 64}})
		if err := out.Commit(); err != nil {
			return peertest.Fail("%v", err)
		}
		bell.Ring()
	case "event-as-mapping":
		var mp [wire.MappingSize]byte
		wire.PutMapping(mp[:], wire.Mapping{ID: 1, Size: 64 << 10})
		if err := fc.WriteFrame(wire.FrameMap, 0, mp[:], []wire.FD{wire.FD(data.Handle())}); err != nil {
			return peertest.Fail("%v", err)
		}
	}
	peertest.Say("done")
	return hold()
}

// hold keeps the process (and its handles) alive until stdin ends.
func hold() int {
	in := peertest.Stdin()
	for in.Scan() {
	}
	return 0
}

// TestWinHostileHandles: a client that hands over the wrong handles (an
// event as its pool, a section as a doorbell, a section smaller than it
// announced, a value that names no handle of its own, zero) is refused
// with an error that names the handle and what is wrong with it, and the
// client gets the reason in the REFUSE; after its HELLO is accepted, a
// MSG record outside its pool and an event as a dedicated mapping end the
// connection with ErrProtocol naming them. Nothing of theirs stays open
// here.
func TestWinHostileHandles(t *testing.T) {
	winWarmUp(t)
	const (
		refused   = iota // the listener answers REFUSE with the reason
		malformed        // a malformed frame: the listener hangs up
		after            // the handshake succeeds; the fault comes after it
	)
	for _, tt := range []struct {
		mode, want string
		when       int
	}{
		{"event-as-pool", `the peer's pool: shm: handle is not a shared-memory region`, refused},
		{"section-as-bell", `the peer's data doorbell: iocpwake: handle is not a doorbell`, refused},
		{"small-pool", `the peer's pool: shm: invalid region size: section holds 65536 bytes, want 1048576`, refused},
		{"unknown-value", `HELLO handle 0 (pool): DuplicateHandle of the peer's handle 0x3fffff0`, malformed},
		{"zero-value", `HELLO handle 1 (ring) value 0x0 names no handle`, malformed},
		{"corrupt-msg", `message 1 segment 0 at 1099511627776+64 lies outside the peer's pool of 1048576 bytes`, after},
		{"event-as-mapping", `dedicated mapping 1: shm: handle is not a shared-memory region`, after},
	} {
		t.Run(tt.mode, func(t *testing.T) {
			name := strings.TrimPrefix(winAddr(rpc.SchemeShm), "shm:")
			l, err := rpc.ListenPipe(name)
			if err != nil {
				t.Fatal(err)
			}
			defer l.Close()
			base := census(t)
			p := startWinPeer(t, "win-raw", name, tt.mode)
			raw, err := l.Accept()
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
			defer cancel()
			tr, err := rpc.NewTransport(ctx, raw, rpc.Listener, rpc.WithPoolSize(winPool), rpc.WithLogger(testLogger(t)))
			if tt.when != after {
				if !errors.Is(err, rpc.ErrProtocol) || !strings.Contains(err.Error(), tt.want) {
					t.Fatalf("handshake: %v, want ErrProtocol containing %q", err, tt.want)
				}
				t.Logf("listener: %v", err)
				line, lerr := p.Line(ctx)
				if lerr != nil {
					t.Fatal(lerr)
				}
				t.Logf("client: %s", line)
				if tt.when == refused && (!strings.HasPrefix(line, "refused ") || !strings.Contains(line, tt.want)) {
					t.Fatalf("the client heard %q, want a refusal naming %q", line, tt.want)
				}
				if tt.when == malformed && !strings.HasPrefix(line, "connection ended") {
					t.Fatalf("the client heard %q, want the connection closed", line)
				}
			} else {
				if err != nil {
					t.Fatalf("handshake: %v", err)
				}
				p.Expect("accepted")
				p.Expect("done")
				_, rerr := tr.RecvMessage()
				if !errors.Is(rerr, rpc.ErrProtocol) || !strings.Contains(rerr.Error(), tt.want) {
					t.Fatalf("RecvMessage: %v, want ErrProtocol containing %q", rerr, tt.want)
				}
				t.Logf("listener: %v", rerr)
				if terr := tr.Err(); !errors.Is(terr, rpc.ErrProtocol) {
					t.Fatalf("the transport ended with %v, want ErrProtocol", terr)
				}
				tr.Close()
			}
			p.CloseStdin()
			p.WaitOK()
			settleCensus(t, base)
		})
	}
}

// TestWinPeerDeathByProcess: a client dies while its end of the pipe
// stays open elsewhere (here: this process took a duplicate of it), so
// the pipe never breaks. The listener learns of the death from the
// client's process handle and ends the connection with ErrPeerGone,
// promptly.
func TestWinPeerDeathByProcess(t *testing.T) {
	name := strings.TrimPrefix(winAddr(rpc.SchemeShm), "shm:")
	l, err := rpc.ListenPipe(name)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	p := startWinPeer(t, "win-pipe-holder", name)
	raw, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	// The client's end of the pipe, held here too.
	held := p.ReceiveHandle(t.Context())
	defer windows.CloseHandle(windows.Handle(held))
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	tr, err := rpc.NewTransport(ctx, raw, rpc.Listener, rpc.WithPoolSize(winPool), rpc.WithLogger(testLogger(t)))
	if err != nil {
		t.Fatalf("handshake: %v", err)
	}
	defer tr.Close()
	p.Expect("connected")
	got := make(chan error, 1)
	go func() {
		_, err := tr.RecvMessage()
		got <- err
	}()
	start := time.Now()
	p.Kill()
	select {
	case err := <-got:
		if !errors.Is(err, rpc.ErrPeerGone) || !strings.Contains(err.Error(), fmt.Sprintf("the peer process %d exited", p.Pid())) {
			t.Fatalf("RecvMessage: %v, want ErrPeerGone saying the process exited", err)
		}
		t.Logf("%v, %v after TerminateProcess", err, time.Since(start))
	case <-time.After(20 * time.Second):
		t.Fatal("the connection did not end after the client's process did")
	}
}

func init() { peertest.Register("win-pipe-holder", winPipeHolderPeer) }

// winPipeHolderPeer dials the pipe args[0], reports its end's handle
// (SayHandle: the test takes a duplicate), makes a shared-memory transport
// on it, says "connected", and waits to be killed.
func winPipeHolderPeer(args []string) int {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := rpc.DialPipe(ctx, args[0])
	if err != nil {
		return peertest.Fail("dial: %v", err)
	}
	peertest.SayHandle(rpc.PipeHandle(conn))
	tr, err := rpc.NewTransport(ctx, conn, rpc.Dialer, rpc.WithPoolSize(winPool))
	if err != nil {
		return peertest.Fail("handshake: %v", err)
	}
	defer tr.Close()
	peertest.Say("connected")
	return hold()
}
