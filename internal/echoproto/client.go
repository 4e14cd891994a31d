package echoproto

import (
	"context"
	"fmt"

	capnp "capnproto.org/go/capnp/v3"
	"capnproto.org/go/capnp/v3/rpc"
)

// EchoInPlace calls echo with src written into the request in place, as a
// client that builds its payload would, and checks the length and one
// byte (chosen by i) of what comes back.
func EchoInPlace(ctx context.Context, boot Echo, src []byte, i int) error {
	f, release := boot.Echo(ctx, func(p Echo_echo_Params) error {
		ptr, b, err := NewData(p.Segment(), len(src))
		if err != nil {
			return err
		}
		copy(b, src)
		return capnp.Struct(p).SetPtr(0, ptr)
	})
	defer release()
	res, err := f.Struct()
	if err != nil {
		return err
	}
	d, err := res.Data()
	if err != nil {
		return err
	}
	if len(d) != len(src) {
		return fmt.Errorf("echo: got %d bytes back, sent %d", len(d), len(src))
	}
	if len(src) > 0 {
		if k := (i * 7919) % len(src); d[k] != src[k] {
			return fmt.Errorf("echo: byte %d is %#x, sent %#x", k, d[k], src[k])
		}
	}
	return nil
}

// Bootstrap returns conn's bootstrap capability once it has resolved: a
// go-capnp v3.0.1-alpha.2 client that pipelines on the bootstrap question
// can send a call pipelined on its own question ID, which ends the
// connection (capnshm's transports refuse it) or, on go-capnp's own
// transports, crashes the server (go-capnp #626, #572). An error shows on
// the first call.
func Bootstrap(ctx context.Context, conn *rpc.Conn) Echo {
	c := conn.Bootstrap(ctx)
	_ = c.Resolve(ctx)
	return Echo(c)
}
