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

// readPacket reads one packet from r. It reads the fixed header first and
// refuses a remaining length above maxSize (0: no limit) before reading the
// body. version is the connection's protocol level (0 before CONNECT).
func readPacket(r *bufio.Reader, version byte, maxSize uint32) (packets.Packet, error) {
	var pk packets.Packet
	b, err := r.ReadByte()
	if err != nil {
		return pk, err
	}
	if err := pk.FixedHeader.Decode(b); err != nil {
		return pk, fmt.Errorf("%w: %w", errMalformed, err)
	}
	n, lenBytes, err := packets.DecodeLength(&fourBytes{r: r})
	if err != nil {
		if errors.Is(err, io.EOF) {
			return pk, io.ErrUnexpectedEOF
		}
		return pk, fmt.Errorf("%w: %w", errMalformed, err)
	}
	if total := uint64(1 + lenBytes + n); maxSize > 0 && total > uint64(maxSize) {
		return pk, fmt.Errorf("%w: %d bytes", errTooLarge, total)
	}
	pk.FixedHeader.Remaining = n
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		return pk, err
	}
	pk.ProtocolVersion = version
	if err := decodeBody(&pk, body); err != nil {
		return pk, fmt.Errorf("%w: %w", errMalformed, err)
	}
	return pk, nil
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

// decodeBody decodes the body of pk by its type. The codec can panic on some
// hostile input; a panic is a malformed packet, never a crash.
func decodeBody(pk *packets.Packet, body []byte) (err error) {
	defer func() {
		if v := recover(); v != nil {
			err = fmt.Errorf("decoder panicked: %v", v)
		}
	}()
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

// connectRequest maps a decoded CONNECT to the core's.
func connectRequest(pk *packets.Packet) *mqtthooks.ConnectRequest {
	c := &pk.Connect
	req := &mqtthooks.ConnectRequest{
		ProtocolVersion: mqtthooks.ProtocolVersion(pk.ProtocolVersion),
		ClientID:        c.ClientIdentifier,
		CleanStart:      c.Clean,
		KeepAlive:       c.Keepalive,
		Username:        string(c.Username),
		HasUsername:     c.UsernameFlag,
		Password:        c.Password,
		HasPassword:     c.PasswordFlag,
	}
	p := &pk.Properties
	req.Properties = mqtthooks.ConnectProperties{
		SessionExpiryInterval:      p.SessionExpiryInterval,
		ReceiveMaximum:             p.ReceiveMaximum,
		MaximumPacketSize:          p.MaximumPacketSize,
		TopicAliasMaximum:          p.TopicAliasMaximum,
		RequestResponseInformation: p.RequestResponseInfo == 1,
		UserProperties:             userProperties(p.User),
		AuthenticationMethod:       p.AuthenticationMethod,
		AuthenticationData:         p.AuthenticationData,
	}
	if p.RequestProblemInfoFlag {
		req.Properties.RequestProblemInformation = mqtthooks.Some(p.RequestProblemInfo == 1)
	}
	if c.WillFlag {
		wp := &c.WillProperties
		req.Will = &mqtthooks.Will{DelayInterval: wp.WillDelayInterval, Message: mqtthooks.Message{
			Topic: c.WillTopic, Payload: c.WillPayload, QoS: c.WillQos, Retain: c.WillRetain,
			Properties: mqtthooks.PublishProperties{PayloadFormatIndicator: wp.PayloadFormat,
				ContentType: wp.ContentType, ResponseTopic: wp.ResponseTopic, CorrelationData: wp.CorrelationData,
				UserProperties: userProperties(wp.User),
			}}}
		if wp.MessageExpiryInterval > 0 {
			req.Will.Properties.MessageExpiryInterval = mqtthooks.Some(wp.MessageExpiryInterval)
		}
	}
	return req
}

func userProperties(ps []packets.UserProperty) []mqtthooks.UserProperty {
	if len(ps) == 0 {
		return nil
	}
	out := make([]mqtthooks.UserProperty, len(ps))
	for i, p := range ps {
		out[i] = mqtthooks.UserProperty{Key: p.Key, Value: p.Val}
	}
	return out
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

// connackPacket maps the core's CONNACK to the codec's.
func connackPacket(version byte, ack *mqtthooks.Connack) packets.Packet {
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connack}, ProtocolVersion: version,
		SessionPresent: ack.SessionPresent && version != 3, ReasonCode: byte(ack.ReturnCode)}
	if version != 5 {
		return pk
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
	return pk
}

// publishPacket maps a delivery to the codec's PUBLISH.
func publishPacket(version byte, d *mqtthooks.Delivery) packets.Packet {
	m := d.Message
	pk := packets.Packet{
		FixedHeader:     packets.FixedHeader{Type: packets.Publish, Qos: d.QoS, Dup: d.Dup, Retain: d.Retain},
		ProtocolVersion: version, TopicName: m.Topic, Payload: m.Payload, PacketID: d.PacketID,
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
	return pk
}

// message maps a decoded PUBLISH to the core's message.
func message(pk *packets.Packet) *mqtthooks.Message {
	p := &pk.Properties
	m := &mqtthooks.Message{Topic: pk.TopicName, Payload: pk.Payload, QoS: pk.FixedHeader.Qos, Retain: pk.FixedHeader.Retain,
		Properties: mqtthooks.PublishProperties{PayloadFormatIndicator: p.PayloadFormat, ContentType: p.ContentType,
			ResponseTopic: p.ResponseTopic, CorrelationData: p.CorrelationData, UserProperties: userProperties(p.User)}}
	if p.MessageExpiryInterval > 0 {
		m.Properties.MessageExpiryInterval = mqtthooks.Some(p.MessageExpiryInterval)
	}
	return m
}

func boolByte(b bool) byte {
	if b {
		return 1
	}
	return 0
}
