package loop

import "golang.org/x/sys/windows"

// threadID returns the calling thread's ID (GetCurrentThreadId).
func threadID() uint64 { return uint64(windows.GetCurrentThreadId()) }
