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
	"github.com/mqtthooks/mqtthooks/internal/wire"
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

// encoder appends values; store_state.go writes delta operations with it.
type encoder struct{ b []byte }

func (e *encoder) u(v uint64)                   { e.b = binary.AppendUvarint(e.b, v) }
func (e *encoder) i(v int64)                    { e.b = binary.AppendVarint(e.b, v) }
func (e *encoder) byte(v byte)                  { e.b = append(e.b, v) }
func (e *encoder) str(s string)                 { e.b = wire.AppendString(e.b, s) }
func (e *encoder) bool(v bool)                  { e.b = wire.AppendBool(e.b, v) }
func (e *encoder) time(t time.Time)             { e.b = wire.AppendTime(e.b, t) }
func (e *encoder) message(m *mqtthooks.Message) { e.b = wire.AppendMessage(e.b, m) }

// decoder reads values; the first error sticks.
type decoder struct{ *wire.Decoder }

func newDecoder(b []byte) decoder { return decoder{wire.NewDecoder(b, errCorrupt)} }

func (e *encoder) id(id mqtthooks.SubscriberID) {
	e.str(id.Mountpoint)
	e.str(id.ClientID)
}

func (d *decoder) id() mqtthooks.SubscriberID {
	return mqtthooks.SubscriberID{Mountpoint: d.Str(), ClientID: d.Str()}
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
	e.b = wire.AppendOptBytes(e.b, f.b)
}

func (d *decoder) record(id mqtthooks.SubscriberID) mqtthooks.SessionRecord {
	r := mqtthooks.SessionRecord{ID: id}
	n := d.Uvarint()
	if n == 0 {
		d.Fail(errCorrupt)
		return r
	}
	f := newDecoder(d.Raw(n - 1))
	if d.Err() != nil {
		return r
	}
	r.Generation, r.Username, r.HasUsername, r.ConnID = f.Uvarint(), f.Str(), f.Bool(), f.Uvarint()
	if peer := f.Str(); peer != "" {
		p, err := netip.ParseAddrPort(peer)
		if err != nil {
			d.Fail(errCorrupt)
			return r
		}
		r.Peer = p
	}
	r.ProtocolVersion = mqtthooks.ProtocolVersion(f.Byte())
	r.Connected = f.Bool()
	r.Expiry = time.Duration(f.Varint())
	r.ExpiresAt = f.Time()
	for range f.Count() {
		w := &mqtthooks.Will{Message: *f.Message()}
		w.DelayInterval = uint32(f.Uvarint())
		r.Wills = append(r.Wills, mqtthooks.DelayedWill{Will: w, At: f.Time()})
	}
	q := &r.Queue
	q.MaxOnlineMessages, q.MaxOfflineMessages = int(f.Varint()), int(f.Varint())
	q.QueueType, q.DeliverMode = mqtthooks.QueueType(f.Byte()), mqtthooks.DeliverMode(f.Byte())
	q.StoreQoS0Offline, q.MaxInflight = f.Bool(), int(f.Varint())
	for range f.Count() {
		w := &mqtthooks.Will{Message: *f.Message()}
		w.DelayInterval = uint32(f.Uvarint())
		r.ConnectionWills = append(r.ConnectionWills, w)
	}
	if f.Len() > 0 {
		r.Cleanup = f.Bool()
	}
	if f.Err() != nil {
		d.Fail(errCorrupt)
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
	return mqtthooks.Subscription{Filter: d.Str(), QoS: d.Byte(), NoLocal: d.Bool(), RetainAsPublished: d.Bool(),
		RetainHandling: d.Byte(), Identifier: uint32(d.Uvarint())}
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
	en := mqtthooks.StoredEntry{Seq: d.Uvarint(), MessageID: d.Uvarint(), QoS: d.Byte(), Retain: d.Bool()}
	if n := d.Count(); n > 0 {
		en.SubscriptionIdentifiers = make([]uint32, n)
		for i := range en.SubscriptionIdentifiers {
			en.SubscriptionIdentifiers[i] = uint32(d.Uvarint())
		}
	}
	en.ExpiresAt = d.Time()
	en.State = mqtthooks.EntryState(d.Byte())
	en.Sent = uint32(d.Uvarint())
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
	d := newDecoder(b)
	if v := d.Byte(); v != version && d.Err() == nil {
		return st, fmt.Errorf("natsjs: a session log part of an unknown encoding %d", v)
	}
	switch d.Byte() {
	case kindTombstone:
		if st != nil {
			st.dropAll(ev)
		}
		return nil, d.Err()
	case kindSnapshot:
		if st != nil {
			st.dropAll(ev)
		}
		n := newState(d.record(d.id()))
		for range d.Count() {
			sub := d.sub()
			n.subs[sub.Filter] = sub
		}
		for range d.Count() {
			n.inbound[uint16(d.Uvarint())] = struct{}{}
		}
		msgs := map[uint64]*mqtthooks.Message{}
		for range d.Count() {
			id := d.Uvarint()
			msgs[id] = d.Message()
		}
		for range d.Count() {
			en := d.entry()
			n.putEntry(&en, msgs[en.MessageID], ev)
		}
		return n, d.End()
	case kindDelta:
		if st == nil {
			return nil, errCorrupt
		}
		for d.Len() > 0 {
			switch d.Byte() {
			case opUpdate:
				st.rec = d.record(st.rec.ID)
			case opRenew:
				st.rec.Generation = d.Uvarint()
			case opPutSub:
				sub := d.sub()
				st.subs[sub.Filter] = sub
			case opDelSub:
				delete(st.subs, d.Str())
			case opPutEntry:
				en := d.entry()
				var m *mqtthooks.Message
				if d.Bool() {
					m = d.Message()
				}
				st.putEntry(&en, m, ev)
			case opDelEntry:
				st.delEntry(d.Uvarint(), ev)
			case opPutIn:
				st.inbound[uint16(d.Uvarint())] = struct{}{}
			case opDelIn:
				delete(st.inbound, uint16(d.Uvarint()))
			default:
				d.Fail(errCorrupt)
			}
		}
		return st, d.Err()
	default:
		return st, errCorrupt
	}
}
