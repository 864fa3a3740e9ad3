package main

import (
	"bufio"
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	pahov3 "github.com/eclipse/paho.mqtt.golang"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Shared subscriptions (MQTT 5 §4.8.2, and from MQTT 3.1.1 clients as
// Mosquitto accepts them): each message goes to one member of each group,
// at that member's QoS, in turn; normal subscriptions and other groups on
// the same filter get their own copies; a member that unsubscribes gets no
// more; a shared subscription gets no retained messages.
func TestSharedSubscriptions(t *testing.T) {
	b := startBroker(t, flags{})
	ctx := context.Background()
	sub5 := func(id, filter string, qos byte) *v5 {
		c, err := v5Client(t, b.addr, &paho.Connect{ClientID: id, CleanStart: true}, nil)
		require.NoError(t, err)
		assert.True(t, c.connack.Properties.SharedSubAvailable)
		_, err = c.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: filter, QoS: qos}}})
		require.NoError(t, err)
		return c
	}
	pub, err := v5Client(t, b.addr, &paho.Connect{ClientID: "pub", CleanStart: true}, nil)
	require.NoError(t, err)
	_, err = pub.Publish(ctx, &paho.Publish{Topic: "work/kept", QoS: 1, Retain: true, Payload: []byte("retained")})
	require.NoError(t, err)

	m1, m2 := sub5("m1", "$share/g/work/#", 1), sub5("m2", "$share/g/work/#", 1)
	m3got := make(chan pahov3.Message, 100)
	m3, err := v3Client(t, b.addr, "m3", "", "", true)
	require.NoError(t, err)
	defer m3.Disconnect(0)
	require.NoError(t, waitToken(m3.Subscribe("$share/g/work/#", 0, func(_ pahov3.Client, m pahov3.Message) { m3got <- m })))
	normal := sub5("normal", "work/#", 1)
	other := sub5("other", "$share/h/work/+", 1)
	assert.Equal(t, "retained", string(receive(t, normal.received, "the retained message").Payload))

	const n = 30
	for i := range n {
		_, err := pub.Publish(ctx, &paho.Publish{Topic: "work/x", QoS: 1, Payload: fmt.Appendf(nil, "%d", i)})
		require.NoError(t, err)
	}
	collect := func(c *v5, k int) []string {
		var out []string
		for range k {
			out = append(out, string(receive(t, c.received, "a message").Payload))
		}
		return out
	}
	assert.Len(t, collect(normal, n), n, "a normal subscription gets every message")
	assert.Len(t, collect(other, n), n, "another group gets its own copy of each")
	// Group g: every message exactly once across its members, in turn.
	var got []string
	qos := map[string]byte{}
	for len(got) < n {
		select {
		case m := <-m1.received:
			got, qos["m1"] = append(got, string(m.Payload)), m.QoS
		case m := <-m2.received:
			got, qos["m2"] = append(got, string(m.Payload)), m.QoS
		case m := <-m3got:
			got, qos["m3"] = append(got, string(m.Payload())), m.Qos()
		case <-time.After(5 * time.Second):
			t.Fatalf("group g got %d of %d", len(got), n)
		}
	}
	want := make([]string, n)
	for i := range want {
		want[i] = fmt.Sprint(i)
	}
	assert.ElementsMatch(t, want, got, "once each")
	assert.Equal(t, map[string]byte{"m1": 1, "m2": 1, "m3": 0}, qos, "each member got its turn, at its QoS")

	// m2 leaves the group: the rest share what comes next.
	_, err = m2.Unsubscribe(ctx, &paho.Unsubscribe{Topics: []string{"$share/g/work/#"}})
	require.NoError(t, err)
	for i := range 4 {
		_, err := pub.Publish(ctx, &paho.Publish{Topic: "work/y", QoS: 1, Payload: fmt.Appendf(nil, "late-%d", i)})
		require.NoError(t, err)
	}
	late := 0
	for late < 4 {
		select {
		case <-m1.received:
			late++
		case <-m3got:
			late++
		case m := <-m2.received:
			t.Fatalf("m2 left but got %q", m.Payload)
		case <-time.After(5 * time.Second):
			t.Fatalf("got %d of 4 after m2 left", late)
		}
	}

	// No Local on a shared subscription is a protocol error [MQTT-3.8.3-4].
	nc := rawConnect(t, b.addr, 5, "nolocal", nil)
	defer nc.Close()
	_, err = nc.Write(frame(0x82, []byte{0, 1}, props(), strb("$share/g/a"), []byte{0x05}))
	require.NoError(t, err)
	d := readRaw(t, nc, 5)
	require.Equal(t, packets.Disconnect, d.FixedHeader.Type)
	assert.Equal(t, byte(0x82), d.ReasonCode)
	select {
	case m := <-m1.received:
		t.Fatalf("a shared subscription got %q", m.Payload)
	default: // the retained message was never offered to the group (it would have come first)
	}
}

// A member whose session ends hands the messages it had not acknowledged to
// another member of its group (MQTT 5 §4.8.2): the group as a whole gets
// every message; acknowledged shared deliveries are forgotten.
func TestSharedMemberLeavingHandsOver(t *testing.T) {
	b := startBroker(t, flags{})
	ctx := context.Background()
	// m1 is raw, so that it never acknowledges: a clean session that ends
	// when its connection does.
	m1 := rawConnect(t, b.addr, 5, "m1", nil)
	defer m1.Close()
	_, err := m1.Write(frame(0x82, []byte{0, 1}, props(), strb("$share/g/job"), []byte{0x01}))
	require.NoError(t, err)
	require.Equal(t, packets.Suback, readRaw(t, m1, 5).FixedHeader.Type)
	m2, err := v5Client(t, b.addr, &paho.Connect{ClientID: "m2", CleanStart: true}, nil)
	require.NoError(t, err)
	_, err = m2.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "$share/g/job", QoS: 1}}})
	require.NoError(t, err)
	pub, err := v5Client(t, b.addr, &paho.Connect{ClientID: "pub", CleanStart: true}, nil)
	require.NoError(t, err)

	const n = 6
	for i := range n {
		_, err := pub.Publish(ctx, &paho.Publish{Topic: "job", QoS: 1, Payload: fmt.Appendf(nil, "%d", i)})
		require.NoError(t, err)
	}
	var got []string
	for range n / 2 { // m2's turns
		got = append(got, string(receive(t, m2.received, "m2's share").Payload))
	}
	r := &frameReader{br: bufio.NewReader(m1)}
	require.NoError(t, m1.SetReadDeadline(time.Now().Add(5*time.Second)))
	for range n / 2 { // m1's turns, sent and never acknowledged
		var pk packets.Packet
		_, err := readFrame(r, 5, 0, &pk)
		require.NoError(t, err)
		require.Equal(t, packets.Publish, pk.FixedHeader.Type)
	}
	require.NoError(t, m1.Close()) // m1's session ends

	for range n / 2 {
		got = append(got, string(receive(t, m2.received, "a message m1 left").Payload))
	}
	want := make([]string, n)
	for i := range want {
		want[i] = fmt.Sprint(i)
	}
	assert.ElementsMatch(t, want, got, "the group got every message once")
	require.Eventually(t, func() bool { return b.srv.shared.len() == 0 }, 5*time.Second, time.Millisecond,
		"every shared delivery acknowledged and forgotten")
}

// QoS 0 shared deliveries are not tracked (they have no acknowledgement to
// wait for), so those a core does not store for an offline member leave
// nothing behind (found by review).
func TestSharedQoS0LeavesNothing(t *testing.T) {
	b := startBroker(t, flags{})
	ctx := context.Background()
	m, err := v5Client(t, b.addr, &paho.Connect{ClientID: "offline-member", CleanStart: true, Properties: sei(3600)}, nil)
	require.NoError(t, err)
	_, err = m.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "$share/g/job", QoS: 1}}})
	require.NoError(t, err)
	require.NoError(t, m.Disconnect(&paho.Disconnect{}))
	pub, err := v5Client(t, b.addr, &paho.Connect{ClientID: "pub", CleanStart: true}, nil)
	require.NoError(t, err)
	for range 50 {
		_, err := pub.Publish(ctx, &paho.Publish{Topic: "job", QoS: 0, Payload: []byte("x")})
		require.NoError(t, err)
	}
	_, err = pub.Publish(ctx, &paho.Publish{Topic: "sync", QoS: 1, Payload: []byte("x")}) // the broker read all before
	require.NoError(t, err)
	assert.Zero(t, b.srv.shared.len())
}
