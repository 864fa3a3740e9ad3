package mqtthooks_test

import (
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mqtthooks/mqtthooks"
	"github.com/mqtthooks/mqtthooks/mqtthookstest"
)

// ACCEPTANCE 45: an accepted clean v5 CONNECT, then DISCONNECT 0x00.
func TestConnectV5Clean(t *testing.T) {
	f := newFixture(t, mqtthooks.Options{})
	req := mqtthookstest.V5("c5", "u", true, 0)
	req.Properties.UserProperties = []mqtthooks.UserProperty{{Key: "k", Value: "v"}}
	req.Properties.ReceiveMaximum = 10
	c := f.connect(req)
	requireAccepted(t, c)
	require.NoError(t, c.Subscribe(t.Context(), "t"))

	ack := c.Connack()
	assert.Equal(t, mqtthooks.CodeSuccess, ack.ReasonCode)
	assert.False(t, ack.SessionPresent)
	assert.Equal(t, mqtthooks.ConnackProperties{}, ack.Properties, "no properties with default Options")
	auth, _ := f.rec.Last(sid("c5"), "AuthOnRegisterM5")
	assert.Equal(t, []mqtthooks.UserProperty{{Key: "k", Value: "v"}}, auth.Register.Connect.Properties.UserProperties)
	assert.Equal(t, uint16(10), auth.Register.Connect.Properties.ReceiveMaximum)
	assert.Nil(t, auth.Register.EnhancedAuth)
	reg, _ := f.rec.Last(sid("c5"), "OnRegisterM5")
	require.NotNil(t, reg.Connack)
	assert.Equal(t, mqtthooks.ConnackProperties{}, *reg.Connack)

	require.NoError(t, c.Disconnect(t.Context(), mqtthooks.CodeNormalDisconnection))

	f.rec.ExpectHooks(t, sid("c5"), "AuthOnRegisterM5", "OnClientWakeup", "OnRegisterM5", "Add", "RemoveAll", "OnClientGone")
	gone, _ := f.rec.Last(sid("c5"), "OnClientGone")
	assert.Equal(t, mqtthooks.ReasonClientDisconnect, gone.Event.Reason)
	assert.True(t, gone.Event.HasCode)
	assert.Equal(t, mqtthooks.CodeNormalDisconnection, gone.Event.Code)
	assert.Equal(t, mqtthooks.MQTT5, gone.Event.ProtocolVersion)
}

// ACCEPTANCE 46, 49: RejectCode's code, Reason String and Server Reference
// reach the CONNACK; a v3 client gets the mapped return code.
func TestConnectV5RejectCode(t *testing.T) {
	f := newFixture(t, mqtthooks.Options{})
	f.rec.AuthOnRegisterM5Func = answer(mqtthooks.RejectCode(mqtthooks.CodeBanned, "", ""))
	expectRejected(t, f, f.v5("c5", true, 0), sid("c5"), 5, 0x8A)

	r := answer(mqtthooks.RejectCode(mqtthooks.CodeUseAnotherServer, "go", "b:1883"))
	f.rec.AuthOnRegisterM5Func, f.rec.AuthOnRegisterFunc = r, r
	c := f.v5("c6", true, 0)
	expectRejected(t, f, c, sid("c6"), 3, 0x9C)
	assert.Equal(t, "b:1883", c.Connack().Properties.ServerReference)
	assert.Equal(t, "go", c.Connack().Properties.ReasonString)
	v3 := f.v3("c3", true)
	assert.Equal(t, mqtthooks.RefusedServerUnavailable, v3.Connack().ReturnCode)
	assert.Empty(t, v3.Connack().Properties.ServerReference, "no properties in MQTT 3")
}

// N9: plugin codes that are no failure, or not valid in a CONNACK, become
// 0x87 (v3 5) and are logged; never an accept.
func TestConnectInvalidPluginCodes(t *testing.T) {
	for _, code := range []mqtthooks.ReasonCode{mqtthooks.CodeSuccess, mqtthooks.CodeSessionTakenOver} {
		f := newFixture(t, mqtthooks.Options{})
		r := answer(mqtthooks.RejectCode(code, "why", "elsewhere"))
		f.rec.AuthOnRegisterM5Func, f.rec.AuthOnRegisterFunc = r, r
		c := f.v5("c5", true, 0)
		expectRejected(t, f, c, sid("c5"), 5, 0x87)
		assert.Empty(t, c.Connack().Properties.ServerReference, "a replaced code carries nothing of the plugin's")
		assert.Contains(t, f.logs.String(), "not valid in a CONNACK")
		expectRejected(t, f, f.v3("c3", true), sid("c3"), 5, 0x87)
	}
}

// ACCEPTANCE 50: a v5 empty client id is generated and assigned.
func TestConnectV5GeneratedID(t *testing.T) {
	f := newFixture(t, mqtthooks.Options{})
	c := f.v5("", false, 0)
	requireAccepted(t, c)
	id := c.Session.ID()
	assert.Regexp(t, `^auto-[0-9A-Za-z]{18}$`, id.ClientID)
	assert.Equal(t, id.ClientID, c.Connack().Properties.AssignedClientIdentifier)
	assert.False(t, c.Connack().SessionPresent)
	auth, _ := f.rec.Last(id, "AuthOnRegisterM5")
	assert.Equal(t, id, auth.Register.SubscriberID)
	assert.Empty(t, auth.Register.Connect.ClientID, "the CONNECT is as sent")
	reg, _ := f.rec.Last(id, "OnRegisterM5")
	assert.Equal(t, id.ClientID, reg.Connack.AssignedClientIdentifier)
}

// ACCEPTANCE 51: SEI 60: Offline, SessionExpired at +60 s; a reconnect before
// cancels the expiry.
func TestExpiryV5(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFixture(t, mqtthooks.Options{})
		c := f.v5("c5", false, 60)
		require.NoError(t, c.Subscribe(t.Context(), "t"))
		require.NoError(t, c.Disconnect(t.Context(), mqtthooks.CodeNormalDisconnection))
		time.Sleep(59 * time.Second)

		again := f.v5("c5", false, 60)
		requireAccepted(t, again)
		assert.True(t, again.Connack().SessionPresent)
		info, _ := f.core.Lookup(sid("c5"))
		assert.True(t, info.ExpiresAt.IsZero(), "online: no expiry")
		time.Sleep(10 * time.Second)
		synctest.Wait()
		assert.Zero(t, f.rec.Count(sid("c5"), "OnSessionExpired"), "the resume cancelled the expiry")

		again.Drop(t.Context(), nil)
		start := time.Now()
		time.Sleep(60 * time.Second)
		synctest.Wait()
		f.rec.ExpectHooks(t, sid("c5"), "AuthOnRegisterM5", "OnClientWakeup", "OnRegisterM5", "Add", "OnClientOffline",
			"AuthOnRegisterM5", "OnClientWakeup", "OnRegisterM5", "OnClientOffline", "RemoveAll", "OnSessionExpired")
		exp, _ := f.rec.Last(sid("c5"), "OnSessionExpired")
		assert.Equal(t, mqtthooks.ReasonExpired, exp.Event.Reason)
		assert.Equal(t, 60*time.Second, time.Since(start))
	})
}

// ACCEPTANCE 52: a DISCONNECT raising SEI from 0 is a protocol error: 0x82,
// the Will, RemoveAll, Gone{ProtocolError}.
func TestDisconnectRaisesSEI(t *testing.T) {
	f := newFixture(t, mqtthooks.Options{})
	c := f.connect(withWill(mqtthookstest.V5("c5", "u", true, 0)))
	require.NoError(t, c.Subscribe(t.Context(), "t"))
	f.rec.Reset()

	err := c.DisconnectWithExpiry(t.Context(), mqtthooks.CodeNormalDisconnection, 30)

	var pe *mqtthooks.ProtocolError
	require.ErrorAs(t, err, &pe)
	assert.Equal(t, mqtthooks.CodeProtocolError, pe.Code)
	f.rec.ExpectHooks(t, sid("c5"), "PublishWill", "RemoveAll", "OnClientGone")
	gone, _ := f.rec.Last(sid("c5"), "OnClientGone")
	assert.Equal(t, mqtthooks.ReasonProtocolError, gone.Event.Reason)
	assert.Equal(t, mqtthooks.CodeProtocolError, gone.Event.Code)
}

// ACCEPTANCE 53: DISCONNECT with SEI 0 turns a persistent session clean.
func TestDisconnectLowersSEI(t *testing.T) {
	f := newFixture(t, mqtthooks.Options{})
	c := f.connect(withWill(mqtthookstest.V5("c5", "u", true, 60)))
	require.NoError(t, c.Subscribe(t.Context(), "t"))
	f.rec.Reset()

	require.NoError(t, c.DisconnectWithExpiry(t.Context(), mqtthooks.CodeNormalDisconnection, 0))

	f.rec.ExpectHooks(t, sid("c5"), "RemoveAll", "OnClientGone")
	gone, _ := f.rec.Last(sid("c5"), "OnClientGone")
	assert.Equal(t, mqtthooks.ReasonClientDisconnect, gone.Event.Reason)
}

// DISCONNECT 0x04 publishes the Will; a v5 DISCONNECT can also keep the SEI.
func TestDisconnectWithWillMessage(t *testing.T) {
	f := newFixture(t, mqtthooks.Options{})
	c := f.connect(withWill(mqtthookstest.V5("c5", "u", true, 60)))
	f.rec.Reset()
	require.NoError(t, c.DisconnectWithExpiry(t.Context(), mqtthooks.CodeDisconnectWithWillMessage, 120))
	f.rec.ExpectHooks(t, sid("c5"), "PublishWill", "OnClientOffline")
	off, _ := f.rec.Last(sid("c5"), "OnClientOffline")
	assert.Equal(t, mqtthooks.CodeDisconnectWithWillMessage, off.Event.Code)
}

// ACCEPTANCE 54: Clean Start over an offline session ends its life.
func TestCleanStartOverOfflineV5(t *testing.T) {
	f := newFixture(t, mqtthooks.Options{})
	c := f.v5("c5", false, 60)
	require.NoError(t, c.Subscribe(t.Context(), "t"))
	c.Drop(t.Context(), nil)
	f.rec.Reset()

	again := f.v5("c5", true, 60)
	requireAccepted(t, again)
	assert.False(t, again.Connack().SessionPresent)
	again.Drop(t.Context(), nil)

	f.rec.ExpectHooks(t, sid("c5"), "AuthOnRegisterM5", "RemoveAll", "OnClientGone", "OnClientWakeup", "OnRegisterM5",
		"OnClientOffline")
	gone, _ := f.rec.Last(sid("c5"), "OnClientGone")
	assert.Equal(t, mqtthooks.ReasonCleanStart, gone.Event.Reason)
}

// ACCEPTANCE 55: the old v5 connection gets DISCONNECT 0x8E; its Offline
// carries TakenOver and the code.
func TestTakeoverV5Code(t *testing.T) {
	f := newFixture(t, mqtthooks.Options{})
	c1 := f.v5("c5", false, 60)
	c2 := f.v5("c5", false, 60)
	requireAccepted(t, c2)
	within(t, c1.Conn.Disconnected(), "a DISCONNECT")
	assert.Equal(t, []mqtthooks.ReasonCode{mqtthooks.CodeSessionTakenOver}, c1.Conn.Disconnects())
	off, _ := f.rec.Last(sid("c5"), "OnClientOffline")
	assert.Equal(t, mqtthooks.ReasonTakenOver, off.Event.Reason)
	assert.Equal(t, mqtthooks.CodeSessionTakenOver, off.Event.Code)
}

// ACCEPTANCE 56: the SEI modifier replaces the CONNECT's for cleanup and
// expiry and is sent back in the CONNACK.
func TestSEIModifier(t *testing.T) {
	for _, connectSEI := range []uint32{10, 0} {
		synctest.Test(t, func(t *testing.T) {
			f := newFixture(t, mqtthooks.Options{})
			f.rec.AuthOnRegisterM5Func = answer(mqtthooks.AcceptWith(&mqtthooks.Modifiers{
				SessionExpiryInterval: mqtthooks.Some[uint32](300)}))
			c := f.v5("c5", true, connectSEI)
			requireAccepted(t, c)
			assert.Equal(t, mqtthooks.Some[uint32](300), c.Connack().Properties.SessionExpiryInterval)
			c.Drop(t.Context(), nil)
			assert.Equal(t, 1, f.rec.Count(sid("c5"), "OnClientOffline"), "persistent: Offline, not Gone")

			time.Sleep(299 * time.Second)
			synctest.Wait()
			assert.Zero(t, f.rec.Count(sid("c5"), "OnSessionExpired"))
			time.Sleep(time.Second)
			synctest.Wait()
			assert.Equal(t, 1, f.rec.Count(sid("c5"), "OnSessionExpired"))
			assert.Zero(t, f.rec.Count(sid("c5"), "OnClientGone"))
		})
	}
}

// SEI 0xFFFFFFFF never expires [fix #1545].
func TestSEINeverExpires(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFixture(t, mqtthooks.Options{})
		c := f.v5("c5", true, 0xFFFFFFFF)
		c.Drop(t.Context(), nil)
		time.Sleep(24 * 365 * time.Hour)
		synctest.Wait()
		info, ok := f.core.Lookup(sid("c5"))
		require.True(t, ok)
		assert.True(t, info.ExpiresAt.IsZero())
	})
}

// ACCEPTANCE 57: CONNACK property modifiers reach the CONNACK, OnRegisterM5
// and Session.Limits.
func TestConnackPropertyModifiers(t *testing.T) {
	f := newFixture(t, mqtthooks.Options{})
	f.rec.AuthOnRegisterM5Func = answer(mqtthooks.AcceptWith(&mqtthooks.Modifiers{
		MaximumQoS:     mqtthooks.Some[byte](1),
		UserProperties: mqtthooks.Some([]mqtthooks.UserProperty{{Key: "k", Value: "v"}}),
	}))
	c := f.v5("c5", true, 0)
	requireAccepted(t, c)

	want := mqtthooks.ConnackProperties{MaximumQoS: mqtthooks.Some[byte](1),
		UserProperties: []mqtthooks.UserProperty{{Key: "k", Value: "v"}}}
	assert.Equal(t, want, c.Connack().Properties)
	reg, _ := f.rec.Last(sid("c5"), "OnRegisterM5")
	assert.Equal(t, want, *reg.Connack)
	assert.Equal(t, byte(1), c.Session.Limits().MaximumQoS)
}

// A broker's capabilities appear in the CONNACK as MQTT's "not available".
func TestConnackAdvertisesCapabilities(t *testing.T) {
	caps := mqtthooks.Capabilities{MaximumQoS: 1, RetainAvailable: false, WildcardSubscriptionAvailable: true,
		MaximumPacketSize: 1 << 20, TopicAliasMaximum: 10, ReceiveMaximum: 100}
	f := newFixture(t, mqtthooks.Options{Capabilities: &caps})
	c := f.v5("c5", true, 0)
	requireAccepted(t, c)
	assert.Equal(t, mqtthooks.ConnackProperties{
		MaximumQoS: mqtthooks.Some[byte](1), RetainAvailable: mqtthooks.Some(false),
		MaximumPacketSize: 1 << 20, TopicAliasMaximum: 10,
		ReceiveMaximum: 100, SubscriptionIdentifierAvailable: mqtthooks.Some(false),
		SharedSubscriptionAvailable: mqtthooks.Some(false),
	}, c.Connack().Properties)
	assert.Equal(t, mqtthooks.Limits{MaximumPacketSize: 1 << 20, MaximumQoS: 1, WildcardSubscriptionAvailable: true,
		TopicAliasMaximum: 10, ReceiveMaximum: 100, KeepAlive: 60}, c.Session.Limits())
}

// Response Information goes out only when the client asked for it.
func TestResponseInformationOnRequest(t *testing.T) {
	f := newFixture(t, mqtthooks.Options{})
	f.rec.AuthOnRegisterM5Func = answer(mqtthooks.AcceptWith(&mqtthooks.Modifiers{
		ResponseInformation: mqtthooks.Some("reply/")}))
	assert.Empty(t, f.v5("a", true, 0).Connack().Properties.ResponseInformation)
	req := mqtthookstest.V5("b", "u", true, 0)
	req.Properties.RequestResponseInformation = true
	assert.Equal(t, "reply/", f.connect(req).Connack().Properties.ResponseInformation)
}
