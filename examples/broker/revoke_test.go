package main

import (
	"context"
	"io"
	"log/slog"
	"os"
	"strings"
	"testing"

	"github.com/eclipse/paho.golang/paho"
	pahov3 "github.com/eclipse/paho.mqtt.golang"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Reloading the password file (SIGHUP) disconnects the users it no longer
// accepts: MQTT 5 with 0x87, MQTT 3 by a close. Others stay connected, and
// the revoked user cannot come back.
func TestReloadRevokes(t *testing.T) {
	file := passwdFile(t)
	b := startBroker(t, flags{passwd: file})
	alice5, err := v5Client(t, b.addr, &paho.Connect{ClientID: "a5", CleanStart: true, Username: "alice",
		UsernameFlag: true, Password: []byte("wonderland"), PasswordFlag: true}, nil)
	require.NoError(t, err)
	lost := make(chan error, 1)
	alice3, err := v3Client(t, b.addr, "a3", "alice", "wonderland", true, func(o *pahov3.ClientOptions) {
		o.SetConnectionLostHandler(func(_ pahov3.Client, err error) { lost <- err })
	})
	require.NoError(t, err)
	defer alice3.Disconnect(0)
	bob, err := v5Client(t, b.addr, &paho.Connect{ClientID: "bob", CleanStart: true, Username: "bob",
		UsernameFlag: true, Password: []byte("builder"), PasswordFlag: true}, nil)
	require.NoError(t, err)

	data, err := os.ReadFile(file)
	require.NoError(t, err)
	var kept []string
	for line := range strings.Lines(string(data)) {
		if !strings.HasPrefix(line, "alice:") {
			kept = append(kept, line)
		}
	}
	require.NoError(t, os.WriteFile(file, []byte(strings.Join(kept, "")), 0o600))
	b.reload(slog.New(slog.NewTextHandler(io.Discard, nil)))

	d := receive(t, alice5.disconnects, "alice's DISCONNECT")
	assert.Equal(t, byte(0x87), d.ReasonCode)
	receive(t, lost, "alice's MQTT 3 connection closed")
	_, err = bob.Subscribe(context.Background(), &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "t", QoS: 1}}})
	require.NoError(t, err, "bob stays connected")
	_, err = bob.Publish(context.Background(), &paho.Publish{Topic: "t", QoS: 1, Payload: []byte("still here")})
	require.NoError(t, err)
	assert.Equal(t, "still here", string(receive(t, bob.received, "bob's message").Payload))

	_, err = v5Client(t, b.addr, &paho.Connect{ClientID: "a5", Username: "alice",
		UsernameFlag: true, Password: []byte("wonderland"), PasswordFlag: true}, nil)
	assert.Error(t, err, "alice cannot come back")
}
