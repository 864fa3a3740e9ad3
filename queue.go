package mqtthooks

import (
	"errors"
	"slices"
	"time"
)

// ErrPacketIDNotFound is what Session.Puback, Pubrec and Pubcomp return for a packet
// identifier that has no delivery in that state (v5 0x92).
var ErrPacketIDNotFound = errors.New("mqtthooks: packet identifier not found")

// QueuedMessage is a message waiting in a session's queue.
type QueuedMessage struct {
	Message *Message
	// QoS is the QoS of the delivery: the broker's choice from the message's
	// and the subscription's.
	QoS    byte
	Retain bool
	seq    uint32 // the session's count of routed messages when it came, in the padding: compare with seqBefore
	// SubscriptionIdentifiers of the subscriptions that matched (v5).
	SubscriptionIdentifiers []uint32
	// ExpiresAt is when the v5 Message Expiry Interval runs out; zero for
	// never.
	ExpiresAt time.Time
}

// seqBefore reports whether sequence number a came no later than b. The
// numbers wrap; a queue never holds messages 2³¹ apart.
func seqBefore(a, b uint32) bool { return int32(a-b) <= 0 }

// InflightMessage is a QoS 1 or 2 delivery handed to a connection and not yet
// acknowledged.
type InflightMessage struct {
	QueuedMessage
	PacketID uint16
	// PubrelOwed is set once the client's PUBREC arrived (QoS 2): the
	// message is delivered, and the PUBREL waits for its PUBCOMP.
	PubrelOwed bool
}

// QueueSettings are the queue limits in force for a session: the Core's
// defaults, changed by the modifiers of the latest CONNECT.
type QueueSettings struct {
	// MaxOnlineMessages and MaxOfflineMessages bound the pending messages
	// while a connection is attached and while none is: -1 unlimited, 0 none.
	MaxOnlineMessages, MaxOfflineMessages int
	QueueType                             QueueType
	DeliverMode                           DeliverMode
	StoreQoS0Offline                      bool
	// MaxInflight bounds the unacknowledged QoS 1 and 2 deliveries of a
	// connection: the smaller of MaxInflightMessages and the client's Receive
	// Maximum; 0 means 65535.
	MaxInflight int
}

// queue is the message side of a session (or, with multiple sessions, of one
// of its connections): pending messages, in-flight deliveries with their
// packet identifiers, and inbound QoS 2 identifiers awaiting PUBREL. It knows
// nothing of packets or sockets. Its session's mu guards it.
type queue struct {
	owner    *Session // the connection that pulls from it; nil while offline
	set      QueueSettings
	pending  ring
	inflight []flight // in the order they were sent
	used     *idSet   // the ids in flight, while there are many of them
	inbound  []uint16
	// The small fields together, so that a session fits a smaller size class.
	resends  int32  // in-flight entries marked resend, so that most Pulls skip the scan
	nextID   uint16 // the last packet identifier given out
	notified bool   // Notify is out and no Pull has found the queue empty since
}

// idSet is a set of packet identifiers, one bit each.
type idSet [1024]uint64

func (s *idSet) add(id uint16)      { s[id>>6] |= 1 << (id & 63) }
func (s *idSet) remove(id uint16)   { s[id>>6] &^= 1 << (id & 63) }
func (s *idSet) has(id uint16) bool { return s[id>>6]&(1<<(id&63)) != 0 }

// manyInflight is the in-flight count above which the queue keeps an idSet:
// below it, a scan of the in-flight slice is cheaper than 8 KiB.
const manyInflight = 32

type flight struct {
	InflightMessage
	resend bool // offer again, with DUP (or the PUBREL), to the owner
}

// ring is a double-ended FIFO of queued messages.
type ring struct {
	buf        []QueuedMessage
	head, size int
}

func (r *ring) len() int { return r.size }

func (r *ring) pushBack(m QueuedMessage) {
	if r.size == len(r.buf) {
		r.grow()
	}
	r.buf[(r.head+r.size)%len(r.buf)] = m
	r.size++
}

// pushFront puts a message back where popFront took it.
func (r *ring) pushFront(m QueuedMessage) {
	if r.size == len(r.buf) {
		r.grow()
	}
	r.head = (r.head - 1 + len(r.buf)) % len(r.buf)
	r.buf[r.head] = m
	r.size++
}

func (r *ring) popFront() QueuedMessage {
	m := r.buf[r.head]
	r.buf[r.head] = QueuedMessage{}
	r.head = (r.head + 1) % len(r.buf)
	r.size--
	return m
}

func (r *ring) popBack() QueuedMessage {
	i := (r.head + r.size - 1) % len(r.buf)
	m := r.buf[i]
	r.buf[i] = QueuedMessage{}
	r.size--
	return m
}

func (r *ring) grow() {
	n := max(4, 2*len(r.buf))
	buf := make([]QueuedMessage, n)
	for i := range r.size {
		buf[i] = r.buf[(r.head+i)%len(r.buf)]
	}
	r.buf, r.head = buf, 0
}

// drain empties the ring and returns what it held, oldest first.
func (r *ring) drain() []QueuedMessage {
	out := make([]QueuedMessage, 0, r.size)
	for r.size > 0 {
		out = append(out, r.popFront())
	}
	r.buf, r.head = nil, 0
	return out
}

// enqueueResult is what enqueue did with a message.
type enqueueResult uint8

const (
	enqueued        enqueueResult = iota
	notStored                     // QoS 0 for an offline session: MQTT lets the server discard it, so not a drop
	droppedIncoming               // the queue was full (FIFO), or takes no messages
	droppedOldest                 // the queue was full (LIFO): the oldest made room
)

// enqueue adds m under the queue's limits. For droppedOldest, old is the
// message that made room.
func (q *queue) enqueue(m QueuedMessage) (res enqueueResult, old QueuedMessage) {
	limit := q.set.MaxOnlineMessages
	if q.owner == nil {
		if m.QoS == 0 && !q.set.StoreQoS0Offline {
			return notStored, old
		}
		limit = q.set.MaxOfflineMessages
	}
	if limit >= 0 && q.pending.len() >= limit {
		if limit == 0 || q.set.QueueType != QueueLIFO {
			return droppedIncoming, old
		}
		old = q.pending.popFront()
		res = droppedOldest
	}
	q.pending.pushBack(m)
	return res, old
}

// wantsNotify reports whether the owner should be told of work now, and
// records that it is.
func (q *queue) wantsNotify() bool {
	if q.notified || q.owner == nil || !q.owner.started.Load() || !q.hasWork() {
		return false
	}
	q.notified = true
	return true
}

// hasWork reports whether a Pull would hand something out.
func (q *queue) hasWork() bool {
	if q.resends > 0 && q.outstanding() < q.window() {
		return true
	}
	if q.pending.len() == 0 {
		return false
	}
	next := q.pending.head // the message pull takes first
	if q.set.QueueType == QueueLIFO {
		next = (q.pending.head + q.pending.size - 1) % len(q.pending.buf)
	}
	return q.pending.buf[next].QoS == 0 || q.windowOpen()
}

// window is how many QoS 1 and 2 deliveries may be unacknowledged: the
// window, and in any case the 65535 packet identifiers there are.
func (q *queue) window() int {
	limit := q.set.MaxInflight
	if limit <= 0 || limit > 65535 {
		limit = 65535
	}
	return limit
}

// outstanding is how many in-flight deliveries the owner has been handed and
// not acknowledged: those not waiting to be offered again.
func (q *queue) outstanding() int { return len(q.inflight) - int(q.resends) }

// windowOpen reports whether a pending QoS 1 or 2 message may go out: every
// in-flight delivery counts, also those still to be offered again, which go
// first.
func (q *queue) windowOpen() bool { return len(q.inflight) < q.window() }

// pull fills buf: first what is to be resent, then pending messages, as far
// as the in-flight window allows; a connection that resumed with a smaller
// Receive Maximum gets its resends a window at a time [MQTT-3.3.4-9].
// Expired messages are taken out and returned in expired.
func (q *queue) pull(buf []Delivery, now func() time.Time) (n int, delivered int, expired []QueuedMessage) {
	if q.resends > 0 {
		limit, out := q.window(), q.outstanding()
		for i := 0; q.resends > 0 && i < len(q.inflight) && out < limit; i++ {
			if n == len(buf) {
				return n, delivered, expired
			}
			f := &q.inflight[i]
			if !f.resend {
				continue
			}
			f.resend = false
			q.resends--
			out++
			buf[n] = f.delivery(true, now)
			n++
		}
	}
	lifo := q.set.QueueType == QueueLIFO
	for n < len(buf) && q.pending.len() > 0 {
		var m QueuedMessage
		if lifo {
			m = q.pending.popBack()
		} else {
			m = q.pending.popFront()
		}
		if !m.ExpiresAt.IsZero() && !now().Before(m.ExpiresAt) {
			expired = append(expired, m)
			continue
		}
		if m.QoS > 0 && !q.windowOpen() {
			if lifo {
				q.pending.pushBack(m)
			} else {
				q.pending.pushFront(m)
			}
			break
		}
		f := flight{InflightMessage: InflightMessage{QueuedMessage: m}}
		if m.QoS > 0 {
			f.PacketID = q.allocID()
			q.inflight = append(q.inflight, f)
		} else {
			delivered++
		}
		buf[n] = f.delivery(false, now)
		n++
	}
	if n < len(buf) {
		q.notified = false // the owner saw the queue empty: the next work notifies
	}
	return n, delivered, expired
}

// delivery returns the Delivery of f.
func (f *flight) delivery(again bool, now func() time.Time) Delivery {
	if f.PubrelOwed {
		return Delivery{PacketID: f.PacketID, QoS: 2, Pubrel: true}
	}
	d := Delivery{PacketID: f.PacketID, QoS: f.QoS, Dup: again && f.QoS > 0, Retain: f.Retain,
		SubscriptionIdentifiers: f.SubscriptionIdentifiers, Message: f.Message}
	if !f.ExpiresAt.IsZero() {
		left := f.ExpiresAt.Sub(now())
		d.MessageExpiry = uint32(max(1, (left+time.Second-1)/time.Second))
	}
	return d
}

// allocID returns a packet identifier no in-flight delivery uses, and
// records it as used.
func (q *queue) allocID() uint16 {
	if q.used == nil && len(q.inflight) >= manyInflight {
		q.used = new(idSet)
		for _, f := range q.inflight {
			q.used.add(f.PacketID)
		}
	}
	for {
		q.nextID++
		if q.nextID == 0 {
			q.nextID = 1
		}
		var inUse bool
		if q.used != nil {
			inUse = q.used.has(q.nextID)
		} else {
			inUse = slices.ContainsFunc(q.inflight, func(f flight) bool { return f.PacketID == q.nextID })
		}
		if !inUse {
			if q.used != nil {
				q.used.add(q.nextID)
			}
			return q.nextID
		}
	}
}

// remove takes the in-flight delivery at i out. Acknowledgements come mostly
// in order, so taking the first is O(1).
func (q *queue) remove(i int) {
	if q.used != nil {
		q.used.remove(q.inflight[i].PacketID)
	}
	if q.inflight[i].resend {
		q.resends-- // acknowledged before it was offered again
	}
	if i == 0 && len(q.inflight) > 1 {
		q.inflight[0] = flight{}
		q.inflight = q.inflight[1:]
	} else {
		q.inflight = slices.Delete(q.inflight, i, i+1) // the last one: the array is kept for the next
	}
	if len(q.inflight) == 0 {
		q.used = nil
	}
}

// ack finishes the QoS 1 delivery id (PUBACK), or with released the QoS 2
// delivery id after its PUBREL (PUBCOMP).
func (q *queue) ack(id uint16, qos byte, released bool) error {
	i := q.find(id, qos, released)
	if i < 0 {
		return ErrPacketIDNotFound
	}
	q.remove(i)
	return nil
}

// take removes the in-flight PUBLISH id and returns its message.
func (q *queue) take(id uint16, qos byte) (QueuedMessage, error) {
	i := q.find(id, qos, false)
	if i < 0 {
		return QueuedMessage{}, ErrPacketIDNotFound
	}
	m := q.inflight[i].QueuedMessage
	q.remove(i)
	return m, nil
}

// find returns the index of the in-flight delivery id, or -1.
func (q *queue) find(id uint16, qos byte, released bool) int {
	return slices.IndexFunc(q.inflight, func(f flight) bool {
		return f.PacketID == id && f.QoS == qos && f.PubrelOwed == released
	})
}

// rec records the PUBREC of the QoS 2 delivery id.
func (q *queue) rec(id uint16) error {
	i := slices.IndexFunc(q.inflight, func(f flight) bool { return f.PacketID == id && f.QoS == 2 })
	if i < 0 {
		return ErrPacketIDNotFound
	}
	q.inflight[i].PubrelOwed = true
	q.inflight[i].Message = nil // the message is delivered; only the PUBREL remains
	return nil
}

// adopt gives the queue to a new owner: what was in flight is offered to it
// again, with its packet identifier.
func (q *queue) adopt(owner *Session, set QueueSettings) {
	q.owner = owner
	q.set = set
	q.notified = false
	for i := range q.inflight {
		q.inflight[i].resend = true
	}
	q.resends = int32(len(q.inflight))
}

// count returns how many messages are pending and in flight.
func (q *queue) count() (pending, inflight int) { return q.pending.len(), len(q.inflight) }

// clear empties the queue and returns how many messages it held.
func (q *queue) clear() int {
	n := q.pending.len() + len(q.inflight)
	owner, set := q.owner, q.set
	*q = queue{owner: owner, set: set}
	return n
}

// takeAll empties the queue into messages for another queue: in-flight
// deliveries become pending again, without their ids, except those past
// PUBREC, whose message has reached the client; released counts them.
func (q *queue) takeAll() (msgs []QueuedMessage, released int) {
	for _, f := range q.inflight {
		if f.PubrelOwed {
			released++
		} else {
			msgs = append(msgs, f.QueuedMessage)
		}
	}
	msgs = append(msgs, q.pending.drain()...)
	q.inflight, q.used, q.resends = nil, nil, 0
	return msgs, released
}

// snapshotQueue copies the session's queue into its record, for a durable
// store. st.mu is held.
func (st *sessionState) snapshotQueue() {
	q := &st.q
	st.rec.Pending = st.rec.Pending[:0]
	for i := range q.pending.size {
		st.rec.Pending = append(st.rec.Pending, q.pending.buf[(q.pending.head+i)%len(q.pending.buf)])
	}
	st.rec.Inflight = st.rec.Inflight[:0]
	for _, f := range q.inflight {
		st.rec.Inflight = append(st.rec.Inflight, f.InflightMessage)
	}
	st.rec.InboundQoS2 = slices.Clone(q.inbound)
}

// restoreQueue rebuilds the session's queue from its record, which keeps no
// copy. st.mu is held.
func (st *sessionState) restoreQueue() {
	q := &st.q
	for _, m := range st.rec.Pending {
		q.pending.pushBack(m)
	}
	for _, m := range st.rec.Inflight {
		q.inflight = append(q.inflight, flight{InflightMessage: m})
		q.nextID = max(q.nextID, m.PacketID)
	}
	q.inbound = st.rec.InboundQoS2
	st.rec.Pending, st.rec.Inflight, st.rec.InboundQoS2 = nil, nil, nil
}
