package rpc

// InjectRecord publishes rec as a raw record in t's outbound ring, as a
// corrupt or malicious peer would. Tests only.
func InjectRecord(t *Transport, rec []byte) error {
	t.send.mu.Lock()
	defer t.send.mu.Unlock()
	b, err := t.claim(len(rec))
	if err != nil {
		return err
	}
	copy(b, rec)
	return t.commit()
}

// PeerWaiting reports whether t's peer sleeps on its doorbell, waiting for
// t's next message. Tests only.
func PeerWaiting(t *Transport) bool {
	t.send.mu.Lock()
	defer t.send.mu.Unlock()
	return t.send.out.ConsumerWaiting()
}

// ServerConns returns how many connections s holds (negotiating or
// served). Tests only.
func ServerConns(s *Server) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns)
}

// SetNewMessageHook makes f run in every NewMessage between its closed
// check and its first write, until restore. Tests only.
func SetNewMessageHook(f func(*Transport)) (restore func()) {
	testHookNewMessage.Store(&f)
	return func() { testHookNewMessage.Store(nil) }
}

// Finalized reports whether t has unmapped its own memory (after Close,
// once no message built here is live). Tests only.
func Finalized(t *Transport) bool { return t.life.finalLocal.Load() }

// PrivateCopies is how many forwarded params or results, or messages
// echoed in an Unimplemented, this process has copied out of a peer's
// shared memory before copying them on. Tests only.
func PrivateCopies() uint64 { return privateCopies.Load() }

// Forwarded is how many calls this process's connections have forwarded
// to their peers as tail calls, and with the results coming back. Tests
// only.
func Forwarded() (tail, back uint64) { return forwarded.tail.Load(), forwarded.back.Load() }

// RoomsFilled is how many small Returns t has built in the room of their
// question. Tests only.
func RoomsFilled(t *Transport) uint64 { return t.stats.roomsFilled.Load() }

// PipeDepth is how many messages a Pipe end queues before Send waits.
const PipeDepth = pipeDepth
