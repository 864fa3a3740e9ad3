package main

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	pahopackets "github.com/eclipse/paho.mqtt.golang/packets"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// A VerneMQ webhook endpoint, as its users write them, decides who may
// connect to the example broker (-webhook), over MQTT 3.1.1 and 5, and hears
// of the sessions that end.
func TestWebhooksEndToEnd(t *testing.T) {
	var mu sync.Mutex
	var gone []string
	endpoint := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var body map[string]any
		data, _ := io.ReadAll(r.Body)
		require.NoError(t, json.Unmarshal(data, &body))
		switch r.Header.Get("vernemq-hook") {
		case "auth_on_register", "auth_on_register_m5":
			if body["username"] == "alice" && body["password"] == "pw" {
				_, _ = io.WriteString(w, `{"result":"ok"}`)
				return
			}
			_, _ = io.WriteString(w, `{"result":{"error":"not_allowed"}}`)
		case "on_client_gone":
			mu.Lock()
			gone = append(gone, body["client_id"].(string))
			mu.Unlock()
			_, _ = io.WriteString(w, `{}`)
		}
	}))
	defer endpoint.Close()
	b := startBroker(t, flags{webhooks: webhookFlags{"auth_on_register=" + endpoint.URL,
		"auth_on_register_m5=" + endpoint.URL, "on_client_gone=" + endpoint.URL}, webhookTimeout: time.Second})

	c3, err := v3Client(t, b.addr, "v3", "alice", "pw", true)
	require.NoError(t, err)
	c3.Disconnect(100)
	_, err = v3Client(t, b.addr, "v3bad", "alice", "nope", true)
	assert.ErrorIs(t, err, pahopackets.ErrorRefusedNotAuthorised)

	c5, err := v5Client(t, b.addr, &paho.Connect{ClientID: "v5", CleanStart: true, Username: "alice",
		UsernameFlag: true, Password: []byte("pw"), PasswordFlag: true}, nil)
	require.NoError(t, err)
	require.NoError(t, c5.Disconnect(&paho.Disconnect{}))
	bad, err := v5Client(t, b.addr, &paho.Connect{ClientID: "v5bad", CleanStart: true, Username: "mallory",
		UsernameFlag: true, Password: []byte("pw"), PasswordFlag: true}, nil)
	require.Error(t, err)
	assert.Equal(t, byte(0x86), bad.connack.ReasonCode)

	require.Eventually(t, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(gone) == 2
	}, 5*time.Second, time.Millisecond)
	assert.ElementsMatch(t, []string{"v3", "v5"}, gone)

	// Its counters are on /metrics, beside the core's, and lint-clean.
	require.NotNil(t, b.webhooks)
	problems, err := testutil.CollectAndLint(webhookCollector{b.webhooks})
	require.NoError(t, err)
	assert.Empty(t, problems)
	requests := map[string]uint64{}
	for _, st := range b.webhooks.Stats() {
		requests[st.Hook] = st.Requests
	}
	assert.Equal(t, map[string]uint64{"auth_on_register": 2, "auth_on_register_m5": 2, "on_client_gone": 2}, requests)
	assert.Equal(t, 6, testutil.CollectAndCount(webhookCollector{b.webhooks}, "mqtthooks_webhook_requests_total",
		"mqtthooks_webhook_errors_total"), "two metrics for each of the three endpoints")
	for _, st := range b.webhooks.Stats() {
		if st.Hook == "on_client_gone" {
			assert.Zero(t, st.Errors, "{} is the answer to a notification")
		}
	}
}
