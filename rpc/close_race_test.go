package rpc_test

import (
	"errors"
	"sync"
	"testing"

	capnp "capnproto.org/go/capnp/v3"

	"github.com/capnshm/capnshm/rpc"
)

// TestNewMessageRacingClose: messages built while the transport closes are
// either refused with ErrDisconnected or keep the pool mapped until they
// are released; none writes into a pool that Close has unmapped (the old
// order, live count after the closed check, faulted the server of
// TestKillStorm in NewMessage's first write).
func TestNewMessageRacingClose(t *testing.T) {
	rounds := racingCloseRounds
	if testing.Short() {
		rounds = min(rounds, 20)
	}
	body := make([]byte, 8<<10)
	for r := range rounds {
		d, l := transportPair(t)
		start := make(chan struct{})
		errs := make(chan error, 4)
		var wg sync.WaitGroup
		for range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				for {
					m, err := d.NewMessage()
					if err != nil {
						m.Release()
						if !errors.Is(err, rpc.ErrDisconnected) {
							errs <- err
						}
						return
					}
					// Writes after Close has returned are the point.
					_, werr := capnp.NewData(m.Message().Segment(), body)
					m.Release()
					if werr != nil {
						errs <- werr
						return
					}
				}
			}()
		}
		close(start)
		if err := d.Close(); err != nil {
			t.Fatalf("round %d: Close: %v", r, err)
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatalf("round %d: NewMessage during Close: %v", r, err)
		}
		l.Close()
	}
}

// TestCloseBetweenCheckAndWrite: Close runs inside NewMessage, after its
// closed check and before its first write (a test hook puts it there, the
// window the stress test above can only hope to hit). Close must leave the
// pool mapped for the message, which is then written and sent nowhere, and
// unmap it when the message is released. In the old order (the message
// counted live after the check) Close unmapped the pool at that point and
// the first write faulted.
func TestCloseBetweenCheckAndWrite(t *testing.T) {
	d, l := transportPair(t)
	defer l.Close()
	var closeErr error
	finalizedInside := true
	restore := rpc.SetNewMessageHook(func(tr *rpc.Transport) {
		if tr != d {
			return
		}
		closeErr = d.Close()
		finalizedInside = rpc.Finalized(d)
	})
	m, err := d.NewMessage()
	restore()
	if err != nil {
		t.Fatalf("NewMessage, closed under it after its check: %v", err)
	}
	if closeErr != nil {
		t.Fatalf("Close: %v", closeErr)
	}
	if finalizedInside {
		t.Fatal("Close unmapped the pool while a message being built held it")
	}
	if _, err := capnp.NewData(m.Message().Segment(), make([]byte, 8<<10)); err != nil {
		t.Fatalf("writing the message after Close: %v", err)
	}
	m.Release()
	if !rpc.Finalized(d) {
		t.Error("the pool is still mapped after the last message was released")
	}
}
