package mqtthooks

import (
	"context"
	"sync"
	"time"
)

// hookCtxKey marks the contexts the Core hands to lifecycle hooks.
type hookCtxKey struct{}

// opCtx is the context of one lifecycle operation's hooks, or of one step of
// a CONNECT: a deadline on top of a parent, built without a timer. Most
// plugins never call Done, so the timer (a real context.WithDeadline) is made
// only when one does; Err compares the clock with the deadline meanwhile.
// That keeps a whole connect-disconnect cycle to a handful of allocations.
//
// An opCtx lives in the value that runs the operation (an op, a Handshake)
// and is reused by its next operation: a hook must not keep its context after
// it returns, which the context package asks of every callee anyway.
type opCtx struct {
	parent   context.Context
	deadline time.Time
	hook     bool // a lifecycle hook's context: calls made with it are queued

	mu     sync.Mutex
	real   context.Context // made by the first Done
	cancel context.CancelFunc
}

// start readies c for an operation of a lifecycle hook, bounded by timeout.
func (c *opCtx) start(timeout time.Duration) {
	c.startWith(context.Background(), timeout)
	c.hook = true
}

// startWith readies c for a step bounded by timeout, within parent.
func (c *opCtx) startWith(parent context.Context, timeout time.Duration) {
	c.parent, c.deadline, c.hook = parent, time.Now().Add(timeout), false
}

// release stops the timer of a context whose Done was called.
func (c *opCtx) release() {
	c.mu.Lock()
	cancel := c.cancel
	c.real, c.cancel = nil, nil
	c.mu.Unlock()
	if cancel != nil {
		cancel()
	}
}

// Deadline returns the deadline, or the parent's if that is sooner.
func (c *opCtx) Deadline() (time.Time, bool) {
	if d, ok := c.parent.Deadline(); ok && d.Before(c.deadline) {
		return d, true
	}
	return c.deadline, true
}

// Done returns a channel closed at the deadline or when the parent is done.
func (c *opCtx) Done() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.real == nil {
		c.real, c.cancel = context.WithDeadline(c.parent, c.deadline)
	}
	return c.real.Done()
}

// Err returns the parent's error, context.DeadlineExceeded once the deadline
// has passed, or nil.
func (c *opCtx) Err() error {
	c.mu.Lock()
	real := c.real
	c.mu.Unlock()
	if real != nil {
		return real.Err()
	}
	if err := c.parent.Err(); err != nil {
		return err
	}
	if time.Since(c.deadline) >= 0 { // monotonic: cheaper than time.Now
		return context.DeadlineExceeded
	}
	return nil
}

// Value marks a hook's context, and otherwise asks the parent.
func (c *opCtx) Value(key any) any {
	if c.hook && key == (hookCtxKey{}) {
		return true
	}
	return c.parent.Value(key)
}
