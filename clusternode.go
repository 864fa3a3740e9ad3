package mqtthooks

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// The Core's side of a Cluster: claiming a session for a CONNECT, yielding
// one to another node, and ids that are unique across the nodes.

// joinCluster checks the options of a clustered Core and joins it.
func (c *Core) joinCluster() error {
	loader, ok := c.store.(SessionLoader)
	if !ok {
		return fmt.Errorf("%w: Options.Cluster needs a Store that is a SessionLoader, shared by every node", ErrInvalidArgument)
	}
	c.cluster, c.loader = c.opts.Cluster, loader
	if err := c.refillMsgIDs(0); err != nil {
		return err
	}
	var err error
	if perr := c.guard("Cluster.Join", SubscriberID{}, func() { err = c.cluster.Join(clusterNode{c}) }); perr != nil {
		err = perr
	}
	if err != nil {
		return fmt.Errorf("mqtthooks: joining the cluster: %w", err)
	}
	return nil
}

// nextMsgID returns the id of a new stored message. The nodes of a cluster
// share one store, so a clustered Core's ids are a block number from the
// store (unique across nodes) followed by a count of 32 bits.
func (c *Core) nextMsgID() uint64 {
	if c.cluster == nil {
		return c.msgIDs.Add(1)
	}
	for {
		v := c.msgIDs.Add(1)
		if epoch := c.msgEpoch.Load(); v&0xFFFFFFFF != 0 && v>>32 == epoch {
			return v
		} else if err := c.refillMsgIDs(epoch); err != nil {
			// The store cannot give a block: one past the last id cannot
			// collide within this node, and the write will likely fail anyway.
			c.logger.Error("mqtthooks: session store: no new block of message ids", "err", err)
			return v
		}
	}
}

// refillMsgIDs takes a new block of message ids from the store, unless
// another goroutine has replaced the block epoch already.
func (c *Core) refillMsgIDs(epoch uint64) error {
	c.msgMu.Lock()
	defer c.msgMu.Unlock()
	if c.msgEpoch.Load() != epoch {
		return nil
	}
	var g uint64
	if perr := c.guard("SessionStore.NextGeneration", SubscriberID{}, func() { g = c.store.NextGeneration() }); perr != nil {
		return perr
	}
	c.msgEpoch.Store(g)
	c.msgIDs.Store(g << 32)
	return nil
}

// claim makes this node the owner of the session of p.id for the CONNECT h,
// and installs the session the store holds for it, if any: under a new
// Generation, which fences off the node it left. e holds no session. A
// connection the previous owner lost without ending it (its node died) ends
// now: its Wills are published and OnClientOffline fires with ReasonNodeDown.
func (h *Handshake) claim(ctx context.Context, e *entry, p *plan) (*sessionState, error) {
	c := h.core
	r := &ClaimRequest{Resume: ResumeRequest{SubscriberID: p.id, Username: p.username, HasUsername: p.hasUsername,
		CleanStart: p.cleanStart, Conn: h.ci}}
	var err error
	if perr := c.guard("Cluster.Claim", p.id, func() { err = c.cluster.Claim(ctx, r) }); perr != nil {
		err = perr
	}
	if err != nil {
		if errors.Is(err, ErrResumeRefused) {
			return nil, err
		}
		return nil, fmt.Errorf("%w: claiming the session from the cluster: %w", ErrRegistration, err)
	}
	h.claimed = true
	c.stats.claimed.Add(1)
	st, _, err := c.takeFromStore(ctx, e, true)
	return st, err
}

// takeFromStore installs the session of e that the store holds, if any,
// for this node, which owns it now: under a new Generation, which fences off
// the node it left. A connection that node lost without ending it (it died)
// ends now: its Wills are published and OnClientOffline fires with
// ReasonNodeDown, or, for a session that ends with its connection,
// OnClientGone, and the session is gone. It returns the session installed,
// or nil; a session that ended stays claimed if keepClaim is set (a CONNECT
// is about to start a new one). e holds no session.
func (c *Core) takeFromStore(ctx context.Context, e *entry, keepClaim bool) (st *sessionState, stored bool, err error) {
	id := e.id
	var ss *StoredSession
	if perr := c.guard("SessionStore.LoadSession", id, func() { ss, err = c.loader.LoadSession(ctx, id) }); perr != nil {
		err = perr
	}
	if err != nil {
		return nil, false, fmt.Errorf("%w: reading the session from the store: %w", ErrRegistration, err)
	}
	if ss == nil {
		return nil, false, nil
	}
	gen, err := c.nextGeneration(id)
	if err != nil {
		return nil, false, err
	}
	b := c.store.Batch()
	b.RenewSession(id, ss.Record.Generation, gen)
	if err := c.commitWait(ctx, b, id); err != nil {
		return nil, false, fmt.Errorf("%w: renewing the session in the store: %w", ErrRegistration, err)
	}
	ss.Record.Generation = gen
	cleanup := ss.Record.Cleanup
	st, lost := c.restoreSession(ss)
	if lost == nil {
		return st, true, nil
	}
	lost.ev.Reason = ReasonNodeDown
	for _, w := range lost.wills {
		c.publishWill(ctx, id, w)
	}
	if cleanup { // it ended with its connection: the delayed Wills too, then the terminal hook
		st.moving = keepClaim
		c.endSession(ctx, e, st, hookOnClientGone, &lost.ev, nil)
		return nil, true, nil
	}
	c.sessionHook(ctx, hookOnClientOffline, &lost.ev)
	return st, true, nil
}

// Adopt takes over a session whose node is gone (see ClusterNode.Adopt).
func (n clusterNode) Adopt(ctx context.Context, id SubscriberID) error {
	c := n.c
	err := errYieldCut
	o := newOp(func(ctx context.Context, e *entry) {
		if e.state.Load() != nil {
			err = nil
			return
		}
		st, stored, terr := c.takeFromStore(ctx, e, false)
		if stored {
			c.stats.adopted.Add(1)
		}
		switch err = terr; {
		case st != nil:
			c.armTimers(st)
		case err == nil && !stored:
			c.disown(ctx, id) // nothing stored: nothing to own
		}
	})
	o.keep = true // once the cluster made this node the owner, it must run
	if derr := c.reg.do(notInHook{ctx}, id, o); derr != nil {
		return derr
	}
	return err
}

// disown gives up this node's claim on id, logging a failure.
func (c *Core) disown(ctx context.Context, id SubscriberID) {
	var err error
	if perr := c.guard("Cluster.Disown", id, func() { err = c.cluster.Disown(ctx, id) }); perr != nil {
		err = perr
	}
	if err != nil {
		c.logger.Error("mqtthooks: cluster: disown failed", "session", id.String(), "err", err)
	}
}

// clusterNode is the Core as its Cluster sees it.
type clusterNode struct{ c *Core }

var errYieldCut = errors.New("mqtthooks: the hand-over of the session did not finish")

// Yield runs the hand-over of a session to another node as a lifecycle
// operation of the session.
func (n clusterNode) Yield(ctx context.Context, r *YieldRequest) error {
	c := n.c
	if r == nil || r.Transfer == nil {
		return fmt.Errorf("%w: a YieldRequest needs Transfer", ErrInvalidArgument)
	}
	err := errYieldCut // unless the operation ends normally
	o := newOp(func(ctx context.Context, e *entry) { err = c.yield(ctx, e, r) })
	// The claimant may be a Core of this process calling from inside a
	// lifecycle operation of its own: this Core must still wait for the
	// hand-over, which cannot be queued behind that operation.
	if derr := c.reg.do(notInHook{ctx}, r.Resume.SubscriberID, o); derr != nil {
		return derr
	}
	return err
}

// yield hands the session of e over to another node (see ClusterNode.Yield).
func (c *Core) yield(ctx context.Context, e *entry, r *YieldRequest) error {
	st := e.state.Load()
	if st == nil {
		return c.transfer(ctx, e.id, r)
	}
	res := r.Resume
	st.mu.Lock()
	res.PrevUsername, res.PrevHasUsername = st.rec.Username, st.rec.HasUsername
	var last *Session
	if n := len(st.conns); n > 0 {
		last = st.conns[n-1]
	}
	st.mu.Unlock()
	cleanup := false
	if last != nil {
		last.mu.Lock()
		cleanup = last.cleanup
		last.mu.Unlock()
	}
	ok, err := c.resumeAllowed(ctx, &res)
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("%w: session %s belongs to another user", ErrResumeRefused, e.id)
	}
	st.moving = true // its end here is not the end of its ownership
	switch {
	case res.CleanStart:
		last := c.takeOver(ctx, st, true)
		ev := st.offlineEvent(ReasonCleanStart)
		if last != nil && last.version.IsV5() {
			ev.Code, ev.HasCode = CodeSessionTakenOver, true
		}
		c.endSession(ctx, e, st, hookOnClientGone, &ev, nil)
		return c.transfer(ctx, e.id, r)
	case last != nil && cleanup:
		c.stats.takeovers.Add(1)
		last := c.takeOver(ctx, st, true)
		ev := last.event(ReasonTakenOver)
		if last.version.IsV5() {
			ev.Code, ev.HasCode = CodeSessionTakenOver, true
		}
		c.endSession(ctx, e, st, hookOnClientGone, &ev, nil)
		return c.transfer(ctx, e.id, r)
	case last != nil:
		c.stats.takeovers.Add(1)
		last := c.takeOver(ctx, st, false)
		ev := last.event(ReasonTakenOver)
		if last.version.IsV5() {
			ev.Code, ev.HasCode = CodeSessionTakenOver, true
		}
		c.sessionHook(ctx, hookOnClientOffline, &ev)
	}
	// The session leaves as an offline one: its record says so, and that
	// write, durable, means every earlier one is (a store applies batches in
	// order). Should the claimant never attach, whoever holds it next finds
	// when it expires.
	c.sched.cancel(st.expiryItem)
	c.sched.cancel(st.willItem)
	st.expiryItem, st.willItem = nil, nil
	st.mu.Lock()
	if st.rec.Connected || st.rec.ExpiresAt.IsZero() {
		st.rec.ExpiresAt = time.Time{}
		if st.rec.Expiry > 0 {
			st.rec.ExpiresAt = time.Now().Add(st.rec.Expiry)
		}
	}
	st.rec.Connected = false
	j := st.journal()
	j.updateRecord()
	flushed := make(chan error, 1)
	j.commit(func(err error) { flushed <- err })
	st.mu.Unlock()
	if err := waitFlushed(ctx, flushed); err != nil {
		st.moving = false
		c.armTimers(st)
		return fmt.Errorf("mqtthooks: writing the session before its hand-over: %w", err)
	}
	if err := c.transfer(ctx, e.id, r); err != nil {
		st.moving = false
		c.armTimers(st) // it stays here, offline
		return err
	}
	// Forget it: the store keeps it, for its new owner.
	c.stats.yielded.Add(1)
	st.mu.Lock()
	st.stored = false // no more writes from here, whatever still holds it
	st.ended = true
	c.stats.handedOver.Add(uint64(st.q.clear(nil)))
	subscribed := len(st.subs) > 0
	st.clearSubscriptions()
	st.mu.Unlock()
	if subscribed {
		c.routerRemoveAll(st.rec.ID, st.rec.Generation)
	}
	e.mu.Lock()
	if e.state.Load() == st {
		e.state.Store(nil)
	}
	e.mu.Unlock()
	c.stats.sessions.Add(-1)
	return nil
}

// notInHook hides that its context is a hook's (see insideHook).
type notInHook struct{ context.Context }

func (c notInHook) Value(key any) any {
	if _, ok := key.(hookCtxKey); ok {
		return nil
	}
	return c.Context.Value(key)
}

func waitFlushed(ctx context.Context, flushed <-chan error) error {
	select {
	case err := <-flushed:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// transfer calls r.Transfer.
func (c *Core) transfer(ctx context.Context, id SubscriberID, r *YieldRequest) error {
	var err error
	if perr := c.guard("YieldRequest.Transfer", id, func() { err = r.Transfer(ctx) }); perr != nil {
		err = perr
	}
	return err
}
