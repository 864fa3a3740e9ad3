package main

import (
	"io"
	"net/http"
	"testing"

	"github.com/eclipse/paho.golang/paho"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// -metrics-addr serves the core's counters to Prometheus: after an accepted
// and a refused MQTT 5 CONNECT, the CONNACK counters and the hooks' show
// them.
func TestMetricsEndpoint(t *testing.T) {
	b := startBroker(t, flags{passwd: passwdFile(t)})
	addr, stop, err := serveMetrics("127.0.0.1:0", b.srv, nil)
	require.NoError(t, err)
	defer stop()
	_, err = v5Client(t, b.addr, &paho.Connect{ClientID: "good", CleanStart: true, Username: "alice",
		UsernameFlag: true, Password: []byte("wonderland"), PasswordFlag: true}, nil)
	require.NoError(t, err)
	_, err = v5Client(t, b.addr, &paho.Connect{ClientID: "bad", CleanStart: true, Username: "alice",
		UsernameFlag: true, Password: []byte("nope"), PasswordFlag: true}, nil)
	require.Error(t, err)

	resp, err := http.Get("http://" + addr + "/metrics")
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	text := string(body)
	assert.Contains(t, text, `mqtthooks_connack_sent_total{code="0x00",version="5"} 1`)
	assert.Contains(t, text, `mqtthooks_connack_sent_total{code="0x87",version="5"} 1`)
	assert.Contains(t, text, `mqtthooks_hook_verdicts_total{hook="AuthOnRegisterM5",verdict="accept"} 1`)
	assert.Contains(t, text, `mqtthooks_hook_verdicts_total{hook="AuthOnRegisterM5",verdict="reject"} 1`)
	assert.Contains(t, text, `mqtthooks_hook_duration_seconds_bucket{hook="AuthOnRegisterM5",le="0.001"}`)
	assert.Contains(t, text, "go_goroutines")
}
