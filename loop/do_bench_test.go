package loop_test

import (
	"context"
	"testing"

	"github.com/capnshm/capnshm/loop"
)

// BenchmarkDo is the round trip of Do from a goroutine to an idle loop.
func BenchmarkDo(b *testing.B) {
	l := start(b, loop.Options{})
	ctx := context.Background()
	f := func(context.Context) error { return nil }
	b.ReportAllocs()
	for range b.N {
		if err := l.Do(ctx, loop.High, f); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkChanLocked is the same hand-off to a locked goroutine that waits
// on a channel, for comparison.
func BenchmarkChanLocked(b *testing.B) {
	req := make(chan func())
	stop := make(chan struct{})
	go func() {
		runtimeLock()
		for {
			select {
			case f := <-req:
				f()
			case <-stop:
				return
			}
		}
	}()
	defer close(stop)
	done := make(chan struct{}, 1)
	f := func() { done <- struct{}{} }
	for range b.N {
		req <- f
		<-done
	}
}
