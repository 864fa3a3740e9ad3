package main

import (
	"context"
	"net"
	"testing"

	"github.com/eclipse/paho.golang/paho"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// publishWithAlias is an MQTT 5 QoS 0 PUBLISH of payload to topic ("" to use
// the alias alone) with Topic Alias alias.
func publishWithAlias(topic string, alias byte, payload string) []byte {
	return frame(0x30, strb(topic), props(0x23, 0, alias), []byte(payload))
}

// Topic aliases from clients (MQTT 5 §3.3.2.3.4): the CONNACK offers
// -topic-alias-maximum of them; a PUBLISH with topic and alias sets one, a
// PUBLISH with the alias alone uses it; an alias never set is a protocol
// error (0x82), one above the maximum 0x94. Subscribers get the topic.
func TestTopicAliases(t *testing.T) {
	b := startBroker(t, flags{topicAliasMax: 10})
	sub, err := v5Client(t, b.addr, &paho.Connect{ClientID: "sub", CleanStart: true}, nil)
	require.NoError(t, err)
	_, err = sub.Subscribe(context.Background(), &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "alias/#"}}})
	require.NoError(t, err)

	nc, err := net.Dial("tcp", b.addr)
	require.NoError(t, err)
	defer nc.Close()
	_, err = nc.Write(connect5(0x02, props()))
	require.NoError(t, err)
	ack := readRaw(t, nc, 5)
	require.Equal(t, packets.Connack, ack.FixedHeader.Type)
	assert.Equal(t, uint16(10), ack.Properties.TopicAliasMaximum)

	_, err = nc.Write(append(publishWithAlias("alias/a", 1, "one"), publishWithAlias("", 1, "two")...))
	require.NoError(t, err)
	_, err = nc.Write(append(publishWithAlias("alias/b", 1, "three"), publishWithAlias("", 1, "four")...)) // reset
	require.NoError(t, err)
	for _, want := range []struct{ topic, payload string }{{"alias/a", "one"}, {"alias/a", "two"}, {"alias/b", "three"}, {"alias/b", "four"}} {
		m := receive(t, sub.received, want.payload)
		assert.Equal(t, want.topic, m.Topic)
		assert.Equal(t, want.payload, string(m.Payload))
		if m.Properties != nil {
			assert.Nil(t, m.Properties.TopicAlias, "the publisher's alias is its connection's, not the subscriber's")
		}
	}

	_, err = nc.Write(publishWithAlias("", 2, "never set"))
	require.NoError(t, err)
	d := readRaw(t, nc, 5)
	require.Equal(t, packets.Disconnect, d.FixedHeader.Type)
	assert.Equal(t, byte(0x82), d.ReasonCode)

	over := rawConnect(t, b.addr, 5, "over", nil)
	defer over.Close()
	_, err = over.Write(publishWithAlias("alias/c", 11, "too high"))
	require.NoError(t, err)
	d = readRaw(t, over, 5)
	require.Equal(t, packets.Disconnect, d.FixedHeader.Type)
	assert.Equal(t, byte(0x94), d.ReasonCode)
}
