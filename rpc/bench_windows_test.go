package rpc_test

import (
	"context"
	"testing"
	"time"

	"github.com/capnshm/capnshm/internal/echoproto"
	"github.com/capnshm/capnshm/internal/peertest"
	"github.com/capnshm/capnshm/rpc"
)

// Benchmarks of the Windows transports, the server in another process:
// shm: (shared memory, the handshake on a named pipe) against pipe: (the
// stream transport on a named pipe). Under Wine they show only that the
// paths work and how they compare there; Wine emulates every wait through
// its server, 20-100 times slower than Windows.

// winBenchConn dials a server process on a fresh address of scheme.
func winBenchConn(b *testing.B, scheme rpc.Scheme) echoproto.Echo {
	addr := winAddr(scheme)
	p := peertest.Start(b, "win-serve", nil, addr)
	p.Expect("serving")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := rpc.Dial(ctx, addr, rpc.WithPoolSize(winPool))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { c.Close() })
	if c.SharedMemory() != (scheme == rpc.SchemeShm) {
		b.Fatalf("%s: shared memory %v", scheme, c.SharedMemory())
	}
	boot := echoproto.Echo(c.Bootstrap(ctx))
	if err := boot.Resolve(ctx); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(boot.Release)
	return boot
}

func BenchmarkWinPing(b *testing.B) {
	for _, scheme := range []rpc.Scheme{rpc.SchemeShm, rpc.SchemePipe} {
		b.Run(string(scheme), func(b *testing.B) {
			boot := winBenchConn(b, scheme)
			ctx := context.Background()
			b.ResetTimer()
			for range b.N {
				if err := apiPingBoot(ctx, boot); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkWinEcho1MiB(b *testing.B) {
	for _, scheme := range []rpc.Scheme{rpc.SchemeShm, rpc.SchemePipe} {
		b.Run(string(scheme), func(b *testing.B) {
			boot := winBenchConn(b, scheme)
			ctx := context.Background()
			b.SetBytes(1 << 20)
			b.ResetTimer()
			for range b.N {
				if err := apiEcho(ctx, boot, 1<<20, 7); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
