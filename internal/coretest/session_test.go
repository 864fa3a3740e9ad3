package mqtthooks_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
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
	f := &fixture{t: t, rec: &mqtthookstest.Recorder{Accept: true}, logs: new(logBuffer)}
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

	require.NoError(t, c.Disconnect(t.Context(), mqtthooks.CodeNormalDisconnection))

	f.rec.ExpectHooks(t, sid("c1"), "AuthOnRegister", "OnClientWakeup", "OnRegister", "Add", "RemoveAll", "OnClientGone")
	gone, _ := f.rec.Last(sid("c1"), "OnClientGone")
	assert.Equal(t, mqtthooks.ReasonClientDisconnect, gone.Event.Reason)
	_, ok := f.core.Lookup(sid("c1"))
	assert.False(t, ok)
}

// ACCEPTANCE 9: on a TLS listener the auth hooks and OnRegister see the whole
// ConnInfo, client certificate included.
func TestConnInfoReachesHooks(t *testing.T) {
	f := newFixture(t, mqtthooks.Options{})
	cert := &x509.Certificate{Subject: pkix.Name{CommonName: "device-7"}}
	c := mqtthookstest.NewClient(f.core)
	c.Info.Listener, c.Info.Transport = "mqtts", "tls"
	c.Info.TLS = &tls.ConnectionState{PeerCertificates: []*x509.Certificate{cert}}
	c.Connect(t.Context(), mqtthookstest.V3("c1", "u", true))
	requireAccepted(t, c)

	auth, _ := f.rec.Last(sid("c1"), "AuthOnRegister")
	assert.Equal(t, &c.Info, auth.Register.Conn)
	assert.Equal(t, "device-7", auth.Register.Conn.TLS.PeerCertificates[0].Subject.CommonName)
	reg, _ := f.rec.Last(sid("c1"), "OnRegister")
	assert.Equal(t, c.Info.ConnID, reg.Event.ConnID)
	assert.Equal(t, c.Info.Peer, reg.Event.Peer)
}

// ACCEPTANCE 8 through a CONNECT: a listener's AuthPlugins subset runs only
// its plugins, in its order.
func TestListenerSubset(t *testing.T) {
	chain := mqtthooks.NewChain(mqtthooks.ChainOptions{})
	var log callLog
	registerAuth(t, chain, "a", &log, mqtthooks.Next())
	registerAuth(t, chain, "b", &log, mqtthooks.Next())
	registerAuth(t, chain, "c", &log, mqtthooks.Accept())
	core, err := mqtthooks.NewCore(chain, mqtthooks.Options{Listeners: map[string]mqtthooks.ListenerOptions{
		"default": {AuthPlugins: []string{"b", "a"}}}})
	require.NoError(t, err)
	defer core.Shutdown(context.Background())

	c := mqtthookstest.ConnectV3(t.Context(), core, "c1", "u", true)

	assert.Equal(t, mqtthooks.RefusedNotAuthorized, c.Connack().ReturnCode)
	assert.Equal(t, []string{"b", "a"}, log.get())
	other := mqtthookstest.NewClient(core)
	other.Info.Listener = "open"
	other.Connect(t.Context(), mqtthookstest.V3("c2", "u", true))
	assert.True(t, other.Accepted(), "another listener runs the whole chain")
}

func TestNewCoreValidatesOptions(t *testing.T) {
	chain := mqtthooks.NewChain(mqtthooks.ChainOptions{})
	var log callLog
	registerAuth(t, chain, "a", &log, mqtthooks.Accept())
	qos3 := mqtthooks.Capabilities{MaximumQoS: 3}
	for name, tc := range map[string]struct {
		chain *mqtthooks.Chain
		opts  mqtthooks.Options
		err   error
	}{
		"nil chain":         {nil, mqtthooks.Options{}, mqtthooks.ErrInvalidArgument},
		"short client ids":  {chain, mqtthooks.Options{MaxClientIDLen: 22}, mqtthooks.ErrInvalidArgument},
		"negative timeout":  {chain, mqtthooks.Options{HookTimeout: -1}, mqtthooks.ErrInvalidArgument},
		"negative sessions": {chain, mqtthooks.Options{MaxSessions: -1}, mqtthooks.ErrInvalidArgument},
		"QoS 3":             {chain, mqtthooks.Options{Capabilities: &qos3}, mqtthooks.ErrInvalidArgument},
		"unknown level": {chain, mqtthooks.Options{Listeners: map[string]mqtthooks.ListenerOptions{
			"l": {AllowedVersions: []mqtthooks.ProtocolVersion{6}}}}, mqtthooks.ErrInvalidArgument},
		"unknown plugin": {chain, mqtthooks.Options{Listeners: map[string]mqtthooks.ListenerOptions{
			"l": {AuthPlugins: []string{"a", "zz"}}}}, mqtthooks.ErrUnknownPlugin},
	} {
		core, err := mqtthooks.NewCore(tc.chain, tc.opts)
		assert.ErrorIs(t, err, tc.err, name)
		assert.Nil(t, core, name)
	}
}

// Lookup, Range and Stats describe the sessions.
func TestLookupRangeStats(t *testing.T) {
	f := newFixture(t, mqtthooks.Options{})
	a := f.v3("a", false)
	require.NoError(t, a.Subscribe(t.Context(), "x/+", "y"))
	b := f.v5("b", false, 300)
	b.Drop(t.Context(), nil)
	f.v3("c", true)
	f.rec.AuthOnRegisterFunc = answer(mqtthooks.Reject(errX))
	f.v3("d", true)

	info, ok := f.core.Lookup(sid("a"))
	require.True(t, ok)
	assert.Equal(t, 1, info.Connections)
	assert.Equal(t, "u", info.Username)
	assert.Equal(t, []mqtthooks.Subscription{{Filter: "x/+", QoS: 1}, {Filter: "y", QoS: 1}}, info.Subscriptions)
	info, _ = f.core.Lookup(sid("b"))
	assert.Zero(t, info.Connections)
	assert.False(t, info.ExpiresAt.IsZero())

	seen := map[string]bool{}
	for i := range f.core.Sessions() {
		seen[i.ID.ClientID] = true
	}
	assert.Equal(t, map[string]bool{"a": true, "b": true, "c": true}, seen)
	n := 0
	for range f.core.Sessions() {
		n++
		break
	}
	assert.Equal(t, 1, n, "the iteration stops at break")

	st := f.core.Stats()
	assert.Equal(t, int64(3), st.Sessions)
	assert.Equal(t, int64(2), st.Connections)
	assert.Equal(t, uint64(3), st.ConnectsAccepted)
	assert.Equal(t, uint64(1), st.ConnectsRejected)
	assert.Equal(t, uint64(3), st.SessionsCreated)
}

// Subscribe and Unsubscribe store records, tell the Router, and refuse bad
// input without storing anything.
func TestSubscribeUnsubscribe(t *testing.T) {
	f := newFixture(t, mqtthooks.Options{})
	c := f.v3("c1", false)
	require.NoError(t, c.Session.Subscribe(t.Context(), mqtthooks.Subscription{Filter: "a", QoS: 0},
		mqtthooks.Subscription{Filter: "b", QoS: 2, Identifier: 7}))
	require.NoError(t, c.Session.Subscribe(t.Context(), mqtthooks.Subscription{Filter: "a", QoS: 1}))

	for _, bad := range []mqtthooks.Subscription{{Filter: ""}, {Filter: "a", QoS: 3}, {Filter: "a\x00"},
		{Filter: "a", RetainHandling: 3}} {
		assert.ErrorIs(t, c.Session.Subscribe(t.Context(), mqtthooks.Subscription{Filter: "ok"}, bad),
			mqtthooks.ErrInvalidArgument, "%+v", bad)
	}
	info, _ := f.core.Lookup(sid("c1"))
	assert.Equal(t, []mqtthooks.Subscription{{Filter: "a", QoS: 1}, {Filter: "b", QoS: 2, Identifier: 7}},
		info.Subscriptions, "a filter is replaced, nothing of a refused call stored")

	existed, err := c.Session.Unsubscribe(t.Context(), "b", "zz")
	require.NoError(t, err)
	assert.Equal(t, []bool{true, false}, existed)
	f.rec.ExpectHooks(t, sid("c1"), "AuthOnRegister", "OnClientWakeup", "OnRegister", "Add", "Add", "Add", "Remove")
	remove, _ := f.rec.Last(sid("c1"), "Remove")
	assert.Equal(t, "b", remove.Filter)

	c.Drop(t.Context(), nil)
	assert.ErrorIs(t, c.Session.Subscribe(t.Context(), mqtthooks.Subscription{Filter: "late"}), mqtthooks.ErrSessionEnded)
	_, err = c.Session.Unsubscribe(t.Context(), "a")
	assert.ErrorIs(t, err, mqtthooks.ErrSessionEnded)
}

// Lifecycle hooks run under HookTimeout; a hook honouring ctx is released.
func TestLifecycleHookDeadline(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFixture(t, mqtthooks.Options{HookTimeout: 2 * time.Second})
		var deadline time.Time
		var err error
		f.rec.Lifecycle = func(ctx context.Context, c mqtthookstest.Call) {
			if c.Hook == "OnClientGone" {
				deadline, _ = ctx.Deadline()
				<-ctx.Done()
				err = ctx.Err()
			}
		}
		c := f.v3("c1", true)
		start := time.Now()
		require.NoError(t, c.Disconnect(t.Context(), mqtthooks.CodeNormalDisconnection))
		assert.Equal(t, start.Add(2*time.Second), deadline)
		assert.Equal(t, 2*time.Second, time.Since(start))
		assert.ErrorIs(t, err, context.DeadlineExceeded)
	})
}

// A store's sessions are taken over offline at NewCore, their subscriptions
// handed to the Router and their expiry armed; at Shutdown their delayed
// Wills stay pending.
func TestRestoreFromStore(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		store := new(mqtthooks.MemoryStore)
		storeSession(t, store, mqtthooks.SessionRecord{ID: sid("old"), Username: "u", HasUsername: true,
			Expiry: time.Minute, ExpiresAt: time.Now().Add(time.Minute)})
		b := store.Batch()
		b.PutSubscription(sid("old"), 1, mqtthooks.Subscription{Filter: "t"})
		b.Commit(nil)
		f := newFixture(t, mqtthooks.Options{Store: store})
		info, ok := f.core.Lookup(sid("old"))
		require.True(t, ok)
		assert.Zero(t, info.Connections)
		assert.Len(t, info.Subscriptions, 1)

		time.Sleep(time.Minute)
		synctest.Wait()
		f.rec.ExpectHooks(t, sid("old"), "Add", "RemoveAll", "OnSessionExpired")

		c := f.connect(withDelayedWill(mqtthookstest.V5("w", "u", false, 300), 60))
		c.Drop(t.Context(), nil)
		require.NoError(t, f.core.Shutdown(t.Context()))
		assert.Zero(t, f.rec.Count(sid("w"), "PublishWill"), "a stored session keeps the Will pending")
	})
}
