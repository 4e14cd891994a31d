package rpc

// PeerRegionFDs returns the descriptors of the peer's regions t has mapped:
// its pool first, then its dedicated mappings. They stay t's. Tests only.
func PeerRegionFDs(t *Transport) []int {
	fds := []int{int(t.ep.theirs.pool.r.Handle())}
	t.peer.mu.Lock()
	defer t.peer.mu.Unlock()
	for _, m := range t.peer.maps {
		fds = append(fds, int(m.r.Handle()))
	}
	return fds
}
