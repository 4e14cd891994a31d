//go:build linux || windows

package main

import (
	"bufio"
	"context"
	"fmt"
	"hash/crc32"
	"log/slog"
	"os"
	"strings"
	"sync"

	capnp "capnproto.org/go/capnp/v3"

	"github.com/capnshm/capnshm/internal/echoproto"
	"github.com/capnshm/capnshm/rpc"
)

// sink is the receiver's Echo: push reads every byte (in the sender's
// memory, on shared memory) into a CRC-32C of the whole stream.
type sink struct {
	*echoproto.Server

	mu     sync.Mutex
	bytes  uint64
	chunks uint64
	crc    uint32
}

// Push folds data into the running CRC. Calls to one object arrive one at a
// time and in order, so the CRC covers the stream in order.
func (s *sink) Push(_ context.Context, call echoproto.Echo_push) error {
	d, err := call.Args().Data()
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.crc = crc32.Update(s.crc, castagnoli, d)
	s.bytes += uint64(len(d))
	s.chunks++
	s.mu.Unlock()
	return nil
}

// report returns what arrived since the last report, and starts over.
func (s *sink) report() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	r := fmt.Sprintf("bytes=%d chunks=%d crc=%08x", s.bytes, s.chunks, s.crc)
	s.bytes, s.chunks, s.crc = 0, 0, 0
	return r
}

// runReceiver serves a sink on -addr and -unix-addr, says "ready", answers
// "report" lines on stdin, and exits at EOF.
func runReceiver() error {
	s := &sink{Server: &echoproto.Server{}}
	logger := slog.New(quietClose{slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})})
	// The receiver's pool holds only its Returns: a small one is plenty.
	srv, err := rpc.Listen(*addr, capnp.Client(echoproto.Echo_ServerToClient(s)),
		rpc.WithPoolSize(4<<20), rpc.WithMaxMessage(maxMessage()), rpc.WithLogger(logger))
	if err != nil {
		return err
	}
	defer srv.Close()
	if err := srv.Listen(*unixAddr); err != nil {
		return err
	}
	go srv.Serve(context.Background())
	fmt.Println("ready")
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		if in.Text() == "report" {
			fmt.Println(s.report())
		}
	}
	return in.Err()
}

// quietClose drops the errors go-capnp v3.0.1-alpha.2 logs when the peer
// closes its connection in order: the Abort it sends ("remote abort:
// connection closed") and, depending on timing, its reader finding the
// connection gone. Here that is every transfer's normal end.
type quietClose struct{ slog.Handler }

var closeNoise = []string{
	"remote abort: connection closed",
	"use of closed network connection",
	"the peer closed the connection",
}

func (q quietClose) Handle(ctx context.Context, r slog.Record) error {
	for _, n := range closeNoise {
		if strings.Contains(r.Message, n) {
			return nil
		}
	}
	return q.Handler.Handle(ctx, r)
}

func (q quietClose) WithAttrs(as []slog.Attr) slog.Handler {
	return quietClose{q.Handler.WithAttrs(as)}
}
func (q quietClose) WithGroup(name string) slog.Handler { return quietClose{q.Handler.WithGroup(name)} }
