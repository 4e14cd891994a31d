package rpc

import (
	"context"
	"log/slog"
	"testing"

	capnp "capnproto.org/go/capnp/v3"
	rpccp "capnproto.org/go/capnp/v3/std/capnp/rpc"

	"github.com/capnshm/capnshm/rpc/internal/wire"
	"github.com/capnshm/capnshm/shm"
)

// fuzzTransport is a Transport reduced to its receiving side, over a peer
// pool whose first bytes hold a valid message: handleRecord can resolve
// references into it, and nothing is ever sent.
func fuzzTransport(pool *shm.Region) *Transport {
	o := (&transportConfig{Logger: slog.New(slog.DiscardHandler)}).withDefaults()
	t := &Transport{
		opts: o,
		log:  o.Logger,
		ep:   &endpoint{theirs: &theirs{pool: &mapped{r: pool}}},
	}
	t.pend.init()
	t.held.init()
	t.peer.init()
	t.ep.theirs.pool.ref() // never unmapped here
	t.life.ctx, t.life.cancel = context.WithCancelCause(context.Background())
	t.life.cancel(ErrClosed) // waits for the socket return at once
	t.life.closed.Store(true)
	t.life.finalLocal.Store(true)
	return t
}

// validMessage returns the bytes of a one-segment rpc message.
func validMessage(tb testing.TB) []byte {
	msg, seg := capnp.NewSingleSegmentMessage(nil)
	m, err := rpccp.NewRootMessage(seg)
	if err != nil {
		tb.Fatal(err)
	}
	b, err := m.NewBootstrap()
	if err != nil {
		tb.Fatal(err)
	}
	b.SetQuestionId(7)
	data, err := msg.Segment(0)
	if err != nil {
		tb.Fatal(err)
	}
	return data.Data()
}

// FuzzRecvRecord feeds arbitrary records to the receiving side: it must
// return a message or an error, never panic, never read outside the
// peer's memory, and whatever message it returns must be readable.
func FuzzRecvRecord(f *testing.F) {
	pool, err := shm.Create(1<<20, nil)
	if err != nil {
		f.Fatal(err)
	}
	defer pool.Close()
	msg := validMessage(f)
	copy(pool.Bytes(), msg)

	add := func(n int, err error, b []byte) {
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b[:n])
	}
	b := make([]byte, 4096)
	n, err := wire.PutMsg(b, 1, []wire.SegRef{{Loc: 0, Offset: 0, Length: uint64(len(msg))}})
	add(n, err, append([]byte(nil), b...))
	n, err = wire.PutMsg(b, 2, []wire.SegRef{{Loc: 0, Offset: 1 << 19, Length: 4096}, {Loc: 3, Offset: 0, Length: 8}})
	add(n, err, append([]byte(nil), b...))
	n, err = wire.PutInline(b, [][]byte{msg})
	add(n, err, append([]byte(nil), b...))
	n, err = wire.PutFree(b, []uint64{1, 2, 3})
	add(n, err, append([]byte(nil), b...))
	n, err = wire.PutSock(b, 1)
	add(n, err, append([]byte(nil), b...))
	n, err = wire.PutUnmap(b, 4)
	add(n, err, append([]byte(nil), b...))

	f.Fuzz(func(t *testing.T, rec []byte) {
		tr := fuzzTransport(pool)
		m, err := tr.handleRecord(rec)
		if err != nil {
			return
		}
		if m == nil {
			return
		}
		// Whatever arrived must be safe to read.
		rm := m.Message()
		switch rm.Which() {
		case rpccp.Message_Which_bootstrap:
			if bs, err := rm.Bootstrap(); err == nil {
				_ = bs.QuestionId()
			}
		case rpccp.Message_Which_call:
			if c, err := rm.Call(); err == nil {
				_, _ = c.Params()
			}
		}
		m.Release()
		if got := tr.life.liveIn.Load(); got != 0 {
			t.Fatalf("%d incoming messages still counted after Release", got)
		}
	})
}
