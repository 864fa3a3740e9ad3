package natsjs

import (
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"time"

	"github.com/mqtthooks/mqtthooks"
)

// The encoding of a session's log. Each part (the share of one session in
// one write) is
//
//	version (1 byte) kind (1 byte) body
//
// where kind is one of
//
//	'S' a snapshot: the whole session, which replaces what came before
//	'X' a tombstone: no session is stored
//	'D' a delta: operations applied to the session before it, in order
//
// A snapshot's body is the session's id, its record, subscriptions, inbound
// packet identifiers, the messages its entries refer to and its entries. A
// delta's body is a sequence of operations, each an op byte and its fields.
// Integers are varints, strings and byte strings are length-prefixed, times
// are Unix nanoseconds (0 for the zero time).
const version = 1

// Part kinds.
const (
	kindSnapshot  = 'S'
	kindTombstone = 'X'
	kindDelta     = 'D'
)

// Delta operations.
const (
	opUpdate     = 'u' // record
	opRenew      = 'r' // generation
	opPutSub     = 's' // subscription
	opDelSub     = 't' // filter
	opPutEntry   = 'e' // entry, then 1 and a message if the message is inlined, else 0
	opDelEntry   = 'f' // seq
	opPutIn      = 'i' // packet id
	opDelIn      = 'j' // packet id
	opCreate     = 'c' // only in memory: a new life, which makes the part a snapshot
	opDelete     = 'x' // only in memory: the end of the life, a tombstone unless a new life follows
	opPutMsg     = 'm' // only in a batch: PutMessage
	opReleaseMsg = 'n' // only in a batch: ReleaseMessage
)

var errCorrupt = errors.New("natsjs: corrupt session log")

// encoder appends values.
type encoder struct{ b []byte }

func (e *encoder) u(v uint64)   { e.b = binary.AppendUvarint(e.b, v) }
func (e *encoder) i(v int64)    { e.b = binary.AppendVarint(e.b, v) }
func (e *encoder) byte(v byte)  { e.b = append(e.b, v) }
func (e *encoder) str(s string) { e.u(uint64(len(s))); e.b = append(e.b, s...) }
func (e *encoder) bytes(p []byte) {
	if p == nil {
		e.u(0)
		return
	}
	e.u(uint64(len(p)) + 1) // nil and empty differ
	e.b = append(e.b, p...)
}
func (e *encoder) bool(v bool) {
	if v {
		e.byte(1)
	} else {
		e.byte(0)
	}
}
func (e *encoder) time(t time.Time) {
	if t.IsZero() {
		e.i(0)
		return
	}
	e.i(t.UnixNano())
}

// decoder reads values; the first error sticks.
type decoder struct {
	b   []byte
	err error
}

func (d *decoder) fail() {
	if d.err == nil {
		d.err = errCorrupt
	}
	d.b = nil
}

func (d *decoder) u() uint64 {
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.fail()
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) i() int64 {
	v, n := binary.Varint(d.b)
	if n <= 0 {
		d.fail()
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) byte() byte {
	if len(d.b) == 0 {
		d.fail()
		return 0
	}
	v := d.b[0]
	d.b = d.b[1:]
	return v
}

func (d *decoder) raw(n uint64) []byte {
	if uint64(len(d.b)) < n {
		d.fail()
		return nil
	}
	v := d.b[:n:n]
	d.b = d.b[n:]
	return v
}

func (d *decoder) str() string { return string(d.raw(d.u())) }

func (d *decoder) bytes() []byte {
	n := d.u()
	if n == 0 {
		return nil
	}
	return append([]byte{}, d.raw(n-1)...)
}

func (d *decoder) bool() bool { return d.byte() != 0 }

func (d *decoder) time() time.Time {
	ns := d.i()
	if ns == 0 {
		return time.Time{}
	}
	return time.Unix(0, ns)
}

// count reads a number of items, each at least one byte long.
func (d *decoder) count() int {
	n := d.u()
	if n > uint64(len(d.b)) {
		d.fail()
		return 0
	}
	return int(n)
}

func (e *encoder) message(m *mqtthooks.Message) {
	e.str(m.Topic)
	e.bytes(m.Payload)
	e.byte(m.QoS)
	e.bool(m.Retain)
	p := &m.Properties
	e.byte(p.PayloadFormatIndicator)
	e.bool(p.MessageExpiryInterval.Set)
	e.u(uint64(p.MessageExpiryInterval.V))
	e.str(p.ContentType)
	e.str(p.ResponseTopic)
	e.bytes(p.CorrelationData)
	if p.UserProperties == nil {
		e.u(0)
	} else {
		e.u(uint64(len(p.UserProperties)) + 1)
		for _, up := range p.UserProperties {
			e.str(up.Key)
			e.str(up.Value)
		}
	}
}

func (d *decoder) message() *mqtthooks.Message {
	m := &mqtthooks.Message{Topic: d.str(), Payload: d.bytes(), QoS: d.byte(), Retain: d.bool()}
	p := &m.Properties
	p.PayloadFormatIndicator = d.byte()
	p.MessageExpiryInterval.Set = d.bool()
	p.MessageExpiryInterval.V = uint32(d.u())
	p.ContentType, p.ResponseTopic, p.CorrelationData = d.str(), d.str(), d.bytes()
	if n := d.u(); n > 0 {
		if n-1 > uint64(len(d.b)) {
			d.fail()
			return m
		}
		p.UserProperties = make([]mqtthooks.UserProperty, n-1)
		for i := range p.UserProperties {
			p.UserProperties[i] = mqtthooks.UserProperty{Key: d.str(), Value: d.str()}
		}
	}
	return m
}

func (e *encoder) id(id mqtthooks.SubscriberID) {
	e.str(id.Mountpoint)
	e.str(id.ClientID)
}

func (d *decoder) id() mqtthooks.SubscriberID {
	return mqtthooks.SubscriberID{Mountpoint: d.str(), ClientID: d.str()}
}

// record encodes r but its ID, which the session's log names already. The
// record is length-prefixed: a later version may add fields at its end,
// which this one skips, and this one reads a shorter record's missing
// fields as zero.
func (e *encoder) record(r *mqtthooks.SessionRecord) {
	var f encoder
	f.u(r.Generation)
	f.str(r.Username)
	f.bool(r.HasUsername)
	f.u(r.ConnID)
	if r.Peer.IsValid() {
		f.str(r.Peer.String())
	} else {
		f.str("")
	}
	f.byte(byte(r.ProtocolVersion))
	f.bool(r.Connected)
	f.i(int64(r.Expiry))
	f.time(r.ExpiresAt)
	f.u(uint64(len(r.Wills)))
	for _, w := range r.Wills {
		f.message(&w.Will.Message)
		f.u(uint64(w.Will.DelayInterval))
		f.time(w.At)
	}
	q := &r.Queue
	f.i(int64(q.MaxOnlineMessages))
	f.i(int64(q.MaxOfflineMessages))
	f.byte(byte(q.QueueType))
	f.byte(byte(q.DeliverMode))
	f.bool(q.StoreQoS0Offline)
	f.i(int64(q.MaxInflight))
	f.u(uint64(len(r.ConnectionWills)))
	for _, w := range r.ConnectionWills {
		f.message(&w.Message)
		f.u(uint64(w.DelayInterval))
	}
	f.bool(r.Cleanup)
	e.bytes(f.b)
}

func (d *decoder) record(id mqtthooks.SubscriberID) mqtthooks.SessionRecord {
	r := mqtthooks.SessionRecord{ID: id}
	n := d.u()
	if n == 0 {
		d.fail()
		return r
	}
	f := decoder{b: d.raw(n - 1)}
	if d.err != nil {
		return r
	}
	r.Generation, r.Username, r.HasUsername, r.ConnID = f.u(), f.str(), f.bool(), f.u()
	if peer := f.str(); peer != "" {
		p, err := netip.ParseAddrPort(peer)
		if err != nil {
			d.fail()
			return r
		}
		r.Peer = p
	}
	r.ProtocolVersion = mqtthooks.ProtocolVersion(f.byte())
	r.Connected = f.bool()
	r.Expiry = time.Duration(f.i())
	r.ExpiresAt = f.time()
	for range f.count() {
		w := &mqtthooks.Will{Message: *f.message()}
		w.DelayInterval = uint32(f.u())
		r.Wills = append(r.Wills, mqtthooks.DelayedWill{Will: w, At: f.time()})
	}
	q := &r.Queue
	q.MaxOnlineMessages, q.MaxOfflineMessages = int(f.i()), int(f.i())
	q.QueueType, q.DeliverMode = mqtthooks.QueueType(f.byte()), mqtthooks.DeliverMode(f.byte())
	q.StoreQoS0Offline, q.MaxInflight = f.bool(), int(f.i())
	for range f.count() {
		w := &mqtthooks.Will{Message: *f.message()}
		w.DelayInterval = uint32(f.u())
		r.ConnectionWills = append(r.ConnectionWills, w)
	}
	if len(f.b) > 0 {
		r.Cleanup = f.bool()
	}
	if f.err != nil {
		d.fail()
	}
	return r
}

func (e *encoder) sub(s *mqtthooks.Subscription) {
	e.str(s.Filter)
	e.byte(s.QoS)
	e.bool(s.NoLocal)
	e.bool(s.RetainAsPublished)
	e.byte(s.RetainHandling)
	e.u(uint64(s.Identifier))
}

func (d *decoder) sub() mqtthooks.Subscription {
	return mqtthooks.Subscription{Filter: d.str(), QoS: d.byte(), NoLocal: d.bool(), RetainAsPublished: d.bool(),
		RetainHandling: d.byte(), Identifier: uint32(d.u())}
}

func (e *encoder) entry(en *mqtthooks.StoredEntry) {
	e.u(en.Seq)
	e.u(en.MessageID)
	e.byte(en.QoS)
	e.bool(en.Retain)
	e.u(uint64(len(en.SubscriptionIdentifiers)))
	for _, id := range en.SubscriptionIdentifiers {
		e.u(uint64(id))
	}
	e.time(en.ExpiresAt)
	e.byte(byte(en.State))
	e.u(uint64(en.Sent))
}

func (d *decoder) entry() mqtthooks.StoredEntry {
	en := mqtthooks.StoredEntry{Seq: d.u(), MessageID: d.u(), QoS: d.byte(), Retain: d.bool()}
	if n := d.count(); n > 0 {
		en.SubscriptionIdentifiers = make([]uint32, n)
		for i := range en.SubscriptionIdentifiers {
			en.SubscriptionIdentifiers[i] = uint32(d.u())
		}
	}
	en.ExpiresAt = d.time()
	en.State = mqtthooks.EntryState(d.byte())
	en.Sent = uint32(d.u())
	return en
}

// encodeSnapshot returns the part that stores st whole.
func encodeSnapshot(st *state) []byte {
	e := encoder{b: make([]byte, 0, 256)}
	e.byte(version)
	e.byte(kindSnapshot)
	e.id(st.rec.ID)
	e.record(&st.rec)
	e.u(uint64(len(st.subs)))
	for _, f := range slices.Sorted(maps.Keys(st.subs)) {
		sub := st.subs[f]
		e.sub(&sub)
	}
	e.u(uint64(len(st.inbound)))
	for _, pid := range slices.Sorted(maps.Keys(st.inbound)) {
		e.u(uint64(pid))
	}
	e.u(uint64(len(st.msgs)))
	for _, id := range slices.Sorted(maps.Keys(st.msgs)) {
		e.u(id)
		e.message(st.msgs[id])
	}
	e.u(uint64(len(st.entries)))
	for _, seq := range slices.Sorted(maps.Keys(st.entries)) {
		en := st.entries[seq]
		e.entry(&en)
	}
	return e.b
}

// tombstone is the part of a session that is not stored.
var tombstone = []byte{version, kindTombstone}

// decodePart applies the part b to st, the session before it (nil for
// none), and returns the session after it: nil for a tombstone. Messages
// that enter or leave the session are reported to ev, if not nil.
func decodePart(st *state, b []byte, ev *events) (*state, error) {
	d := decoder{b: b}
	if v := d.byte(); v != version && d.err == nil {
		return st, fmt.Errorf("natsjs: a session log part of an unknown encoding %d", v)
	}
	switch d.byte() {
	case kindTombstone:
		if st != nil {
			st.dropAll(ev)
		}
		return nil, d.err
	case kindSnapshot:
		if st != nil {
			st.dropAll(ev)
		}
		n := newState(d.record(d.id()))
		for range d.count() {
			sub := d.sub()
			n.subs[sub.Filter] = sub
		}
		for range d.count() {
			n.inbound[uint16(d.u())] = struct{}{}
		}
		msgs := map[uint64]*mqtthooks.Message{}
		for range d.count() {
			id := d.u()
			msgs[id] = d.message()
		}
		for range d.count() {
			en := d.entry()
			n.putEntry(&en, msgs[en.MessageID], ev)
		}
		if d.err == nil && len(d.b) != 0 {
			d.fail()
		}
		return n, d.err
	case kindDelta:
		if st == nil {
			return nil, errCorrupt
		}
		for len(d.b) > 0 && d.err == nil {
			switch d.byte() {
			case opUpdate:
				st.rec = d.record(st.rec.ID)
			case opRenew:
				st.rec.Generation = d.u()
			case opPutSub:
				sub := d.sub()
				st.subs[sub.Filter] = sub
			case opDelSub:
				delete(st.subs, d.str())
			case opPutEntry:
				en := d.entry()
				var m *mqtthooks.Message
				if d.bool() {
					m = d.message()
				}
				st.putEntry(&en, m, ev)
			case opDelEntry:
				st.delEntry(d.u(), ev)
			case opPutIn:
				st.inbound[uint16(d.u())] = struct{}{}
			case opDelIn:
				delete(st.inbound, uint16(d.u()))
			default:
				d.fail()
			}
		}
		return st, d.err
	default:
		return st, errCorrupt
	}
}
