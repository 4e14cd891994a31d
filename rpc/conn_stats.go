package rpc

// ConnStats are a connection's counters: its transport's (Stats, embedded)
// and the sizes of its tables.
type ConnStats struct {
	Stats
	// Questions: calls and bootstraps of this side not yet finished
	// (InFlight of them not yet returned).
	Questions, InFlight int
	// Answers: the peer's calls this side has not finished with.
	Answers int
	// Imports: capabilities of the peer's that this side holds.
	Imports int
	// Exports: capabilities of this side's that the peer holds.
	Exports int
	// Embargoes: embargoes waiting for their Disembargo to come back.
	Embargoes int
}

// Stats returns the connection's counters.
func (c *Conn) Stats() ConnStats {
	var s ConnStats
	switch {
	case c.shm != nil:
		s.Stats = c.shm.Stats()
	case c.stream != nil:
		s.Stats = c.stream.Stats()
	default:
		if st, ok := c.t.(interface{ Stats() Stats }); ok {
			s.Stats = st.Stats() // a Pipe's end
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	s.Questions = c.questions.len()
	c.questions.each(func(_ uint32, q *question) {
		if !q.returned {
			s.InFlight++
		}
	})
	s.Answers = len(c.answers)
	s.Imports = len(c.imports)
	s.Exports = c.exports.len()
	s.Embargoes = c.embargoes.len()
	return s
}
