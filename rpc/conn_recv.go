package rpc

import (
	"errors"
	"fmt"
	"time"

	"capnproto.org/go/capnp/v3/rpc/transport"
	rpccp "capnproto.org/go/capnp/v3/std/capnp/rpc"
)

// receive is the connection's receiving goroutine: it reads each message,
// decodes its envelope once, and handles it. Handlers never block on the
// peer and never send themselves (see sender); calls are delivered to
// their targets' hooks (a server.Server queues them for its object's
// goroutine).
func (c *Conn) receive() {
	defer close(c.readerDone)
	var e envelope
	for {
		in, err := c.t.RecvMessage()
		if err != nil {
			c.endOnRecv(err)
			return
		}
		c.lastRecv.store(time.Now())
		if err := decode(in.Message(), &e); err != nil {
			in.Release()
			c.abortErr(err)
			return
		}
		c.handle(&e, in)
		c.mu.Lock()
		closing := c.closing
		c.mu.Unlock()
		if closing {
			return
		}
	}
}

// handle handles one message; it owns in.
func (c *Conn) handle(e *envelope, in transport.IncomingMessage) {
	switch e.which {
	case rpccp.Message_Which_call:
		c.handleCall(e, in)
	case rpccp.Message_Which_return:
		c.handleReturn(e, in)
	case rpccp.Message_Which_finish:
		in.Release()
		c.handleFinish(e)
	case rpccp.Message_Which_bootstrap:
		in.Release()
		c.handleBootstrap(e)
	case rpccp.Message_Which_resolve:
		c.handleResolve(e, in)
	case rpccp.Message_Which_release:
		in.Release()
		c.handleRelease(e)
	case rpccp.Message_Which_disembargo:
		in.Release()
		c.handleDisembargo(e)
	case rpccp.Message_Which_abort:
		in.Release()
		c.end(fmt.Errorf("%w: the peer aborted the connection: %w", ErrPeerGone, e.exception), false)
	case rpccp.Message_Which_unimplemented:
		in.Release()
		c.handleUnimplemented(e)
	default:
		// Level 2-4 messages (provide, accept, join, the obsolete save and
		// delete) and kinds this version does not know: echo them back.
		c.replyUnimplemented(in)
	}
}

// replyUnimplemented echoes a message this side does not implement.
func (c *Conn) replyUnimplemented(in transport.IncomingMessage) {
	defer in.Release()
	// Checked and copied where the peer cannot change it between the two:
	// a message read in place from shared memory is copied out first.
	echo := in.Message()
	var err error
	if inSharedMemory(echo.Message()) {
		echo, err = privateMessage(echo.Message())
		privateCopies.Add(1)
	}
	if err == nil {
		err = checkCopyable(echo.ToPtr())
	}
	if err != nil {
		c.abortErr(fmt.Errorf("a message of kind %d that this side does not implement cannot be echoed: %w", in.Message().Which(), err))
		return
	}
	om, rm, err := c.newMessage()
	if err != nil {
		return
	}
	if err := rm.SetUnimplemented(echo); err != nil {
		om.Release()
		c.abortErr(fmt.Errorf("copying an unimplemented message of kind %d to echo it: %w", in.Message().Which(), err))
		return
	}
	c.mu.Lock()
	if c.closing {
		c.mu.Unlock()
		om.Release()
		return
	}
	flush := c.out.push(om, nil)
	c.mu.Unlock()
	if flush {
		c.out.handOff()
	}
}

// endOnRecv ends the connection on the error of RecvMessage: the peer
// left (or died), the transport was closed here, or the peer broke the
// transport's protocol, which it is told (Abort) if the transport can
// still carry it.
func (c *Conn) endOnRecv(err error) {
	switch {
	case errors.Is(err, ErrClosed):
		c.end(ErrClosed, false)
	case errors.Is(err, ErrPeerGone), errors.Is(err, ErrDisconnected):
		c.end(err, false)
	case errors.Is(err, ErrProtocol), refused(err):
		c.end(protocolErr(err), true)
	case errors.Is(err, ErrTooLarge):
		c.end(err, true)
	default:
		c.end(fmt.Errorf("%w: receiving: %w", ErrPeerGone, err), false)
	}
}

// protocolErr makes err an ErrProtocol.
func protocolErr(err error) error {
	if errors.Is(err, ErrProtocol) {
		return err
	}
	return fmt.Errorf("%w: %w", ErrProtocol, err)
}
