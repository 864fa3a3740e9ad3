package main

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The $SYS topics carry the broker's figures, retained, as Mosquitto's do;
// "#" never matches them [MQTT-4.7.2-1]. The figures' time is passed in, so
// the load averages are checked without waiting.
func TestSysTopics(t *testing.T) {
	b := startBroker(t, flags{})
	all, err := v5Client(t, b.addr, &paho.Connect{ClientID: "all", CleanStart: true}, nil)
	require.NoError(t, err)
	_, err = all.Subscribe(context.Background(), &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "#"}}})
	require.NoError(t, err)
	for i := range 3 {
		_, err = all.Publish(context.Background(), &paho.Publish{Topic: "x", QoS: 1, Payload: []byte{byte(i)}})
		require.NoError(t, err)
		receive(t, all.received, "its own message")
	}
	t0 := time.Now()
	b.srv.publishSys(t0)
	for i := range 60 { // 60 messages in the next minute
		_, err = all.Publish(context.Background(), &paho.Publish{Topic: "x", QoS: 1, Payload: []byte{byte(i)}})
		require.NoError(t, err)
		receive(t, all.received, "its own message")
	}
	b.srv.publishSys(t0.Add(time.Minute))

	sys, err := v5Client(t, b.addr, &paho.Connect{ClientID: "sys", CleanStart: true}, nil)
	require.NoError(t, err)
	_, err = sys.Subscribe(context.Background(), &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "$SYS/#"}}})
	require.NoError(t, err)
	got := map[string]string{}
	for len(got) < 20 {
		m := receive(t, sys.received, "the retained $SYS topics")
		assert.True(t, m.Retain)
		got[m.Topic] = string(m.Payload)
	}
	assert.True(t, strings.HasPrefix(got["$SYS/broker/version"], "mqtthooks example broker "))
	assert.Equal(t, "60 seconds", got["$SYS/broker/uptime"], "the broker started just before t0")
	assert.Equal(t, "1", got["$SYS/broker/clients/connected"], "as of the last figures: only all")
	assert.Equal(t, "63", got["$SYS/broker/messages/received"])
	assert.Equal(t, "63", got["$SYS/broker/messages/sent"])
	assert.Equal(t, "1", got["$SYS/broker/subscriptions/count"])
	load, err := strconv.ParseFloat(got["$SYS/broker/load/messages/received/1min"], 64)
	require.NoError(t, err)
	assert.InDelta(t, 60*(1-0.36788), load, 0.5, "one minute of 60/min into a 1-minute average")
	load15, err := strconv.ParseFloat(got["$SYS/broker/load/messages/received/15min"], 64)
	require.NoError(t, err)
	assert.Less(t, load15, load, "the longer window moves slower")
	select {
	case m := <-all.received:
		t.Fatalf("# matched %q", m.Topic)
	default: // "#" got no $SYS message: each was routed before this point
	}
}

// With -sys-interval the broker publishes the $SYS topics at start and on
// each tick, and stops at shutdown (goleak checks the goroutine is gone).
func TestSysLoop(t *testing.T) {
	b := startBroker(t, flags{sysInterval: time.Hour})
	sys, err := v5Client(t, b.addr, &paho.Connect{ClientID: "sys", CleanStart: true}, nil)
	require.NoError(t, err)
	_, err = sys.Subscribe(context.Background(), &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{
		{Topic: "$SYS/broker/version"}}})
	require.NoError(t, err)
	m := receive(t, sys.received, "the version, published at start")
	assert.True(t, strings.HasPrefix(string(m.Payload), "mqtthooks example broker "))
}
