package rpc_test

import (
	"bytes"
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	capnp "capnproto.org/go/capnp/v3"
	gorpc "capnproto.org/go/capnp/v3/rpc"
	"capnproto.org/go/capnp/v3/rpc/transport"
	rpccp "capnproto.org/go/capnp/v3/std/capnp/rpc"

	"github.com/capnshm/capnshm/internal/echoproto"
	"github.com/capnshm/capnshm/rpc"
)

// memPair connects an Echo server and a client over rpc.Pipe, each end run
// by the engine named (capnshm's or go-capnp's Conn); it returns the
// client's bootstrap and both ends.
func memPair(t *testing.T, e engines, srv *echoproto.Server) (echoproto.Echo, *rpc.PipeTransport, *rpc.PipeTransport) {
	t.Helper()
	a, b := rpc.Pipe()
	boot := capnp.Client(echoproto.Echo_ServerToClient(srv))
	if e.server == "capnshm" {
		c, err := rpc.NewConn(a, boot)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
	} else {
		c := gorpc.NewConn(a, &gorpc.Options{BootstrapClient: boot})
		t.Cleanup(func() { a.Close(); c.Close() })
	}
	ctx, cancel := context.WithTimeout(context.Background(), regressBound)
	t.Cleanup(cancel)
	if e.client == "capnshm" {
		c, err := rpc.NewConn(b, capnp.Client{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return echoproto.Echo(c.Bootstrap(ctx)), a, b
	}
	c := gorpc.NewConn(b, nil)
	t.Cleanup(func() { b.Close(); c.Close() })
	return echoproto.Bootstrap(ctx, c), a, b
}

// TestPipe runs calls of every kind over rpc.Pipe, with capnshm's engine on
// both ends and with go-capnp's Conn on either: small and large data both
// ways, capabilities passed and called back, every capability released at
// the end, and, where the engine serves, pipelining with its E-order and a
// call forwarded to the caller's own callback. Nothing is copied.
func TestPipe(t *testing.T) {
	for _, e := range []engines{
		{"capnshm", "capnshm", "capnshm"},
		{"go-capnp-client", "capnshm", "go-capnp"},
		{"go-capnp-server", "go-capnp", "capnshm"},
	} {
		t.Run(e.name, func(t *testing.T) {
			srv := &echoproto.Server{}
			echo, a, b := memPair(t, e, srv)
			ctx := regressCtx(t)
			for _, n := range []int{0, 64, 4 << 10, 1 << 20, 16 << 20} {
				src := make([]byte, n)
				echoproto.FillPattern(src, byte(n), 0)
				for i := range 3 {
					if err := echoproto.EchoInPlace(ctx, echo, src, i); err != nil {
						t.Fatalf("echo of %d bytes: %v", n, err)
					}
				}
			}
			// A capability of the client's, called back by the server.
			var live atomic.Int64
			live.Add(1)
			cb := echoproto.Callback_ServerToClient(countedCallback{live: &live})
			f, release := echo.CallBack(ctx, func(p echoproto.Echo_callBack_Params) error {
				p.SetValue(41)
				return p.SetCallback(cb.AddRef())
			})
			res, err := f.Struct()
			if err != nil {
				t.Fatalf("callBack: %v", err)
			}
			if res.Result() != 41*2+1 {
				t.Errorf("callBack returned %d, want %d", res.Result(), 41*2+1)
			}
			release()
			cb.Release()
			// A go-capnp server runs some of these out of order
			// (go-capnp #631, TestPipelinedEOrder) on any transport.
			if e.server == "capnshm" {
				if err := selfRound(ctx, echo, 50); err != nil {
					t.Fatalf("pipelined calls: %v", err)
				}
				forwardToOwnCallback(t, echo.AddRef(), false)
			}
			if err := waitNoLiveObjects(ctx, echo); err != nil {
				t.Fatal(err)
			}
			echo.Release()
			// The server released the client's callback: its last
			// reference here is gone too.
			for live.Load() != 0 {
				select {
				case <-ctx.Done():
					t.Fatal("the callback passed to the server was never released")
				case <-time.After(time.Millisecond):
				}
			}
			for _, end := range []*rpc.PipeTransport{a, b} {
				st := end.Stats()
				// The 16 MiB echo went through each end both ways.
				if st.BytesCopied != 0 || st.BytesReceived < 16<<20 || st.BytesSent < 16<<20 {
					t.Errorf("an end's stats: %+v; want nothing copied and the 16 MiB counted both ways", st)
				}
			}
		})
	}
}

// waitNoLiveObjects waits until the server holds no capability it made
// for this client: releases travel as messages of their own.
func waitNoLiveObjects(ctx context.Context, echo echoproto.Echo) error {
	for {
		f, release := echo.LiveObjects(ctx, nil)
		res, err := f.Struct()
		var n int64
		if err == nil {
			n = res.Count()
		}
		release()
		if err != nil || n == 0 {
			return err
		}
		select {
		case <-ctx.Done():
			return errors.New("capabilities the server made are still alive")
		case <-time.After(time.Millisecond):
		}
	}
}

// TestPipeEnds checks the transport contract of rpc.Pipe's ends: what an end
// sent before it closed still arrives, then the other end gets
// ErrPeerGone; an end's own blocked RecvMessage and Send return ErrClosed
// at its Close; Send waits while the other end's queue is full.
func TestPipeEnds(t *testing.T) {
	send := func(t *testing.T, end *rpc.PipeTransport, id uint32) error {
		t.Helper()
		om, err := end.NewMessage()
		if err != nil {
			t.Fatal(err)
		}
		defer om.Release()
		f, err := om.Message().NewFinish()
		if err != nil {
			t.Fatal(err)
		}
		f.SetQuestionId(id)
		return om.Send()
	}
	recvID := func(t *testing.T, end *rpc.PipeTransport) (uint32, error) {
		t.Helper()
		in, err := end.RecvMessage()
		if err != nil {
			return 0, err
		}
		defer in.Release()
		if in.Message().Which() != rpccp.Message_Which_finish {
			t.Fatalf("received a %v, want the finish sent", in.Message().Which())
		}
		f, err := in.Message().Finish()
		if err != nil {
			t.Fatal(err)
		}
		return f.QuestionId(), nil
	}

	t.Run("sent before close arrives", func(t *testing.T) {
		a, b := rpc.Pipe()
		for id := range uint32(5) {
			if err := send(t, a, id); err != nil {
				t.Fatal(err)
			}
		}
		a.Close()
		for want := range uint32(5) {
			if id, err := recvID(t, b); err != nil || id != want {
				t.Fatalf("received %d, %v; want %d", id, err, want)
			}
		}
		if _, err := b.RecvMessage(); !errors.Is(err, rpc.ErrPeerGone) {
			t.Fatalf("after the last message: %v, want ErrPeerGone", err)
		}
		if err := send(t, b, 9); !errors.Is(err, rpc.ErrPeerGone) {
			t.Fatalf("sending to a closed end: %v, want ErrPeerGone", err)
		}
		if err := send(t, a, 9); !errors.Is(err, rpc.ErrClosed) {
			t.Fatalf("sending on a closed end: %v, want ErrClosed", err)
		}
	})

	t.Run("close ends a blocked receive", func(t *testing.T) {
		a, _ := rpc.Pipe()
		errc := make(chan error, 1)
		go func() {
			_, err := a.RecvMessage()
			errc <- err
		}()
		a.Close()
		if err := <-errc; !errors.Is(err, rpc.ErrClosed) {
			t.Fatalf("blocked receive: %v, want ErrClosed", err)
		}
	})

	t.Run("send waits for the receiver", func(t *testing.T) {
		a, b := rpc.Pipe()
		// A full queue, then one more: it goes through once b reads, in
		// order after the others.
		for id := range uint32(rpc.PipeDepth) {
			if err := send(t, a, id); err != nil {
				t.Fatal(err)
			}
		}
		done := make(chan error, 1)
		go func() { done <- send(t, a, rpc.PipeDepth) }()
		for want := range uint32(rpc.PipeDepth + 1) {
			if id, err := recvID(t, b); err != nil || id != want {
				t.Fatalf("received %d, %v; want %d", id, err, want)
			}
		}
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		// A send that waits on a full queue returns at Close.
		for range rpc.PipeDepth {
			if err := send(t, a, 0); err != nil {
				t.Fatal(err)
			}
		}
		go func() { done <- send(t, a, 0) }()
		a.Close()
		if err := <-done; !errors.Is(err, rpc.ErrClosed) {
			t.Fatalf("a send on a full queue: %v at Close, want ErrClosed", err)
		}
	})

	t.Run("a message is read where it was built", func(t *testing.T) {
		a, b := rpc.Pipe()
		om, err := a.NewMessage()
		if err != nil {
			t.Fatal(err)
		}
		payload := bytes.Repeat([]byte("x"), 100<<10)
		call, err := om.Message().NewCall()
		if err != nil {
			t.Fatal(err)
		}
		p, err := call.NewParams()
		if err != nil {
			t.Fatal(err)
		}
		ptr, buf, err := rpc.NewData(p.Segment(), len(payload))
		if err != nil {
			t.Fatal(err)
		}
		copy(buf, payload)
		if err := p.SetContent(ptr); err != nil {
			t.Fatal(err)
		}
		if err := om.Send(); err != nil {
			t.Fatal(err)
		}
		om.Release()
		in, err := b.RecvMessage()
		if err != nil {
			t.Fatal(err)
		}
		defer in.Release()
		c, err := in.Message().Call()
		if err != nil {
			t.Fatal(err)
		}
		rp, err := c.Params()
		if err != nil {
			t.Fatal(err)
		}
		content, err := rp.Content()
		if err != nil {
			t.Fatal(err)
		}
		got := content.Data()
		if !bytes.Equal(got, payload) {
			t.Fatal("the payload changed on the way")
		}
		if &got[0] != &buf[0] {
			t.Fatal("the payload was copied: the receiver reads other memory than the sender wrote")
		}
	})
}

var _ transport.Transport = (*rpc.PipeTransport)(nil)
