// Package ringbuf is a single-producer single-consumer ring of
// variable-length records over a []byte.
//
// The []byte is shared memory mapped by two processes in production, or
// heap memory in tests. One side calls [Init] on the memory, the other
// [Attach]es to the same memory; then one side takes the [Producer] and the
// other the [Consumer] (both may also live in one process). The package
// imports only the standard library; doorbells (to wake a peer that sleeps)
// are plugged in through the small [Ringer] and [Waiter] interfaces.
//
// # Memory layout
//
// Every field group sits in its own 128-byte block (two cache lines, so that
// adjacent-line prefetching does not create false sharing between the two
// sides). Integers are in host byte order: the ring never leaves the host.
//
//	offset      size   contents                          written by
//	     0 +---------+ block 0: identity (immutable)
//	       |  4 B    |   magic "CSRB"                     Init only
//	     4 |  u32    |   version (2)                      Init only
//	     8 |  u64    |   capacity C of the data area      Init only
//	    16 |  ...    |   zero
//	   128 +---------+ block 1: reserved (zero; the tail  Init only
//	       |         |   index of version 1 was here)
//	   256 +---------+ block 2: consumer
//	       |  u64    |   head: free-running byte count    consumer (atomic)
//	   264 |  ...    |   zero
//	   384 +---------+ block 3: consumer's wake-up flag
//	       |  u32    |   data_wanted: 1 = consumer is     consumer sets,
//	       |         |   parked, waiting for data         producer CAS 1->0
//	   388 |  ...    |   zero
//	   512 +---------+ block 4: producer's wake-up flag
//	       |  u32    |   space_wanted: 1 = producer is    producer sets,
//	       |         |   parked, waiting for space        consumer CAS 1->0
//	   516 |  ...    |   zero
//	   640 +---------+ data area: C bytes, C a power of two,
//	       | records |   zeroed by Init                   producer
//	       |         |   (HeaderSize = 640)
//	 640+C +---------+
//
// The wake-up flags have blocks of their own because each side reads the
// other's flag after every publication: next to an index that the other
// side rewrites for every record, that read would move a cache line per
// record even when nobody ever parks. Alone, a flag's line changes only
// when a side parks.
//
// There is no shared tail: records are published by their own headers (see
// below), so that a message moves only the cache lines of the record itself
// from producer to consumer. The producer keeps its tail (the end of what
// it has claimed) privately. head and the producer's tail never wrap
// (uint64 byte counts); the offset of a position in the data area is
// position & (C-1). The bytes in [head, tail) are records the consumer has
// not released, and tail+8 <= head+C always (the 8 bytes are the
// terminator, below).
//
// # Records
//
// A record is an 8-byte header, its payload, and padding to the next 8-byte
// boundary, so every record (and every payload) starts 8-byte aligned. The
// header is one u64, read and written atomically:
//
//	          header u64
//	+----------------------------+----------------------+---------+
//	| bits 0-31:  length         | payload (length B)   | pad 0-7 |
//	| bits 32-63: flags          |                      |         |
//	+----------------------------+----------------------+---------+
//	flags bit 0: padding record (payload ignored)
//	flags bit 1: present; set in every header, so that a zero header always
//	             means "nothing published here yet", even for a zero-length
//	             record. Other bits must be 0.
//
// A record never wraps around the end of the data area. When the space left
// before the end is too small for the next record, the producer first writes
// a padding record that fills exactly to the end, and the record goes at
// offset 0, in the same batch:
//
//	data area (C bytes)
//	0                                                                C
//	+--------+---+------------+-------------------------+---------------+
//	| rec 7  | 0 |   free     | rec 5 | rec 6           | padding rec   |
//	+--------+---+------------+-------------------------+---------------+
//	         ^tail            ^head
//	(positions mod C; rec 7 went to offset 0 because it did not fit before C;
//	0 is the terminator, a zero u64 at the producer's tail)
//
// The terminator: the 8 bytes at the producer's tail are always zero (or,
// between Claim and Commit, inside claimed records that are not published).
// Init zeroes the data area, and every Commit writes a zero word right
// after the records it publishes. The consumer stops at that word, so it
// never reads bytes left by a previous lap as a header. A claim therefore
// needs room for its record (plus a padding record if it wraps) and 8 more
// bytes: need+8 <= C-(tail-head).
//
// The largest payload is C/2 - 8 bytes ([Ring.MaxPayload]), so that a record
// plus its padding and the terminator always fit in an empty ring: a record
// takes S = 8+align8(payload) <= C/2 bytes, and it is padded only when the
// R bytes left before the end are fewer than S; R and S are multiples of 8,
// so R+8 <= S and R+S+8 <= 2S <= C.
//
// # Publication and ordering
//
// The producer claims records by writing their payloads and the headers of
// all but the first with ordinary stores; it keeps the first record's header
// in a local variable. [Producer.Commit] then (1) writes the terminator, a
// zero u64, right after the last claimed record, and (2) stores the first
// record's header with one atomic store: that store publishes the whole
// batch, because until then the consumer sees the zero word left at that
// position by the previous Commit (or Init). The consumer loads the header
// at its position atomically; a zero means the ring is empty. A load that
// sees a nonzero header also sees every store the producer made before
// storing it: the payload, the headers of the later records of the batch,
// and the terminator after them. The consumer releases records with one
// atomic store of head ([Consumer.Release]) that lets the producer reuse
// the space; the producer loads head only when its cached copy leaves too
// little room. These atomic stores and loads give the release/acquire
// ordering this needs; the stores of the header and of head are
// exchanges, which also give the store-then-load ordering that the
// wake-up protocol below needs.
//
// # Wake-ups and notification suppression
//
// A side that finds nothing to do may spin (holding its P), yield (polling
// with runtime.Gosched between polls, for [Options.Yields] polls and
// [Options.YieldTime]), then park on its own doorbell ([WaitStrategy]).
// A side that has not parked needs no doorbell and no wake-up. Before parking it sets its "wanted" flag, then
// re-checks the word it waits on (the consumer: the record header at its
// position; the producer: head), and parks only if there is still nothing
// to do. The other side, after storing that word (the producer: the first
// header of a batch; the consumer: head), loads the flag and rings the
// doorbell only if it is set, clearing it with a compare-and-swap 1->0 so
// that a burst of commits rings once. This is io_uring's NEED_WAKEUP and
// virtio's notification suppression: a side that is running costs its peer
// no system call. Both sides store and then load (Dekker's pattern), so at
// least one of them sees the other's store: no wake-up is lost. That needs
// each store to be visible before the load after it reads, so the stores
// are atomic exchanges, full barriers in every build: Go's atomic Store
// is one on amd64, but not under the race detector on memory outside the
// Go heap, where a lost wake-up hung connections (order.go says more).
// Wake-ups may be spurious; waiters always re-check.
//
// # Untrusted peers
//
// The peer is another process and may be malicious or broken: it can write
// anything into the shared memory at any time. The consumer reads each
// shared word (a record header, holding length and flags) exactly once into
// a local, checks it, and uses only the local. A nonzero header without the
// present bit or with unknown flag bits, a length over MaxPayload, a record
// that crosses the end of the data area, a padding record that does not end
// exactly there, a record that would end more than C bytes past the
// consumer's last released head (a producer making it read records it has
// not released), or a misaligned head become an error wrapping
// [ErrCorrupt] that names what was wrong. The producer checks the head it
// reads (not behind its previous value, not ahead of what it published,
// 8-byte aligned), and, when it starts, the records it finds published.
// After such an error the Producer or Consumer is poisoned: every later call
// returns the same error. No input makes this package panic or read or write
// outside the memory it was given. Payload bytes are not validated (they are
// the caller's) and, being shared, may change under the reader until
// Release: decode them defensively or copy them.
package ringbuf
