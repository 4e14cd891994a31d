// Package segalloc allocates Cap'n Proto segments in a shared-memory pool
// that this process owns, so that go-capnp writes messages straight into
// memory the peer can read without a copy.
//
// An Allocator manages one pool (the owner's read-write mapping; the peer maps
// it read-only). Each outgoing message gets an Arena, which implements
// capnp.Arena: every segment go-capnp asks for is a block of the pool, a
// dedicated shared mapping, or (when both are exhausted) heap memory that the
// transport copies at send.
//
// # Pool layout
//
// The pool is a sequence of MaxBlock-sized top blocks. Each top block is the
// root of a buddy tree whose leaves are MinBlock bytes; a block of order k is
// MinBlock<<k bytes, starts at a multiple of its own size, and its buddy is
// the other half of its parent:
//
//	pool  [0 ............................................................ len)
//	      | top block 0 (MaxBlock) | top block 1 (MaxBlock) | ... | top n-1 |
//
//	one top block (MaxBlock = 8 × MinBlock here, orders 0..3):
//
//	order 3  [                 8 KiB @0                       ]
//	order 2  [       4 KiB @0          ][      4 KiB @4K      ]
//	order 1  [ 2 KiB @0  ][ 2 KiB @2K  ][ 2K @4K  ][ 2K @6K   ]
//	order 0  [1K@0][1K@1K][1K@2K][1K@3K][1K][1K]  [1K] [1K]
//
//	buddy of the block at offset o, order k:  o XOR (MinBlock<<k)
//
// Allocating order k takes a free block of the smallest order j >= k and
// splits it, pushing the upper halves on the free lists of orders j-1..k.
// Freeing merges a block with its buddy while the buddy is free and of the
// same order. Both are O(log(MaxBlock/MinBlock)). All metadata (block states,
// per-order free and dirty lists, linked by block index) lives in Go memory:
// nothing is ever stored in, or read back from, the pool, which the peer can
// read and whose content we do not trust.
//
// # Block life cycle
//
//	          Allocate                 last Release
//	free ──────────────────▶ in use ─────────────────▶ dirty
//	 ▲                                                   │
//	 │        merge with free buddies                    │ scrubber zeroes
//	 └───────────────────────────────────────────────────┘ [0, used)
//
// Cap'n Proto needs zeroed memory for new objects. A block (or dedicated
// mapping) freed by an arena is dirty: the background scrubber zeroes the
// bytes that were used ([0, used), see Arena.SetUsed; the whole block when
// the used length is unknown) and only then makes it allocatable again, by
// merging it into the buddy tree or putting the mapping in the cache. Small
// used lengths (up to 1 KiB) are zeroed inline by Release, which is cheaper
// than handing them over. Fresh pool memory is assumed zero (new shared
// memory is).
//
// # Growth and fallback
//
// Allocate first hands back one of the message's segments that still has
// minsz bytes free (go-capnp asks whenever the segment it writes in is
// full, even if a later one has room). Otherwise it adds a segment: an
// arena's first segment is max(FirstSegment, minsz rounded up to a power
// of two) bytes; each later segment is max(2 × the previous one, minsz),
// rounded up to a power of two and capped at MaxBlock when minsz fits in
// MaxBlock. A request larger than MaxBlock gets a dedicated mapping of its own
// (rounded up to a multiple of 1 MiB), so a huge message stays zero-copy.
// When the pool has no free block of the wanted size, Allocate tries, in
// order, and never waits for anything:
//
//  1. a smaller free pool block that still holds minsz;
//  2. zeroing dirty pool blocks synchronously (in the caller) to free one;
//  3. a dedicated mapping (a cached idle one of size in [n, 2n], a dirty one
//     zeroed synchronously, or a new one from the Mapper), within
//     MaxDedicated bytes;
//  4. heap memory, within MaxHeap bytes;
//  5. an error wrapping ErrExhausted that names the limits.
//
// Stats counts every path taken.
//
// # Files
//
//	alloc.go   Allocator, Options, Stats, Close; choosing where a segment comes from
//	arena.go   Arena: go-capnp's capnp.Arena, reference counts, release
//	buddy.go   the pool's buddy tree of blocks
//	scrub.go   the scrubber that zeroes released blocks and mappings
//	cache.go   the cache of idle dedicated mappings and its trimming
package segalloc
