package rpc

import "github.com/capnshm/capnshm/segalloc"

// Stats are a transport's counters. Bytes count Cap'n Proto message bytes
// (segment data), not framing.
type Stats struct {
	MessagesSent, MessagesReceived uint64
	BytesSent, BytesReceived       uint64
	// SentByReference: messages whose segments the peer read in place.
	SentByReference uint64
	// SentInline: small messages copied into the ring.
	SentInline uint64
	// SentOnSocket: messages that fell back to the socket because shared
	// memory was exhausted.
	SentOnSocket uint64
	// BytesCopied counts message bytes the transport copied: inline
	// messages (both sides), messages on the socket, small messages copied
	// out on receipt. It stays 0 for messages carried by reference. On the
	// stream transport every byte is copied, once each way: it is
	// BytesSent plus BytesReceived.
	BytesCopied uint64
	// FreesSent and FreesReceived count messages released back to their
	// owner.
	FreesSent, FreesReceived uint64
	// PeerHeld is the number of this side's messages the peer holds now.
	PeerHeld uint64
	// PeerMappings and PeerMappingBytes are the peer's dedicated mappings
	// mapped here now (for its messages too large for its pool, or sent
	// when its pool was full): each costs this process its size in
	// address space, and memory once touched.
	PeerMappings, PeerMappingBytes int64
	// Pool is this side's allocator.
	Pool segalloc.Stats
}
