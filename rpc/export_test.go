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
