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
		st.rec.ConnectionWills = st.connectionWills() // written with the record's next change
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
		c.disconnect(s, end.Code)
	}
}

// endConnection runs when connection s of the session ends. Its Will becomes
// due if cause says so; when it was the last connection, the session goes
// offline or, with cleanup on disconnect, is gone.
func (c *Core) endConnection(ctx context.Context, e *entry, st *sessionState, s *Session, cause endCause) {
	if !c.detach(st, s) {
		return
	}
	if !c.owned(ctx, e, st) { // another node ends it, Will and hooks
		return
	}
	if conn := c.handOverQueue(st, s); conn != nil {
		conn.Notify()
	}
	s.mu.Lock()
	cleanup, expiry := s.cleanup, s.expiry
	s.mu.Unlock()
	last := !st.online()
	if cause.will {
		c.willDue(ctx, st, s, last && cleanup)
	}
	if !last {
		if s.will != nil { // the record no longer lists it
			st.mu.Lock()
			j := st.journal()
			j.updateRecord()
			j.commit(nil)
			st.mu.Unlock()
		}
		return
	}
	ev := &s.endEvent
	*ev = s.event(cause.reason)
	cause.apply(ev)
	if cleanup {
		c.endSession(ctx, e, st, hookOnClientGone, ev, nil)
		return
	}
	c.goOffline(ctx, e, st, ev, expiry)
}

// handOverQueue deals with the queue of connection s, which left. The session
// keeps its own queue: while offline, or, with other connections left
// (multiple sessions), for the earliest of them, whose own deliveries move
// into it as they are. What s held goes to the others: with balance, all of
// it; with fanout, what none of them has a copy of, since it came before they
// joined. A QoS 2 delivery past PUBREC reached its client, so it counts as
// delivered: only the PUBREL is owed, to a connection that is gone, and no
// other client knows its packet identifier. It returns the connection to
// notify of work it was handed, if any.
func (c *Core) handOverQueue(st *sessionState, s *Session) Conn {
	st.mu.Lock()
	defer st.mu.Unlock()
	if len(st.conns) == 0 {
		st.q.owner = nil
		st.q.notified = false
		if len(st.q.inflight) == 0 {
			st.q.inflight, st.q.flights = nil, nil // an idle offline session keeps no array
		}
		return nil
	}
	next := st.conns[0]
	j := st.journal()
	var top uint64 // the last QoS 2 copy stored here: its Pull waits for this write
	keep := func(m *queued) {
		j.keep(m, EntryPending)
		if j != nil && m.qos == 2 {
			top = max(top, m.seq)
		}
	}
	defer func() { j.commit(st.writtenFunc(top)) }()
	var left queue // what s held
	if s.q == &st.q {
		left = st.q
		st.q = *next.q
		st.q.set = left.set // the session's settings, with the next client's window
		st.q.set.MaxInflight = next.q.set.MaxInflight
		next.q = &st.q
		if j != nil { // a fanout copy joins the store as it becomes the session's
			for i := range st.q.inflight {
				j.keepFlight(&st.q.inflight[i])
			}
			for i := range st.q.pending.len() {
				keep(st.q.pending.at(i))
			}
		}
	} else {
		left = *s.q
		*s.q = queue{} // no owner: s's late acknowledgements find it ended
	}
	msgs, released := left.takeAll()
	c.stats.delivered.Add(uint64(len(released)))
	for i := range released {
		j.dropEntry(&released[i])
	}
	if st.q.set.DeliverMode == DeliverFanout {
		kept := msgs[:0]
		for _, m := range msgs {
			if seqBefore(m.seq, next.joined) {
				kept = append(kept, m)
			} else {
				j.dropEntry(&m)
			}
		}
		c.stats.discarded.Add(uint64(len(msgs) - len(kept)))
		for i := len(kept) - 1; i >= 0; i-- { // older than anything next has: in front
			keep(&kept[i])
			st.q.pending.pushFront(kept[i])
		}
	} else {
		for _, m := range msgs {
			keep(&m)
			st.q.pending.pushBack(m)
		}
	}
	if st.q.wantsNotify() {
		return st.q.owner.conn
	}
	return nil
}

// willDue publishes the Will of s now, or arms its delay. A v5 Will with a
// delay waits, unless the session ends now; a resume drops it.
func (c *Core) willDue(ctx context.Context, st *sessionState, s *Session, sessionEnds bool) {
	w := s.will
	if w == nil {
		return
	}
	delay := time.Duration(w.DelayInterval) * time.Second
	if !s.version.IsV5() || delay == 0 || sessionEnds {
		c.publishWill(ctx, s.id, w)
		return
	}
	st.mu.Lock()
	st.rec.Wills = insertWill(st.rec.Wills, DelayedWill{Will: w, At: time.Now().Add(delay)})
	j := st.journal()
	j.updateRecord()
	j.commit(nil)
	st.mu.Unlock()
	c.armWill(st)
}

// insertWill inserts d into wills, earliest first, after those due at the
// same time.
func insertWill(wills []DelayedWill, d DelayedWill) []DelayedWill {
	i, _ := slices.BinarySearchFunc(wills, d.At, func(w DelayedWill, at time.Time) int {
		if w.At.After(at) {
			return 1
		}
		return -1
	})
	return slices.Insert(wills, i, d)
}

// armWill schedules the earliest delayed Will of the session, unless the
// session expires first: its end publishes the Will then.
func (c *Core) armWill(st *sessionState) {
	c.sched.cancel(st.willItem)
	st.willItem = nil
	st.mu.Lock()
	id, gen := st.rec.ID, st.rec.Generation
	var at time.Time
	if len(st.rec.Wills) > 0 {
		at = st.rec.Wills[0].At
	}
	expiresAt := st.rec.ExpiresAt
	st.mu.Unlock()
	if !at.IsZero() && (expiresAt.IsZero() || at.Before(expiresAt)) {
		st.willItem = c.sched.schedule(at, func() { c.delayedWill(id, gen) })
	}
}

// publishPendingWills publishes the session's delayed Wills now, in the order
// they were due.
func (c *Core) publishPendingWills(ctx context.Context, st *sessionState) {
	st.mu.Lock()
	wills := st.rec.Wills
	st.rec.Wills = nil
	st.mu.Unlock()
	c.sched.cancel(st.willItem)
	st.willItem = nil
	for _, w := range wills {
		c.publishWill(ctx, st.rec.ID, w.Will)
	}
}

// endSession ends the life of the session: its pending Wills are published,
// it leaves the store, its subscriptions are removed, the terminal hook h
// (OnClientGone or OnSessionExpired) fires with ev, and its state is deleted.
// A session that replacedBy, a new life created in the same operation,
// replaces keeps its MaxSessions slot, so that no other CONNECT can take it in
// between; a stored new life has replaced it in the store already.
//
// The session leaves the store before its terminal hook fires: a crash in
// between may cost a plugin that hook, but never brings back a session whose
// end it was told of.
func (c *Core) endSession(ctx context.Context, e *entry, st *sessionState, h hookID, ev *SessionEvent, replacedBy *sessionState) {
	keepClaim := false // a clustered session the store still has: no other node may claim it yet
	if c.cluster != nil {
		var fenced bool
		if fenced, keepClaim = c.deleteFirst(ctx, e, st, replacedBy); fenced {
			return
		}
	}
	c.publishPendingWills(ctx, st)
	c.sched.cancel(st.expiryItem)
	st.expiryItem = nil
	st.mu.Lock()
	subscribed := len(st.subs) > 0
	st.clearSubscriptions()
	st.ended = true
	var unacked []Unacknowledged // for Options.Discarded
	var collect *[]Unacknowledged
	if c.opts.Discarded != nil {
		collect = &unacked
	}
	c.stats.discarded.Add(uint64(st.q.clear(collect)))
	for _, s := range st.conns {
		if s.q != &st.q {
			c.stats.discarded.Add(uint64(s.q.clear(collect)))
		}
	}
	stored := st.stored && (replacedBy == nil || !replacedBy.stored)
	st.stored = false
	st.mu.Unlock()
	if stored {
		b := c.store.Batch()
		b.DeleteSession(st.rec.ID, st.rec.Generation)
		if err := c.commitWait(ctx, b, st.rec.ID); err != nil {
			c.logger.Error("mqtthooks: session store: delete failed", "session", st.rec.ID.String(), "err", err)
		}
	}
	if subscribed {
		c.routerRemoveAll(st.rec.ID, st.rec.Generation)
	}
	if len(unacked) > 0 { // after the Router forgot the session: the broker may route them elsewhere
		_ = c.guard("Discarded", st.rec.ID, func() { c.opts.Discarded(ctx, st.rec.ID, unacked) })
	}
	if h == hookOnClientGone {
		c.stats.gone.Add(1)
	}
	c.sessionHook(ctx, h, ev) // OnSessionExpired or OnClientGone
	e.mu.Lock()
	if e.state.Load() == st {
		e.state.Store(nil)
	}
	e.mu.Unlock()
	if replacedBy == nil {
		c.stats.sessions.Add(-1)
		if c.cluster != nil && !st.moving && !keepClaim {
			c.disown(ctx, st.rec.ID)
		}
	}
}

// goOffline fires OnClientOffline and arms the session's expiry and delayed
// Wills; the store learns when it expires.
func (c *Core) goOffline(ctx context.Context, e *entry, st *sessionState, ev *SessionEvent, expiry time.Duration) {
	c.sessionHook(ctx, hookOnClientOffline, ev)
	now := time.Now()
	st.mu.Lock()
	st.rec.ExpiresAt = time.Time{}
	if expiry > 0 {
		st.rec.ExpiresAt = now.Add(expiry)
	}
	st.rec.Expiry, st.rec.Connected = expiry, false
	j := st.journal()
	j.updateRecord()
	j.commit(nil)
	st.mu.Unlock()
	c.armTimers(st)
}

// armTimers schedules the expiry and the delayed Wills of an offline session.
func (c *Core) armTimers(st *sessionState) {
	st.mu.Lock()
	id, gen := st.rec.ID, st.rec.Generation
	expiresAt := st.rec.ExpiresAt
	st.mu.Unlock()
	c.sched.cancel(st.expiryItem)
	st.expiryItem = nil
	if !expiresAt.IsZero() {
		st.expiryItem = c.sched.schedule(expiresAt, func() { c.expire(id, gen) })
	}
	c.armWill(st)
}

// cancelTimers stops the expiry and delayed Wills of a session that resumes;
// the delayed Wills are dropped.
func (c *Core) cancelTimers(st *sessionState) {
	c.sched.cancel(st.expiryItem)
	c.sched.cancel(st.willItem)
	st.expiryItem, st.willItem = nil, nil
	st.mu.Lock()
	st.rec.Wills, st.rec.ExpiresAt = nil, time.Time{}
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
		c.endSession(ctx, e, st, hookOnSessionExpired, &ev, nil)
	}))
}

// delayedWill publishes the delayed Wills whose delay passed; like expire, it
// checks that the session's life is the one the timer was armed for. (The
// session may be online: another connection of a multiple session does not
// drop them.)
func (c *Core) delayedWill(id SubscriberID, gen uint64) {
	_ = c.reg.do(context.Background(), id, newOp(func(ctx context.Context, e *entry) {
		st := e.state.Load()
		if st == nil || st.rec.Generation != gen || !c.owned(ctx, e, st) {
			return
		}
		now := time.Now()
		st.mu.Lock()
		n := 0
		for n < len(st.rec.Wills) && !now.Before(st.rec.Wills[n].At) {
			n++
		}
		due := slices.Clone(st.rec.Wills[:n])
		st.rec.Wills = slices.Delete(st.rec.Wills, 0, n)
		if len(st.rec.Wills) == 0 {
			st.rec.Wills = nil
		}
		j := st.journal()
		if n > 0 {
			j.updateRecord() // before publishing: a crash between the two loses a Will rather than repeat it
		}
		j.commit(nil)
		st.mu.Unlock()
		st.willItem = nil
		for _, w := range due {
			c.publishWill(ctx, id, w.Will)
		}
		c.armWill(st)
	}))
}

// takeOver ends every connection of the session, making their Wills due:
// published now if sessionEnds, delayed otherwise. It returns the last of
// them.
func (c *Core) takeOver(ctx context.Context, st *sessionState, sessionEnds bool) (last *Session) {
	conns := st.snapshotConns()
	for _, s := range conns {
		c.kick(s, errTakenOver) // first: its Pull must tell the takeover, not a plain end
		c.detach(st, s)
		last = s
	}
	for _, s := range conns {
		c.willDue(ctx, st, s, sessionEnds)
	}
	return last
}

// adminDisconnect ends the session's connections for an administrator.
func (c *Core) adminDisconnect(ctx context.Context, e *entry, st *sessionState, cleanup bool, code ReasonCode) {
	if !c.owned(ctx, e, st) {
		return
	}
	conns := st.snapshotConns()
	end := errAdminDisconnect
	if code != end.Code {
		end = &EndedError{Code: code, Reason: ReasonAdmin}
	}
	if cleanup {
		for _, s := range conns {
			c.kick(s, end)
			c.detach(st, s)
			c.willDue(ctx, st, s, true)
		}
		ev := st.offlineEvent(ReasonAdmin)
		if len(conns) > 0 {
			ev = conns[len(conns)-1].event(ReasonAdmin)
			ev.Code, ev.HasCode = code, ev.ProtocolVersion.IsV5()
		}
		c.endSession(ctx, e, st, hookOnClientGone, &ev, nil)
		return
	}
	for _, s := range conns {
		c.kick(s, end)
		c.endConnection(ctx, e, st, s, endCause{reason: ReasonAdmin, code: code,
			hasCode: s.version.IsV5(), will: true})
	}
}

// shutdownSession ends the session's connections at Shutdown. Offline
// sessions fire nothing; the delayed Wills of those not stored are
// published, since they end with the process.
func (c *Core) shutdownSession(ctx context.Context, e *entry, st *sessionState) {
	for _, s := range st.snapshotConns() {
		c.kick(s, errServerShutdown)
		c.endConnection(ctx, e, st, s, endCause{reason: ReasonShutdown, code: CodeServerShuttingDown,
			hasCode: s.version.IsV5(), will: true})
	}
	if e.state.Load() == st && !st.stored {
		c.publishPendingWills(ctx, st)
	}
}

// due reports whether the deadline t is set and has passed.
func due(t time.Time) bool { return !t.IsZero() && !time.Now().Before(t) }
