package rpc

// InjectRecord publishes rec as a raw record in t's outbound ring, as a
// corrupt or malicious peer would. Tests only.
func InjectRecord(t *Transport, rec []byte) error {
	t.outMu.Lock()
	defer t.outMu.Unlock()
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
	t.outMu.Lock()
	defer t.outMu.Unlock()
	return t.out.ConsumerWaiting()
}
