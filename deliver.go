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
}

// Deliver hands msg to the session of id: the entry point of the broker's
// router after it matched a subscription. The message goes to the session's
// queue under its limits (MaxOnlineMessages or MaxOfflineMessages, QoS 0 kept
// offline only with StoreQoS0Offline), and the connection is notified. A
// message the limits refuse is dropped (OnMessageDrop, counted). Deliver never
// waits for a lifecycle hook; it fails with ErrSessionNotFound when no
// session exists (or, with opts.Generation, when that life has ended) and
// with ErrInvalidArgument for a nil message or a QoS above 2. msg is shared,
// not copied: it must not change after Deliver.
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
	m := QueuedMessage{Message: msg, QoS: opts.QoS, Retain: opts.Retain, SubscriptionIdentifiers: opts.SubscriptionIdentifiers}
	if exp := msg.Properties.MessageExpiryInterval; exp.Set {
		m.ExpiresAt = time.Now().Add(time.Duration(exp.V) * time.Second)
	}
	st.mu.Lock()
	if st.ended || (opts.Generation != 0 && opts.Generation != st.rec.Generation) {
		st.mu.Unlock()
		return ErrSessionNotFound
	}
	st.seq++
	m.seq = st.seq
	if len(st.conns) > 1 && st.q.set.DeliverMode == DeliverFanout {
		return c.fanout(st, m)
	}
	q := &st.q
	if len(st.conns) > 1 { // DeliverBalance: each message to one connection, in turn
		st.balance++
		q = st.conns[st.balance%len(st.conns)].q
	}
	res, old := q.enqueue(m)
	var notify Conn
	if q.wantsNotify() {
		notify = q.owner.conn
	}
	st.mu.Unlock()
	c.count(id, res, m, old)
	if notify != nil {
		notify.Notify()
	}
	return nil
}

// fanout gives every connection of a multiple session a copy; st.mu is held
// and released here.
func (c *Core) fanout(st *sessionState, m QueuedMessage) error {
	type outcome struct {
		res    enqueueResult
		old    QueuedMessage
		notify Conn
	}
	outs := make([]outcome, len(st.conns))
	for i, s := range st.conns {
		outs[i].res, outs[i].old = s.q.enqueue(m)
		if s.q.wantsNotify() {
			outs[i].notify = s.conn
		}
	}
	id := st.rec.ID
	st.mu.Unlock()
	for _, o := range outs {
		c.count(id, o.res, m, o.old)
		if o.notify != nil {
			o.notify.Notify()
		}
	}
	return nil
}

// count records what enqueue did with m and fires the drops.
func (c *Core) count(id SubscriberID, res enqueueResult, m, old QueuedMessage) {
	c.stats.routed.Add(1)
	switch res {
	case notStored:
		c.stats.notStoredQoS0.Add(1)
	case droppedIncoming:
		c.dropped(id, DropQueueFull, []QueuedMessage{m})
	case droppedOldest:
		c.dropped(id, DropQueueFull, []QueuedMessage{old})
	}
}

// dropped counts the dropped messages and fires OnMessageDrop for each.
func (c *Core) dropped(id SubscriberID, reason DropReason, msgs []QueuedMessage) {
	c.stats.dropped.Add(uint64(len(msgs)))
	snap := c.chain.Snapshot()
	ctx, cancel := context.WithTimeout(context.Background(), c.opts.HookTimeout)
	defer cancel()
	for _, m := range msgs {
		snap.OnMessageDrop(ctx, &DropEvent{SubscriberID: id, Reason: reason, Message: m.Message})
	}
}
