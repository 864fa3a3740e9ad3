package mqtthooks

import (
	"errors"
	"slices"
	"time"
)

// ErrPacketIDNotFound is what Session.Puback, Pubrec and Pubcomp return for a packet
// identifier that has no delivery in that state (v5 0x92).
var ErrPacketIDNotFound = errors.New("mqtthooks: packet identifier not found")

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

// queued is a message in a session's queue. Its sequence number, the
// session's count of routed messages when it came, orders the queue and fixes
// its packet identifier (PacketIDOf), so that the identifier survives a
// takeover and, with a store, a restart.
type queued struct {
	msg     *Message
	subIDs  []uint32
	expires int64  // the end of the v5 Message Expiry Interval, in Unix nanoseconds; 0 for never
	seq     uint64 // never 0
	msgID   uint64 // the stored message; 0 when the entry is not stored
	qos     byte
	retain  bool
}

// expired reports whether m's Message Expiry Interval ran out by now.
func (m *queued) expired(now int64) bool { return m.expires != 0 && now >= m.expires }

// queue is the message side of a session (or, with multiple sessions, of one
// of its connections): pending messages, in-flight deliveries, and inbound
// QoS 2 identifiers awaiting PUBREL. It knows nothing of packets or sockets.
// Its session's mu guards it.
type queue struct {
	owner    *Session // the connection that pulls from it; nil while offline
	set      QueueSettings
	pending  ring
	inflight []flight // in the order they were sent
	flights  []flight // the array inflight is a window of; see roomForFlight
	used     *idSet   // the ids in flight, while there are many of them
	inbound  []uint16
	// The small fields together, so that a session fits a smaller size class.
	resends  int32  // in-flight entries marked resend, so that most Pulls skip the scan
	sent     uint32 // deliveries sent, numbering them (wrapping)
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

// flight is a QoS 1 or 2 delivery handed out and not yet acknowledged.
type flight struct {
	queued
	sent   uint32 // the queue's count of sends when it first went out
	pid    uint16 // PacketIDOf(seq), kept: acknowledgements look it up
	pubrel bool   // the client's PUBREC came: the message is delivered, the PUBREL is owed
	resend bool   // offer again, with DUP (or the PUBREL), to the owner
}

// newFlight returns the flight of m.
func newFlight(m queued) flight { return flight{queued: m, pid: PacketIDOf(m.seq)} }

func (f *flight) packetID() uint16 { return f.pid }

// state is what a store keeps of f.
func (f *flight) state() EntryState {
	if f.pubrel {
		return EntryPubrelOwed
	}
	return EntrySent
}

// ring is a double-ended FIFO of queued messages.
type ring struct {
	buf        []queued
	head, size int
}

func (r *ring) len() int { return r.size }

func (r *ring) pushBack(m queued) {
	if r.size == len(r.buf) {
		r.grow()
	}
	r.buf[r.index(r.size)] = m
	r.size++
}

// pushFront puts a message back where popFront took it.
func (r *ring) pushFront(m queued) {
	if r.size == len(r.buf) {
		r.grow()
	}
	r.head--
	if r.head < 0 {
		r.head += len(r.buf)
	}
	r.buf[r.head] = m
	r.size++
}

func (r *ring) popFront() queued {
	m := r.buf[r.head]
	r.buf[r.head] = queued{}
	r.head = r.index(1)
	r.size--
	return m
}

// peek returns the message pop would take: the back when lifo, else the
// front. The ring must not be empty.
func (r *ring) peek(lifo bool) *queued {
	if lifo {
		return &r.buf[r.index(r.size-1)]
	}
	return &r.buf[r.head]
}

// drop removes the message peek returns.
func (r *ring) drop(lifo bool) {
	i := r.head
	if lifo {
		i = r.index(r.size - 1)
	} else {
		r.head = r.index(1)
	}
	r.buf[i] = queued{}
	r.size--
}

// at returns the i-th message from the front.
func (r *ring) at(i int) *queued { return &r.buf[r.index(i)] }

// index returns the position in buf of the i-th message from the front, for
// 0 <= i <= len(buf): a subtraction, not the division a modulo costs on the
// delivery path.
func (r *ring) index(i int) int {
	i += r.head
	if i >= len(r.buf) {
		i -= len(r.buf)
	}
	return i
}

func (r *ring) grow() {
	n := max(4, 2*len(r.buf))
	buf := make([]queued, n)
	for i := range r.size {
		buf[i] = r.buf[(r.head+i)%len(r.buf)]
	}
	r.buf, r.head = buf, 0
}

// drain empties the ring and returns what it held, oldest first.
func (r *ring) drain() []queued {
	out := make([]queued, 0, r.size)
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
func (q *queue) enqueue(m queued) (res enqueueResult, old queued) {
	limit := q.set.MaxOnlineMessages
	if q.owner == nil {
		if m.qos == 0 && !q.set.StoreQoS0Offline {
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
	next := q.pending.at(0) // the message pull takes first
	if q.set.QueueType == QueueLIFO {
		next = q.pending.at(q.pending.len() - 1)
	}
	return next.qos == 0 || len(q.inflight) == 0 || (q.windowOpen() && !q.inUse(PacketIDOf(next.seq)))
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

// inUse reports whether an in-flight delivery holds packet identifier id.
func (q *queue) inUse(id uint16) bool {
	if len(q.inflight) == 0 {
		return false
	}
	if q.used != nil {
		return q.used.has(id)
	}
	return slices.ContainsFunc(q.inflight, func(f flight) bool { return f.packetID() == id })
}

// pull fills buf: first what is to be resent, then pending messages, as far
// as the in-flight window allows; a connection that resumed with a smaller
// Receive Maximum gets its resends a window at a time [MQTT-3.3.4-9]. A
// pending message whose packet identifier an older delivery still holds (one
// 65535 messages older, left unacknowledged) waits for it. Expired messages
// are taken out and returned in expired. j records what changed for the
// session's store.
func (q *queue) pull(buf []Delivery, clock func() int64, j *journal) (n int, delivered int, expired []queued) {
	var now int64 // read once, when a message with an expiry first needs it: the clock costs more than a pull
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
			if f.expires != 0 && now == 0 {
				now = clock()
			}
			buf[n] = f.delivery(true, now)
			n++
		}
	}
	lifo := q.set.QueueType == QueueLIFO
	for n < len(buf) && q.pending.len() > 0 {
		m := q.pending.peek(lifo) // taken only once it can go: nothing to put back
		if m.expires != 0 && now == 0 {
			now = clock()
		}
		if m.expired(now) {
			e := *m
			q.pending.drop(lifo)
			if j != nil {
				j.dropEntry(&e)
			}
			expired = append(expired, e)
			continue
		}
		if m.qos == 0 {
			buf[n] = m.delivery(0, now)
			q.pending.drop(lifo)
			delivered++
			n++
			continue
		}
		if !q.windowOpen() {
			break
		}
		if m.qos == 2 && m.msgID != 0 && j != nil && !j.st.handOut(m.seq, q.owner) {
			break // its copy is not durable yet: the owner is notified when it is
		}
		pid := PacketIDOf(m.seq)
		if q.inUse(pid) {
			break
		}
		q.track(pid)
		q.sent++
		if len(q.inflight) == cap(q.inflight) {
			q.roomForFlight()
		}
		q.inflight = append(q.inflight, flight{queued: *m, sent: q.sent, pid: pid})
		q.pending.drop(lifo)
		f := &q.inflight[len(q.inflight)-1]
		if j != nil {
			j.putFlight(f)
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
func (f *flight) delivery(again bool, now int64) Delivery {
	if f.pubrel {
		return Delivery{PacketID: f.packetID(), QoS: 2, Pubrel: true}
	}
	var pid uint16
	if f.qos > 0 {
		pid = f.packetID()
	}
	d := f.queued.delivery(pid, now)
	d.Dup = again && f.qos > 0
	return d
}

// delivery returns the Delivery of m sent as packet identifier pid (0 for
// QoS 0), with the expiry left at now.
func (m *queued) delivery(pid uint16, now int64) Delivery {
	d := Delivery{PacketID: pid, QoS: m.qos, Retain: m.retain,
		SubscriptionIdentifiers: m.subIDs, Message: m.msg}
	if m.expires != 0 {
		left := time.Duration(m.expires - now)
		d.MessageExpiry = uint32(max(1, (left+time.Second-1)/time.Second))
	}
	return d
}

// track records id as held by a delivery about to go in flight.
func (q *queue) track(id uint16) {
	if q.used == nil && len(q.inflight) >= manyInflight {
		q.used = new(idSet)
		for _, f := range q.inflight {
			q.used.add(f.packetID())
		}
	}
	if q.used != nil {
		q.used.add(id)
	}
}

// roomForFlight makes room in the in-flight array for one more delivery.
// Acknowledgements take deliveries off the front of the array (see remove);
// once the rest reach its end they move back to its start rather than into a
// new array, so a queue whose window fills and drains again and again does
// not allocate.
func (q *queue) roomForFlight() {
	n, full := len(q.inflight), q.flights[:cap(q.flights)]
	if n > 0 && n <= len(full)/2 && &q.inflight[:cap(q.inflight)][cap(q.inflight)-1] == &full[len(full)-1] {
		copy(full, q.inflight)
		clear(full[n:]) // the moved deliveries' old places
		q.inflight = full[:n]
		return
	}
	q.inflight = slices.Grow(q.inflight, 1)
	q.flights = q.inflight[:0]
}

// remove takes the in-flight delivery at i out. Acknowledgements come mostly
// in order, so taking the first is O(1).
func (q *queue) remove(i int) {
	if q.used != nil {
		q.used.remove(q.inflight[i].packetID())
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

// ack finishes the QoS 1 delivery id (PUBACK), or with pubrel the QoS 2
// delivery id after its PUBREL (PUBCOMP).
func (q *queue) ack(id uint16, qos byte, pubrel bool, j *journal) error {
	i := q.find(id, qos, pubrel)
	if i < 0 {
		return ErrPacketIDNotFound
	}
	if j != nil {
		j.dropEntry(&q.inflight[i].queued)
	}
	q.remove(i)
	return nil
}

// take removes the in-flight PUBLISH id and returns its message.
func (q *queue) take(id uint16, qos byte, j *journal) (queued, error) {
	i := q.find(id, qos, false)
	if i < 0 {
		return queued{}, ErrPacketIDNotFound
	}
	m := q.inflight[i].queued
	j.dropEntry(&m)
	q.remove(i)
	return m, nil
}

// find returns the index of the in-flight delivery id, or -1.
func (q *queue) find(id uint16, qos byte, pubrel bool) int {
	return slices.IndexFunc(q.inflight, func(f flight) bool {
		return f.packetID() == id && f.qos == qos && f.pubrel == pubrel
	})
}

// rec records the PUBREC of the QoS 2 delivery id.
func (q *queue) rec(id uint16, j *journal) error {
	i := slices.IndexFunc(q.inflight, func(f flight) bool { return f.packetID() == id && f.qos == 2 })
	if i < 0 {
		return ErrPacketIDNotFound
	}
	f := &q.inflight[i]
	if !f.pubrel {
		f.pubrel = true
		if j != nil {
			j.putFlight(f)
		}
	}
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
// clear empties the queue, returning how many messages it held and, when
// unacked is not nil, appending to it those the client has not
// acknowledged: pending, or in flight before PUBREC.
func (q *queue) clear(unacked *[]Unacknowledged) int {
	n := q.pending.len() + len(q.inflight)
	if unacked != nil {
		for _, f := range q.inflight {
			if !f.pubrel {
				*unacked = append(*unacked, Unacknowledged{f.msg, unixTime(f.expires)})
			}
		}
		for i := range q.pending.len() {
			m := q.pending.at(i)
			*unacked = append(*unacked, Unacknowledged{m.msg, unixTime(m.expires)})
		}
	}
	owner, set := q.owner, q.set
	*q = queue{owner: owner, set: set}
	return n
}

// takeAll empties the queue into messages for another queue: in-flight
// deliveries become pending again, except those past PUBREC, whose message
// has reached the client; released returns them.
func (q *queue) takeAll() (msgs []queued, released []queued) {
	for _, f := range q.inflight {
		if f.pubrel {
			released = append(released, f.queued)
		} else {
			msgs = append(msgs, f.queued)
		}
	}
	msgs = append(msgs, q.pending.drain()...)
	q.inflight, q.used, q.resends = nil, nil, 0
	return msgs, released
}

// seqBefore reports whether the sequence number a came no later than b.
func seqBefore(a, b uint64) bool { return a <= b }
