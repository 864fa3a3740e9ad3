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
	if !c.deleteEnded(ctx, p.id) { // a life that ended here and that the store still holds
		h.claimStored = true
		return nil, fmt.Errorf("%w: the session store still holds a session that ended here", ErrRegistration)
	}
	st, stored, err := c.takeFromStore(ctx, e, true)
	h.claimStored = stored || err != nil // when the store failed, it may hold the session
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
// If the store fails, the Core tries again later on its own, and Adopt
// returns the error.
func (n clusterNode) Adopt(ctx context.Context, id SubscriberID) error {
	err := n.adopt(ctx, id)
	if err != nil {
		n.c.adoptLater(id, time.Second)
	}
	return err
}

func (n clusterNode) adopt(ctx context.Context, id SubscriberID) error {
	c := n.c
	err := errYieldCut
	o := newOp(func(ctx context.Context, e *entry) {
		if e.state.Load() != nil {
			err = nil
			return
		}
		if !c.deleteEnded(ctx, id) {
			err = fmt.Errorf("%w: the session store still holds a session that ended here", ErrRegistration)
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
	if errors.Is(err, ErrNotOwner) { // another node took it meanwhile: nothing to give up
		c.logger.Debug("mqtthooks: cluster: disown: the session is another node's", "session", id.String())
		return
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
		if !c.deleteEnded(ctx, e.id) { // its end must reach the store before another node reads it
			return fmt.Errorf("%w: the session store still holds a session that ended here", ErrRegistration)
		}
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
	// From this write on, nothing more is written here: a message routed
	// now finds no session, rather than a write the next owner would not
	// see (it may read the store before the write lands).
	st.ended, st.leaving = true, true
	c.dropUnsettledInbound(st, st.journal())
	flushed := st.journal().writeRecord()
	st.mu.Unlock()
	stay := func() { // the session stays here, offline
		st.mu.Lock()
		st.ended, st.leaving = false, false
		st.mu.Unlock()
		st.moving = false
		c.armTimers(st)
	}
	if err := waitFlushed(ctx, flushed); err != nil {
		if errors.Is(err, ErrStaleGeneration) { // it was another node's already
			c.forget(e, st, false)
			return c.transfer(ctx, e.id, r)
		}
		stay()
		return fmt.Errorf("mqtthooks: writing the session before its hand-over: %w", err)
	}
	if err := c.transfer(ctx, e.id, r); err != nil {
		stay()
		return err
	}
	c.stats.yielded.Add(1)
	c.forget(e, st, true) // the store keeps it, for its new owner
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

// owned reports whether this node still owns st, a clustered session it
// holds: it writes the session's record and waits, and the store refuses
// the write if another node took the session over (its generation moved on)
// while this one was cut off from the cluster. Then st is forgotten, with no
// hook and no Will (the node that took it reports its end), and owned
// reports false. Without a cluster, or when the store cannot tell (another
// error), it reports true.
func (c *Core) owned(ctx context.Context, e *entry, st *sessionState) bool {
	if c.cluster == nil {
		return true
	}
	st.mu.Lock()
	written := st.journal().writeRecord()
	st.mu.Unlock()
	err := waitFlushed(ctx, written)
	if !errors.Is(err, ErrStaleGeneration) {
		return true
	}
	c.logger.Warn("mqtthooks: cluster: another node took the session over while this one was cut off; forgetting it",
		"session", st.rec.ID.String())
	c.forget(e, st, false)
	return false
}

// recheckOwner checks, in an operation of id, whether this node still owns
// the session it holds for id, after the store refused a write for it as
// stale; if not, the session is forgotten (see owned). One check per id runs
// at a time: the writes refused meanwhile need no other.
func (c *Core) recheckOwner(id SubscriberID) {
	if _, busy := c.rechecks.LoadOrStore(id, true); busy || c.closed.Load() {
		return
	}
	go func() {
		defer c.rechecks.Delete(id)
		ctx, cancel := context.WithTimeout(context.Background(), c.opts.HookTimeout)
		defer cancel()
		_ = c.reg.do(ctx, id, newOp(func(ctx context.Context, e *entry) {
			if st := e.state.Load(); st != nil {
				c.owned(ctx, e, st)
			}
		}))
	}()
}

// forget drops st, a clustered session that is another node's now, from
// this node, firing nothing: its connections are ended as taken over, its
// timers stopped, its subscriptions out of the Router (Moved when this node
// just handed it over, RemoveAll when another node took it earlier), its
// messages counted as handed over; the store keeps it for its owner.
func (c *Core) forget(e *entry, st *sessionState, moved bool) {
	for _, s := range st.snapshotConns() {
		c.kick(s, errTakenOver)
		c.detach(st, s)
	}
	c.sched.cancel(st.expiryItem)
	c.sched.cancel(st.willItem)
	st.expiryItem, st.willItem = nil, nil
	st.mu.Lock()
	wasStored := st.stored
	st.stored = false // no more writes from here, whatever still holds it
	st.ended, st.leaving = true, true
	c.stats.handedOver.Add(uint64(st.q.clear(nil)))
	subscribed := len(st.subs) > 0
	st.clearSubscriptions()
	st.mu.Unlock()
	switch {
	case subscribed && moved:
		c.routerMoved(st.rec.ID, st.rec.Generation)
	case subscribed:
		c.routerRemoveAll(st.rec.ID, st.rec.Generation)
	}
	e.mu.Lock()
	if e.state.Load() == st {
		e.state.Store(nil)
	}
	e.mu.Unlock()
	c.stats.sessions.Add(-1)
	if f, ok := c.store.(SessionForgetter); ok && wasStored {
		_ = c.guard("SessionStore.Forget", st.rec.ID, func() { f.Forget(st.rec.ID) })
	}
}

// deleteFirst deletes a clustered node's stored session before it ends,
// so that its hooks fire only if the store still took this node's word:
// fenced reports that it refused the delete as stale (another node took
// the session over; st is forgotten, and endSession fires nothing). A
// delete that fails otherwise is tried again; if it never succeeds, the
// session ends here anyway, but keepClaim tells endSession not to disown
// it, since the store still holds a life another node would end again.
func (c *Core) deleteFirst(ctx context.Context, e *entry, st *sessionState, replacedBy *sessionState) (fenced, keepClaim bool) {
	st.mu.Lock()
	stored := st.stored && (replacedBy == nil || !replacedBy.stored)
	if stored {
		st.stored = false // endSession deletes nothing more
	}
	st.mu.Unlock()
	if !stored {
		return false, false
	}
	var err error
	for attempt := range 3 {
		b := c.store.Batch()
		b.DeleteSession(st.rec.ID, st.rec.Generation)
		if err = c.commitWait(ctx, b, st.rec.ID); err == nil || errors.Is(err, ErrStaleGeneration) || ctx.Err() != nil {
			break
		}
		c.logger.Warn("mqtthooks: session store: delete failed, trying again", "session", st.rec.ID.String(),
			"attempt", attempt+1, "err", err)
	}
	switch {
	case err == nil:
		return false, false
	case errors.Is(err, ErrStaleGeneration):
		st.mu.Lock()
		st.stored = true // forget tells the store
		st.mu.Unlock()
		c.logger.Warn("mqtthooks: cluster: another node took the session over while this one was cut off; forgetting it",
			"session", st.rec.ID.String())
		if replacedBy != nil {
			c.stats.sessions.Add(1) // forget gives back a slot that the new life keeps
		}
		c.forget(e, st, false)
		return true, false
	}
	c.logger.Error("mqtthooks: session store: delete failed; the session stays claimed by this node until it succeeds",
		"session", st.rec.ID.String(), "err", err)
	c.unended.Store(st.rec.ID, st.rec.Generation)
	c.deleteLater(st.rec.ID, time.Second)
	return false, true
}

// deleteEnded deletes a life that ended here but that the store still
// holds (see unended), and then lets the cluster forget its owner. It
// reports whether the store has no such life left.
func (c *Core) deleteEnded(ctx context.Context, id SubscriberID) bool {
	v, ok := c.unended.Load(id)
	if !ok {
		return true
	}
	b := c.store.Batch()
	b.DeleteSession(id, v.(uint64))
	if err := c.commitWait(ctx, b, id); err != nil && !errors.Is(err, ErrStaleGeneration) {
		return false
	}
	c.unended.Delete(id)
	return true
}

// deleteLater tries deleteEnded for id again after d, doubling d up to a
// minute, in an operation of the session; then it disowns the session.
func (c *Core) deleteLater(id SubscriberID, d time.Duration) {
	if c.closed.Load() {
		return
	}
	c.sched.schedule(time.Now().Add(d), func() {
		_ = c.reg.do(context.Background(), id, newOp(func(ctx context.Context, e *entry) {
			if _, ok := c.unended.Load(id); !ok || e.state.Load() != nil {
				return // done, or a new life began here
			}
			if !c.deleteEnded(ctx, id) {
				c.deleteLater(id, min(2*d, time.Minute))
				return
			}
			c.disown(ctx, id)
		}))
	})
}

// Isolated checks every session this node holds with a fenced write, when
// the Cluster may have lost its place (see ClusterNode.Isolated): those
// another node took over are forgotten; the others stay. Dropping them all
// would leave the ones nobody adopted (a lease that held after all) served
// by nobody, and their subscriptions gone from the Router, so that messages
// for them would be acknowledged and stored nowhere.
func (n clusterNode) Isolated(ctx context.Context) {
	c := n.c
	c.reg.each(func(e *entry) bool {
		_ = c.reg.do(notInHook{ctx}, e.id, newOp(func(ctx context.Context, e *entry) {
			if st := e.state.Load(); st != nil {
				c.owned(ctx, e, st)
			}
		}))
		return ctx.Err() == nil
	})
}

// Disowned forgets the session of id, which another node owns now (see
// ClusterNode.Disowned).
func (n clusterNode) Disowned(ctx context.Context, id SubscriberID) error {
	c := n.c
	return c.reg.do(notInHook{ctx}, id, newOp(func(ctx context.Context, e *entry) {
		if st := e.state.Load(); st != nil {
			c.logger.Warn("mqtthooks: cluster: another node owns the session now; forgetting it", "session", id.String())
			c.forget(e, st, false)
		}
	}))
}

// adoptLater tries Adopt for id again after d, doubling d up to a minute
// while it fails: a session this node owns must not be left without its
// timers because the store failed once.
func (c *Core) adoptLater(id SubscriberID, d time.Duration) {
	if c.closed.Load() {
		return
	}
	c.sched.schedule(time.Now().Add(d), func() {
		ctx, cancel := context.WithTimeout(context.Background(), c.opts.HookTimeout)
		defer cancel()
		if err := (clusterNode{c}).adopt(ctx, id); err != nil {
			c.logger.Warn("mqtthooks: cluster: taking over a session failed; trying again", "session", id.String(), "err", err)
			c.adoptLater(id, min(2*d, time.Minute))
		}
	})
}
