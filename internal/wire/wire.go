// Package wire holds the binary encoding primitives that the Pebble store,
// the NATS JetStream store and the example broker's cluster build their
// formats from: varints, length-prefixed strings and byte strings, and the
// stores' layout of a message. Those formats are kept on disk, in streams,
// and exchanged between the nodes of a cluster, so what the Append
// functions write never changes.
//
// A Decoder is safe on any input: every read checks the bounds of what is
// left, no input makes it panic, a count larger than the bytes left is
// malformed (so what it allocates is in proportion to its input), and the
// first error sticks, so that a caller reads all its fields and checks Err
// once.
package wire

import (
	"encoding/binary"
	"time"

	"github.com/mqtthooks/mqtthooks"
)

// AppendString appends s, preceded by its length as a uvarint.
func AppendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

// AppendOptBytes appends p, preceded by its length plus one as a uvarint,
// and nil as 0: an empty p (an empty but set Correlation Data) reads back
// set.
func AppendOptBytes(b, p []byte) []byte {
	if p == nil {
		return append(b, 0)
	}
	b = binary.AppendUvarint(b, uint64(len(p))+1)
	return append(b, p...)
}

// AppendBool appends 1 for true, 0 for false.
func AppendBool(b []byte, v bool) []byte {
	if v {
		return append(b, 1)
	}
	return append(b, 0)
}

// AppendTime appends t's Unix nanoseconds as a varint, 0 for the zero time.
func AppendTime(b []byte, t time.Time) []byte {
	if t.IsZero() {
		return append(b, 0)
	}
	return binary.AppendVarint(b, t.UnixNano())
}

// AppendMessage appends m in the stores' layout: the topic, the payload
// (optional bytes), QoS, Retain, then the PUBLISH properties, with the
// Message Expiry Interval's value written even when it is not set. A nil and
// an empty payload, Correlation Data or User Properties read back apart.
func AppendMessage(b []byte, m *mqtthooks.Message) []byte {
	b = AppendString(b, m.Topic)
	b = AppendOptBytes(b, m.Payload)
	b = append(b, m.QoS)
	b = AppendBool(b, m.Retain)
	p := &m.Properties
	b = append(b, p.PayloadFormatIndicator)
	b = AppendBool(b, p.MessageExpiryInterval.Set)
	b = binary.AppendUvarint(b, uint64(p.MessageExpiryInterval.V))
	b = AppendString(b, p.ContentType)
	b = AppendString(b, p.ResponseTopic)
	b = AppendOptBytes(b, p.CorrelationData)
	if p.UserProperties == nil {
		return append(b, 0)
	}
	b = binary.AppendUvarint(b, uint64(len(p.UserProperties))+1)
	for _, up := range p.UserProperties {
		b = AppendString(b, up.Key)
		b = AppendString(b, up.Value)
	}
	return b
}

// Decoder reads fields from the front of its input. A read past the end of
// the input, or of a malformed field, records the Decoder's error and drops
// the rest of the input, so that every later read fails too and returns
// zero values. Slices from Raw and Rest share the input's memory; those
// from OptBytes and Message are copies.
type Decoder struct {
	b         []byte
	err       error
	malformed error
}

// NewDecoder returns a Decoder of b that reports malformed input as
// malformed, the caller's own error (so that errors.Is on it holds), which
// must not be nil. It returns a pointer because a Decoder returned by value
// is built and then copied, which took a quarter of the time of decoding a
// Pebble queue entry.
func NewDecoder(b []byte, malformed error) *Decoder {
	return &Decoder{b: b, malformed: malformed}
}

// Err returns the first error, nil if every read so far was well-formed.
func (d *Decoder) Err() error { return d.err }

// Len returns the number of bytes not read yet.
func (d *Decoder) Len() int { return len(d.b) }

// Fail records err, unless an error is recorded already, and drops the rest
// of the input: for what a caller finds wrong in the fields it read.
func (d *Decoder) Fail(err error) {
	if d.err == nil {
		d.err = err
	}
	d.b = nil
}

// End returns the first error, or the malformed error if input is left
// over: for an encoding that must be read whole.
func (d *Decoder) End() error {
	if d.err == nil && len(d.b) != 0 {
		d.Fail(d.malformed)
	}
	return d.err
}

// Uvarint reads an unsigned varint.
func (d *Decoder) Uvarint() uint64 {
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.Fail(d.malformed)
		return 0
	}
	d.b = d.b[n:]
	return v
}

// Varint reads a signed varint.
func (d *Decoder) Varint() int64 {
	v, n := binary.Varint(d.b)
	if n <= 0 {
		d.Fail(d.malformed)
		return 0
	}
	d.b = d.b[n:]
	return v
}

// Byte reads one byte.
func (d *Decoder) Byte() byte {
	if len(d.b) == 0 {
		d.Fail(d.malformed)
		return 0
	}
	v := d.b[0]
	d.b = d.b[1:]
	return v
}

// Bool reads what AppendBool wrote; any byte but 0 is true.
func (d *Decoder) Bool() bool { return d.Byte() != 0 }

// Raw reads n bytes; the result's capacity is n, so that appending to it
// does not overwrite the input.
func (d *Decoder) Raw(n uint64) []byte {
	if n > uint64(len(d.b)) {
		d.Fail(d.malformed)
		return nil
	}
	v := d.b[:n:n]
	d.b = d.b[n:]
	return v
}

// Rest reads all the input left.
func (d *Decoder) Rest() []byte {
	v := d.b
	d.b = nil
	return v
}

// Str reads what AppendString wrote.
func (d *Decoder) Str() string { return string(d.Raw(d.Uvarint())) }

// OptBytes reads what AppendOptBytes wrote: nil, or a copy.
func (d *Decoder) OptBytes() []byte {
	n := d.Uvarint()
	if n == 0 {
		return nil
	}
	return append([]byte{}, d.Raw(n-1)...)
}

// Time reads what AppendTime wrote, in the local time zone.
func (d *Decoder) Time() time.Time {
	ns := d.Varint()
	if ns == 0 {
		return time.Time{}
	}
	return time.Unix(0, ns)
}

// Count reads a uvarint count of items that take a byte at least each; a
// count larger than the bytes left is malformed, and reads as 0.
func (d *Decoder) Count() int {
	n := d.Uvarint()
	if n > uint64(len(d.b)) {
		d.Fail(d.malformed)
		return 0
	}
	return int(n)
}

// Message reads what AppendMessage wrote. It does not check the values
// (a QoS of 3, say): the caller does, if it takes input it did not write.
func (d *Decoder) Message() *mqtthooks.Message {
	m := &mqtthooks.Message{Topic: d.Str(), Payload: d.OptBytes(), QoS: d.Byte(), Retain: d.Bool()}
	p := &m.Properties
	p.PayloadFormatIndicator = d.Byte()
	p.MessageExpiryInterval.Set = d.Bool()
	p.MessageExpiryInterval.V = uint32(d.Uvarint())
	p.ContentType, p.ResponseTopic, p.CorrelationData = d.Str(), d.Str(), d.OptBytes()
	n := d.Uvarint()
	if n == 0 {
		return m
	}
	if n-1 > uint64(len(d.b)) { // each takes two bytes at least
		d.Fail(d.malformed)
		return m
	}
	p.UserProperties = make([]mqtthooks.UserProperty, n-1)
	for i := range p.UserProperties {
		p.UserProperties[i] = mqtthooks.UserProperty{Key: d.Str(), Value: d.Str()}
	}
	return m
}
