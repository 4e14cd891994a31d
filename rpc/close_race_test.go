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
