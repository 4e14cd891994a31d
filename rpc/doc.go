// Package rpc carries Cap'n Proto RPC between processes: on one host
// through shared memory, with no copy of a message's body, or on a unix or
// TCP socket, wire-compatible with C++ EZ-RPC. It speaks the protocol
// itself (capnshm's engine: two-party, Level 1) on top of go-capnp's
// serialization, generated code and server.Server.
//
// # Listen and Dial
//
// Most programs need only Listen and Dial, with addresses as Cap'n Proto
// users write them (ParseAddr). shm: addresses mean shared memory,
// negotiated on the system's rendezvous; the others run the stream
// transport:
//
//	           shared memory                      stream transport
//	Linux      shm:/path (a unix socket file),    unix:/path, unix-abstract:name,
//	           shm-abstract:name                  tcp:host:port, host:port
//	Windows    shm:NAME (the named pipe           pipe:NAME, tcp:host:port,
//	           \\.\pipe\NAME)                     unix:/path
//
//	srv, err := rpc.Listen("shm:/run/app.sock", bootstrap) // Windows: "shm:app"
//	go srv.Serve(ctx)
//
//	conn, err := rpc.Dial(ctx, "shm:/run/app.sock")
//	client := conn.Bootstrap(ctx)
//
// The dialer sends a HELLO frame; the listener looks at the first bytes of
// each connection, so that it also serves plain Cap'n Proto clients (C++
// EzRpcClient, go-capnp) on a shm: address. When shared memory cannot be
// had (the listener refuses it, another user, FallbackNever) both sides run
// the stream transport on the same socket or pipe, or fail clearly under
// FallbackRequire (see Fallback). Options (see Option) are checked: an
// invalid one is an error from Listen or Dial (ErrBadOption), never a
// silent fallback.
//
// # Layers
//
//	Conn (the engine)                     conn*.go, envelope.go, pipeline.go
//	  questions  answers  imports  exports  embargoes   (tables, Conn.mu)
//	  receive goroutine --- decode envelope --- handle   (conn_recv.go)
//	  sender: one FIFO queue, a flusher role            (conn_send.go)
//	      |  transport.Transport: NewMessage / Send / RecvMessage / Close
//	      v
//	Transport (shared memory)     StreamTransport (sockets)    PipeTransport (Pipe)
//	  pools, rings, doorbells,      unpacked stream framing,     both ends in this
//	  rendezvous socket             one writev a message         process, by reference
//
// A Conn runs over any go-capnp transport.Transport: NewConn takes one, and
// Listen and Dial make capnshm's. Pipe connects two Conns of one process
// with no copy and no encoding: a message's heap segments go to the other
// end as they are. go-capnp's own rpc.Conn runs over both of
// capnshm's transports too, for programs that bring it.
//
// # The engine
//
// Each connection has one receiving goroutine. It reads a message, decodes
// its envelope once (the kind, IDs, targets, transforms and cap table,
// copied into private memory and checked; the payload stays where it is,
// in the peer's shared memory or the socket's buffer) and handles it: a
// Call is delivered to its target's capnp.ClientHook (a server.Server
// queues it for its object's goroutine), a Return resolves the question's
// promise, and so on. It never blocks on the peer and never sends: a
// transport's send can block while the peer does not read, and two
// receivers blocked that way would deadlock.
//
// Messages leave through one FIFO queue (sender). Whoever pushes onto an
// idle queue takes the flusher role and sends: an application goroutine
// making a call sends it itself, a handler's goroutine sends its Return, and
// the receiving goroutine hands the role to the connection's sending
// goroutine. Params and results are built directly in the transport's
// message (over shared memory, in this side's pool), with no lock held
// while the application writes them.
//
// Lock order, and what each guards:
//
//	capnp.Metadata of a client   (its export on this Conn)
//	  -> Conn.mu                 the five tables, every question's and
//	                             answer's state, the connection's state
//	       -> sender.mu          the queue and the flusher role
//	answer.rmu                   the Return being built (the handler's
//	                             goroutine); taken before, never under, Conn.mu
//	pipeline.mu                  the calls waiting on results; taken with
//	                             no other lock held
//
// Nothing runs under Conn.mu that could call back into the Conn or block:
// no user code, no capnp Promise.Resolve or Client.Release, no send.
//
// # The protocol
//
// Bootstrap, Call, Return (results, exception, canceled,
// resultsSentElsewhere, takeFromOtherQuestion), Finish, Resolve, Release,
// Disembargo (senderLoopback and receiverLoopback), Abort and Unimplemented,
// as rpc.capnp specifies them:
//
//   - Promise pipelining to any depth (pipeline.go): calls pipelined on an
//     answer wait in its pipeline and are delivered in order before its
//     Return is sent; a call pipelined on one of this side's questions that
//     reaches it after its Return goes to the resolved capability, so no
//     call ever leaves on a finished question.
//   - Finish is sent when the application releases an answer (or the
//     call's context ends first). A Finish that arrives before the Return
//     cancels the handler only when no call is pipelined on the answer.
//     A Return whose results hold no capability says noFinishNeeded (as
//     C++ 1.0 does): the answer is forgotten when it is sent, and a caller
//     told so sends no Finish. A Finish for an answer no longer in the
//     table is ignored (peers that do not know the hint send one).
//   - Tail calls both ways: a call on a capability that is the peer's own
//     goes back to it with sendResultsTo.yourself, and the answer says
//     takeFromOtherQuestion, when the peer's HELLO says it takes them
//     (capnshm's engine over shared memory; go-capnp v3.0.1-alpha.2 ends
//     the connection on one, and over a socket this side cannot tell it
//     from C++): otherwise the results come back and go out again. A
//     peer's tail call is taken either way.
//   - Embargoes keep E-order when a promise resolves to a capability of
//     this side's (conn_embargo.go).
//   - Imports and exports are counted per descriptor and released with one
//     Release; capabilities in a received message are released with it.
//   - Level 2 to 4 messages (provide, accept, join) are answered
//     Unimplemented; a third-party capability is used through its vine.
//
// A peer that breaks the protocol in a way that would corrupt the tables
// (a reused question ID, a Finish twice, a Release of more references than
// it holds) gets an Abort that names what was wrong, and the connection
// ends; a call on an unknown target fails alone.
//
// # The shared-memory transport
//
// Each side owns a pool where it builds the messages it sends and an
// outbound ring of descriptors; the peer maps the pool read-only and reads
// the messages in place:
//
//	dialer process                                 listener process
//	+-------------------------+                    +-------------------------+
//	| pool (rw)  ------------ | --- mapped ro ---> | peer pool (ro)          |
//	| outbound ring (rw) ---- | --- mapped rw ---> | inbound ring            |
//	| inbound ring  <-------- | <-- mapped rw ---- | outbound ring (rw)      |
//	| peer pool (ro) <------- | <-- mapped ro ---- | pool (rw)               |
//	| data bell, space bell   | <--- rings ------- | (and the reverse)       |
//	+-----------+-------------+                    +------------+------------+
//	            +--- rendezvous: handshake, handles, fallback ---+
//	                 messages, peer death (EOF); a unix socket
//	                 (SCM_RIGHTS) on Linux, a named pipe on Windows
//
// A message travels as a MSG record naming its segments (pool offsets or
// dedicated mappings for segments too large for the pool): zero copies, the
// receiver's segments are the sender's memory. Messages up to WithInlineMax
// are copied into the ring instead (they never pin the pool), and a
// message that found shared memory exhausted goes on the socket, announced
// in the ring so that order is kept. The receiver returns memory with FREE
// records when it releases a message.
//
// On Windows the rendezvous is a named pipe whose listener end grants its
// user only (a DACL; WithAllowOtherUsers adds local users) and refuses
// remote clients; the peer is the pipe's peer process and its token's
// user SID. The pipe's server end opens the client's process with
// PROCESS_DUP_HANDLE and duplicates every handle, both ways, with the
// least access the receiver needs (the pool read-only, the ring
// read-write, the doorbells to ring): the client never holds a handle
// into the server's process. Every handle received is checked (its type,
// a section's size) before it is used. The peer's death is a broken pipe
// or its process handle signalled, whichever comes first.
//
// One connection costs each side its pool (WithPoolSize, 32 MiB by
// default, prefaulted unless WithPrefault(false)), its ring (256 KiB), a
// dozen descriptors, and the peer's pool and ring mapped read-only; setting
// it up (creating two pools, the handshake; the pool is prefaulted in the
// background) takes 3-20 ms against about 20 µs for a socket. Dedicated mappings of large
// messages are cached for reuse up to WithMappingCache and given back after
// an idle time.
//
// # Latency
//
// A ping's own work is a few microseconds on each side; what can cost more
// is waking threads. A thread that blocks (a receiving goroutine parked on
// its doorbell, an idle P's thread) must be woken by a system call of the
// other side, and on a small virtual machine waking a thread on the other,
// idle vCPU takes tens of microseconds (both processes on one vCPU: 46 µs
// a ping; on two: 140 µs, one run each at GOMAXPROCS=1). So by default,
// on a machine of two CPUs, the Adaptive wait polls the ring for
// WithYieldTime (DefaultYieldTime) with runtime.Gosched between polls
// before it parks: the P stays free for the handler or the caller the
// receiving goroutine waits for, the thread stays awake, and an answer
// within that time needs no doorbell and wakes nobody. The stream
// transport on Linux does the same with its socket (non-blocking reads)
// before it blocks. In one run an engine ping over shared memory went
// from 87 µs to 10.8 µs p50, and the threads of each process from 2.9
// sleeps a ping to 0.2 (bench's "thread sleeps/op"); over a unix socket
// from about 118 µs to 29 µs. The price is up to WithYieldTime of CPU on
// each side after the last message of a burst. On one CPU the yield phase
// is off (a yielding process keeps the CPU from the peer it waits for),
// with more CPUs the spin (WithSpinTime) covers the round trip, and a
// connection whose two ends are both in this process never yields (its
// receivers would yield against each other: a ping five times slower).
//
// The rest of the wake-ups are the Go runtime's: a goroutine made runnable
// while a P sits idle makes the runtime wake a thread for that P, and two
// hand-offs per call are go-capnp's API (server.Server's goroutine, the
// promise's channel). GOMAXPROCS=1 in both processes, when they serve one
// caller at a time (C++ EZ-RPC runs on one thread), leaves no idle P to
// wake: in one run the shared-memory ping took 8.4 µs against 10.8 µs,
// and 8 concurrent clients got 122,000 calls a second against 65,000.
// bench's -1p transports measure it next to the defaults, and
// `go test -bench BenchmarkRPC -cpu 1,2` shows both.
//
// # Flow control
//
// The calls a side has in flight live in its own pool until the peer frees
// them, and go-capnp never blocks a caller on its own: a client that
// streams large calls (`-> stream` methods) faster than the server handles
// them runs its pool dry and spills into overflow mappings and the heap.
// Conn.FlowLimiter returns a go-capnp flow limiter whose window is half of
// the pool (WithFlowWindow); install it on a reference of the streaming
// capability of its own, so that other calls stay unthrottled:
//
//	stream := echo.AddRef()
//	stream.SetFlowLimiter(conn.FlowLimiter())
//
// # Untrusted peers
//
// Everything read from the peer is untrusted (see WithCopyOnReceive for
// what each reading mode guarantees): a malformed record, an out-of-range
// segment or a corrupt ring aborts that connection with an error wrapping
// ErrProtocol that names what was wrong; the process and other connections
// go on. What the peer is handed cannot be turned against this side: the
// pool and dedicated mappings are sealed against its writes, the doorbells
// it rings cannot block this side's threads, and every resource it can
// make this side spend has a limit (WithMaxConns, WithMaxPeerMappings,
// WithMaxSocketBytes, WithMaxPeerPool, WithFrameTimeout,
// WithHandshakeTimeout counted from accept, and the others), whose breach
// ends that connection with an error wrapping ErrLimit that names it.
//
// # go-capnp's Conn over capnshm's transports
//
// For programs that run go-capnp v3.0.1-alpha.2's rpc.Conn over Transport
// or StreamTransport, the transports keep two guards that capnshm's own
// Conn does not need: a call that go-capnp pipelines on a question it has
// already finished (go-capnp #626) is not sent, and fails with ErrLateCall;
// an incoming call pipelined on its own question ID, which crashes a
// go-capnp Conn, aborts that connection. Under capnshm's Conn (NewConn,
// Dial, Listen) the stream transport drops both: the engine never
// pipelines on a finished question, and answers a call pipelined on its
// own ID with an exception, the connection going on. docs/transport.md in
// the repository has the long form.
package rpc
