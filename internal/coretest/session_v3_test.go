package mqtthooks_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mqtthooks/mqtthooks"
	"github.com/mqtthooks/mqtthooks/mqtthookstest"
)

var errX = errors.New("not on the list")

func answer(r mqtthooks.RegisterResult) func(context.Context, *mqtthooks.RegisterRequest) mqtthooks.RegisterResult {
	return func(context.Context, *mqtthooks.RegisterRequest) mqtthooks.RegisterResult { return r }
}

// expectRejected checks a rejected CONNECT: the codes, SP 0, no session and
// no lifecycle hook for id.
func expectRejected(t *testing.T, f *fixture, c *mqtthookstest.Client, id mqtthooks.SubscriberID,
	v3 mqtthooks.ReturnCode, v5 mqtthooks.ReasonCode) {
	t.Helper()
	expectRefused(t, f, c, id, v3, v5)
	_, ok := f.core.Lookup(id)
	assert.False(t, ok, "a rejected CONNECT leaves no session")
}

// expectRefused checks a rejected CONNECT for id, which may have a session
// already: the codes, SP 0, and no lifecycle hook or Router call for id.
func expectRefused(t *testing.T, f *fixture, c *mqtthookstest.Client, id mqtthooks.SubscriberID,
	v3 mqtthooks.ReturnCode, v5 mqtthooks.ReasonCode) {
	t.Helper()
	require.False(t, c.Accepted(), "the CONNECT was accepted")
	ack := c.Connack()
	require.NotNil(t, ack, "no CONNACK (step %v, err %v)", c.Step.Kind, c.Step.Err)
	assert.Equal(t, v3, ack.ReturnCode)
	assert.Equal(t, v5, ack.ReasonCode)
	assert.False(t, ack.SessionPresent)
	assert.True(t, c.Closed)
	for _, h := range f.rec.Hooks(id) {
		assert.Contains(t, []string{"AuthOnRegister", "AuthOnRegisterM5", "OnAuthM5"}, h, "no lifecycle hook after a rejection")
	}
}

// ACCEPTANCE 12, 13, 14: rejections by the plugin.
func TestConnectV3Rejections(t *testing.T) {
	for _, tc := range []struct {
		name string
		r    mqtthooks.RegisterResult
		v3   mqtthooks.ReturnCode
		v5   mqtthooks.ReasonCode
	}{
		{"invalid credentials", mqtthooks.Reject(mqtthooks.ErrInvalidCredentials), 4, 0x86},
		{"other reject", mqtthooks.Reject(errX), 5, 0x87},
		{"only Next", mqtthooks.Next(), 5, 0x87},
		{"CONNECT sentinel from a plugin", mqtthooks.Reject(mqtthooks.ErrSessionLimit), 3, 0x97},
		{"core failure from a plugin", mqtthooks.Reject(mqtthooks.ErrRegistration), 5, 0x87},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, mqtthooks.Options{})
			f.rec.AuthOnRegisterFunc = answer(tc.r)
			f.rec.AuthOnRegisterM5Func = answer(tc.r)

			expectRejected(t, f, f.v3("c1", true), sid("c1"), tc.v3, tc.v5)
			f.rec.ExpectHooks(t, sid("c1"), "AuthOnRegister")
			expectRejected(t, f, f.v5("c5", true, 0), sid("c5"), tc.v3, tc.v5)
			assert.Equal(t, uint64(2), f.core.Stats().ConnectsRejected)
		})
	}
}

// ACCEPTANCE 15: nobody implements AuthOnRegister: ErrNoPlugin → 5.
func TestConnectV3NoImplementer(t *testing.T) {
	chain := mqtthooks.NewChain(mqtthooks.ChainOptions{})
	require.NoError(t, chain.Register("P", mqtthooks.OnClientGoneFunc(func(context.Context, *mqtthooks.SessionEvent) {})))
	core, err := mqtthooks.NewCore(chain, mqtthooks.Options{})
	require.NoError(t, err)
	defer core.Shutdown(context.Background())

	c := mqtthookstest.ConnectV3(t.Context(), core, "c1", "u", true)

	require.False(t, c.Accepted())
	assert.Equal(t, mqtthooks.RefusedNotAuthorized, c.Connack().ReturnCode)
	assert.ErrorIs(t, c.Step.Err, mqtthooks.ErrNoPlugin)
}

// ACCEPTANCE 16, N7: AllowAnonymous accepts only clients without a username
// when nobody decides; the chain always runs and a Reject still rejects.
func TestConnectAnonymous(t *testing.T) {
	anon := mqtthooks.Options{Listeners: map[string]mqtthooks.ListenerOptions{"default": {AllowAnonymous: true}}}
	t.Run("with a username, nobody decides", func(t *testing.T) {
		f := newFixture(t, anon)
		f.rec.AuthOnRegisterFunc = answer(mqtthooks.Next())
		expectRejected(t, f, f.v3("c1", true), sid("c1"), 5, 0x87)
		f.rec.ExpectHooks(t, sid("c1"), "AuthOnRegister")
	})
	t.Run("without a username, nobody decides", func(t *testing.T) {
		f := newFixture(t, anon)
		f.rec.AuthOnRegisterFunc = answer(mqtthooks.Next())
		c := mqtthookstest.ConnectV3(t.Context(), f.core, "c1", "", true)
		requireAccepted(t, c)
		assert.False(t, c.Connack().SessionPresent)
		f.rec.ExpectHooks(t, sid("c1"), "AuthOnRegister", "OnClientWakeup", "OnRegister")
		reg, _ := f.rec.Last(sid("c1"), "OnRegister")
		assert.False(t, reg.Event.HasUsername)
	})
	t.Run("present but empty username is not anonymous", func(t *testing.T) {
		f := newFixture(t, anon)
		f.rec.AuthOnRegisterFunc = answer(mqtthooks.Next())
		req := mqtthookstest.V3("c1", "", true)
		req.HasUsername = true
		c := mqtthookstest.NewClient(f.core)
		c.Connect(t.Context(), req)
		expectRejected(t, f, c, sid("c1"), 5, 0x87)
	})
	t.Run("a Reject is never overridden", func(t *testing.T) {
		f := newFixture(t, anon)
		f.rec.AuthOnRegisterFunc = answer(mqtthooks.Reject(errX))
		expectRejected(t, f, mqtthookstest.ConnectV3(t.Context(), f.core, "c1", "", true), sid("c1"), 5, 0x87)
	})
	t.Run("no plugin at all", func(t *testing.T) {
		chain := mqtthooks.NewChain(mqtthooks.ChainOptions{})
		core, err := mqtthooks.NewCore(chain, anon)
		require.NoError(t, err)
		defer core.Shutdown(context.Background())
		requireAccepted(t, mqtthookstest.ConnectV3(t.Context(), core, "c1", "", true))
		c := mqtthookstest.ConnectV3(t.Context(), core, "c2", "u", true)
		assert.Equal(t, mqtthooks.RefusedNotAuthorized, c.Connack().ReturnCode)
	})
	t.Run("modifiers of an anonymous accept apply", func(t *testing.T) {
		f := newFixture(t, anon)
		f.rec.AuthOnRegisterFunc = answer(mqtthooks.AcceptWith(&mqtthooks.Modifiers{Username: mqtthooks.Some("guest")}))
		c := mqtthookstest.ConnectV3(t.Context(), f.core, "c1", "", true)
		requireAccepted(t, c)
		reg, _ := f.rec.Last(sid("c1"), "OnRegister")
		assert.Equal(t, "guest", reg.Event.Username)
	})
}

// ACCEPTANCE 17: an empty client id with clean session gets a generated one,
// the same in every hook; it is not sent to a v3 client.
func TestConnectV3GeneratedID(t *testing.T) {
	f := newFixture(t, mqtthooks.Options{})
	c := f.v3("", true)
	requireAccepted(t, c)

	id := c.Session.ID()
	assert.True(t, strings.HasPrefix(id.ClientID, "auto-"), id.ClientID)
	assert.Len(t, id.ClientID, 23)
	for _, r := range id.ClientID[5:] {
		assert.True(t, strings.ContainsRune("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz", r))
	}
	f.rec.ExpectHooks(t, id, "AuthOnRegister", "OnClientWakeup", "OnRegister")
	assert.Empty(t, c.Connack().Properties.AssignedClientIdentifier, "v3 has no Assigned Client Identifier")
	assert.NotEqual(t, id, f.v3("", true).Session.ID(), "each client gets its own id")
}

// ACCEPTANCE 18, 19, 20, 21: client ids and protocol levels refused before
// any hook.
func TestConnectRefusedBeforeHooks(t *testing.T) {
	v3only := mqtthooks.Options{Listeners: map[string]mqtthooks.ListenerOptions{
		"default": {AllowedVersions: []mqtthooks.ProtocolVersion{mqtthooks.MQTT31, mqtthooks.MQTT311}}}}
	v5only := mqtthooks.Options{Listeners: map[string]mqtthooks.ListenerOptions{
		"default": {AllowedVersions: []mqtthooks.ProtocolVersion{mqtthooks.MQTT5}}}}
	long := strings.Repeat("x", 101)
	withMethod := mqtthookstest.V5(long, "u", true, 0)
	withMethod.Properties.AuthenticationMethod = "M"
	v31 := mqtthookstest.V3("", "u", true)
	v31.ProtocolVersion = mqtthooks.MQTT31
	for _, tc := range []struct {
		name string
		opts mqtthooks.Options
		req  *mqtthooks.ConnectRequest
		v3   mqtthooks.ReturnCode
		v5   mqtthooks.ReasonCode
		err  error
	}{
		{"18 empty id, persistent", mqtthooks.Options{}, mqtthookstest.V3("", "u", false), 2, 0x85, mqtthooks.ErrClientIDRejected},
		{"19 empty id, MQTT 3.1", mqtthooks.Options{}, v31, 2, 0x85, mqtthooks.ErrClientIDRejected},
		{"20 id of 101 bytes", mqtthooks.Options{}, mqtthookstest.V3(long, "u", true), 2, 0x85, mqtthooks.ErrClientIDRejected},
		{"20 v5 with a method", mqtthooks.Options{}, withMethod, 2, 0x85, mqtthooks.ErrClientIDRejected},
		{"21 v3 on a v5 listener", v5only, mqtthookstest.V3("c1", "u", true), 1, 0x84, mqtthooks.ErrProtocolVersion},
		{"21 v5 on a v3 listener", v3only, mqtthookstest.V5("c1", "u", true, 0), 1, 0x84, mqtthooks.ErrProtocolVersion},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, tc.opts)
			c := mqtthookstest.NewClient(f.core)
			c.Connect(t.Context(), tc.req)
			require.False(t, c.Accepted())
			assert.Equal(t, tc.v3, c.Connack().ReturnCode)
			assert.Equal(t, tc.v5, c.Connack().ReasonCode)
			assert.ErrorIs(t, c.Step.Err, tc.err)
			assert.Empty(t, f.rec.Calls(), "no hook runs")
		})
	}
}

// The limit counts UTF-8 bytes (OQ4): 100 bytes pass, and a multi-byte id
// of 34 characters but 102 bytes does not.
func TestConnectClientIDLimitCountsBytes(t *testing.T) {
	f := newFixture(t, mqtthooks.Options{})
	requireAccepted(t, f.v3(strings.Repeat("x", 100), true))
	c := f.v3(strings.Repeat("€", 34), true)
	assert.Equal(t, mqtthooks.RefusedIdentifierRejected, c.Connack().ReturnCode)
}

// Ill-formed UTF-8 or U+0000: v3 is closed without a CONNACK, v5 gets 0x81.
func TestConnectMalformedStrings(t *testing.T) {
	f := newFixture(t, mqtthooks.Options{})
	for _, req := range []*mqtthooks.ConnectRequest{
		mqtthookstest.V3("c\x00", "u", true),
		mqtthookstest.V3("c1", "u\xff", true),
	} {
		c := mqtthookstest.NewClient(f.core)
		step := c.Connect(t.Context(), req)
		assert.Equal(t, mqtthooks.CloseConnection, step.Kind)
		assert.Nil(t, c.Connack())
	}
	will := mqtthookstest.V5("c5", "u", true, 0)
	will.Will = &mqtthooks.Will{Message: mqtthooks.Message{Topic: "w\x00"}}
	c := mqtthookstest.NewClient(f.core)
	c.Connect(t.Context(), will)
	assert.Equal(t, mqtthooks.CodeMalformedPacket, c.Connack().ReasonCode)
	assert.Empty(t, f.rec.Calls())
}

// ACCEPTANCE 22: the SubscriberID modifier keys the session by the new pair.
func TestConnectSubscriberIDModifier(t *testing.T) {
	f := newFixture(t, mqtthooks.Options{})
	moved := mqtthooks.SubscriberID{Mountpoint: "newmp", ClientID: "changed"}
	f.rec.AuthOnRegisterFunc = answer(mqtthooks.AcceptWith(&mqtthooks.Modifiers{SubscriberID: mqtthooks.Some(moved)}))

	c := f.v3("c1", true)

	requireAccepted(t, c)
	assert.Equal(t, moved, c.Session.ID())
	f.rec.ExpectHooks(t, moved, "OnClientWakeup", "OnRegister")
	reg, _ := f.rec.Last(moved, "OnRegister")
	assert.Equal(t, "u", reg.Event.Username)
	_, ok := f.core.Lookup(sid("c1"))
	assert.False(t, ok, "nothing under the old pair")
	_, ok = f.core.Lookup(moved)
	assert.True(t, ok)
}

// ACCEPTANCE 23, 26, N13: invalid modifiers reject with 3 / 0x88 naming the
// field, before any session is touched.
func TestConnectInvalidModifiers(t *testing.T) {
	for _, tc := range []struct {
		name  string
		mods  mqtthooks.Modifiers
		v5    bool
		field string
	}{
		{"23 bare mountpoint", mqtthooks.Modifiers{SubscriberID: mqtthooks.Some(mqtthooks.SubscriberID{Mountpoint: "x"})}, false, "SubscriberID"},
		{"26 MaxOfflineMessages -2", mqtthooks.Modifiers{MaxOfflineMessages: mqtthooks.Some(-2)}, false, "MaxOfflineMessages"},
		{"58 Persistent on v5", mqtthooks.Modifiers{Persistent: mqtthooks.Some(true)}, true, "Persistent"},
		{"N13 SessionExpiryInterval on v3", mqtthooks.Modifiers{SessionExpiryInterval: mqtthooks.Some[uint32](5)}, false, "SessionExpiryInterval"},
		{"N13 MaximumQoS 2", mqtthooks.Modifiers{MaximumQoS: mqtthooks.Some[byte](2)}, true, "MaximumQoS"},
		{"N13 username with U+0000", mqtthooks.Modifiers{Username: mqtthooks.Some("a\x00")}, false, "Username"},
		{"N13 client id of 101 bytes", mqtthooks.Modifiers{SubscriberID: mqtthooks.Some(sid(strings.Repeat("y", 101)))}, true, "SubscriberID"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, mqtthooks.Options{})
			r := answer(mqtthooks.AcceptWith(&tc.mods))
			f.rec.AuthOnRegisterFunc, f.rec.AuthOnRegisterM5Func = r, r
			var c *mqtthookstest.Client
			if tc.v5 {
				c = f.v5("c1", true, 0)
			} else {
				c = f.v3("c1", true)
			}
			expectRejected(t, f, c, sid("c1"), 3, 0x88)
			var me *mqtthooks.ModifierError
			require.ErrorAs(t, c.Step.Err, &me)
			assert.Equal(t, tc.field, me.Field)
			assert.Contains(t, f.logs.String(), tc.field)
		})
	}
}

// ACCEPTANCE 24, 25: the Username modifier, also when the CONNECT had none.
func TestConnectUsernameModifier(t *testing.T) {
	for _, user := range []string{"old", ""} {
		f := newFixture(t, mqtthooks.Options{})
		f.rec.AuthOnRegisterFunc = answer(mqtthooks.AcceptWith(&mqtthooks.Modifiers{Username: mqtthooks.Some("new")}))
		c := mqtthookstest.ConnectV3(t.Context(), f.core, "c1", user, false)
		requireAccepted(t, c)
		reg, _ := f.rec.Last(sid("c1"), "OnRegister")
		assert.Equal(t, "new", reg.Event.Username, "CONNECT user %q", user)
		assert.True(t, reg.Event.HasUsername)

		c.Drop(t.Context(), nil)
		off, _ := f.rec.Last(sid("c1"), "OnClientOffline")
		assert.Equal(t, "new", off.Event.Username, "later events carry the new name")
	}
}

// ACCEPTANCE 27: Persistent makes a clean v3 CONNECT's session survive.
func TestConnectV3PersistentModifier(t *testing.T) {
	f := newFixture(t, mqtthooks.Options{})
	f.rec.AuthOnRegisterFunc = func(_ context.Context, req *mqtthooks.RegisterRequest) mqtthooks.RegisterResult {
		if req.Connect.CleanStart {
			return mqtthooks.AcceptWith(&mqtthooks.Modifiers{Persistent: mqtthooks.Some(true)})
		}
		return mqtthooks.Accept()
	}
	c := f.v3("c1", true)
	requireAccepted(t, c)
	assert.False(t, c.Connack().SessionPresent)

	c.Drop(t.Context(), nil)
	off, ok := f.rec.Last(sid("c1"), "OnClientOffline")
	require.True(t, ok)
	assert.Equal(t, mqtthooks.ReasonNetworkError, off.Event.Reason)
	assert.Zero(t, f.rec.Count(sid("c1"), "OnClientGone"))

	again := f.v3("c1", false)
	requireAccepted(t, again)
	assert.True(t, again.Connack().SessionPresent)
	f.rec.ExpectHooks(t, sid("c1"), "AuthOnRegister", "OnClientWakeup", "OnRegister", "OnClientOffline",
		"AuthOnRegister", "OnClientWakeup", "OnRegister")
}

// ACCEPTANCE 28: the store refuses the (persistent) session: 3 / 0x88, no
// Wakeup, nothing left behind.
func TestConnectStoreFailure(t *testing.T) {
	store := &faultStore{create: func(mqtthooks.SubscriberID) error { return errors.New("disk full") }}
	f := newFixture(t, mqtthooks.Options{Store: store, MaxSessions: 1})
	c := f.v3("c1", false)

	expectRejected(t, f, c, sid("c1"), 3, 0x88)
	assert.ErrorIs(t, c.Step.Err, mqtthooks.ErrRegistration)
	f.rec.ExpectHooks(t, sid("c1"), "AuthOnRegister")
	assert.Zero(t, f.core.Stats().Sessions, "the session slot is given back")
	assert.Contains(t, f.logs.String(), "disk full")
}

// ACCEPTANCE 29: a plugin vetoes the Will by rejecting, before registration.
func TestConnectWillVetoed(t *testing.T) {
	f := newFixture(t, mqtthooks.Options{})
	f.rec.AuthOnRegisterFunc = func(_ context.Context, req *mqtthooks.RegisterRequest) mqtthooks.RegisterResult {
		if w := req.Connect.Will; w != nil && w.Topic == "w" {
			return mqtthooks.Reject(errX)
		}
		return mqtthooks.Accept()
	}
	req := mqtthookstest.V3("c1", "u", true)
	req.Will = &mqtthooks.Will{Message: mqtthooks.Message{Topic: "w", Payload: []byte("bye")}}
	c := mqtthookstest.NewClient(f.core)
	c.Connect(t.Context(), req)

	expectRejected(t, f, c, sid("c1"), 5, 0x87)
	f.rec.ExpectHooks(t, sid("c1"), "AuthOnRegister")
}

// withWill returns a v3 CONNECT with a Will on topic "w/<id>".
func withWill(req *mqtthooks.ConnectRequest) *mqtthooks.ConnectRequest {
	req.Will = &mqtthooks.Will{Message: mqtthooks.Message{Topic: "w/" + req.ClientID, Payload: []byte("bye"), QoS: 1}}
	return req
}

func (f *fixture) connect(req *mqtthooks.ConnectRequest) *mqtthookstest.Client {
	c := mqtthookstest.NewClient(f.core)
	c.Connect(context.Background(), req)
	return c
}

// ACCEPTANCE 31: a clean session loses its connection: the Will and RemoveAll,
// then Gone{NetworkError}.
func TestLostV3Clean(t *testing.T) {
	f := newFixture(t, mqtthooks.Options{})
	c := f.connect(withWill(mqtthookstest.V3("c1", "u", true)))
	requireAccepted(t, c)
	require.NoError(t, c.Subscribe(t.Context(), "t"))

	c.Drop(t.Context(), nil)

	f.rec.ExpectHooks(t, sid("c1"), "AuthOnRegister", "OnClientWakeup", "OnRegister", "Add",
		"PublishWill", "RemoveAll", "OnClientGone")
	gone, _ := f.rec.Last(sid("c1"), "OnClientGone")
	assert.Equal(t, mqtthooks.ReasonNetworkError, gone.Event.Reason)
	will, _ := f.rec.Last(sid("c1"), "PublishWill")
	assert.Equal(t, "w/c1", will.Will.Topic)
}

// ACCEPTANCE 32: a persistent session's DISCONNECT is Offline only, and a
// reconnect resumes it with SP 1.
func TestDisconnectV3PersistentAndResume(t *testing.T) {
	f := newFixture(t, mqtthooks.Options{})
	c := f.connect(withWill(mqtthookstest.V3("c1", "u", false)))
	requireAccepted(t, c)
	require.NoError(t, c.Subscribe(t.Context(), "t"))
	require.NoError(t, c.Disconnect(t.Context(), mqtthooks.CodeNormalDisconnection))

	f.rec.ExpectHooks(t, sid("c1"), "AuthOnRegister", "OnClientWakeup", "OnRegister", "Add", "OnClientOffline")
	off, _ := f.rec.Last(sid("c1"), "OnClientOffline")
	assert.Equal(t, mqtthooks.ReasonClientDisconnect, off.Event.Reason)
	assert.False(t, off.Event.HasCode, "v3 has no DISCONNECT code")
	info, ok := f.core.Lookup(sid("c1"))
	require.True(t, ok)
	assert.Zero(t, info.Connections)
	assert.Len(t, info.Subscriptions, 1, "the subscription stays with the session")

	f.rec.Reset()
	again := f.v3("c1", false)
	requireAccepted(t, again)
	assert.True(t, again.Connack().SessionPresent)
	f.rec.ExpectHooks(t, sid("c1"), "AuthOnRegister", "OnClientWakeup", "OnRegister")
}

// ACCEPTANCE 37: v3 persistent expiry: Offline, then at +2 s RemoveAll →
// SessionExpired{Expired}, never Gone; the next CONNECT starts a new life.
func TestExpiryV3(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFixture(t, mqtthooks.Options{PersistentExpiry: 2 * time.Second})
		c := f.v3("c1", false)
		requireAccepted(t, c)
		require.NoError(t, c.Subscribe(t.Context(), "t"))
		gen := c.Session.Generation()
		require.NoError(t, c.Disconnect(t.Context(), mqtthooks.CodeNormalDisconnection))
		info, _ := f.core.Lookup(sid("c1"))
		assert.Equal(t, time.Now().Add(2*time.Second), info.ExpiresAt)

		time.Sleep(1999 * time.Millisecond)
		synctest.Wait()
		assert.Zero(t, f.rec.Count(sid("c1"), "OnSessionExpired"), "not before 2 s")
		time.Sleep(time.Millisecond)
		synctest.Wait()

		f.rec.ExpectHooks(t, sid("c1"), "AuthOnRegister", "OnClientWakeup", "OnRegister", "Add", "OnClientOffline",
			"RemoveAll", "OnSessionExpired")
		exp, _ := f.rec.Last(sid("c1"), "OnSessionExpired")
		assert.Equal(t, mqtthooks.ReasonExpired, exp.Event.Reason)
		assert.Equal(t, gen, exp.Event.Generation)
		assert.Equal(t, "u", exp.Event.Username, "the last connection's identity")
		assert.Equal(t, uint64(1), f.core.Stats().SessionsExpired)

		again := f.v3("c1", false)
		requireAccepted(t, again)
		assert.False(t, again.Connack().SessionPresent)
		assert.NotEqual(t, gen, again.Session.Generation())
	})
}

// ACCEPTANCE 38: a persistent takeover: the old connection is closed, its Will
// published, Offline{TakenOver}, then Wakeup and OnRegister of the new one,
// SP 1, all strictly ordered.
func TestTakeoverV3Persistent(t *testing.T) {
	f := newFixture(t, mqtthooks.Options{})
	c1 := f.connect(withWill(mqtthookstest.V3("c1", "u", false)))
	requireAccepted(t, c1)
	f.rec.Reset()

	c2 := f.v3("c1", false)

	requireAccepted(t, c2)
	assert.True(t, c2.Connack().SessionPresent)
	f.rec.ExpectHooks(t, sid("c1"), "AuthOnRegister", "PublishWill", "OnClientOffline", "OnClientWakeup", "OnRegister")
	off, _ := f.rec.Last(sid("c1"), "OnClientOffline")
	assert.Equal(t, mqtthooks.ReasonTakenOver, off.Event.Reason)
	assert.Equal(t, c1.Info.ConnID, off.Event.ConnID, "Offline is about the old connection")
	wake, _ := f.rec.Last(sid("c1"), "OnClientWakeup")
	assert.Equal(t, c2.Info.ConnID, wake.Event.ConnID)
	assert.Equal(t, off.Event.Generation, wake.Event.Generation, "the same life goes on")

	within(t, c1.Conn.Disconnected(), "a DISCONNECT")
	assert.Equal(t, []mqtthooks.ReasonCode{mqtthooks.CodeSessionTakenOver}, c1.Conn.Disconnects())
	_, err := c1.Pull()
	assert.ErrorIs(t, err, mqtthooks.ErrTakenOver)
	c1.Drop(t.Context(), nil) // the old broker goroutine notices late: nothing fires
	assert.Equal(t, 1, f.rec.Count(sid("c1"), "OnClientOffline"))
	assert.Equal(t, uint64(1), f.core.Stats().Takeovers)
}

// ACCEPTANCE 39, 40: a clean CONNECT takes over an online session, clean or
// persistent: the Will, RemoveAll, Gone{CleanStart}, then a new life; SP 0.
func TestTakeoverClean(t *testing.T) {
	for _, persistent := range []bool{false, true} {
		f := newFixture(t, mqtthooks.Options{})
		c1 := f.connect(withWill(mqtthookstest.V3("c1", "u", !persistent)))
		requireAccepted(t, c1)
		require.NoError(t, c1.Subscribe(t.Context(), "t"))
		gen := c1.Session.Generation()
		f.rec.Reset()

		c2 := f.v3("c1", true)

		requireAccepted(t, c2)
		assert.False(t, c2.Connack().SessionPresent)
		f.rec.ExpectHooks(t, sid("c1"), "AuthOnRegister", "PublishWill", "RemoveAll", "OnClientGone",
			"OnClientWakeup", "OnRegister")
		gone, _ := f.rec.Last(sid("c1"), "OnClientGone")
		assert.Equal(t, mqtthooks.ReasonCleanStart, gone.Event.Reason)
		assert.Equal(t, gen, gone.Event.Generation)
		assert.NotEqual(t, gen, c2.Session.Generation())
		info, _ := f.core.Lookup(sid("c1"))
		assert.Empty(t, info.Subscriptions, "the old subscriptions are gone")
		within(t, c1.Conn.Disconnected(), "a DISCONNECT")
	}
}

// ACCEPTANCE 41: a clean CONNECT over an offline session ends its life with
// Gone{CleanStart}.
func TestCleanConnectOverOfflineSession(t *testing.T) {
	f := newFixture(t, mqtthooks.Options{})
	c1 := f.v3("c1", false)
	require.NoError(t, c1.Subscribe(t.Context(), "t"))
	c1.Drop(t.Context(), nil)
	f.rec.Reset()

	c2 := f.v3("c1", true)

	requireAccepted(t, c2)
	assert.False(t, c2.Connack().SessionPresent)
	f.rec.ExpectHooks(t, sid("c1"), "AuthOnRegister", "RemoveAll", "OnClientGone", "OnClientWakeup", "OnRegister")
	gone, _ := f.rec.Last(sid("c1"), "OnClientGone")
	assert.Equal(t, mqtthooks.ReasonCleanStart, gone.Event.Reason)
}

// ACCEPTANCE 42: a wrong password for a live id does not touch it.
func TestWrongPasswordForLiveID(t *testing.T) {
	f := newFixture(t, mqtthooks.Options{})
	c1 := f.v3("c1", false)
	requireAccepted(t, c1)
	f.rec.AuthOnRegisterFunc = answer(mqtthooks.Reject(mqtthooks.ErrInvalidCredentials))
	f.rec.Reset()

	c2 := f.v3("c1", false)

	assert.Equal(t, mqtthooks.RefusedBadUsernameOrPassword, c2.Connack().ReturnCode)
	f.rec.ExpectHooks(t, sid("c1"), "AuthOnRegister")
	assert.Empty(t, c1.Conn.Disconnects())
	info, _ := f.core.Lookup(sid("c1"))
	assert.Equal(t, 1, info.Connections)
}

// ACCEPTANCE 43 (lifecycle part): multiple sessions: the second connection
// joins (SP 1), closing one fires nothing, closing the last fires Offline.
func TestMultipleSessions(t *testing.T) {
	f := newFixture(t, mqtthooks.Options{})
	f.rec.AuthOnRegisterFunc = answer(mqtthooks.AcceptWith(&mqtthooks.Modifiers{
		AllowMultipleSessions: mqtthooks.Some(true), QueueDeliverMode: mqtthooks.Some(mqtthooks.DeliverBalance)}))
	c1 := f.v3("c1", false)
	c2 := f.v3("c1", false)
	requireAccepted(t, c1)
	requireAccepted(t, c2)
	assert.False(t, c1.Connack().SessionPresent)
	assert.True(t, c2.Connack().SessionPresent)
	assert.Empty(t, c1.Conn.Disconnects(), "C2 does not end C1")
	info, _ := f.core.Lookup(sid("c1"))
	assert.Equal(t, 2, info.Connections)

	c1.Drop(t.Context(), nil)
	f.rec.ExpectHooks(t, sid("c1"), "AuthOnRegister", "OnClientWakeup", "OnRegister",
		"AuthOnRegister", "OnClientWakeup", "OnRegister")
	c2.Drop(t.Context(), nil)
	assert.Equal(t, 1, f.rec.Count(sid("c1"), "OnClientOffline"))

	// OQ12: a connection without the modifier takes over instead of joining.
	c3 := f.v3("c1", false)
	f.rec.AuthOnRegisterFunc = answer(mqtthooks.Accept())
	c4 := f.v3("c1", false)
	requireAccepted(t, c4)
	within(t, c3.Conn.Disconnected(), "a DISCONNECT")
}

// ACCEPTANCE 44: admin disconnect, with and without cleanup, online and
// offline.
func TestAdminDisconnect(t *testing.T) {
	t.Run("online, no cleanup", func(t *testing.T) {
		f := newFixture(t, mqtthooks.Options{})
		c := f.connect(withWill(mqtthookstest.V5("c1", "u", true, 300)))
		requireAccepted(t, c)
		f.rec.Reset()

		require.NoError(t, f.core.Disconnect(t.Context(), sid("c1"), false))

		f.rec.ExpectHooks(t, sid("c1"), "PublishWill", "OnClientOffline")
		off, _ := f.rec.Last(sid("c1"), "OnClientOffline")
		assert.Equal(t, mqtthooks.ReasonAdmin, off.Event.Reason)
		assert.Equal(t, mqtthooks.CodeAdministrativeAction, off.Event.Code)
		within(t, c.Conn.Disconnected(), "a DISCONNECT")
		assert.Equal(t, []mqtthooks.ReasonCode{mqtthooks.CodeAdministrativeAction}, c.Conn.Disconnects())
		info, ok := f.core.Lookup(sid("c1"))
		require.True(t, ok, "the session stays")
		assert.Zero(t, info.Connections)
	})
	t.Run("online, cleanup", func(t *testing.T) {
		f := newFixture(t, mqtthooks.Options{})
		c := f.connect(withWill(mqtthookstest.V3("c1", "u", false)))
		require.NoError(t, c.Subscribe(t.Context(), "t"))
		f.rec.Reset()

		require.NoError(t, f.core.Disconnect(t.Context(), sid("c1"), true))

		f.rec.ExpectHooks(t, sid("c1"), "PublishWill", "RemoveAll", "OnClientGone")
		gone, _ := f.rec.Last(sid("c1"), "OnClientGone")
		assert.Equal(t, mqtthooks.ReasonAdmin, gone.Event.Reason)
		_, ok := f.core.Lookup(sid("c1"))
		assert.False(t, ok)
		within(t, c.Conn.Disconnected(), "a DISCONNECT")
	})
	t.Run("offline, cleanup", func(t *testing.T) {
		f := newFixture(t, mqtthooks.Options{})
		c := f.v3("c1", false)
		require.NoError(t, c.Subscribe(t.Context(), "t"))
		c.Drop(t.Context(), nil)
		f.rec.Reset()

		require.NoError(t, f.core.Disconnect(t.Context(), sid("c1"), true))

		f.rec.ExpectHooks(t, sid("c1"), "RemoveAll", "OnClientGone")
		_, ok := f.core.Lookup(sid("c1"))
		assert.False(t, ok)
	})
	t.Run("with a code", func(t *testing.T) {
		f := newFixture(t, mqtthooks.Options{})
		c := f.connect(mqtthookstest.V5("c1", "u", true, 300))
		requireAccepted(t, c)
		f.rec.Reset()
		assert.ErrorIs(t, f.core.DisconnectWith(t.Context(), sid("c1"), mqtthooks.DisconnectOptions{Code: 0x04}),
			mqtthooks.ErrInvalidArgument, "not a failure code")
		assert.ErrorIs(t, f.core.DisconnectWith(t.Context(), sid("c1"), mqtthooks.DisconnectOptions{Code: 0x84}),
			mqtthooks.ErrInvalidArgument, "not a DISCONNECT code")

		require.NoError(t, f.core.DisconnectWith(t.Context(), sid("c1"),
			mqtthooks.DisconnectOptions{Code: mqtthooks.CodeNotAuthorized}))

		within(t, c.Conn.Disconnected(), "a DISCONNECT")
		assert.Equal(t, []mqtthooks.ReasonCode{mqtthooks.CodeNotAuthorized}, c.Conn.Disconnects())
		off, _ := f.rec.Last(sid("c1"), "OnClientOffline")
		assert.Equal(t, mqtthooks.CodeNotAuthorized, off.Event.Code)
		_, err := c.Session.Pull(make([]mqtthooks.Delivery, 1))
		assert.ErrorIs(t, err, mqtthooks.ErrAdminDisconnect, "whatever the code")
		var ended *mqtthooks.EndedError
		require.ErrorAs(t, err, &ended)
		assert.Equal(t, mqtthooks.CodeNotAuthorized, ended.Code)
	})
	t.Run("offline, no cleanup, and unknown", func(t *testing.T) {
		f := newFixture(t, mqtthooks.Options{})
		c := f.v3("c1", false)
		c.Drop(t.Context(), nil)
		f.rec.Reset()
		require.NoError(t, f.core.Disconnect(t.Context(), sid("c1"), false))
		assert.Empty(t, f.rec.Calls(), "an offline session is left as it is")
		assert.ErrorIs(t, f.core.Disconnect(t.Context(), sid("zz"), true), mqtthooks.ErrSessionNotFound)
	})
}
