package main

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/mqtthooks/mqtthooks"
)

// The codec decodes a packet into fields, which loses what some protocol
// checks need: whether a property came twice [MQTT-2.2.2-2], whether a
// Receive Maximum or Maximum Packet Size of 0 was sent or left out, and the
// reserved bits of SUBSCRIBE options [MQTT-3.8.3-5]. Neither mochi's packets
// nor paho's keeps them, so this file walks a packet's raw body, before the
// codec decodes it, to find where property sections and option bytes are.
// It decodes no value the broker uses.

// errProtocol is a packet that breaks a rule of the protocol the codec does
// not check.
var errProtocol = errors.New("protocol error")

// wireError is a packet the checks refuse, with its MQTT 5 reason code.
type wireError struct {
	code mqtthooks.ReasonCode
	why  string
}

func (e *wireError) Error() string { return e.why }

func (e *wireError) Unwrap() error {
	if e.code == mqtthooks.CodeMalformedPacket {
		return errMalformed
	}
	return errProtocol
}

func protocolErr(format string, args ...any) error {
	return &wireError{code: mqtthooks.CodeProtocolError, why: fmt.Sprintf(format, args...)}
}

func malformedErr(format string, args ...any) error {
	return &wireError{code: mqtthooks.CodeMalformedPacket, why: fmt.Sprintf(format, args...)}
}

// propertyKind is how a property's value is laid out (MQTT 5 §2.2.2.2).
type propertyKind uint8

const (
	propByte propertyKind = iota + 1
	propTwo
	propFour
	propVarint
	propString
	propBinary
	propPair
)

var propertyKinds = [256]propertyKind{
	0x01: propByte, 0x17: propByte, 0x19: propByte, 0x24: propByte, 0x25: propByte, 0x28: propByte,
	0x29: propByte, 0x2A: propByte,
	0x13: propTwo, 0x21: propTwo, 0x22: propTwo, 0x23: propTwo,
	0x02: propFour, 0x11: propFour, 0x18: propFour, 0x27: propFour,
	0x0B: propVarint,
	0x03: propString, 0x08: propString, 0x12: propString, 0x15: propString, 0x1A: propString,
	0x1C: propString, 0x1F: propString,
	0x09: propBinary, 0x16: propBinary,
	0x26: propPair,
}

// maxProperties bounds the properties of one section. The codec turns each
// User Property into a pair of strings: a packet of nothing but empty ones
// costs forty times its size to decode, which this bounds before decoding.
const maxProperties = 1024

const (
	propReceiveMaximum    = 0x21
	propMaximumPacketSize = 0x27
	propUserProperty      = 0x26
)

// varint reads a Variable Byte Integer at b[0:], returning its value and
// length. The codec's packets.DecodeLength takes an io.ByteReader, which
// would put a reader on the heap for every PUBLISH checked.
func varint(b []byte) (v, n int, err error) {
	for shift := 0; n < 4; shift += 7 {
		if n >= len(b) {
			return 0, 0, malformedErr("truncated variable byte integer")
		}
		c := b[n]
		n++
		v |= int(c&0x7f) << shift
		if c&0x80 == 0 {
			return v, n, nil
		}
	}
	return 0, 0, malformedErr("variable byte integer longer than 4 bytes")
}

// prefixed returns the length of a two-byte-length-prefixed field at b[0:].
func prefixed(b []byte) (int, error) {
	if len(b) < 2 {
		return 0, malformedErr("truncated length")
	}
	n := 2 + int(binary.BigEndian.Uint16(b))
	if n > len(b) {
		return 0, malformedErr("truncated field")
	}
	return n, nil
}

// checkProperties checks the property section at b[0:] — no property but a
// User Property twice, at most maxProperties in all — and returns the
// section's length and the values of the two-byte and four-byte properties
// it has.
func checkProperties(b []byte) (n int, ints map[byte]uint32, err error) {
	size, n, err := varint(b)
	if err != nil {
		return 0, nil, err
	}
	if n+size > len(b) {
		return 0, nil, malformedErr("property length beyond the packet")
	}
	props := b[n : n+size]
	var seen [256]bool
	for i, count := 0, 0; i < len(props); count++ {
		if count == maxProperties {
			return 0, nil, &wireError{code: mqtthooks.CodeImplementationSpecificError,
				why: fmt.Sprintf("more than %d properties", maxProperties)}
		}
		id := props[i]
		i++
		if seen[id] && id != propUserProperty {
			return 0, nil, protocolErr("property 0x%02X appears twice", id)
		}
		seen[id] = true
		var l int
		switch propertyKinds[id] {
		case propByte:
			l = 1
		case propTwo, propFour:
			l = 2
			if propertyKinds[id] == propFour {
				l = 4
			}
			if i+l > len(props) {
				return 0, nil, malformedErr("truncated property 0x%02X", id)
			}
			if ints == nil {
				ints = map[byte]uint32{}
			}
			if l == 2 {
				ints[id] = uint32(binary.BigEndian.Uint16(props[i:]))
			} else {
				ints[id] = binary.BigEndian.Uint32(props[i:])
			}
		case propVarint:
			_, l, err = varint(props[i:])
		case propString, propBinary:
			l, err = prefixed(props[i:])
		case propPair:
			var k, v int
			if k, err = prefixed(props[i:]); err == nil {
				v, err = prefixed(props[i+k:])
			}
			l = k + v
		default:
			return 0, nil, malformedErr("unknown property 0x%02X", id)
		}
		if err != nil {
			return 0, nil, err
		}
		if i+l > len(props) {
			return 0, nil, malformedErr("truncated property 0x%02X", id)
		}
		i += l
	}
	return n + size, ints, nil
}

// precheck applies, before decoding, the checks the codec does not make:
// the flags and property sections of a CONNECT, the property sections of
// the other packets (which also bounds what decoding them may cost), and
// the shape of a SUBSCRIBE, whose decoder (mochi-mqtt packets v2.7.9) indexes past the
// body when a topic filter is not followed by its options byte: found by
// FuzzReadPacket, see testdata/fuzz.
func precheck(pk *packets.Packet, body []byte) error {
	switch pk.FixedHeader.Type {
	case packets.Subscribe:
		return checkSubscribe(pk, body)
	case packets.Auth, packets.Disconnect: // a reason code, then properties
		if pk.ProtocolVersion == 5 && len(body) > 1 {
			_, _, err := checkProperties(body[1:])
			return err
		}
	case packets.Puback, packets.Pubrec, packets.Pubrel, packets.Pubcomp: // id, reason code, properties
		if pk.ProtocolVersion == 5 && len(body) > 3 {
			_, _, err := checkProperties(body[3:])
			return err
		}
	case packets.Unsubscribe: // id, properties
		if pk.ProtocolVersion == 5 && len(body) > 2 {
			_, _, err := checkProperties(body[2:])
			return err
		}
	case packets.Connect:
		return checkConnect(pk, body)
	case packets.Publish:
		if pk.ProtocolVersion != 5 {
			return nil
		}
		l, err := prefixed(body)
		if err != nil {
			return err
		}
		if pk.FixedHeader.Qos > 0 {
			l += 2
		}
		if l > len(body) {
			return malformedErr("truncated PUBLISH")
		}
		_, _, err = checkProperties(body[l:])
		return err
	}
	return nil
}

// checkConnect checks the flags and properties of a CONNECT, from its raw
// body: a body too short for them is left to the codec to call malformed.
func checkConnect(pk *packets.Packet, body []byte) error {
	l, err := prefixed(body) // the protocol name
	if err != nil || l+4 > len(body) {
		return nil
	}
	level, flags := body[l], body[l+1]
	// What the answer to a refused CONNECT needs, as the codec would set it.
	pk.ProtocolVersion, pk.Connect.ProtocolName = level, body[2:l]
	will := flags&0x04 != 0
	if !will && flags&0x38 != 0 { // Will QoS or Will Retain without a Will [MQTT-3.1.2-11] [MQTT-3.1.2-13]
		return malformedErr("Will QoS or Will Retain without a Will")
	}
	if level != 5 {
		if flags&0x40 != 0 && flags&0x80 == 0 { // [MQTT-3.1.2-22]
			return malformedErr("password without user name")
		}
		return nil
	}
	at := l + 4 // name, level, flags, keep-alive
	n, ints, err := checkProperties(body[at:])
	if err != nil {
		return err
	}
	for _, id := range []byte{propReceiveMaximum, propMaximumPacketSize} {
		if v, ok := ints[id]; ok && v == 0 {
			return protocolErr("property 0x%02X is 0", id)
		}
	}
	if !will {
		return nil
	}
	at += n
	id, err := prefixed(body[at:]) // the client identifier
	if err != nil {
		return err
	}
	_, _, err = checkProperties(body[at+id:])
	return err
}

// checkSubscribe checks the properties and the option bytes of a SUBSCRIBE.
func checkSubscribe(pk *packets.Packet, body []byte) error {
	at := 2 // packet identifier
	if at > len(body) {
		return malformedErr("truncated SUBSCRIBE")
	}
	if pk.ProtocolVersion == 5 {
		n, _, err := checkProperties(body[at:])
		if err != nil {
			return err
		}
		at += n
	}
	for at < len(body) {
		l, err := prefixed(body[at:])
		if err != nil {
			return err
		}
		at += l
		if at >= len(body) {
			return malformedErr("subscription without options")
		}
		o := body[at]
		at++
		reserved := byte(0xFC) // MQTT 3: all but the QoS bits
		if pk.ProtocolVersion == 5 {
			reserved = 0xC0
		}
		switch {
		case o&reserved != 0: // [MQTT-3.8.3-5]
			return malformedErr("reserved bits set in subscription options 0x%02X", o)
		case o&3 == 3:
			return malformedErr("subscription QoS 3")
		case pk.ProtocolVersion == 5 && o>>4&3 == 3:
			return protocolErr("Retain Handling 3")
		}
	}
	return nil
}
