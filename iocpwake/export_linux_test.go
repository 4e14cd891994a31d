package iocpwake

// UseSocketBells makes New make socket pairs (on) or whatever the kernel
// does best (off), so that tests run both kinds. Not concurrency-safe: tests
// call it between runs.
func UseSocketBells(on bool) { socketBells = on }

// Kind names what b is made of: "pipe" or "socket".
func Kind(b *Bell) string { return b.kind.String() }
