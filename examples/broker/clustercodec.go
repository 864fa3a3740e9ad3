package main

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"

	"github.com/mqtthooks/mqtthooks"
	"github.com/mqtthooks/mqtthooks/internal/wire"
)

// The encodings the nodes of a cluster exchange: route requests and their
// replies on NATS, and the values of the interest and retained buckets.
// Each starts with a version byte and a kind, so that a node can refuse
// (rather than misread) what a newer release sends; fields are varints and
// length-prefixed strings, compact and cheap to decode, as the message's
// payload is carried unchanged at the end.

// wireVersion is the version of every encoding in this file.
const wireVersion = 1

// The kinds of encoding, the second byte.
const (
	kindRoute    = 6 // a PUBLISH forwarded to a node (1: before resendRef; 5: with a DUP flag, not a nonce)
	kindReply    = 2 // a node's answer to a forwarded PUBLISH
	kindInterest = 3 // a value of the interest bucket: mountpoint and filter
	kindRetained = 4 // a value of the retained bucket: mountpoint and message
)

// errWire is the error of an encoding this release cannot read.
var errWire = errors.New("cluster: malformed or unknown encoding")

// routeMsg is a PUBLISH forwarded from the node that received it to a node
// with a matching subscription.
type routeMsg struct {
	boot   uint64                 // the sending process, so that ids from its previous life are not taken as duplicates
	seq    uint64                 // the message's id in that process; 0 for one not answered (QoS 0), which is not deduplicated
	from   mqtthooks.SubscriberID // the publisher, for NoLocal
	shares []string               // the shared subscriptions ($share/{name}/{filter}) this node delivers for
	ref    resendRef              // a client's QoS 2 PUBLISH: its packet identifier and nonce
	msg    *mqtthooks.Message
}

// encoder appends the fields of an encoding to b.
type encoder struct{ b []byte }

// u writes an unsigned varint.
func (e *encoder) u(v uint64) { e.b = binary.AppendUvarint(e.b, v) }

// str writes a length-prefixed string.
func (e *encoder) str(s string) { e.b = wire.AppendString(e.b, s) }

// decoder reads length-prefixed strings from b, as clustermove.go's
// serveArrived does, through a wire.Decoder; the first error (a field past
// the end) sticks in err.
type decoder struct {
	b   []byte
	err error
}

// str reads a length-prefixed string.
func (d *decoder) str() string {
	w := wire.NewDecoder(d.b, errWire)
	s := w.Str()
	if d.err == nil {
		d.err = w.Err()
	}
	d.b = w.Rest()
	return s
}

// newDecoder returns a wire.Decoder of b that reports errWire.
func newDecoder(b []byte) *wire.Decoder { return wire.NewDecoder(b, errWire) }

// readHeader reads and checks the version and kind.
func readHeader(d *wire.Decoder, kind byte) {
	if d.Byte() != wireVersion || d.Byte() != kind {
		d.Fail(errWire)
	}
}

// message writes m, its payload last and unprefixed: it runs to the end.
func (e *encoder) message(m *mqtthooks.Message) {
	e.str(m.Topic)
	p := &m.Properties
	flags := m.QoS & 3
	if m.Retain {
		flags |= 4
	}
	if p.MessageExpiryInterval.Set {
		flags |= 8
	}
	e.b = append(e.b, flags, p.PayloadFormatIndicator)
	if p.MessageExpiryInterval.Set {
		e.u(uint64(p.MessageExpiryInterval.V))
	}
	e.str(p.ContentType)
	e.str(p.ResponseTopic)
	e.b = wire.AppendOptBytes(e.b, p.CorrelationData) // an empty Correlation Data stays set
	e.u(uint64(len(p.UserProperties)))
	for _, up := range p.UserProperties {
		e.str(up.Key)
		e.str(up.Value)
	}
	e.b = append(e.b, m.Payload...)
}

// readMessage reads what encoder.message wrote, to the end of d.
func readMessage(d *wire.Decoder) *mqtthooks.Message {
	m := &mqtthooks.Message{Topic: d.Str()}
	flags := d.Byte()
	m.QoS, m.Retain = flags&3, flags&4 != 0
	p := &m.Properties
	p.PayloadFormatIndicator = d.Byte()
	if flags&8 != 0 {
		p.MessageExpiryInterval = mqtthooks.Some(uint32(d.Uvarint()))
	}
	p.ContentType = d.Str()
	p.ResponseTopic = d.Str()
	p.CorrelationData = d.OptBytes()
	for range d.Count() { // each takes two bytes at least
		p.UserProperties = append(p.UserProperties, mqtthooks.UserProperty{Key: d.Str(), Value: d.Str()})
	}
	if m.QoS > 2 || d.Err() != nil {
		d.Fail(errWire)
		return nil
	}
	m.Payload = append([]byte{}, d.Rest()...) // the NATS message's buffer is not ours to keep
	return m
}

// encodeRoute encodes a forwarded PUBLISH (see routeMsg).
func encodeRoute(r *routeMsg) []byte {
	e := encoder{b: make([]byte, 0, 64+len(r.msg.Topic)+len(r.msg.Payload))}
	e.b = append(e.b, wireVersion, kindRoute)
	e.u(r.boot)
	e.u(r.seq)
	e.str(r.from.Mountpoint)
	e.str(r.from.ClientID)
	e.u(uint64(len(r.shares)))
	for _, s := range r.shares {
		e.str(s)
	}
	e.u(uint64(r.ref.pid))
	e.u(r.ref.nonce)
	e.message(r.msg)
	return e.b
}

// decodeRoute decodes what encodeRoute wrote.
func decodeRoute(b []byte) (*routeMsg, error) {
	d := newDecoder(b)
	readHeader(d, kindRoute)
	r := &routeMsg{boot: d.Uvarint(), seq: d.Uvarint()}
	r.from.Mountpoint, r.from.ClientID = d.Str(), d.Str()
	for range d.Count() {
		r.shares = append(r.shares, d.Str())
	}
	r.ref.pid = uint16(d.Uvarint())
	r.ref.nonce = d.Uvarint()
	if d.Err() == nil {
		r.msg = readMessage(d)
	}
	if d.Err() != nil {
		return nil, d.Err()
	}
	return r, nil
}

// encodeReply is a node's answer to a forwarded PUBLISH: nil when its copies
// are durable, or why they are not.
func encodeReply(err error) []byte {
	if err == nil {
		return []byte{wireVersion, kindReply, 0}
	}
	e := encoder{b: []byte{wireVersion, kindReply, 1}}
	e.str(err.Error())
	return e.b
}

// decodeReply returns the error of a reply encodeReply wrote.
func decodeReply(b []byte) error {
	d := newDecoder(b)
	readHeader(d, kindReply)
	status := d.Byte()
	if d.Err() != nil {
		return fmt.Errorf("%w: a reply %q", d.Err(), b)
	}
	if status == 0 {
		return nil
	}
	return fmt.Errorf("cluster: the node did not store the message: %s", d.Str())
}

// encodeInterest is the value of an interest key: the filter and its
// mountpoint, which a key may only hold hashed.
func encodeInterest(mountpoint, filter string) []byte {
	e := encoder{b: []byte{wireVersion, kindInterest}}
	e.str(mountpoint)
	e.str(filter)
	return e.b
}

// decodeInterest decodes the value of an interest key.
func decodeInterest(b []byte) (mountpoint, filter string, err error) {
	d := newDecoder(b)
	readHeader(d, kindInterest)
	mountpoint, filter = d.Str(), d.Str()
	return mountpoint, filter, d.Err()
}

// encodeRetained is the value of a retained key: the mountpoint and the
// message as published (its expiry counts from the entry's creation).
func encodeRetained(mountpoint string, m *mqtthooks.Message) []byte {
	e := encoder{b: make([]byte, 0, 32+len(mountpoint)+len(m.Topic)+len(m.Payload))}
	e.b = append(e.b, wireVersion, kindRetained)
	e.str(mountpoint)
	e.message(m)
	return e.b
}

// decodeRetained decodes the value of a retained key.
func decodeRetained(b []byte) (string, *mqtthooks.Message, error) {
	d := newDecoder(b)
	readHeader(d, kindRetained)
	mp := d.Str()
	var m *mqtthooks.Message
	if d.Err() == nil {
		m = readMessage(d)
	}
	return mp, m, d.Err()
}

// maxKeyToken bounds the readable form of a KV key token; a longer
// mountpoint and topic or filter is hashed, as a subject has a length
// limit (the server's max_control_line) and keys are subjects.
const maxKeyToken = 256

// keyToken encodes a mountpoint and a topic or filter as one token of a KV
// key (letters, digits, '-' and '_'): "k" and base64url of both, the
// mountpoint's length first, or, when that is too long, "h" and base64url of
// its SHA-256. The value of a key says what a hashed key stands for.
func keyToken(mountpoint, s string) (token string, hashed bool) {
	b := binary.AppendUvarint(make([]byte, 0, 2+len(mountpoint)+len(s)), uint64(len(mountpoint)))
	b = append(b, mountpoint...)
	b = append(b, s...)
	if t := base64.RawURLEncoding.EncodeToString(b); len(t) <= maxKeyToken {
		return "k" + t, false
	}
	sum := sha256.Sum256(b)
	return "h" + base64.RawURLEncoding.EncodeToString(sum[:]), true
}

// parseKeyToken decodes a readable token of keyToken; ok is false for a
// hashed one or a malformed one.
func parseKeyToken(token string) (mountpoint, s string, ok bool) {
	rest, isReadable := strings.CutPrefix(token, "k")
	if !isReadable {
		return "", "", false
	}
	b, err := base64.RawURLEncoding.DecodeString(rest)
	if err != nil {
		return "", "", false
	}
	n, k := binary.Uvarint(b)
	if k <= 0 || n > uint64(len(b)-k) {
		return "", "", false
	}
	b = b[k:]
	return string(b[:n]), string(b[n:]), true
}
