package mochi

import (
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/mqtthooks/mqtthooks"
)

// ConnectRequest maps a CONNECT decoded by mochi's packets package to the
// request mqtthooks' hooks and Core take. The result shares pk's strings and
// slices; the Core copies what it keeps.
func ConnectRequest(pk *packets.Packet) *mqtthooks.ConnectRequest {
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
		UserProperties:             UserProperties(p.User),
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
				UserProperties: UserProperties(wp.User),
			}}}
		if wp.MessageExpiryInterval > 0 {
			req.Will.Properties.MessageExpiryInterval = mqtthooks.Some(wp.MessageExpiryInterval)
		}
	}
	return req
}

// Message maps a PUBLISH decoded by mochi's packets package to an
// mqtthooks message. It shares pk's strings and slices.
func Message(pk *packets.Packet) *mqtthooks.Message {
	p := &pk.Properties
	m := &mqtthooks.Message{Topic: pk.TopicName, Payload: pk.Payload, QoS: pk.FixedHeader.Qos, Retain: pk.FixedHeader.Retain,
		Properties: mqtthooks.PublishProperties{PayloadFormatIndicator: p.PayloadFormat, ContentType: p.ContentType,
			ResponseTopic: p.ResponseTopic, CorrelationData: p.CorrelationData, UserProperties: UserProperties(p.User)}}
	if p.MessageExpiryInterval > 0 {
		m.Properties.MessageExpiryInterval = mqtthooks.Some(p.MessageExpiryInterval)
	}
	return m
}

// UserProperties maps mochi's user properties to mqtthooks'; nil for none.
func UserProperties(ps []packets.UserProperty) []mqtthooks.UserProperty {
	if len(ps) == 0 {
		return nil
	}
	out := make([]mqtthooks.UserProperty, len(ps))
	for i, p := range ps {
		out[i] = mqtthooks.UserProperty{Key: p.Key, Value: p.Val}
	}
	return out
}
