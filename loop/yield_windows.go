package loop

import "golang.org/x/sys/windows"

var procSwitchToThread = windows.NewLazySystemDLL("kernel32.dll").NewProc("SwitchToThread")

// osYield gives the calling thread's processor to another ready thread, if
// any (SwitchToThread).
func osYield() { procSwitchToThread.Call() }
