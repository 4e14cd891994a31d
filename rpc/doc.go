// Package rpc carries Cap'n Proto RPC (capnproto.org/go/capnp/v3/rpc)
// between two processes on one host through shared memory.
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
// Everything read from the peer is untrusted: a malformed record, an
// out-of-range segment or a corrupt ring aborts that connection with an
// error wrapping ErrProtocol that names what was wrong; the process and other
// connections go on. docs/transport.md in the repository has the long form.
package rpc
