package rpc

// ServerStats is a server's view of its connections, from Server.Stats.
type ServerStats struct {
	// Negotiating counts accepted connections still in their handshake.
	Negotiating int
	// SharedMemory counts the established connections that run on shared
	// memory (the others run on their socket).
	SharedMemory int
	// Conns are the established connections, each with its peer and its
	// counters at the time of the call.
	Conns []ConnSnapshot
	// Total sums the Conns' call counters: questions, calls in flight,
	// answers, imports, exports and embargoes, messages and bytes each way.
	Total ConnStats
}

// ConnSnapshot is one connection in ServerStats.
type ConnSnapshot struct {
	Peer  Peer
	Stats ConnStats
}

// Stats returns what the server's connections are doing: how many are
// negotiating, and for each established one its peer and its counters. It
// takes the server's lock only to list them, then each connection's.
func (s *Server) Stats() ServerStats {
	var st ServerStats
	s.mu.Lock()
	conns := make([]*Conn, 0, len(s.conns))
	for sc := range s.conns {
		if sc.conn == nil {
			st.Negotiating++
			continue
		}
		conns = append(conns, sc.conn)
	}
	s.mu.Unlock()
	st.Conns = make([]ConnSnapshot, 0, len(conns))
	for _, c := range conns {
		cs := c.Stats()
		if c.SharedMemory() {
			st.SharedMemory++
		}
		st.Conns = append(st.Conns, ConnSnapshot{Peer: c.Peer(), Stats: cs})
		t := &st.Total
		t.Questions += cs.Questions
		t.InFlight += cs.InFlight
		t.Answers += cs.Answers
		t.Imports += cs.Imports
		t.Exports += cs.Exports
		t.Embargoes += cs.Embargoes
		t.MessagesSent += cs.MessagesSent
		t.MessagesReceived += cs.MessagesReceived
		t.BytesSent += cs.BytesSent
		t.BytesReceived += cs.BytesReceived
		t.BytesCopied += cs.BytesCopied
	}
	return st
}
