package rpc_test

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"runtime"
	"testing"

	capnp "capnproto.org/go/capnp/v3"
	rpccp "capnproto.org/go/capnp/v3/std/capnp/rpc"

	"github.com/capnshm/capnshm/rpc"
)

// TestFIFOAcrossPaths: messages that travel inline, by reference and (the
// pool being exhausted) on the socket arrive in the order they were sent.
func TestFIFOAcrossPaths(t *testing.T) {
	// A 1 MiB pool (largest block 256 KiB) and no dedicated mappings:
	// larger messages must fall back to the heap, hence the socket.
	sender, receiver := transportPair(t, rpc.WithPoolSize(1<<20), rpc.WithMaxDedicated(0))

	const n = 3000
	sizes := []int{0, 2000, 64 << 10, 300 << 10}
	seed := rand.Uint64()
	rng := rand.New(rand.NewPCG(seed, 2))
	plan := make([]int, n)
	for i := range plan {
		plan[i] = sizes[rng.IntN(len(sizes))]
	}
	// go-capnp always has a reader in RecvMessage; the sender's reader is
	// what takes the receiver's FREE records and refills the pool.
	go func() {
		for {
			im, err := sender.RecvMessage()
			if err != nil {
				return
			}
			im.Release()
		}
	}()
	sendErr := make(chan error, 1)
	go func() {
		for seq, size := range plan {
			om, err := sender.NewMessage()
			if err != nil {
				sendErr <- err
				return
			}
			bs, err := om.Message().NewBootstrap()
			if err != nil {
				sendErr <- err
				return
			}
			bs.SetQuestionId(uint32(seq))
			if size > 0 {
				// An orphan object: it only makes the message larger.
				if _, err := capnp.NewData(om.Message().Segment(), make([]byte, size)); err != nil {
					sendErr <- err
					return
				}
			}
			err = om.Send()
			om.Release()
			if err != nil {
				sendErr <- err
				return
			}
		}
		sendErr <- nil
	}()
	for seq := 0; seq < n; seq++ {
		im, err := receiver.RecvMessage()
		if err != nil {
			t.Fatalf("seed %d: message %d: %v", seed, seq, err)
		}
		m := im.Message()
		if m.Which() != rpccp.Message_Which_bootstrap {
			t.Fatalf("seed %d: message %d is a %v", seed, seq, m.Which())
		}
		bs, err := m.Bootstrap()
		if err != nil {
			t.Fatal(err)
		}
		if got := bs.QuestionId(); got != uint32(seq) {
			t.Fatalf("seed %d: message %d arrived in place of %d", seed, got, seq)
		}
		im.Release()
	}
	if err := <-sendErr; err != nil && !errors.Is(err, rpc.ErrClosed) {
		t.Fatal(err)
	}
	st := sender.Stats()
	t.Logf("sender: inline %d, by reference %d, on the socket %d", st.SentInline, st.SentByReference, st.SentOnSocket)
	if st.SentInline == 0 || st.SentByReference == 0 || st.SentOnSocket == 0 {
		t.Fatalf("not every path was taken: %+v", st)
	}
}

// TestLastMessagesBeforeClose: what a peer sent before it closed the
// connection is received before the transport reports it gone, even when
// the receiver sleeps on its doorbell while the last message and the close
// arrive (go-capnp's Abort is such a last message: a test saw it lost).
// Each round races the doorbell's wake-up against the close.
func TestLastMessagesBeforeClose(t *testing.T) {
	for round := range 100 {
		sender, receiver := transportPair(t)
		got := make(chan error, 1)
		go func() {
			im, err := receiver.RecvMessage()
			if err != nil {
				got <- fmt.Errorf("the message was lost: %w", err)
				return
			}
			im.Release()
			if _, err = receiver.RecvMessage(); !errors.Is(err, rpc.ErrPeerGone) {
				err = fmt.Errorf("after the message: %v, want ErrPeerGone", err)
			} else {
				err = nil
			}
			got <- err
		}()
		for !rpc.PeerWaiting(sender) {
			runtime.Gosched()
		}
		om, err := sender.NewMessage()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := om.Message().NewBootstrap(); err != nil {
			t.Fatal(err)
		}
		if err := om.Send(); err != nil {
			t.Fatal(err)
		}
		om.Release()
		sender.Close()
		if err := <-got; err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		receiver.Close()
	}
}
