package rpc_test

import (
	"sync"
	"testing"
	"time"

	"github.com/capnshm/capnshm/rpc"
)

// connStates records what WithConnState reports.
type connStates struct {
	mu     sync.Mutex
	cond   *sync.Cond
	events []connEvent
}

type connEvent struct {
	info  rpc.ConnInfo
	state rpc.ConnState
}

func newConnStates() *connStates {
	s := &connStates{}
	s.cond = sync.NewCond(&s.mu)
	return s
}

func (s *connStates) record(info rpc.ConnInfo, st rpc.ConnState) {
	s.mu.Lock()
	s.events = append(s.events, connEvent{info, st})
	s.cond.Broadcast()
	s.mu.Unlock()
}

// count returns how many events of state st were reported.
func (s *connStates) count(st rpc.ConnState) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, e := range s.events {
		if e.state == st {
			n++
		}
	}
	return n
}

// wait waits (at most 30 s) for the first event of state st not yet
// returned by wait, and returns it.
func (s *connStates) wait(t *testing.T, st rpc.ConnState) rpc.ConnInfo {
	t.Helper()
	timer := time.AfterFunc(30*time.Second, func() { s.mu.Lock(); s.cond.Broadcast(); s.mu.Unlock() })
	defer timer.Stop()
	deadline := time.Now().Add(30 * time.Second)
	s.mu.Lock()
	defer s.mu.Unlock()
	for {
		for i, e := range s.events {
			if e.state == st {
				s.events = append(s.events[:i:i], s.events[i+1:]...)
				return e.info
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no connection reached state %v in 30 s", st)
		}
		s.cond.Wait()
	}
}
