package mqtthooks

import (
	"context"
	"fmt"
	"time"
)

// DeliverOptions describe one delivery of a message to a session: what the
// broker decided when the message matched the session's subscriptions.
type DeliverOptions struct {
	// QoS of the delivery: usually the smaller of the message's and the
	// subscription's (or the subscription's, with the UpgradeQoS limit).
	QoS byte
	// Retain is the RETAIN flag to send (v5 Retain As Published, or a
	// retained message sent on subscription).
	Retain bool
	// SubscriptionIdentifiers of the matching subscriptions (v5).
	SubscriptionIdentifiers []uint32
	// Generation is the life of the session whose subscription matched, as
	// the Router was told; Deliver then fails with ErrSessionNotFound once
	// that life has ended, rather than hand the message to a later life that
	// never subscribed. 0 delivers to the session's current life.
	Generation uint64
	// Receipt, if not nil, joins the write that stores this copy, so that
	// the broker acknowledges the PUBLISH once every copy is durable.
	Receipt *Receipt
}

// Deliver hands msg to the session of id: the entry point of the broker's
// router after it matched a subscription. The message goes to the session's
// queue under its limits (MaxOnlineMessages or MaxOfflineMessages, QoS 0 kept
// offline only with StoreQoS0Offline), and the connection is notified. A
// message the limits refuse is dropped (OnMessageDrop, counted). With a store,
// a QoS 1 or 2 copy for a persistent session is written, and
// opts.Receipt learns when it is durable. Deliver never waits for a lifecycle
// hook or for the store; it fails with ErrSessionNotFound when no session
// exists (or, with opts.Generation, when that life has ended), with
// ErrInvalidArgument for a nil message or a QoS above 2, and, in a cluster,
// with ErrNotOwner while the session is being handed over to another node:
// the copy is then stored nowhere, and opts.Receipt fails with ErrNotOwner
// too, so that the PUBLISH is not acknowledged and its client sends it
// again (see MovingRouter). msg is shared, not
// copied: it must not change after Deliver.
func (c *Core) Deliver(id SubscriberID, msg *Message, opts DeliverOptions) error {
	if msg == nil || opts.QoS > 2 {
		return fmt.Errorf("%w: Deliver needs a message and a QoS of 0 to 2", ErrInvalidArgument)
	}
	e := c.reg.lookup(id)
	if e == nil {
		return ErrSessionNotFound
	}
	st := e.state.Load()
	if st == nil {
		return ErrSessionNotFound
	}
	m := queued{msg: msg, qos: opts.QoS, retain: opts.Retain, subIDs: opts.SubscriptionIdentifiers}
	if exp := msg.Properties.MessageExpiryInterval; exp.Set {
		m.expires = time.Now().Add(time.Duration(exp.V) * time.Second).UnixNano()
	}
	st.mu.Lock()
	if st.ended || (opts.Generation != 0 && opts.Generation != st.rec.Generation) {
		leaving := st.ended && st.leaving && (opts.Generation == 0 || opts.Generation == st.rec.Generation)
		st.mu.Unlock()
		if leaving {
			if done := opts.Receipt.completion(); done != nil {
				done(ErrNotOwner)
			}
			return ErrNotOwner
		}
		return ErrSessionNotFound
	}
	st.seq++
	m.seq = st.seq
	if len(st.conns) > 1 && st.q.set.DeliverMode == DeliverFanout {
		return c.fanout(st, m, opts.Receipt)
	}
	q := &st.q
	if len(st.conns) > 1 { // DeliverBalance: each message to one connection, in turn
		st.balance++
		q = st.conns[st.balance%len(st.conns)].q
	}
	var res enqueueResult
	var old queued
	if j := st.journal(); j != nil {
		res, old = j.enqueue(q, &m, opts.Receipt)
	} else {
		res, old = q.enqueue(m)
		if opts.Receipt != nil {
			opts.Receipt.completion()(nil)
		}
	}
	var notify Conn
	if q.wantsNotify() {
		notify = q.owner.conn
	}
	st.mu.Unlock()
	c.count(id, res, m.msg, old.msg)
	if notify != nil {
		notify.Notify()
	}
	return nil
}

// enqueue is q.enqueue(*m) with the store writes it needs, committed with r
// told.
func (j *journal) enqueue(q *queue, m *queued, r *Receipt) (enqueueResult, queued) {
	j.storeCopy(q, m, r) // before enqueue: an entry must name its message
	res, old := q.enqueue(*m)
	j.queued(res, m, &old)
	j.commit(j.copyWritten(m, r.completion()))
	return res, old
}

// copyWritten returns done, and for a stored QoS 2 copy m a done that
// first records m written (see sessionState.handOut).
func (j *journal) copyWritten(m *queued, done func(error)) func(error) {
	if j == nil || m.qos != 2 || m.msgID == 0 {
		return done
	}
	st, seq := j.st, m.seq
	return func(err error) {
		st.written(seq)
		if done != nil {
			done(err)
		}
	}
}

// queued records what enqueue did with m: a new entry, and the one it
// pushed out of a full LIFO queue.
func (j *journal) queued(res enqueueResult, m, old *queued) {
	if j == nil {
		return
	}
	if res == enqueued || res == droppedOldest {
		j.putEntry(m, EntryPending)
	}
	if res == droppedOldest {
		j.dropEntry(old)
	}
}

// storeCopy gives m, about to be queued in q, the id of its stored message
// if the copy is to be stored: a QoS 1 or 2 message that q will take, in the
// session's own queue or, with DeliverBalance, in any of its connections'
// (fanout copies in the other connections' queues end with them). The id is
// r's when r already has one; otherwise a new one, and the message joins the
// batch. A copy the limits refuse leaves nothing behind.
func (j *journal) storeCopy(q *queue, m *queued, r *Receipt) {
	st := j.sessionIfStored()
	if st == nil || m.qos == 0 || (q != &st.q && st.q.set.DeliverMode != DeliverBalance) || !q.takes() {
		return
	}
	m.msgID = j.putMessage(m.msg, r)
}

// sessionIfStored returns the journal's session, or nil for a nil journal.
func (j *journal) sessionIfStored() *sessionState {
	if j == nil {
		return nil
	}
	return j.st
}

// takes reports whether enqueue would queue a QoS 1 or 2 message now.
func (q *queue) takes() bool {
	limit := q.set.MaxOnlineMessages
	if q.owner == nil {
		limit = q.set.MaxOfflineMessages
	}
	return limit < 0 || q.pending.len() < limit || (limit > 0 && q.set.QueueType == QueueLIFO)
}

// fanout gives every connection of a multiple session a copy; st.mu is held
// and released here. Only the copy in the session's own queue is stored: the
// others end with their connections.
func (c *Core) fanout(st *sessionState, m queued, r *Receipt) error {
	type outcome struct {
		res    enqueueResult
		m, old queued
		notify Conn
	}
	outs := make([]outcome, len(st.conns))
	j := st.journal()
	stored := m // the copy in the session's own queue, the one stored
	for i, s := range st.conns {
		cp := m
		if s.q == &st.q {
			j.storeCopy(s.q, &cp, r)
			stored = cp
		}
		outs[i].res, outs[i].old = s.q.enqueue(cp)
		outs[i].m = cp
		j.queued(outs[i].res, &cp, &outs[i].old)
		if s.q.wantsNotify() {
			outs[i].notify = s.conn
		}
	}
	j.commit(j.copyWritten(&stored, r.completion()))
	id := st.rec.ID
	st.mu.Unlock()
	for _, o := range outs {
		c.count(id, o.res, o.m.msg, o.old.msg)
		if o.notify != nil {
			o.notify.Notify()
		}
	}
	return nil
}

// count records what enqueue did with m and fires the drops.
func (c *Core) count(id SubscriberID, res enqueueResult, m, old *Message) {
	c.stats.routed.Add(1)
	switch res {
	case notStored:
		c.stats.notStoredQoS0.Add(1)
	case droppedIncoming:
		c.dropped(id, DropQueueFull, m)
	case droppedOldest:
		c.dropped(id, DropQueueFull, old)
	}
}

// dropped counts the dropped messages and fires OnMessageDrop for each.
func (c *Core) dropped(id SubscriberID, reason DropReason, msgs ...*Message) {
	c.stats.dropped.Add(uint64(len(msgs)))
	if int(reason) < len(c.codes.drops) {
		c.codes.drops[reason].Add(uint64(len(msgs)))
	}
	snap := c.chain.Snapshot()
	ctx, cancel := context.WithTimeout(context.Background(), c.opts.HookTimeout)
	defer cancel()
	hm := &c.hookm[hookOnMessageDrop]
	for _, m := range msgs {
		start := hm.start()
		snap.OnMessageDrop(ctx, &DropEvent{SubscriberID: id, Reason: reason, Message: m})
		hm.notified(start)
	}
}
