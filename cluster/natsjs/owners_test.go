package natsjs_test

import (
	"fmt"
	"testing"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mqtthooks/mqtthooks"
	"github.com/mqtthooks/mqtthooks/cluster/natsjs"
	"github.com/mqtthooks/mqtthooks/mqtthookstest"
)

// The owners bucket holds the sessions that exist, not every client id
// ever seen: a session that ended leaves only a marker, which expires.
func TestOwnersOfEndedSessionsExpire(t *testing.T) {
	tc := newTestCluster(t)
	a := tc.nodes["A"]
	for i := range 50 {
		c := mqtthookstest.ConnectV3(t.Context(), a.core, fmt.Sprintf("auto-%d", i), "u", true)
		requireAccepted(t, c)
		require.NoError(t, c.Disconnect(t.Context(), mqtthooks.CodeSuccess))
	}
	js, err := jetstream.New(a.nc)
	require.NoError(t, err)
	s, err := js.Stream(t.Context(), "KV_MQTTHOOKS_owners")
	require.NoError(t, err)
	info, err := s.Info(t.Context())
	require.NoError(t, err)
	assert.LessOrEqual(t, info.State.Msgs, uint64(50), "one message per ended session at most")
	for i := range 50 {
		subject := "$KV.MQTTHOOKS_owners." + natsjs.OwnerKey(mqtthooks.SubscriberID{ClientID: fmt.Sprintf("auto-%d", i)})
		m, err := s.GetLastMsgForSubject(t.Context(), subject)
		if err != nil {
			continue // gone already
		}
		assert.NotEmpty(t, m.Header.Get("Nats-TTL"), "the marker of %s never expires", subject)
		assert.Equal(t, "PURGE", m.Header.Get("KV-Operation"))
	}
}
