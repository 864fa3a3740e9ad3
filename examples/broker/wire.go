package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/mqtthooks/mqtthooks"
)

// The broker never parses MQTT itself: github.com/mochi-mqtt/server/v2/packets
// decodes and encodes every packet, for MQTT 3.1, 3.1.1 and 5. This file only
// frames packets on a stream and maps between the codec's packets and the
// core's types.

var (
	errMalformed = errors.New("malformed packet")
	errTooLarge  = errors.New("packet too large")
)

// frameReader frames packets on a connection's byte stream. It is the
// connection's own, used by its reading goroutine only, and keeps what
// framing would otherwise allocate for every packet: the length reader
// (passed as an io.ByteReader it would escape) and a body buffer for the
// packets nothing keeps a reference into.
type frameReader struct {
	br      *bufio.Reader
	length  fourBytes
	scratch []byte
}

// scratchMax is the largest body read into the reused buffer; a larger
// one gets a buffer of its own, so that one big acknowledgement does not
// pin a big buffer for the connection's life.
const scratchMax = 256

// body returns a buffer of n bytes for a packet of type t. The codec
// decodes strings and byte slices as views into the body (no copy), and a
// CONNECT's, PUBLISH's, SUBSCRIBE's, UNSUBSCRIBE's or AUTH's views outlive
// the read (they are routed, queued, stored or handed to plugins): those get
// a fresh buffer. The others are done with before the next read.
func (f *frameReader) body(t byte, n int) []byte {
	switch t {
	case packets.Puback, packets.Pubrec, packets.Pubrel, packets.Pubcomp, packets.Pingreq, packets.Disconnect:
		if n <= scratchMax {
			if f.scratch == nil {
				f.scratch = make([]byte, scratchMax)
			}
			return f.scratch[:n]
		}
	}
	return make([]byte, n)
}

// readPacket reads one packet from f into pk, which it resets first. It
// reads the fixed header first and refuses a remaining length above maxSize
// (0: no limit) before reading the body. version is the connection's
// protocol level (0 before CONNECT). A packet that breaks a rule the codec
// does not check comes back, undecoded but for what the answer needs, with a
// *wireError (see precheck). pk is a pointer: a Packet is about 800 bytes,
// and copying it through every frame grew the connection's stack.
func readPacket(f *frameReader, version byte, maxSize uint32, pk *packets.Packet) error {
	*pk = packets.Packet{}
	body, err := readFrame(f, version, maxSize, pk)
	if err != nil {
		return err
	}
	if err := precheck(pk, body); err != nil {
		return err
	}
	if err := decodeRecovering(pk, body); err != nil {
		return fmt.Errorf("%w: %w", errMalformed, err)
	}
	return nil
}

// readFrame reads one packet's fixed header into pk and returns its body,
// undecoded. The body may be f's reused buffer (see frameReader.body).
func readFrame(f *frameReader, version byte, maxSize uint32, pk *packets.Packet) (body []byte, err error) {
	b, err := f.br.ReadByte()
	if err != nil {
		return nil, err
	}
	if err := pk.FixedHeader.Decode(b); err != nil {
		return nil, fmt.Errorf("%w: %w", errMalformed, err)
	}
	f.length = fourBytes{r: f.br}
	n, lenBytes, err := packets.DecodeLength(&f.length)
	if err != nil {
		if errors.Is(err, io.EOF) {
			return nil, io.ErrUnexpectedEOF
		}
		return nil, fmt.Errorf("%w: %w", errMalformed, err)
	}
	if total := uint64(1 + lenBytes + n); maxSize > 0 && total > uint64(maxSize) {
		return nil, fmt.Errorf("%w: %d bytes", errTooLarge, total)
	}
	pk.FixedHeader.Remaining = n
	body = f.body(pk.FixedHeader.Type, n)
	if _, err := io.ReadFull(f.br, body); err != nil {
		return nil, err
	}
	pk.ProtocolVersion = version
	return body, nil
}

// fourBytes reads at most the four bytes a Remaining Length may have, so that
// endless continuation bytes end as a malformed packet.
type fourBytes struct {
	r io.ByteReader
	n int
}

func (f *fourBytes) ReadByte() (byte, error) {
	if f.n == 4 {
		return 0, errors.New("remaining length longer than 4 bytes")
	}
	f.n++
	return f.r.ReadByte()
}

// decodeRecovering is decodeBody for a live connection: the codec can panic
// on some hostile input, and a panic is a malformed packet, never a crash.
// FuzzReadPacket calls decodeBody itself, so that panics surface there.
func decodeRecovering(pk *packets.Packet, body []byte) (err error) {
	defer func() {
		if v := recover(); v != nil {
			err = fmt.Errorf("decoder panicked: %v", v)
		}
	}()
	return decodeBody(pk, body)
}

// decodeBody decodes the body of pk by its type, with the codec.
func decodeBody(pk *packets.Packet, body []byte) error {
	switch pk.FixedHeader.Type {
	case packets.Connect:
		return pk.ConnectDecode(body)
	case packets.Publish:
		return pk.PublishDecode(body)
	case packets.Puback:
		return pk.PubackDecode(body)
	case packets.Pubrec:
		return pk.PubrecDecode(body)
	case packets.Pubrel:
		return pk.PubrelDecode(body)
	case packets.Pubcomp:
		return pk.PubcompDecode(body)
	case packets.Subscribe:
		return pk.SubscribeDecode(body)
	case packets.Unsubscribe:
		return pk.UnsubscribeDecode(body)
	case packets.Pingreq:
		return nil
	case packets.Disconnect:
		if pk.ProtocolVersion == 5 && len(body) == 1 { // the codec skips a lone reason code
			pk.ReasonCode = body[0]
			return nil
		}
		return pk.DisconnectDecode(body)
	case packets.Auth:
		return pk.AuthDecode(body)
	}
	return fmt.Errorf("a client does not send packets of type %d", pk.FixedHeader.Type)
}

func packetUserProperties(ps []mqtthooks.UserProperty) []packets.UserProperty {
	if len(ps) == 0 {
		return nil
	}
	out := make([]packets.UserProperty, len(ps))
	for i, p := range ps {
		out[i] = packets.UserProperty{Key: p.Key, Val: p.Value}
	}
	return out
}

// connackPacket maps the core's CONNACK to the codec's, into pk.
func connackPacket(pk *packets.Packet, version byte, ack *mqtthooks.Connack) {
	*pk = packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connack}, ProtocolVersion: version,
		SessionPresent: ack.SessionPresent && version != 3, ReasonCode: byte(ack.ReturnCode),
		// The codec writes Response Information only when told to; the core
		// sets it only for a client that asked.
		Mods: packets.Mods{AllowResponseInfo: true}}
	if version != 5 {
		return
	}
	pk.ReasonCode = byte(ack.ReasonCode)
	a, p := &ack.Properties, &pk.Properties
	if a.SessionExpiryInterval.Set {
		p.SessionExpiryInterval, p.SessionExpiryIntervalFlag = a.SessionExpiryInterval.V, true
	}
	p.ReceiveMaximum = a.ReceiveMaximum
	if a.MaximumQoS.Set {
		p.MaximumQos, p.MaximumQosFlag = a.MaximumQoS.V, true
	}
	if a.RetainAvailable.Set {
		p.RetainAvailable, p.RetainAvailableFlag = boolByte(a.RetainAvailable.V), true
	}
	p.MaximumPacketSize = a.MaximumPacketSize
	p.AssignedClientID = a.AssignedClientIdentifier
	p.TopicAliasMaximum = a.TopicAliasMaximum
	p.ReasonString = a.ReasonString
	p.User = packetUserProperties(a.UserProperties)
	if a.WildcardSubscriptionAvailable.Set {
		p.WildcardSubAvailable, p.WildcardSubAvailableFlag = boolByte(a.WildcardSubscriptionAvailable.V), true
	}
	if a.SubscriptionIdentifierAvailable.Set {
		p.SubIDAvailable, p.SubIDAvailableFlag = boolByte(a.SubscriptionIdentifierAvailable.V), true
	}
	if a.SharedSubscriptionAvailable.Set {
		p.SharedSubAvailable, p.SharedSubAvailableFlag = boolByte(a.SharedSubscriptionAvailable.V), true
	}
	if a.ServerKeepAlive.Set {
		p.ServerKeepAlive, p.ServerKeepAliveFlag = a.ServerKeepAlive.V, true
	}
	p.ResponseInfo = a.ResponseInformation
	p.ServerReference = a.ServerReference
	p.AuthenticationMethod = a.AuthenticationMethod
	p.AuthenticationData = a.AuthenticationData
}

// publishPacket maps a delivery to the codec's PUBLISH, into pk.
func publishPacket(pk *packets.Packet, version byte, d *mqtthooks.Delivery) {
	m := d.Message
	*pk = packets.Packet{
		FixedHeader:     packets.FixedHeader{Type: packets.Publish, Qos: d.QoS, Dup: d.Dup, Retain: d.Retain},
		ProtocolVersion: version, TopicName: m.Topic, Payload: m.Payload, PacketID: d.PacketID,
		// Response Topic and Correlation Data go to every subscriber unaltered
		// [MQTT-3.3.2-15] [MQTT-3.3.2-16]; the codec writes them only when told to.
		Mods: packets.Mods{AllowResponseInfo: true},
	}
	if version == 5 {
		mp, p := &m.Properties, &pk.Properties
		p.PayloadFormat, p.PayloadFormatFlag = mp.PayloadFormatIndicator, mp.PayloadFormatIndicator != 0
		p.MessageExpiryInterval = d.MessageExpiry
		p.ContentType, p.ResponseTopic, p.CorrelationData = mp.ContentType, mp.ResponseTopic, mp.CorrelationData
		p.User = packetUserProperties(mp.UserProperties)
		for _, id := range d.SubscriptionIdentifiers {
			p.SubscriptionIdentifier = append(p.SubscriptionIdentifier, int(id))
		}
	}
}

func boolByte(b bool) byte {
	if b {
		return 1
	}
	return 0
}
