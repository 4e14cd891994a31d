// Package rpc carries Cap'n Proto RPC (capnproto.org/go/capnp/v3/rpc)
// between two processes on one host through shared memory.
//
// # Listen and Dial
//
// Most programs need only Listen and Dial, with addresses as Cap'n Proto
// users write them (ParseAddr): unix:/path, unix-abstract:name,
// tcp:host:port or host:port run go-capnp's stream transport
// (wire-compatible with C++ EZ-RPC); shm:/path and shm-abstract:name mean
// shared memory, negotiated on that unix socket:
//
//	srv, err := rpc.Listen("shm:/run/app.sock", bootstrap)
//	go srv.Serve(ctx)
//
//	conn, err := rpc.Dial(ctx, "shm:/run/app.sock")
//	client := conn.Bootstrap(ctx)
//
// The dialer sends a HELLO frame; the listener peeks at the first bytes of
// each connection, so that it also serves plain Cap'n Proto clients (C++
// EzRpcClient, go-capnp's stream transport) on a shm: address. When shared
// memory cannot be had (the listener refuses it, another user, FallbackNever)
// both sides run the stream transport on the same socket, or fail clearly
// under FallbackRequire (see Fallback).
//
// # The transport
//
// A Transport implements go-capnp's transport.Transport. Each side owns a
// pool where it builds the messages it sends (go-capnp writes params and
// results straight into it, through segalloc's Arena) and an outbound ring
// of descriptors; the peer maps the pool read-only and reads the messages
// in place:
//
//	dialer process                                 listener process
//	+-------------------------+                    +-------------------------+
//	| pool (rw)  ------------ | --- mapped ro ---> | peer pool (ro)          |
//	| outbound ring (rw) ---- | --- mapped rw ---> | inbound ring            |
//	| inbound ring  <-------- | <-- mapped rw ---- | outbound ring (rw)      |
//	| peer pool (ro) <------- | <-- mapped ro ---- | pool (rw)               |
//	| data bell, space bell   | <--- rings ------- | (and the reverse)       |
//	+-----------+-------------+                    +------------+------------+
//	            +------ unix socket: handshake, handles, -------+
//	                    fallback messages, peer death (EOF)
//
// A message travels as a MSG record naming its segments (pool offsets or
// dedicated mappings for segments too large for the pool): zero copies, the
// receiver's segments are the sender's memory. Messages up to
// Options.InlineMax are copied into the ring instead (they never pin the
// pool), and a message that found shared memory exhausted goes on the
// socket, announced in the ring so that order is kept. The receiver returns
// memory with FREE records when go-capnp releases a message.
//
// # Flow control
//
// The calls a side has in flight live in its own pool until the peer frees
// them, and go-capnp never blocks a caller on its own: a client that
// streams large calls (`-> stream` methods) faster than the server handles
// them runs its pool dry and spills into overflow mappings and the heap.
// Conn.FlowLimiter returns a go-capnp flow limiter whose window is half of
// the pool (WithFlowWindow); install it on the streaming capability:
//
//	stream := echo.AddRef() // a reference of its own: other calls stay unthrottled
//	stream.SetFlowLimiter(conn.FlowLimiter())
//
// Everything read from the peer is untrusted: a malformed record, an
// out-of-range segment or a corrupt ring aborts that connection with an
// error wrapping ErrProtocol that names what was wrong; the process and other
// connections go on. What the peer is handed cannot be turned against this
// side: the pool and dedicated mappings are sealed against its writes, the
// doorbells it rings cannot block this side's threads, and every resource
// it can make this side spend has a limit (Options.MaxConns,
// MaxPeerMappings, MaxSocketBytes, MaxPeerPool, FrameTimeout,
// HandshakeTimeout, counted from accept, and the others), whose breach ends
// that connection with an error wrapping ErrLimit that names it. So does a call pipelined on its own question ID, which
// would crash go-capnp v3.0.1-alpha.2. In the other direction, a call that
// go-capnp pipelines on a question it has already finished (go-capnp #626)
// is not sent: that call fails with ErrLateCall. docs/transport.md in the
// repository has the long form.
package rpc
