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
// and serves one operation. Once the operation is over it is done for good,
// like a canceled context: a hook that kept it, against the rules, sees it
// done rather than reused.
type opCtx struct {
	mu       sync.Mutex
	parent   context.Context
	deadline time.Time
	hook     bool            // a lifecycle hook's context: calls made with it are queued
	over     bool            // released: done for good
	real     context.Context // made by the first Done
	cancel   context.CancelFunc
}

// start readies c for an operation of a lifecycle hook, bounded by timeout.
func (c *opCtx) start(timeout time.Duration) {
	c.startWith(context.Background(), timeout)
	c.mu.Lock()
	c.hook = true
	c.mu.Unlock()
}

// startWith readies c for a step bounded by timeout, within parent.
func (c *opCtx) startWith(parent context.Context, timeout time.Duration) {
	c.mu.Lock()
	c.parent, c.deadline, c.hook, c.over = parent, time.Now().Add(timeout), false, false
	c.mu.Unlock()
}

// release ends the context: it is done from now on.
func (c *opCtx) release() {
	c.mu.Lock()
	cancel := c.cancel
	c.over = true
	c.mu.Unlock()
	if cancel != nil {
		cancel()
	}
}

// Deadline returns the deadline, or the parent's if that is sooner.
func (c *opCtx) Deadline() (time.Time, bool) {
	c.mu.Lock()
	parent, deadline := c.parent, c.deadline
	c.mu.Unlock()
	if parent == nil {
		return time.Time{}, false
	}
	if d, ok := parent.Deadline(); ok && d.Before(deadline) {
		return d, true
	}
	return deadline, true
}

// Done returns a channel closed at the deadline, when the parent is done, or
// when the operation is over.
func (c *opCtx) Done() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.real == nil {
		if c.over || c.parent == nil {
			return closedChan
		}
		c.real, c.cancel = context.WithDeadline(c.parent, c.deadline)
	}
	return c.real.Done()
}

var closedChan = func() chan struct{} {
	ch := make(chan struct{})
	close(ch)
	return ch
}()

// Err returns the parent's error, context.DeadlineExceeded once the deadline
// has passed, context.Canceled once the operation is over, or nil.
func (c *opCtx) Err() error {
	c.mu.Lock()
	real, parent, deadline, over := c.real, c.parent, c.deadline, c.over
	c.mu.Unlock()
	switch {
	case real != nil:
		return real.Err()
	case over || parent == nil:
		return context.Canceled
	}
	if err := parent.Err(); err != nil {
		return err
	}
	if time.Since(deadline) >= 0 { // monotonic: cheaper than time.Now
		return context.DeadlineExceeded
	}
	return nil
}

// Value marks a hook's context, and otherwise asks the parent.
func (c *opCtx) Value(key any) any {
	c.mu.Lock()
	hook, parent := c.hook, c.parent
	c.mu.Unlock()
	if hook && key == (hookCtxKey{}) {
		return true
	}
	if parent == nil {
		return nil
	}
	return parent.Value(key)
}
