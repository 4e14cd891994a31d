package rpc

import "sync/atomic"

// counters are the link's statistics, atomics updated where things
// happen.
type counters struct {
	messagesSent, messagesReceived atomic.Uint64
	bytesSent, bytesReceived       atomic.Uint64
	sentByReference, sentInline    atomic.Uint64
	sentOnSocket, bytesCopied      atomic.Uint64
	freesSent, freesReceived       atomic.Uint64
	roomsFilled                    atomic.Uint64 // small Returns built in a room (tests)
}

// Stats returns the transport's counters.
func (t *Transport) Stats() Stats {
	return Stats{
		MessagesSent:     t.stats.messagesSent.Load(),
		MessagesReceived: t.stats.messagesReceived.Load(),
		BytesSent:        t.stats.bytesSent.Load(),
		BytesReceived:    t.stats.bytesReceived.Load(),
		SentByReference:  t.stats.sentByReference.Load(),
		SentInline:       t.stats.sentInline.Load(),
		SentOnSocket:     t.stats.sentOnSocket.Load(),
		BytesCopied:      t.stats.bytesCopied.Load(),
		FreesSent:        t.stats.freesSent.Load(),
		FreesReceived:    t.stats.freesReceived.Load(),
		Pool:             t.ep.mine.alloc.Stats(),
		PeerMappings:     t.peer.mapsLive.Load(),
		PeerMappingBytes: t.peer.mapBytesLive.Load(),
		PeerHeld:         uint64(t.held.count()),
	}
}
