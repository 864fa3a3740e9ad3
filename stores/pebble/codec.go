package pebble

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/mqtthooks/mqtthooks"
	"github.com/mqtthooks/mqtthooks/internal/wire"
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
	return wire.AppendString(wire.AppendString(b, id.Mountpoint), id.ClientID)
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
	d := wire.NewDecoder(key, errCorrupt)
	d.Byte()
	id := mqtthooks.SubscriberID{Mountpoint: d.Str(), ClientID: d.Str()}
	return id, d.Rest(), d.Err()
}

// readVersion reads the first byte of a value, which must be version.
func readVersion(d *wire.Decoder) {
	if d.Byte() != version && d.Err() == nil {
		d.Fail(fmt.Errorf("pebble store: a value of an unknown encoding"))
	}
}

// decoder is how store.go reads a record's generation alone (storedGen):
// decoder{b: value}, version, u, then err. It reads through a wire.Decoder.
type decoder struct {
	b   []byte
	err error
}

func (d *decoder) version() {
	w := wire.NewDecoder(d.b, errCorrupt)
	readVersion(w)
	d.keep(w)
}

func (d *decoder) u() uint64 {
	w := wire.NewDecoder(d.b, errCorrupt)
	v := w.Uvarint()
	d.keep(w)
	return v
}

// keep takes over the state of w, which read on from d.
func (d *decoder) keep(w *wire.Decoder) {
	if d.err == nil {
		d.err = w.Err()
	}
	d.b = w.Rest()
}

func encodeMessage(m *mqtthooks.Message) []byte {
	return wire.AppendMessage(append(make([]byte, 0, 32+len(m.Topic)+len(m.Payload)), version), m)
}

func decodeMessage(b []byte) (*mqtthooks.Message, error) {
	d := wire.NewDecoder(b, errCorrupt)
	readVersion(d)
	m := d.Message()
	return m, d.End()
}

func encodeRecord(r *mqtthooks.SessionRecord) []byte {
	b := append(make([]byte, 0, 64), version)
	b = binary.AppendUvarint(b, r.Generation)
	b = wire.AppendString(b, r.Username)
	b = wire.AppendBool(b, r.HasUsername)
	b = binary.AppendUvarint(b, r.ConnID)
	if r.Peer.IsValid() {
		b = wire.AppendString(b, r.Peer.String())
	} else {
		b = wire.AppendString(b, "")
	}
	b = append(b, byte(r.ProtocolVersion))
	b = wire.AppendBool(b, r.Connected)
	b = binary.AppendVarint(b, int64(r.Expiry))
	b = wire.AppendTime(b, r.ExpiresAt)
	b = binary.AppendUvarint(b, uint64(len(r.Wills)))
	for _, w := range r.Wills {
		b = wire.AppendMessage(b, &w.Will.Message)
		b = binary.AppendUvarint(b, uint64(w.Will.DelayInterval))
		b = wire.AppendTime(b, w.At)
	}
	q := &r.Queue
	b = binary.AppendVarint(b, int64(q.MaxOnlineMessages))
	b = binary.AppendVarint(b, int64(q.MaxOfflineMessages))
	b = append(b, byte(q.QueueType), byte(q.DeliverMode))
	b = wire.AppendBool(b, q.StoreQoS0Offline)
	b = binary.AppendVarint(b, int64(q.MaxInflight))
	b = binary.AppendUvarint(b, uint64(len(r.ConnectionWills)))
	for _, w := range r.ConnectionWills {
		b = wire.AppendMessage(b, &w.Message)
		b = binary.AppendUvarint(b, uint64(w.DelayInterval))
	}
	return wire.AppendBool(b, r.Cleanup)
}

func decodeRecord(id mqtthooks.SubscriberID, b []byte) (mqtthooks.SessionRecord, error) {
	d := wire.NewDecoder(b, errCorrupt)
	readVersion(d)
	r := mqtthooks.SessionRecord{ID: id, Generation: d.Uvarint(), Username: d.Str(), HasUsername: d.Bool(),
		ConnID: d.Uvarint()}
	if peer := d.Str(); peer != "" {
		p, err := netip.ParseAddrPort(peer)
		if err != nil {
			return r, errCorrupt
		}
		r.Peer = p
	}
	r.ProtocolVersion = mqtthooks.ProtocolVersion(d.Byte())
	r.Connected = d.Bool()
	r.Expiry = time.Duration(d.Varint())
	r.ExpiresAt = d.Time()
	for range d.Count() {
		w := &mqtthooks.Will{Message: *d.Message()}
		w.DelayInterval = uint32(d.Uvarint())
		r.Wills = append(r.Wills, mqtthooks.DelayedWill{Will: w, At: d.Time()})
	}
	q := &r.Queue
	q.MaxOnlineMessages, q.MaxOfflineMessages = int(d.Varint()), int(d.Varint())
	q.QueueType, q.DeliverMode = mqtthooks.QueueType(d.Byte()), mqtthooks.DeliverMode(d.Byte())
	q.StoreQoS0Offline, q.MaxInflight = d.Bool(), int(d.Varint())
	if d.Len() > 0 { // records written before connection Wills were kept end here
		for range d.Count() {
			w := &mqtthooks.Will{Message: *d.Message()}
			w.DelayInterval = uint32(d.Uvarint())
			r.ConnectionWills = append(r.ConnectionWills, w)
		}
	}
	if d.Len() > 0 { // records written before Cleanup was kept end here
		r.Cleanup = d.Bool()
	}
	return r, d.End()
}

func encodeEntry(en *mqtthooks.StoredEntry) []byte {
	b := append(make([]byte, 0, 32), version)
	b = binary.AppendUvarint(b, en.MessageID)
	b = append(b, en.QoS)
	b = wire.AppendBool(b, en.Retain)
	b = binary.AppendUvarint(b, uint64(len(en.SubscriptionIdentifiers)))
	for _, id := range en.SubscriptionIdentifiers {
		b = binary.AppendUvarint(b, uint64(id))
	}
	b = wire.AppendTime(b, en.ExpiresAt)
	b = append(b, byte(en.State))
	return binary.AppendUvarint(b, uint64(en.Sent))
}

func decodeEntry(seq uint64, b []byte) (mqtthooks.StoredEntry, error) {
	d := wire.NewDecoder(b, errCorrupt)
	readVersion(d)
	en := mqtthooks.StoredEntry{Seq: seq, MessageID: d.Uvarint(), QoS: d.Byte(), Retain: d.Bool()}
	if n := d.Count(); n > 0 {
		en.SubscriptionIdentifiers = make([]uint32, n)
		for i := range en.SubscriptionIdentifiers {
			en.SubscriptionIdentifiers[i] = uint32(d.Uvarint())
		}
	}
	en.ExpiresAt = d.Time()
	en.State = mqtthooks.EntryState(d.Byte())
	en.Sent = uint32(d.Uvarint())
	return en, d.End()
}

// entryMessageID reads just the message id of an encoded entry.
func entryMessageID(b []byte) (uint64, error) {
	d := wire.NewDecoder(b, errCorrupt)
	readVersion(d)
	id := d.Uvarint()
	return id, d.Err()
}

func encodeSub(s mqtthooks.Subscription) []byte {
	b := append(make([]byte, 0, 16), version, s.QoS)
	b = wire.AppendBool(b, s.NoLocal)
	b = wire.AppendBool(b, s.RetainAsPublished)
	b = append(b, s.RetainHandling)
	return binary.AppendUvarint(b, uint64(s.Identifier))
}

func decodeSub(filter string, b []byte) (mqtthooks.Subscription, error) {
	d := wire.NewDecoder(b, errCorrupt)
	readVersion(d)
	s := mqtthooks.Subscription{Filter: filter, QoS: d.Byte(), NoLocal: d.Bool(), RetainAsPublished: d.Bool(),
		RetainHandling: d.Byte(), Identifier: uint32(d.Uvarint())}
	return s, d.End()
}
