package rpc

import (
	"errors"
	"strings"
	"testing"
)

// TestPipeCheckUser: a peer whose token's user is not this process's is
// refused, naming both users and the option that permits it, unless
// WithAllowOtherUsers; this process's own user passes. (Wine has one
// user, so a real second user's process cannot take part.)
func TestPipeCheckUser(t *testing.T) {
	me, err := currentUserSID()
	if err != nil {
		t.Fatal(err)
	}
	var rv pipeRendezvous
	other := peerID{pid: 4242, uid: userKey("S-1-5-21-1-2-3-1001"), user: "S-1-5-21-1-2-3-1001"}
	err = rv.checkUser(other, false)
	if !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "peer process 4242 runs as user S-1-5-21-1-2-3-1001, this process as "+me) || !strings.Contains(err.Error(), "WithAllowOtherUsers") {
		t.Fatalf("another user: %v", err)
	}
	if err := rv.checkUser(other, true); err != nil {
		t.Fatalf("another user, allowed: %v", err)
	}
	if err := rv.checkUser(peerID{pid: 1, user: me}, false); err != nil {
		t.Fatalf("this user: %v", err)
	}
	if k := userKey(me); k == other.uid || userKey(me) != k {
		t.Fatal("userKey does not give each user one number of its own")
	}
}
