package loop

import "golang.org/x/sys/unix"

// osYield gives the calling thread's processor to another runnable thread,
// if any (sched_yield).
func osYield() { unix.Syscall(unix.SYS_SCHED_YIELD, 0, 0, 0) }
