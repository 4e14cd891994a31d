package loop

import "golang.org/x/sys/unix"

// threadID returns the calling thread's ID (gettid).
func threadID() uint64 { return uint64(unix.Gettid()) }
