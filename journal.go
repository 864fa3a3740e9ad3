package mqtthooks

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

// journal collects the store changes one operation makes to a stored
// session, under the session's lock, and commits them as one batch before the
// lock is released, so that the store sees each session's changes in the
// order they happened. A session that is not stored has no journal: its
// methods do nothing on a nil *journal, which keeps the path without a store
// as cheap as it was.
type journal struct {
	c     *Core
	st    *sessionState
	b     StoreBatch // nil until the first change
	holds []uint64   // messages this batch stored without a Receipt: released at its end
}

// journal returns the session's journal, or nil when it is not stored.
// st.mu is held.
func (st *sessionState) journal() *journal {
	if !st.stored {
		return nil
	}
	return &st.jn
}

func (j *journal) batch() StoreBatch {
	if j.b == nil {
		j.b = j.c.store.Batch()
	}
	return j.b
}

// putEntry records m, a stored entry, pending.
func (j *journal) putEntry(m *queued, state EntryState) { j.put(m, state, 0) }

// putFlight records f, a stored entry in flight.
func (j *journal) putFlight(f *flight) { j.put(&f.queued, f.state(), f.sent) }

func (j *journal) put(m *queued, state EntryState, sent uint32) {
	if j == nil || m.msgID == 0 {
		return
	}
	j.batch().PutEntry(j.st.rec.ID, j.st.rec.Generation, &StoredEntry{Seq: m.seq, MessageID: m.msgID, QoS: m.qos,
		Retain: m.retain, SubscriptionIdentifiers: m.subIDs, ExpiresAt: unixTime(m.expires), State: state, Sent: sent})
}

// keep records m, now in the session's own queue, in state: a copy that was
// not stored yet (a fanout copy of another connection's) is stored with its
// message.
func (j *journal) keep(m *queued, state EntryState) {
	if j == nil || m.qos == 0 {
		return
	}
	if m.msgID == 0 {
		m.msgID = j.putMessage(m.msg, nil)
	}
	j.put(m, state, 0)
}

// keepFlight is keep for a delivery in flight.
func (j *journal) keepFlight(f *flight) {
	if j == nil {
		return
	}
	if f.msgID == 0 {
		f.msgID = j.putMessage(f.msg, nil)
	}
	j.putFlight(f)
}

// dropEntry records that m left the queue.
func (j *journal) dropEntry(m *queued) {
	if j == nil || m.msgID == 0 {
		return
	}
	j.batch().DeleteEntry(j.st.rec.ID, j.st.rec.Generation, m.seq, m.msgID)
}

// putMessage records msg under a new message id, or under r's if r already
// has one, and returns the id. The store holds the message until it is
// released: by r's Close, for the copies of one routing, or at the end of
// this batch, which writes the entry that refers to it.
func (j *journal) putMessage(msg *Message, r *Receipt) uint64 {
	if r != nil {
		if id := r.msgID; id != 0 {
			return id
		}
	}
	id := j.c.nextMsgID()
	j.batch().PutMessage(id, msg)
	if r != nil {
		r.msgID, r.core = id, j.c
	} else {
		j.holds = append(j.holds, id)
	}
	return id
}

// updateRecord records the session's record. st.mu is held.
func (j *journal) updateRecord() {
	if j == nil {
		return
	}
	j.batch().UpdateSession(&j.st.rec)
}

// writeRecord records the session's record and commits, returning where
// the outcome arrives (nil, at once, without a journal). st.mu is held.
func (j *journal) writeRecord() <-chan error {
	j.updateRecord()
	done := make(chan error, 1)
	j.commit(func(err error) { done <- err })
	return done
}

// commit hands the batch to the store, if anything changed; done, if not
// nil, is called once it is durable, with the store's error, and at once
// without changes.
func (j *journal) commit(done func(error)) {
	if j == nil || j.b == nil {
		if done != nil {
			done(nil)
		}
		return
	}
	b := j.b
	for _, id := range j.holds {
		b.ReleaseMessage(id)
	}
	j.b, j.holds = nil, j.holds[:0]
	j.c.commit(b, j.st.rec.ID, done)
}

// commit commits b, logging a failure, and keeps count of the commits in
// flight for Shutdown.
func (c *Core) commit(b StoreBatch, id SubscriberID, done func(error)) {
	c.writes.Add(1)
	sw := &c.codes.storeWrites
	sw.commits.Add(1)
	start := sw.latency.start()
	err := c.guard("SessionStore.Commit", id, func() {
		b.Commit(func(err error) {
			sw.latency.done(start)
			if err != nil {
				sw.failed.Add(1)
				c.logger.Error("mqtthooks: session store: write failed", "session", id.String(), "err", err)
				if c.cluster != nil && errors.Is(err, ErrStaleGeneration) && id != (SubscriberID{}) {
					c.recheckOwner(id) // another node took the session: stop serving it here
				}
			}
			if done != nil {
				done(err)
			}
			c.writes.Done()
		})
	})
	if err != nil {
		sw.failed.Add(1)
		c.writes.Done()
		if done != nil {
			done(err)
		}
	}
}

// commitWait commits b and waits until it is durable or ctx ends. st.mu
// must not be held: the wait may last an fsync.
func (c *Core) commitWait(ctx context.Context, b StoreBatch, id SubscriberID) error {
	ch := make(chan error, 1)
	c.commit(b, id, func(err error) { ch <- err })
	select {
	case err := <-ch:
		return err
	case <-ctx.Done():
		return fmt.Errorf("waiting for the session store: %w", ctx.Err())
	}
}

// nowNano returns the time in Unix nanoseconds.
func nowNano() int64 { return time.Now().UnixNano() }

// unixTime converts Unix nanoseconds to a time; 0 is the zero time.
func unixTime(ns int64) time.Time {
	if ns == 0 {
		return time.Time{}
	}
	return time.Unix(0, ns)
}

// unixNano converts a time to Unix nanoseconds; the zero time is 0.
func unixNano(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

// A Receipt follows one PUBLISH a broker received, through the writes the
// Core makes for it, to the moment all of them are durable: then the broker
// may send the PUBACK (QoS 1) or PUBREC (QoS 2). Pass it in DeliverOptions
// to each Deliver of the PUBLISH, and to Session.InboundPublish or
// InboundPubrel, then Close it. A message routed to many sessions with one
// Receipt is stored once.
//
// Without a store, or for a session that is not stored, nothing is written
// and done runs at Close. A Receipt is used by one goroutine, the broker's
// routing of its PUBLISH; done may run on another.
type Receipt struct {
	done    func(error)
	pending atomic.Int64 // 1 until Close, plus the writes not yet durable
	mu      sync.Mutex
	err     error
	settled bool                     // done has been decided
	after   []func(err error)        // run when the Receipt is settled, possibly under a session's lock
	last    []func(done func(error)) // writes started once every other is durable, before done
	resent  bool                     // InboundPublish took it for the resend of a refused PUBLISH
	msgID   uint64                   // the stored message of the copies; written by the routing goroutine only
	core    *Core                    // that stored it, and releases it at Close
}

// NewReceipt returns a Receipt whose done is called once, after Close, when
// every write joined to it is durable: with nil, or with the first error a
// write failed with (the broker should then not acknowledge, but close the
// connection, so that the client sends the PUBLISH again). done may run on
// any goroutine, possibly while the Core holds a session's lock: it must not
// block or call the Core; handing the acknowledgement to the connection's
// writer is its job. A nil done is allowed.
func NewReceipt(done func(error)) *Receipt {
	r := &Receipt{done: done}
	r.pending.Store(1)
	return r
}

// Close says that every write of the PUBLISH has been started. The stored
// message stays until Close, so that a copy acknowledged early cannot take it
// from the copies routed after it: a Receipt that is never closed keeps its
// message stored until the next restart.
func (r *Receipt) Close() {
	if c := r.core; c != nil {
		b := c.store.Batch()
		b.ReleaseMessage(r.msgID)
		c.commit(b, SubscriberID{}, nil)
	}
	r.finish(nil)
}

// join counts one more write and returns its completion.
func (r *Receipt) join() func(error) {
	r.pending.Add(1)
	return r.finish
}

// ErrNotTaken is the error a Receipt fails with after Fail(nil).
var ErrNotTaken = errors.New("mqtthooks: PUBLISH not taken")

// Fail records that the PUBLISH was not taken after all (another node of a
// cluster did not store its copies, say): done receives err (ErrNotTaken
// if nil), or the first error recorded before it, and what the PUBLISH
// recorded in the session of its client is undone as for a failed write
// (see Session.InboundPublish). The broker must then not acknowledge the
// PUBLISH. Fail must come before Close; it does not replace it.
func (r *Receipt) Fail(err error) {
	if err == nil {
		err = ErrNotTaken
	}
	r.mu.Lock()
	if r.err == nil {
		r.err = err
	}
	r.mu.Unlock()
}

// Resent reports whether Session.InboundPublish took r's QoS 2 PUBLISH for
// the resend of one that was refused on this node (its Receipt failed): a
// broker that knows what the refused one reached may skip those copies.
// It is false for any other PUBLISH, and before InboundPublish returned.
func (r *Receipt) Resent() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.resent
}

// writeLast adds a write that starts once every write joined to r is
// durable and r is closed, if none failed; r settles when it is durable.
func (r *Receipt) writeLast(write func(done func(error))) {
	r.mu.Lock()
	r.last = append(r.last, write)
	r.mu.Unlock()
}

// onSettled runs f with r's outcome once it is known: at once if it is.
func (r *Receipt) onSettled(f func(err error)) {
	r.mu.Lock()
	if !r.settled {
		r.after = append(r.after, f)
		r.mu.Unlock()
		return
	}
	err := r.err
	r.mu.Unlock()
	f(err)
}

func (r *Receipt) finish(err error) {
	if err != nil {
		r.mu.Lock()
		if r.err == nil {
			r.err = err
		}
		r.mu.Unlock()
	}
	if r.pending.Add(-1) != 0 {
		return
	}
	r.mu.Lock()
	if last := r.last; len(last) > 0 && r.err == nil {
		r.last = nil
		r.pending.Add(int64(len(last)))
		r.mu.Unlock()
		for _, write := range last {
			write(r.finish)
		}
		return
	}
	r.settled = true
	err, after := r.err, r.after
	r.after = nil
	r.mu.Unlock()
	for _, f := range after {
		f(err)
	}
	if r.done != nil {
		r.done(err)
	}
}

// completion returns the done func of a write joined to r, or nil.
func (r *Receipt) completion() func(error) {
	if r == nil {
		return nil
	}
	return r.join()
}
