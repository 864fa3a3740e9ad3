package mqtthooks

import (
	"context"
	"fmt"
	"runtime/debug"
)

// The Core calls the broker's code at fixed points: the Router, PublishWill,
// ResumePolicy, ClientIDGenerator, the SessionStore and Conn.Disconnect. A
// panic in one of them must not leave a session half changed, so each call is
// made through guard: the panic is logged with its stack and becomes an
// error, and the Core finishes what it was doing as if the call had failed.
// Hooks need no guard here: the Chain recovers their panics itself.

// guard calls fn, a call into the broker's code named what, and returns an
// error if it panicked.
func (c *Core) guard(what string, id SubscriberID, fn func()) (err error) {
	defer func() {
		if v := recover(); v != nil {
			c.logger.Error("mqtthooks: panic in "+what, "session", id.String(), "panic", v, "stack", string(debug.Stack()))
			err = fmt.Errorf("mqtthooks: %s panicked: %v", what, v)
		}
	}()
	fn()
	return nil
}

func (c *Core) routerAdd(id SubscriberID, gen uint64, sub Subscription) {
	_ = c.guard("Router.Add", id, func() { c.router.Add(id, gen, sub) })
}

func (c *Core) routerRemove(id SubscriberID, gen uint64, filter string) {
	_ = c.guard("Router.Remove", id, func() { c.router.Remove(id, gen, filter) })
}

func (c *Core) routerRemoveAll(id SubscriberID, gen uint64) {
	_ = c.guard("Router.RemoveAll", id, func() { c.router.RemoveAll(id, gen) })
}

// routerMoved tells the Router that the subscriptions of a session another
// node owns now leave this one: Moved for a MovingRouter, RemoveAll for
// another.
func (c *Core) routerMoved(id SubscriberID, gen uint64) {
	if r, ok := c.router.(MovingRouter); ok {
		_ = c.guard("Router.Moved", id, func() { r.Moved(id, gen) })
		return
	}
	c.routerRemoveAll(id, gen)
}

// resumeAllowed asks the ResumePolicy; a panic refuses, with ErrRegistration.
func (c *Core) resumeAllowed(ctx context.Context, r *ResumeRequest) (ok bool, err error) {
	if perr := c.guard("ResumePolicy", r.SubscriberID, func() { ok = c.opts.ResumePolicy(ctx, r) }); perr != nil {
		return false, fmt.Errorf("%w: %w", ErrRegistration, perr)
	}
	return ok, nil
}

// nextGeneration returns the number of a new life: the store's, which must
// outlive the process, or the Core's own count without a store.
func (c *Core) nextGeneration(id SubscriberID) (gen uint64, err error) {
	if c.store == nil {
		return c.gens.Add(1), nil
	}
	if perr := c.guard("SessionStore.NextGeneration", id, func() { gen = c.store.NextGeneration() }); perr != nil {
		return 0, fmt.Errorf("%w: %w", ErrRegistration, perr)
	}
	return gen, nil
}

// publishWill hands w to the broker.
func (c *Core) publishWill(ctx context.Context, id SubscriberID, w *Will) {
	c.stats.willsPublished.Add(1)
	if c.opts.PublishWill != nil {
		_ = c.guard("PublishWill", id, func() { c.opts.PublishWill(ctx, id, w) })
	}
}

// disconnect asks the broker to end s's connection with code, on a goroutine
// of its own, since Conn.Disconnect may block.
func (c *Core) disconnect(s *Session, code ReasonCode) {
	c.codes.disconnects[code].Add(1)
	c.conns.Add(1)
	go func() {
		defer c.conns.Done()
		_ = c.guard("Conn.Disconnect", s.id, func() { s.conn.Disconnect(code) })
	}()
}
