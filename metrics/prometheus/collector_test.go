package prometheus_test

import (
	"context"
	"strings"
	"testing"

	prom "github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/mqtthooks/mqtthooks"
	mqttprom "github.com/mqtthooks/mqtthooks/metrics/prometheus"
	"github.com/mqtthooks/mqtthooks/mqtthookstest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// newCore returns a Core whose chain accepts every MQTT 5 client but user
// "wrong" (0x86), and whose OnClientGone plugin panics once.
func newCore(t *testing.T) *mqtthooks.Core {
	chain := mqtthooks.NewChain(mqtthooks.ChainOptions{})
	require.NoError(t, chain.Register("auth", mqtthooks.AuthOnRegisterM5Func(
		func(_ context.Context, r *mqtthooks.RegisterRequest) mqtthooks.RegisterResult {
			if r.Connect.Username == "wrong" {
				return mqtthooks.Reject(mqtthooks.ErrInvalidCredentials)
			}
			return mqtthooks.Accept()
		})))
	core, err := mqtthooks.NewCore(chain, mqtthooks.Options{})
	require.NoError(t, err)
	t.Cleanup(func() { _ = core.Shutdown(context.Background()) })
	return core
}

// Case P2: after an accepted and a 0x86-rejected MQTT 5 CONNECT, the CONNACK
// counters read 1 and 1; the metrics pass client_golang's linter; and they
// agree with Stats.
func TestCollector(t *testing.T) {
	core := newCore(t)
	ok := mqtthookstest.NewClient(core)
	ok.Connect(t.Context(), mqtthookstest.V5("client-7f3a", "u", true, 0))
	require.True(t, ok.Accepted())
	bad := mqtthookstest.NewClient(core)
	bad.Connect(t.Context(), mqtthookstest.V5("client-9b2e", "wrong", true, 0))
	require.False(t, bad.Accepted())

	c := mqttprom.New(core, mqttprom.Options{})
	problems, err := testutil.CollectAndLint(c)
	require.NoError(t, err)
	assert.Empty(t, problems)

	want := `
# HELP mqtthooks_connack_sent_total CONNACKs by protocol version (3, 4, 5) and code.
# TYPE mqtthooks_connack_sent_total counter
mqtthooks_connack_sent_total{code="0x00",version="5"} 1
mqtthooks_connack_sent_total{code="0x86",version="5"} 1
`
	assert.NoError(t, testutil.CollectAndCompare(c, strings.NewReader(want), "mqtthooks_connack_sent_total"))

	st := core.Stats()
	reg := prom.NewPedanticRegistry()
	require.NoError(t, reg.Register(c))
	families, err := reg.Gather()
	require.NoError(t, err)
	values := map[string]float64{}
	for _, f := range families {
		for _, m := range f.GetMetric() {
			key := f.GetName()
			for _, l := range m.GetLabel() {
				key += "," + l.GetName() + "=" + l.GetValue()
			}
			switch {
			case m.GetCounter() != nil:
				values[key] = m.GetCounter().GetValue()
			case m.GetGauge() != nil:
				values[key] = m.GetGauge().GetValue()
			case m.GetHistogram() != nil:
				values[key] = float64(m.GetHistogram().GetSampleCount())
			}
		}
	}
	assert.Equal(t, float64(st.Sessions), values["mqtthooks_sessions"])
	assert.Equal(t, float64(st.ConnectsAccepted), values["mqtthooks_connects_total,result=accepted"])
	assert.Equal(t, float64(st.ConnectsRejected), values["mqtthooks_connects_total,result=rejected"])
	for _, h := range st.Hooks {
		assert.Equal(t, float64(h.Calls), values["mqtthooks_hook_calls_total,hook="+h.Hook], h.Hook)
		assert.Equal(t, float64(h.Latency.Count), values["mqtthooks_hook_duration_seconds,hook="+h.Hook], h.Hook)
	}
	assert.Equal(t, float64(st.Store.Commits), values["mqtthooks_store_commits_total"])
	assert.Equal(t, float64(0), values["mqtthooks_messages_dropped_total,reason=queue-full"])
	assert.Equal(t, float64(1), values["mqtthooks_hook_verdicts_total,hook=AuthOnRegisterM5,verdict=accept"])
	assert.Equal(t, float64(1), values["mqtthooks_hook_verdicts_total,hook=AuthOnRegisterM5,verdict=reject"])
	for key := range values {
		assert.NotContains(t, key, "client-", "no client id in a label")
	}
}
