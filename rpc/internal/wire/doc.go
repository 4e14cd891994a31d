// Package wire holds the byte formats of the shared-memory transport and
// their validating parsers.
//
// Everything a parser here reads was written by an untrusted peer, in
// shared memory or on the rendezvous socket. Parsers never panic, never
// read out of bounds, compute offset+size without overflow, check every
// count against its limit and every pad field against zero, and read each
// byte once (a peer rewriting shared memory during a parse cannot change a
// value after it was checked). A violation is an error wrapping
// ErrMalformed whose text names the structure, the field and the bad
// value:
//
//	wire: malformed MSG record: segment 3 length 12 is not a multiple of 8
//
// Encoders write into caller-provided buffers (the ring hands out a []byte
// from Claim) and do not allocate unless they fail; they refuse, with
// ErrInvalid, anything the matching parser would reject. Integers are
// little-endian. Offsets below are in bytes.
//
// # Ring records
//
// One record is one ringbuf record payload; the ring supplies its length,
// which must match the record's exactly. Byte 0 is the Kind (Peek).
//
//	MSG (MsgSize(n) = 16 + 24n bytes, 1 <= n <= MaxSegments)
//	+--------+------+--------------------------------------------------+
//	| offset | size | field                                            |
//	+--------+------+--------------------------------------------------+
//	|      0 |    1 | kind = 1                                         |
//	|      1 |    3 | pad, zero                                        |
//	|      4 |    4 | n: segment count                                 |
//	|      8 |    8 | message id (the sender's choice)                 |
//	| 16+24i |    4 | segment i location: 0 pool, k > 0 mapping k      |
//	| 20+24i |    4 | pad, zero                                        |
//	| 24+24i |    8 | segment i offset in the location, multiple of 8  |
//	| 32+24i |    8 | segment i length, multiple of 8                  |
//	+--------+------+--------------------------------------------------+
//
// Length 0 is allowed only in a 1-segment message (an empty message);
// an empty segment among several is malformed. offset+length must not
// overflow; whether it lies within the location is the caller's check
// against the mapping's size (SegRef.Within).
//
//	INLINE (InlineSize(lengths) bytes; T = 8 + 4n rounded up to 8)
//	+--------+------+--------------------------------------------------+
//	|      0 |    1 | kind = 2                                         |
//	|      1 |    3 | pad, zero                                        |
//	|      4 |    4 | n: segment count, 1..MaxSegments                 |
//	|   8+4i |    4 | segment i length, multiple of 8                  |
//	|   8+4n |  0/4 | pad to 8 bytes, zero (when n is odd)             |
//	|      T |  sum | the segments' bytes back to back                 |
//	+--------+------+--------------------------------------------------+
//
// Same length rules as MSG; the segments fill the record exactly.
//
//	FREE (FreeSize(n) = 8 + 8n bytes, 1 <= n <= MaxFreeIDs)
//	+--------+------+--------------------------------------------------+
//	|      0 |    1 | kind = 3                                         |
//	|      1 |    3 | pad, zero                                        |
//	|      4 |    4 | n: id count                                      |
//	|   8+8i |    8 | id i: a message of the receiver's, released      |
//	+--------+------+--------------------------------------------------+
//
//	SOCK (SockSize = 16 bytes)           UNMAP (UnmapSize = 8 bytes)
//	+--------+------+----------------+   +--------+------+----------------+
//	|      0 |    1 | kind = 4       |   |      0 |    1 | kind = 5       |
//	|      1 |    7 | pad, zero      |   |      1 |    3 | pad, zero      |
//	|      8 |    8 | seq > 0 of the |   |      4 |    4 | mapping id > 0 |
//	|        |      | next MSG frame |   +--------+------+----------------+
//	+--------+------+----------------+
//
// # Socket frames
//
// The rendezvous is a byte stream carrying frames back to back: a
// SOCK_STREAM unix socket on Linux, where a frame's descriptors travel
// (SCM_RIGHTS) with its header's bytes, never with payload bytes; a named
// pipe on Windows, where they follow the header as 8-byte handle values
// (handlevalues.go), duplicated by the pipe's server end both ways with
// the least access the receiver needs (Access). FrameConn, one per
// system, reads and writes them.
//
//	frame header (FrameHeaderSize = 16 bytes), then Length payload bytes
//	+--------+------+--------------------------------------------------+
//	|      0 |    2 | magic 0xCA5E (bytes 5E CA)                       |
//	|      2 |    1 | type                                             |
//	|      3 |    1 | number of descriptors sent with the header       |
//	|      4 |    4 | Length: payload bytes                            |
//	|      8 |    8 | seq: MSG frames 1, 2, 3...; other types 0        |
//	+--------+------+--------------------------------------------------+
//
//	type        fds  payload
//	1 HELLO      4   Hello, exactly HelloSize; fds: pool, ring, data bell, space bell
//	                 (the pool sealed against the receiver's writes; each bell
//	                 the write end of a pipe or a unix datagram socket; on
//	                 Windows sections and events)
//	2 REFUSE     0   Refuse, RefuseHeaderSize..+MaxRefuseReason
//	3 MAP        1   Mapping, exactly MappingSize; fd: the mapping
//	4 MSG        0   Cap'n Proto message, unpacked stream framing:
//	                 a multiple of 8, MinMsgFrame..the reader's limit
//	5 BYE        0   none: orderly close
//
//	MAP payload (16 bytes)
//	+--------+------+--------------------------------------------------+
//	|      0 |    4 | mapping id > 0 (the Loc of segments in it)       |
//	|      4 |    4 | pad, zero                                        |
//	|      8 |    8 | size in bytes, 1..MaxInt64                       |
//	+--------+------+--------------------------------------------------+
//
// # Handshake
//
// The dialer sends HELLO; the listener answers HELLO or REFUSE.
//
//	HELLO payload (HelloSize = 40 bytes, version 1)
//	+--------+------+--------------------------------------------------+
//	|      0 |    4 | magic "CSHM"                                     |
//	|      4 |    2 | version (Version = 1)                            |
//	|      6 |    2 | pad, zero                                        |
//	|      8 |    4 | feature bits (Feature*; unknown ones ignored)    |
//	|     12 |    4 | pid of the sender, > 0                           |
//	|     16 |    8 | pool size, 1..MaxInt64                           |
//	|     24 |    8 | ring region size, 1..MaxInt64                    |
//	|     32 |    8 | largest message accepted, 1..MaxInt64            |
//	+--------+------+--------------------------------------------------+
//
// ParseHello checks the magic, then the version (another one gives
// ErrVersion, whatever follows), then the rest.
//
//	REFUSE payload (8 + n bytes, or 24 + n with the tail; n <= MaxRefuseReason)
//	+--------+------+--------------------------------------------------+
//	|      0 |    4 | magic "CSHM"                                     |
//	|      4 |    2 | version the refusing side speaks                 |
//	|      6 |    2 | n: reason length                                 |
//	|      8 |    n | reason, UTF-8                                    |
//	|    8+n |    4 | tail: flags (RefuseNoFallback: no stream follows)|
//	|   12+n |    4 | tail: pad, zero                                  |
//	|   16+n |    8 | tail: largest message the refusing side accepts  |
//	|        |      | on the stream transport that follows (0: unsaid) |
//	+--------+------+--------------------------------------------------+
//
// The tail is optional (a REFUSE without it says neither), so that the
// REFUSE layout stays readable by every version.
//
// On Linux, PeerCred reads the peer's uid, gid and pid from the socket
// (SO_PEERCRED), which the peer cannot forge. On Windows the rendezvous
// asks the pipe for its peer process (rpc/rendezvous_windows.go).
package wire
