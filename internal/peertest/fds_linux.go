package peertest

import (
	"os"
	"testing"
)

// CountFDs returns the number of descriptors this process has open, for
// tests that check nothing leaks.
func CountFDs(t testing.TB) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}
