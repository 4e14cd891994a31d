package rpc_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/capnshm/capnshm/internal/echoproto"
	"github.com/capnshm/capnshm/rpc"
)

// TestIdleMappingsTrimmed: after one large result (over the server's pool,
// so in a dedicated mapping), an idle connection gives the mapping back in
// both processes once it has been idle for the cache's idle time, while
// the connection stays open. Before, each side stayed about 230 MiB larger
// until Close.
func TestIdleMappingsTrimmed(t *testing.T) {
	const size = 64 << 20 // over the server's 2 MiB pool
	cache := rpc.WithMappingCache(256<<20, 50*time.Millisecond)
	srv := apiServe(t, apiAddr(t, rpc.SchemeShmAbstract), cache)
	c := apiDial(t, srv.Addr().String(), cache)
	ctx := regressCtx(t)
	echo := echoproto.Echo(c.Bootstrap(ctx))
	defer echo.Release()
	f, release := echo.Fill(ctx, func(p echoproto.Echo_fill_Params) error {
		p.SetSize(size)
		p.SetSeed(3)
		return nil
	})
	res, err := f.Struct()
	if err != nil {
		t.Fatal(err)
	}
	if d, _ := res.Data(); len(d) != size {
		t.Fatalf("got %d bytes", len(d))
	}
	if st := c.Stats(); st.PeerMappings != 1 || st.PeerMappingBytes < size {
		t.Fatalf("with the result held: the client maps %d of the server's mappings (%d bytes), want 1 of at least %d", st.PeerMappings, st.PeerMappingBytes, size)
	}
	release()
	eventually(t, "the server's mapping, unmapped by both sides after the idle time", func() (bool, string) {
		st := c.Stats()
		return st.PeerMappings == 0, fmt.Sprintf("%d mapped (%d bytes)", st.PeerMappings, st.PeerMappingBytes)
	})
	if err := apiPingBoot(ctx, echo); err != nil {
		t.Fatalf("the connection after the trim: %v", err)
	}
}

// TestCopyOnReceive: with WithCopyOnReceive a message received over shared
// memory is copied out of the peer's pool (BytesCopied counts it); by
// default it is read in place (nothing copied).
func TestCopyOnReceive(t *testing.T) {
	const size = 1 << 20
	srv := apiServe(t, apiAddr(t, rpc.SchemeShmAbstract))
	for _, copied := range []bool{false, true} {
		t.Run(fmt.Sprint("copy=", copied), func(t *testing.T) {
			var opts []rpc.Option
			if copied {
				opts = append(opts, rpc.WithCopyOnReceive())
			}
			c := apiDial(t, srv.Addr().String(), opts...)
			ctx := regressCtx(t)
			echo := echoproto.Echo(c.Bootstrap(ctx))
			defer echo.Release()
			before := c.Stats().BytesCopied
			f, release := echo.Fill(ctx, func(p echoproto.Echo_fill_Params) error {
				p.SetSize(size)
				p.SetSeed(5)
				return nil
			})
			defer release()
			res, err := f.Struct()
			if err != nil {
				t.Fatal(err)
			}
			d, _ := res.Data()
			for i := range d {
				if d[i] != echoproto.Pattern(5, uint64(i)) {
					t.Fatalf("byte %d is %d", i, d[i])
				}
			}
			n := c.Stats().BytesCopied - before
			if copied && n < size || !copied && n >= size {
				t.Errorf("copy=%v: %d bytes copied for a %d-byte result", copied, n, size)
			}
		})
	}
}
