package mqtthooks

import (
	"context"
	"slices"
	"time"
)

// The lifecycle operations below run inside an operation of the session's
// SubscriberID (see registry.go): they own the session state, call hooks, the
// Router and PublishWill with ctx, the operation's context, and never hold a
// lock while doing so.

// endCause says how a connection ended.
type endCause struct {
	reason  Reason
	code    ReasonCode
	hasCode bool
	will    bool // the connection's Will is due
}

func (c endCause) apply(ev *SessionEvent) {
	ev.Reason, ev.Code, ev.HasCode = c.reason, c.code, c.hasCode
}

// detach removes s from the session's connections. It reports false when s
// was no longer attached.
func (c *Core) detach(st *sessionState, s *Session) bool {
	st.mu.Lock()
	i := slices.Index(st.conns, s)
	if i >= 0 {
		st.conns = slices.Delete(st.conns, i, i+1)
	}
	st.mu.Unlock()
	if i < 0 {
		return false
	}
	s.mu.Lock()
	s.attached = false
	if s.endErr == nil {
		s.endErr = ErrSessionEnded
	}
	s.mu.Unlock()
	s.stopReauth()
	c.stats.connections.Add(-1)
	return true
}

// kick ends s from the Core's side: the broker learns of it through
// Conn.Disconnect once the CONNACK is out, and through Pull in any case.
func (c *Core) kick(s *Session, end *EndedError) {
	s.mu.Lock()
	s.endErr = end
	s.mu.Unlock()
	if s.started.Load() {
		c.conns.Go(func() { s.conn.Disconnect(end.Code) })
	}
}

// endConnection runs when connection s of the session ends. Its Will becomes
// due if cause says so; when it was the last connection, the session goes
// offline or, with cleanup on disconnect, is gone.
func (c *Core) endConnection(ctx context.Context, e *entry, st *sessionState, s *Session, cause endCause) {
	if !c.detach(st, s) {
		return
	}
	c.handOverQueue(st, s)
	s.mu.Lock()
	cleanup, expiry := s.cleanup, s.expiry
	s.mu.Unlock()
	last := !st.online()
	if cause.will {
		c.willDue(ctx, st, s, last && cleanup)
	}
	if !last {
		return
	}
	ev := &s.endEvent
	*ev = s.event(cause.reason)
	cause.apply(ev)
	if cleanup {
		c.endSession(ctx, e, st, hookOnClientGone, ev, false)
		return
	}
	c.goOffline(ctx, e, st, ev, expiry)
}

// handOverQueue deals with the queue of a connection that left: the session
// keeps it while offline; with other connections left (multiple sessions)
// they get its messages (balance) or already have copies (fanout).
func (c *Core) handOverQueue(st *sessionState, s *Session) {
	st.mu.Lock()
	defer st.mu.Unlock()
	if len(st.conns) == 0 {
		st.q.owner = nil
		st.q.notified = false
		if len(st.q.inflight) == 0 {
			st.q.inflight = nil // an idle offline session keeps no array
		}
		return
	}
	next := st.conns[0]
	mine := s.q
	if mine == &st.q { // the session's own queue passes to the next connection
		mine = next.q
		next.q = &st.q
		st.q.adopt(next, st.q.set)
	}
	if st.q.set.DeliverMode == DeliverBalance {
		for _, m := range mine.takeAll() {
			st.q.pending.pushBack(m)
		}
		return
	}
	c.stats.discarded.Add(uint64(mine.clear())) // fanout: copies
}

// willDue publishes the Will of s now, or arms its delay. A v5 Will with a
// delay waits, unless the session ends now; a resume cancels it.
func (c *Core) willDue(ctx context.Context, st *sessionState, s *Session, sessionEnds bool) {
	w := s.will
	if w == nil {
		return
	}
	delay := time.Duration(w.Properties.WillDelayInterval) * time.Second
	if !s.version.IsV5() || delay == 0 || sessionEnds {
		c.publishWill(ctx, s.id, w)
		return
	}
	st.mu.Lock()
	old := st.rec.Will
	at := time.Now().Add(delay)
	st.rec.Will, st.rec.WillAt = w, at
	id, gen := st.rec.ID, st.rec.Generation
	st.mu.Unlock()
	c.sched.cancel(st.willItem)
	st.willItem = c.sched.schedule(at, func() { c.delayedWill(id, gen) })
	if old != nil {
		c.publishWill(ctx, s.id, old) // an earlier connection's delayed Will is due no later than this one's
	}
}

// publishWill hands w to the broker.
func (c *Core) publishWill(ctx context.Context, id SubscriberID, w *Will) {
	c.stats.willsPublished.Add(1)
	if c.opts.PublishWill != nil {
		c.opts.PublishWill(ctx, id, w)
	}
}

// publishPendingWill publishes the session's delayed Will, if one waits.
func (c *Core) publishPendingWill(ctx context.Context, st *sessionState) {
	st.mu.Lock()
	w := st.rec.Will
	st.rec.Will, st.rec.WillAt = nil, time.Time{}
	st.mu.Unlock()
	c.sched.cancel(st.willItem)
	st.willItem = nil
	if w != nil {
		c.publishWill(ctx, st.rec.ID, w)
	}
}

// endSession ends the life of the session: its pending Will is published, its
// subscriptions are removed, the terminal hook h (OnClientGone or
// OnSessionExpired) fires with ev, and its state is deleted. A session that is
// replaced by a new one in the same operation keeps its MaxSessions slot, so
// that no other CONNECT can take it in between (OQ15).
func (c *Core) endSession(ctx context.Context, e *entry, st *sessionState, h hookID, ev *SessionEvent, replaced bool) {
	c.publishPendingWill(ctx, st)
	c.sched.cancel(st.expiryItem)
	st.expiryItem = nil
	st.mu.Lock()
	subscribed := len(st.rec.Subscriptions) > 0
	st.rec.Subscriptions = nil
	st.ended = true
	c.stats.discarded.Add(uint64(st.q.clear()))
	for _, s := range st.conns {
		if s.q != &st.q {
			c.stats.discarded.Add(uint64(s.q.clear()))
		}
	}
	st.mu.Unlock()
	if subscribed {
		c.router.RemoveAll(st.rec.ID)
	}
	if h == hookOnSessionExpired {
		c.chain.Snapshot().OnSessionExpired(ctx, ev)
	} else {
		c.chain.Snapshot().OnClientGone(ctx, ev)
	}
	if err := c.store.Delete(ctx, st.rec.ID); err != nil {
		c.logger.Error("mqtthooks: session store: delete failed", "session", st.rec.ID.String(), "err", err)
	}
	e.mu.Lock()
	e.state.Store(nil)
	e.mu.Unlock()
	if !replaced {
		c.stats.sessions.Add(-1)
	}
}

// goOffline fires OnClientOffline and arms the session's expiry and delayed
// Will.
func (c *Core) goOffline(ctx context.Context, e *entry, st *sessionState, ev *SessionEvent, expiry time.Duration) {
	c.chain.Snapshot().OnClientOffline(ctx, ev)
	now := time.Now()
	st.mu.Lock()
	st.rec.ExpiresAt = time.Time{}
	if expiry > 0 {
		st.rec.ExpiresAt = now.Add(expiry)
	}
	st.mu.Unlock()
	c.armTimers(st)
	if c.store.Durable() {
		st.mu.Lock()
		st.snapshotQueue()
		st.mu.Unlock()
	}
	c.save(ctx, st)
}

// save hands the session's record to the store; a failure is logged, since
// the session lives on in memory.
func (c *Core) save(ctx context.Context, st *sessionState) {
	if err := c.store.Save(ctx, &st.rec); err != nil {
		c.logger.Error("mqtthooks: session store: save failed", "session", st.rec.ID.String(), "err", err)
	}
}

// armTimers schedules the expiry and the delayed Will of an offline session.
func (c *Core) armTimers(st *sessionState) {
	st.mu.Lock()
	id, gen := st.rec.ID, st.rec.Generation
	expiresAt, willAt, will := st.rec.ExpiresAt, st.rec.WillAt, st.rec.Will
	st.mu.Unlock()
	if !expiresAt.IsZero() {
		st.expiryItem = c.sched.schedule(expiresAt, func() { c.expire(id, gen) })
	}
	if will != nil && st.willItem == nil && (expiresAt.IsZero() || willAt.Before(expiresAt)) {
		st.willItem = c.sched.schedule(willAt, func() { c.delayedWill(id, gen) })
	}
}

// cancelTimers stops the expiry and delayed Will of a session that resumes;
// the delayed Will is dropped.
func (c *Core) cancelTimers(st *sessionState) {
	c.sched.cancel(st.expiryItem)
	c.sched.cancel(st.willItem)
	st.expiryItem, st.willItem = nil, nil
	st.mu.Lock()
	st.rec.Will, st.rec.WillAt, st.rec.ExpiresAt = nil, time.Time{}, time.Time{}
	st.mu.Unlock()
}

// expire ends an offline session whose expiry interval passed. The timer may
// be stale: the session may have resumed, and gone offline again with a later
// expiry, while this waited for a worker; its deadline decides.
func (c *Core) expire(id SubscriberID, gen uint64) {
	_ = c.reg.do(context.Background(), id, newOp(func(ctx context.Context, e *entry) {
		st := e.state.Load()
		if st == nil || st.rec.Generation != gen || st.online() || !due(st.rec.ExpiresAt) {
			return
		}
		st.expiryItem = nil
		ev := st.offlineEvent(ReasonExpired)
		c.stats.expired.Add(1)
		c.endSession(ctx, e, st, hookOnSessionExpired, &ev, false)
	}))
}

// delayedWill publishes a delayed Will whose delay passed; like expire, it
// checks that the Will waiting now is the one that is due. (The session may be
// online: another connection of a multiple session does not cancel it.)
func (c *Core) delayedWill(id SubscriberID, gen uint64) {
	_ = c.reg.do(context.Background(), id, newOp(func(ctx context.Context, e *entry) {
		st := e.state.Load()
		if st == nil || st.rec.Generation != gen || st.rec.Will == nil || !due(st.rec.WillAt) {
			return
		}
		st.willItem = nil
		c.publishPendingWill(ctx, st)
	}))
}

// takeOver ends every connection of the session, making their Wills due. It
// returns the last of them and whether it had cleanup on disconnect.
func (c *Core) takeOver(ctx context.Context, st *sessionState, sessionEnds bool) (last *Session, cleanup bool) {
	conns := st.snapshotConns()
	for _, s := range conns {
		c.kick(s, errTakenOver) // first: its Pull must tell the takeover, not a plain end
		c.detach(st, s)
		s.mu.Lock()
		cleanup = s.cleanup
		s.mu.Unlock()
		last = s
	}
	for _, s := range conns {
		c.willDue(ctx, st, s, sessionEnds || cleanup)
	}
	return last, cleanup
}

// adminDisconnect ends the session's connections for an administrator.
func (c *Core) adminDisconnect(ctx context.Context, e *entry, st *sessionState, cleanup bool) {
	conns := st.snapshotConns()
	if cleanup {
		for _, s := range conns {
			c.kick(s, errAdminDisconnect)
			c.detach(st, s)
			c.willDue(ctx, st, s, true)
		}
		ev := st.offlineEvent(ReasonAdmin)
		if len(conns) > 0 {
			ev = conns[len(conns)-1].event(ReasonAdmin)
			ev.Code, ev.HasCode = CodeAdministrativeAction, ev.ProtocolVersion.IsV5()
		}
		c.endSession(ctx, e, st, hookOnClientGone, &ev, false)
		return
	}
	for _, s := range conns {
		c.kick(s, errAdminDisconnect)
		c.endConnection(ctx, e, st, s, endCause{reason: ReasonAdmin, code: CodeAdministrativeAction,
			hasCode: s.version.IsV5(), will: true})
	}
}

// shutdownSession ends the session's connections at Shutdown. Offline
// sessions fire nothing; with a store that is not durable their delayed Wills
// are published, since they end with the process.
func (c *Core) shutdownSession(ctx context.Context, e *entry, st *sessionState, durable bool) {
	for _, s := range st.snapshotConns() {
		c.kick(s, errServerShutdown)
		c.endConnection(ctx, e, st, s, endCause{reason: ReasonShutdown, code: CodeServerShuttingDown,
			hasCode: s.version.IsV5(), will: true})
	}
	if !durable && e.state.Load() != nil {
		c.publishPendingWill(ctx, st)
	}
}

// due reports whether the deadline t is set and has passed.
func due(t time.Time) bool { return !t.IsZero() && !time.Now().Before(t) }
