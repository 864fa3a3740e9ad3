package main

import (
	"context"
	"testing"

	"github.com/eclipse/paho.golang/paho"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mqtthooks/mqtthooks"
)

// responseInfo is a plugin that gives every MQTT 5 client Response
// Information (sent only to clients that ask for it).
type responseInfo struct{}

func (responseInfo) AuthOnRegisterM5(context.Context, *mqtthooks.RegisterRequest) mqtthooks.RegisterResult {
	return mqtthooks.AcceptWith(&mqtthooks.Modifiers{ResponseInformation: mqtthooks.Some("replies/")})
}

// Every MQTT 5 PUBLISH property a publisher sets reaches the subscriber
// unaltered, from a PUBLISH and from a Will [MQTT-3.3.2-15] [MQTT-3.3.2-16]
// [MQTT-3.1.3-9]; the Subscription Identifier is the subscriber's own; the
// CONNACK carries the Response Information a client asked for.
func TestPublishPropertiesEndToEnd(t *testing.T) {
	b := startBroker(t, flags{})
	require.NoError(t, b.chain.Register("response-info", responseInfo{}))
	subID := 7
	sub, err := v5Client(t, b.addr, &paho.Connect{ClientID: "sub", CleanStart: true,
		Properties: &paho.ConnectProperties{RequestResponseInfo: true}}, nil)
	require.NoError(t, err)
	assert.Equal(t, "replies/", sub.connack.Properties.ResponseInfo)
	_, err = sub.Subscribe(context.Background(), &paho.Subscribe{
		Properties:    &paho.SubscribeProperties{SubscriptionIdentifier: &subID},
		Subscriptions: []paho.SubscribeOptions{{Topic: "req/#", QoS: 1}}})
	require.NoError(t, err)

	format, expiry := byte(1), uint32(3600)
	props := paho.PublishProperties{
		CorrelationData: []byte{0, 1, 2, 0xff}, ContentType: "application/json", ResponseTopic: "resp/sub",
		PayloadFormat: &format, MessageExpiry: &expiry,
		User: paho.UserProperties{{Key: "k", Value: "v1"}, {Key: "k", Value: "v2"}, {Key: "other", Value: ""}},
	}
	pub, err := v5Client(t, b.addr, &paho.Connect{ClientID: "pub", CleanStart: true}, nil)
	require.NoError(t, err)
	assert.Empty(t, pub.connack.Properties.ResponseInfo, "not asked for")
	p := props
	_, err = pub.Publish(context.Background(), &paho.Publish{Topic: "req/1", QoS: 1, Payload: []byte(`{}`), Properties: &p})
	require.NoError(t, err)

	m := receive(t, sub.received, "the PUBLISH")
	require.NotNil(t, m.Properties)
	assert.Equal(t, props.CorrelationData, m.Properties.CorrelationData)
	assert.Equal(t, props.ContentType, m.Properties.ContentType)
	assert.Equal(t, props.ResponseTopic, m.Properties.ResponseTopic)
	require.NotNil(t, m.Properties.PayloadFormat)
	assert.Equal(t, format, *m.Properties.PayloadFormat)
	require.NotNil(t, m.Properties.MessageExpiry)
	assert.InDelta(t, expiry, *m.Properties.MessageExpiry, 2, "what is left of the expiry")
	assert.Equal(t, props.User, m.Properties.User, "in order, repeated keys kept")
	require.NotNil(t, m.Properties.SubscriptionIdentifier)
	assert.Equal(t, subID, *m.Properties.SubscriptionIdentifier)

	// paho.golang (v0.23) packs Will properties as CONNECT properties and so
	// leaves out all but User Properties and the delay: the Will's CONNECT is
	// encoded here with the broker's codec instead.
	nc := rawConnect(t, b.addr, 5, "will", func(c *packets.ConnectParams) {
		c.WillFlag, c.WillTopic, c.WillPayload, c.WillQos = true, "req/will", []byte("gone"), 1
		c.WillProperties = packets.Properties{PayloadFormat: format, PayloadFormatFlag: true,
			MessageExpiryInterval: expiry, ContentType: props.ContentType, ResponseTopic: "resp/will",
			CorrelationData: []byte("will-corr"), User: []packets.UserProperty{{Key: "w", Val: "1"}}}
	})
	require.NoError(t, nc.Close()) // abruptly: the Will goes
	w := receive(t, sub.received, "the Will")
	assert.Equal(t, "req/will", w.Topic)
	require.NotNil(t, w.Properties)
	assert.Equal(t, "resp/will", w.Properties.ResponseTopic)
	assert.Equal(t, []byte("will-corr"), w.Properties.CorrelationData)
	assert.Equal(t, props.ContentType, w.Properties.ContentType)
	require.NotNil(t, w.Properties.PayloadFormat)
	assert.Equal(t, format, *w.Properties.PayloadFormat)
	require.NotNil(t, w.Properties.MessageExpiry)
	assert.InDelta(t, expiry, *w.Properties.MessageExpiry, 2)
	assert.Equal(t, paho.UserProperties{{Key: "w", Value: "1"}}, w.Properties.User)
}
