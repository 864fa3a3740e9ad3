package pebble

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/mqtthooks/mqtthooks"
)

// The key space. Every key of one session shares a prefix, so that a
// session's subscriptions, queue and inbound identifiers are contiguous, and
// a queue reads in Seq order:
//
//	g                          the generations reserved so far
//	s <id>                     the session's record
//	u <id> <filter>            a subscription
//	e <id> <seq, 8 bytes BE>   a queue entry
//	i <id> <packet id, 2 BE>   an inbound QoS 2 identifier
//	m <msgID, 8 bytes BE>      a message, shared by the entries that refer to it
//
// <id> is the mountpoint and the client id, each preceded by its length, so
// that no session's prefix is the prefix of another's.
const (
	kindGen    = 'g'
	kindRecord = 's'
	kindSub    = 'u'
	kindEntry  = 'e'
	kindIn     = 'i'
	kindMsg    = 'm'
)

// version is the first byte of every value: the encoding in use.
const version = 1

var errCorrupt = errors.New("pebble store: corrupt value")

func appendID(b []byte, id mqtthooks.SubscriberID) []byte {
	b = binary.AppendUvarint(b, uint64(len(id.Mountpoint)))
	b = append(b, id.Mountpoint...)
	b = binary.AppendUvarint(b, uint64(len(id.ClientID)))
	return append(b, id.ClientID...)
}

// sessionKey returns kind followed by the session's id.
func sessionKey(kind byte, id mqtthooks.SubscriberID) []byte {
	return appendID(append(make([]byte, 0, 3+len(id.Mountpoint)+len(id.ClientID)+10), kind), id)
}

func entryKey(id mqtthooks.SubscriberID, seq uint64) []byte {
	return binary.BigEndian.AppendUint64(sessionKey(kindEntry, id), seq)
}

func inboundKey(id mqtthooks.SubscriberID, pid uint16) []byte {
	return binary.BigEndian.AppendUint16(sessionKey(kindIn, id), pid)
}

func subKey(id mqtthooks.SubscriberID, filter string) []byte {
	return append(sessionKey(kindSub, id), filter...)
}

func msgKey(msgID uint64) []byte { return binary.BigEndian.AppendUint64([]byte{kindMsg}, msgID) }

// prefixEnd returns the least key greater than every key with prefix p.
func prefixEnd(p []byte) []byte {
	end := append([]byte(nil), p...)
	for i := len(end) - 1; i >= 0; i-- {
		if end[i] < 0xff {
			end[i]++
			return end[:i+1]
		}
	}
	return nil // p is all 0xff: no upper bound
}

// parseID reads the id that follows the kind byte of key, and returns the
// rest of the key.
func parseID(key []byte) (mqtthooks.SubscriberID, []byte, error) {
	d := decoder{b: key[1:]}
	id := mqtthooks.SubscriberID{Mountpoint: d.str(), ClientID: d.str()}
	return id, d.b, d.err
}

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

func (d *decoder) version() {
	if d.byte() != version && d.err == nil {
		d.err = fmt.Errorf("pebble store: a value of an unknown encoding")
	}
}

func (d *decoder) done() error {
	if d.err == nil && len(d.b) != 0 {
		return errCorrupt
	}
	return d.err
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
	e.userProperties(p.UserProperties)
}

func (d *decoder) message() *mqtthooks.Message {
	m := &mqtthooks.Message{Topic: d.str(), Payload: d.bytes(), QoS: d.byte(), Retain: d.bool()}
	p := &m.Properties
	p.PayloadFormatIndicator = d.byte()
	p.MessageExpiryInterval.Set = d.bool()
	p.MessageExpiryInterval.V = uint32(d.u())
	p.ContentType, p.ResponseTopic, p.CorrelationData = d.str(), d.str(), d.bytes()
	p.UserProperties = d.userProperties()
	return m
}

func (e *encoder) userProperties(ps []mqtthooks.UserProperty) {
	if ps == nil {
		e.u(0)
		return
	}
	e.u(uint64(len(ps)) + 1)
	for _, p := range ps {
		e.str(p.Key)
		e.str(p.Value)
	}
}

func (d *decoder) userProperties() []mqtthooks.UserProperty {
	n := d.u()
	if n == 0 || d.err != nil {
		return nil
	}
	if n-1 > uint64(len(d.b)) {
		d.fail()
		return nil
	}
	ps := make([]mqtthooks.UserProperty, n-1)
	for i := range ps {
		ps[i] = mqtthooks.UserProperty{Key: d.str(), Value: d.str()}
	}
	return ps
}

func encodeMessage(m *mqtthooks.Message) []byte {
	e := encoder{b: make([]byte, 0, 32+len(m.Topic)+len(m.Payload))}
	e.byte(version)
	e.message(m)
	return e.b
}

func decodeMessage(b []byte) (*mqtthooks.Message, error) {
	d := decoder{b: b}
	d.version()
	m := d.message()
	return m, d.done()
}

func encodeRecord(r *mqtthooks.SessionRecord) []byte {
	var e encoder
	e.byte(version)
	e.u(r.Generation)
	e.str(r.Username)
	e.bool(r.HasUsername)
	e.u(r.ConnID)
	if r.Peer.IsValid() {
		e.str(r.Peer.String())
	} else {
		e.str("")
	}
	e.byte(byte(r.ProtocolVersion))
	e.bool(r.Connected)
	e.i(int64(r.Expiry))
	e.time(r.ExpiresAt)
	e.u(uint64(len(r.Wills)))
	for _, w := range r.Wills {
		e.message(&w.Will.Message)
		e.u(uint64(w.Will.DelayInterval))
		e.time(w.At)
	}
	q := &r.Queue
	e.i(int64(q.MaxOnlineMessages))
	e.i(int64(q.MaxOfflineMessages))
	e.byte(byte(q.QueueType))
	e.byte(byte(q.DeliverMode))
	e.bool(q.StoreQoS0Offline)
	e.i(int64(q.MaxInflight))
	e.u(uint64(len(r.ConnectionWills)))
	for _, w := range r.ConnectionWills {
		e.message(&w.Message)
		e.u(uint64(w.DelayInterval))
	}
	e.bool(r.Cleanup)
	return e.b
}

func decodeRecord(id mqtthooks.SubscriberID, b []byte) (mqtthooks.SessionRecord, error) {
	d := decoder{b: b}
	d.version()
	r := mqtthooks.SessionRecord{ID: id, Generation: d.u(), Username: d.str(), HasUsername: d.bool(), ConnID: d.u()}
	if peer := d.str(); peer != "" {
		p, err := netip.ParseAddrPort(peer)
		if err != nil {
			return r, errCorrupt
		}
		r.Peer = p
	}
	r.ProtocolVersion = mqtthooks.ProtocolVersion(d.byte())
	r.Connected = d.bool()
	r.Expiry = time.Duration(d.i())
	r.ExpiresAt = d.time()
	n := d.u()
	if n > uint64(len(d.b)) {
		d.fail()
		n = 0
	}
	for range n {
		w := &mqtthooks.Will{Message: *d.message()}
		w.DelayInterval = uint32(d.u())
		r.Wills = append(r.Wills, mqtthooks.DelayedWill{Will: w, At: d.time()})
	}
	q := &r.Queue
	q.MaxOnlineMessages, q.MaxOfflineMessages = int(d.i()), int(d.i())
	q.QueueType, q.DeliverMode = mqtthooks.QueueType(d.byte()), mqtthooks.DeliverMode(d.byte())
	q.StoreQoS0Offline, q.MaxInflight = d.bool(), int(d.i())
	n = 0
	if len(d.b) > 0 { // records written before connection Wills were kept end here
		n = d.u()
	}
	if n > uint64(len(d.b)) {
		d.fail()
		n = 0
	}
	for range n {
		w := &mqtthooks.Will{Message: *d.message()}
		w.DelayInterval = uint32(d.u())
		r.ConnectionWills = append(r.ConnectionWills, w)
	}
	if len(d.b) > 0 { // records written before Cleanup was kept end here
		r.Cleanup = d.bool()
	}
	return r, d.done()
}

func encodeEntry(en *mqtthooks.StoredEntry) []byte {
	e := encoder{b: make([]byte, 0, 32)}
	e.byte(version)
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
	return e.b
}

func decodeEntry(seq uint64, b []byte) (mqtthooks.StoredEntry, error) {
	d := decoder{b: b}
	d.version()
	en := mqtthooks.StoredEntry{Seq: seq, MessageID: d.u(), QoS: d.byte(), Retain: d.bool()}
	n := d.u()
	if n > uint64(len(d.b)) {
		d.fail()
		n = 0
	}
	if n > 0 {
		en.SubscriptionIdentifiers = make([]uint32, n)
		for i := range en.SubscriptionIdentifiers {
			en.SubscriptionIdentifiers[i] = uint32(d.u())
		}
	}
	en.ExpiresAt = d.time()
	en.State = mqtthooks.EntryState(d.byte())
	en.Sent = uint32(d.u())
	return en, d.done()
}

// entryMessageID reads just the message id of an encoded entry.
func entryMessageID(b []byte) (uint64, error) {
	d := decoder{b: b}
	d.version()
	id := d.u()
	return id, d.err
}

func encodeSub(s mqtthooks.Subscription) []byte {
	var e encoder
	e.byte(version)
	e.byte(s.QoS)
	e.bool(s.NoLocal)
	e.bool(s.RetainAsPublished)
	e.byte(s.RetainHandling)
	e.u(uint64(s.Identifier))
	return e.b
}

func decodeSub(filter string, b []byte) (mqtthooks.Subscription, error) {
	d := decoder{b: b}
	d.version()
	s := mqtthooks.Subscription{Filter: filter, QoS: d.byte(), NoLocal: d.bool(), RetainAsPublished: d.bool(),
		RetainHandling: d.byte(), Identifier: uint32(d.u())}
	return s, d.done()
}
