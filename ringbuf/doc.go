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
//	     4 |  u32    |   version (1)                      Init only
//	     8 |  u64    |   capacity C of the data area      Init only
//	    16 |  ...    |   zero
//	   128 +---------+ block 1: producer
//	       |  u64    |   tail: free-running byte count    producer (atomic)
//	   136 |  ...    |   zero
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
//	   640 +---------+ data area: C bytes, C a power of two
//	       | records |   (HeaderSize = 640)               producer
//	 640+C +---------+
//
// The wake-up flags have blocks of their own because each side reads the
// other's flag after every publication: next to an index that the other
// side rewrites for every record, that read would move a cache line per
// record even when nobody ever parks. Alone, a flag's line changes only
// when a side parks.
//
// head and tail never wrap (uint64 byte counts); the offset of a position in
// the data area is position & (C-1). The bytes in [head, tail) are published
// records the consumer has not released; tail-head <= C always.
//
// # Records
//
// A record is an 8-byte header, its payload, and padding to the next 8-byte
// boundary, so every record (and every payload) starts 8-byte aligned:
//
//	+------------+------------+----------------------+---------+
//	| length u32 | flags u32  | payload (length B)   | pad 0-7 |
//	+------------+------------+----------------------+---------+
//	flags bit 0: padding record (payload ignored); other bits must be 0.
//
// A record never wraps around the end of the data area. When the space left
// before the end is too small for the next record, the producer first writes
// a padding record that fills exactly to the end, and the record goes at
// offset 0:
//
//	data area (C bytes)
//	0                                                                C
//	+--------+----------------+-------------------------+---------------+
//	| rec 7  |   free         | rec 5 | rec 6           | padding rec   |
//	+--------+----------------+-------------------------+---------------+
//	         ^tail            ^head
//	(positions mod C; rec 7 went to offset 0 because it did not fit before C)
//
// The largest payload is C/2 - 8 bytes ([Ring.MaxPayload]): with records at
// most C/2 long, a record plus its padding always fits in an empty ring.
//
// # Publication and ordering
//
// The producer writes records with ordinary stores, then publishes all of
// them with one atomic store of tail ([Producer.Commit]); the consumer loads
// tail atomically before reading records, and releases them with one atomic
// store of head ([Consumer.Release]) that lets the producer reuse the space.
// Go's sync/atomic operations are sequentially consistent, which gives the
// release/acquire ordering this needs and the store-then-load ordering the
// wake-up protocol below needs.
//
// # Wake-ups and notification suppression
//
// A side that finds nothing to do may spin, yield, then park on its own
// doorbell ([WaitStrategy]). Before parking it sets its "wanted" flag, then
// re-checks the index it waits on, and parks only if there is still nothing
// to do. The other side, after storing its index, loads that flag and rings
// the doorbell only if it is set, clearing it with a compare-and-swap 1->0 so
// that a burst of commits rings once. This is io_uring's NEED_WAKEUP and
// virtio's notification suppression: a side that is running costs its peer
// no system call. Both sides store and then load with sequentially
// consistent atomics (Dekker's pattern), so at least one of them sees the
// other's store: no wake-up is lost. Wake-ups may be spurious; waiters
// always re-check.
//
// # Untrusted peers
//
// The peer is another process and may be malicious or broken: it can write
// anything into the shared memory at any time. The consumer reads each
// shared word (tail, record length, flags) exactly once into a local, checks
// it, and uses only the local. An impossible tail, a record that claims more
// bytes than are published or than fit before the end of the data area, a
// misaligned index, a padding record that does not end at the end of the
// data area, or unknown flag bits become an error wrapping [ErrCorrupt] that
// names what was wrong. The producer checks the head it reads the same way.
// After such an error the Producer or Consumer is poisoned: every later call
// returns the same error. No input makes this package panic or read or write
// outside the memory it was given. Payload bytes are not validated (they are
// the caller's) and, being shared, may change under the reader until
// Release: decode them defensively or copy them.
package ringbuf
