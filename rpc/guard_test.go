package rpc

import (
	"errors"
	"testing"

	capnp "capnproto.org/go/capnp/v3"
	rpccp "capnproto.org/go/capnp/v3/std/capnp/rpc"
)

// guardMsg builds one rpc message: "finish q", "bootstrap q", "call q"
// (on an import) or "call q on t" (pipelined on question t).
func guardMsg(t *testing.T, kind string, q, on uint32) rpccp.Message {
	t.Helper()
	_, seg := capnp.NewSingleSegmentMessage(nil)
	m, err := rpccp.NewRootMessage(seg)
	if err != nil {
		t.Fatal(err)
	}
	switch kind {
	case "finish":
		f, err := m.NewFinish()
		if err != nil {
			t.Fatal(err)
		}
		f.SetQuestionId(q)
	case "bootstrap":
		b, err := m.NewBootstrap()
		if err != nil {
			t.Fatal(err)
		}
		b.SetQuestionId(q)
	case "call", "pipelined":
		c, err := m.NewCall()
		if err != nil {
			t.Fatal(err)
		}
		c.SetQuestionId(q)
		tgt, err := c.NewTarget()
		if err != nil {
			t.Fatal(err)
		}
		if kind == "call" {
			tgt.SetImportedCap(0)
			break
		}
		pa, err := tgt.NewPromisedAnswer()
		if err != nil {
			t.Fatal(err)
		}
		pa.SetQuestionId(on)
	default:
		t.Fatalf("unknown kind %q", kind)
	}
	return m
}

func TestQuestionGuard(t *testing.T) {
	type step struct {
		kind    string
		q, on   uint32
		refused bool
	}
	cases := []struct {
		name  string
		steps []step
	}{
		{"pipelining on a live question", []step{
			{"call", 1, 0, false}, {"pipelined", 2, 1, false}, {"finish", 1, 0, false},
		}},
		{"pipelined after the finish", []step{
			{"call", 1, 0, false}, {"finish", 1, 0, false}, {"pipelined", 2, 1, true},
		}},
		{"pipelined on its own freed ID", []step{
			{"call", 1, 0, false}, {"finish", 1, 0, false}, {"pipelined", 1, 1, true},
		}},
		{"pipelined on itself, never finished", []step{
			{"pipelined", 3, 3, true},
		}},
		{"a finished ID reused by a call is live again", []step{
			{"call", 1, 0, false}, {"finish", 1, 0, false}, {"call", 1, 0, false}, {"pipelined", 2, 1, false},
		}},
		{"a finished ID reused by a bootstrap is live again", []step{
			{"bootstrap", 0, 0, false}, {"finish", 0, 0, false}, {"bootstrap", 0, 0, false}, {"pipelined", 1, 0, false},
		}},
		{"a refused call does not revive its ID", []step{
			{"call", 1, 0, false}, {"call", 2, 0, false}, {"finish", 1, 0, false}, {"finish", 2, 0, false},
			{"pipelined", 2, 1, true}, {"pipelined", 3, 2, true},
		}},
		{"other questions are unaffected", []step{
			{"call", 1, 0, false}, {"call", 2, 0, false}, {"finish", 1, 0, false}, {"pipelined", 3, 2, false},
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var g questionGuard
			for i, s := range tc.steps {
				err := g.check(guardMsg(t, s.kind, s.q, s.on))
				if s.refused != (err != nil) {
					t.Fatalf("step %d (%s %d on %d): error %v, want refused=%v", i, s.kind, s.q, s.on, err, s.refused)
				}
				if err != nil && !errors.Is(err, ErrLateCall) {
					t.Fatalf("step %d: error %v does not wrap ErrLateCall", i, err)
				}
			}
		})
	}
}

func TestCheckIncoming(t *testing.T) {
	cases := []struct {
		kind    string
		q, on   uint32
		refused bool
	}{
		{"pipelined", 4, 4, true},
		{"pipelined", 4, 3, false},
		{"call", 4, 0, false},
		{"finish", 4, 0, false},
		{"bootstrap", 4, 0, false},
	}
	for _, tc := range cases {
		err := checkIncoming(guardMsg(t, tc.kind, tc.q, tc.on))
		if tc.refused != (err != nil) {
			t.Errorf("%s %d on %d: error %v, want refused=%v", tc.kind, tc.q, tc.on, err, tc.refused)
		}
		var r refusedError
		if err != nil && !errors.As(err, &r) {
			t.Errorf("%s %d on %d: error %v is not a refusal", tc.kind, tc.q, tc.on, err)
		}
	}
}
