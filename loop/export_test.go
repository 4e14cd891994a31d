package loop

// Hooks for the tests.

// Queued returns how many tasks of priority p are queued.
func (l *Loop) Queued(p Priority) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.queues[p].len()
}

// Closing reports whether Close has begun.
func (l *Loop) Closing() bool { return l.closingNow() }

// PretendWaiting sets the flag the loop sets before it blocks, as if it were
// about to block: the next post must wake it.
func (l *Loop) PretendWaiting() { l.waiting.Store(true) }

// Waiting reports the flag.
func (l *Loop) Waiting() bool { return l.waiting.Load() }
