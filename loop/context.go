package loop

import "context"

// markerKey is the context key of a task's marker.
type markerKey struct{}

// marker records that a context belongs to task seq of loop l; parent is
// the marker of the context that task was given (the task that waits for
// this one, possibly on another loop).
type marker struct {
	l      *Loop
	seq    uint64
	parent *marker
}

// taskCtx is the context a task receives: its caller's, plus its marker.
// One allocation per task.
type taskCtx struct {
	context.Context
	m marker
}

func (c *taskCtx) Value(key any) any {
	if key == (markerKey{}) {
		return &c.m
	}
	return c.Context.Value(key)
}

func markerOf(ctx context.Context) *marker {
	m, _ := ctx.Value(markerKey{}).(*marker)
	return m
}

// taskContext derives the context for work run inline on the loop, in the
// task running now.
func (l *Loop) taskContext(ctx context.Context) context.Context {
	return l.taskContextSeq(ctx, l.running.Load())
}

func (l *Loop) taskContextSeq(ctx context.Context, seq uint64) context.Context {
	return &taskCtx{Context: ctx, m: marker{l: l, seq: seq, parent: markerOf(ctx)}}
}

// checkDeadlock fails a request made off the loop with the context of a task
// of this loop that still runs: that task, or one of the tasks of other
// loops that it waits for, would be waiting for this request, which cannot
// run before the task returns.
func (l *Loop) checkDeadlock(ctx context.Context) error {
	depth := 0
	for m := markerOf(ctx); m != nil; m = m.parent {
		if m.l == l && m.seq != 0 && l.running.Load() == m.seq {
			return deadlockError(depth)
		}
		if m.l != l {
			depth++
		}
	}
	return nil
}
