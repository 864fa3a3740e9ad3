package mqtthooks_test

import (
	"context"
	"log/slog"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mqtthooks/mqtthooks"
	"github.com/mqtthooks/mqtthooks/mqtthookstest"
)

// fixture is a Core with one plugin, a Recorder named "P", whose Router and
// PublishWill record into the same log.
type fixture struct {
	t     testing.TB
	chain *mqtthooks.Chain
	core  *mqtthooks.Core
	rec   *mqtthookstest.Recorder
	logs  *logBuffer
}

func newFixture(t testing.TB, opts mqtthooks.Options) *fixture {
	t.Helper()
	f := &fixture{t: t, rec: mqtthookstest.NewRecorder(), logs: new(logBuffer)}
	logger := slog.New(slog.NewTextHandler(f.logs, nil))
	f.chain = mqtthooks.NewChain(mqtthooks.ChainOptions{Logger: logger})
	require.NoError(t, f.chain.Register("P", f.rec))
	if opts.Router == nil {
		opts.Router = f.rec.Router()
	}
	if opts.PublishWill == nil {
		opts.PublishWill = f.rec.PublishWill
	}
	if opts.Logger == nil {
		opts.Logger = logger
	}
	core, err := mqtthooks.NewCore(f.chain, opts)
	require.NoError(t, err)
	f.core = core
	t.Cleanup(func() { _ = core.Shutdown(context.Background()) })
	return f
}

func sid(clientID string) mqtthooks.SubscriberID { return mqtthooks.SubscriberID{ClientID: clientID} }

// v3 connects an MQTT 3.1.1 client with user "u".
func (f *fixture) v3(clientID string, clean bool) *mqtthookstest.Client {
	return mqtthookstest.ConnectV3(context.Background(), f.core, clientID, "u", clean)
}

// v5 connects an MQTT 5 client with user "u".
func (f *fixture) v5(clientID string, cleanStart bool, sei uint32) *mqtthookstest.Client {
	return mqtthookstest.ConnectV5(context.Background(), f.core, clientID, "u", cleanStart, sei)
}

func requireAccepted(t testing.TB, c *mqtthookstest.Client) {
	t.Helper()
	require.True(t, c.Accepted(), "CONNECT rejected: %+v (%v)", c.Connack(), c.Step.Err)
}

// ACCEPTANCE 11: an accepted clean v3 CONNECT: AuthOnRegister → Wakeup →
// OnRegister → CONNACK 0, SP 0.
func TestConnectV3Clean(t *testing.T) {
	f := newFixture(t, mqtthooks.Options{})
	c := f.v3("c1", true)

	requireAccepted(t, c)
	ack := c.Connack()
	assert.Equal(t, mqtthooks.ConnectionAccepted, ack.ReturnCode)
	assert.False(t, ack.SessionPresent)
	f.rec.ExpectHooks(t, sid("c1"), "AuthOnRegister", "OnClientWakeup", "OnRegister")
	auth, _ := f.rec.Last(sid("c1"), "AuthOnRegister")
	assert.Equal(t, "u", auth.Register.Connect.Username)
	assert.Equal(t, []byte("secret"), auth.Register.Connect.Password)
	assert.True(t, auth.Register.Connect.CleanStart)
	assert.Equal(t, "default", auth.Register.Conn.Listener)
	reg, _ := f.rec.Last(sid("c1"), "OnRegister")
	assert.Equal(t, "u", reg.Event.Username)
}

// ACCEPTANCE 30: a clean session's DISCONNECT: RemoveAll → Gone, no Offline,
// no Will.
func TestDisconnectV3Clean(t *testing.T) {
	f := newFixture(t, mqtthooks.Options{})
	c := f.v3("c1", true)
	requireAccepted(t, c)
	require.NoError(t, c.Subscribe(t.Context(), "t/#"))

	require.NoError(t, c.Disconnect(t.Context(), mqtthooks.CodeNormalDisconnection, mqtthooks.Opt[uint32]{}))

	f.rec.ExpectHooks(t, sid("c1"), "AuthOnRegister", "OnClientWakeup", "OnRegister", "Add", "RemoveAll", "OnClientGone")
	gone, _ := f.rec.Last(sid("c1"), "OnClientGone")
	assert.Equal(t, mqtthooks.ReasonClientDisconnect, gone.Event.Reason)
	_, ok := f.core.Lookup(sid("c1"))
	assert.False(t, ok)
	_ = synctest.Test
	_ = time.Second
}
