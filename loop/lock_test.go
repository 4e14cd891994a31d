package loop_test

import "runtime"

func runtimeLock() { runtime.LockOSThread() }
