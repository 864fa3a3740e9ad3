package mqtthooks_test

import (
	"context"
	"errors"
	"fmt"
	"go/build"
	"io/fs"
	"os"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mqtthooks/mqtthooks"
)

// The root module requires nothing: its packages (the library and
// mqtthookstest) import the standard library and each other only, and its
// go.mod has no require line, so importing it adds no module to a build.
func TestRootModuleHasNoDependencies(t *testing.T) {
	for _, dir := range []string{"../..", "../../mqtthookstest"} {
		pkg, err := build.ImportDir(dir, 0)
		require.NoError(t, err)
		require.NotEmpty(t, pkg.Imports)
		for _, imp := range pkg.Imports {
			first, _, _ := strings.Cut(imp, "/")
			if imp == "github.com/mqtthooks/mqtthooks" {
				continue
			}
			assert.NotContains(t, first, ".", "%s imports %s, which is not in the standard library", dir, imp)
		}
	}
	mod, err := os.ReadFile("../../go.mod")
	require.NoError(t, err)
	assert.NotContains(t, string(mod), "require", "the root go.mod requires a module")
	_, err = os.Stat("../../go.sum")
	assert.ErrorIs(t, err, fs.ErrNotExist, "the root module has a go.sum")
}

// Each func adapter implements its hook and forwards ctx and the request.
func TestFuncAdapters(t *testing.T) {
	type key struct{}
	ctx := context.WithValue(t.Context(), key{}, "ctx")
	req := v3Request("c1")
	areq := &mqtthooks.AuthRequest{Method: "M"}
	rev := &mqtthooks.RegisterEvent{}
	sev := &mqtthooks.SessionEvent{}
	dev := &mqtthooks.DropEvent{}
	var got []any
	record := func(c context.Context, v any) { got = append(got, c.Value(key{}), v) }

	var (
		a mqtthooks.AuthOnRegister = mqtthooks.AuthOnRegisterFunc(func(c context.Context, r *mqtthooks.RegisterRequest) mqtthooks.RegisterResult {
			record(c, r)
			return mqtthooks.Accept()
		})
		a5 mqtthooks.AuthOnRegisterM5 = mqtthooks.AuthOnRegisterM5Func(func(c context.Context, r *mqtthooks.RegisterRequest) mqtthooks.RegisterResult {
			record(c, r)
			return mqtthooks.Next()
		})
		o mqtthooks.OnAuthM5 = mqtthooks.OnAuthM5Func(func(c context.Context, r *mqtthooks.AuthRequest) mqtthooks.AuthResult {
			record(c, r)
			return mqtthooks.AuthNext()
		})
		r3 mqtthooks.OnRegister       = mqtthooks.OnRegisterFunc(func(c context.Context, e *mqtthooks.RegisterEvent) { record(c, e) })
		r5 mqtthooks.OnRegisterM5     = mqtthooks.OnRegisterM5Func(func(c context.Context, e *mqtthooks.RegisterEvent) { record(c, e) })
		w  mqtthooks.OnClientWakeup   = mqtthooks.OnClientWakeupFunc(func(c context.Context, e *mqtthooks.SessionEvent) { record(c, e) })
		of mqtthooks.OnClientOffline  = mqtthooks.OnClientOfflineFunc(func(c context.Context, e *mqtthooks.SessionEvent) { record(c, e) })
		g  mqtthooks.OnClientGone     = mqtthooks.OnClientGoneFunc(func(c context.Context, e *mqtthooks.SessionEvent) { record(c, e) })
		x  mqtthooks.OnSessionExpired = mqtthooks.OnSessionExpiredFunc(func(c context.Context, e *mqtthooks.SessionEvent) { record(c, e) })
		d  mqtthooks.OnMessageDrop    = mqtthooks.OnMessageDropFunc(func(c context.Context, e *mqtthooks.DropEvent) { record(c, e) })
	)
	assert.Equal(t, mqtthooks.VerdictAccept, a.AuthOnRegister(ctx, req).Verdict())
	assert.Equal(t, mqtthooks.VerdictNext, a5.AuthOnRegisterM5(ctx, req).Verdict())
	assert.Equal(t, mqtthooks.AuthVerdictNext, o.OnAuthM5(ctx, areq).Verdict())
	r3.OnRegister(ctx, rev)
	r5.OnRegisterM5(ctx, rev)
	w.OnClientWakeup(ctx, sev)
	of.OnClientOffline(ctx, sev)
	g.OnClientGone(ctx, sev)
	x.OnSessionExpired(ctx, sev)
	d.OnMessageDrop(ctx, dev)

	assert.Equal(t, []any{"ctx", req, "ctx", req, "ctx", areq, "ctx", rev, "ctx", rev,
		"ctx", sev, "ctx", sev, "ctx", sev, "ctx", sev, "ctx", dev}, got)
}

func TestResultConstructors(t *testing.T) {
	mods := &mqtthooks.Modifiers{MaxOfflineMessages: mqtthooks.Some(10)}
	for _, tc := range []struct {
		r       mqtthooks.RegisterResult
		verdict mqtthooks.Verdict
		mods    *mqtthooks.Modifiers
		err     error
		str     string
	}{
		{mqtthooks.RegisterResult{}, mqtthooks.VerdictInvalid, nil, nil, "invalid"},
		{mqtthooks.Accept(), mqtthooks.VerdictAccept, nil, nil, "accept"},
		{mqtthooks.AcceptWith(mods), mqtthooks.VerdictAccept, mods, nil, "accept with modifiers"},
		{mqtthooks.AcceptWith(nil), mqtthooks.VerdictAccept, nil, nil, "accept"},
		{mqtthooks.Next(), mqtthooks.VerdictNext, nil, nil, "next"},
		{mqtthooks.Reject(errFoo), mqtthooks.VerdictReject, nil, errFoo, "reject: foo"},
		{mqtthooks.Reject(nil), mqtthooks.VerdictReject, nil, mqtthooks.ErrRejected, "reject: mqtthooks: rejected"},
	} {
		assert.Equal(t, tc.verdict, tc.r.Verdict(), tc.str)
		assert.Same(t, tc.mods, tc.r.Modifiers(), tc.str)
		assert.Equal(t, tc.err, tc.r.Err(), tc.str)
		assert.Equal(t, tc.str, tc.r.String())
	}
	rc := mqtthooks.RejectCode(mqtthooks.CodeBanned, "go away", "")
	assert.Equal(t, mqtthooks.VerdictReject, rc.Verdict())
	assert.EqualError(t, rc.Err(), "mqtthooks: rejected with 0x8a (banned): go away")

	type state struct{ n int }
	st := &state{1}
	for _, tc := range []struct {
		r               mqtthooks.AuthResult
		verdict         mqtthooks.AuthVerdict
		data            []byte
		identity, state any
		str             string
	}{
		{mqtthooks.AuthResult{}, mqtthooks.AuthVerdictInvalid, nil, nil, nil, "invalid"},
		{mqtthooks.AuthSuccess([]byte("sf"), "alice"), mqtthooks.AuthVerdictSuccess, []byte("sf"), "alice", nil, "success"},
		{mqtthooks.AuthContinue([]byte("s1"), st), mqtthooks.AuthVerdictContinue, []byte("s1"), nil, st, "continue"},
		{mqtthooks.AuthNext(), mqtthooks.AuthVerdictNext, nil, nil, nil, "next"},
	} {
		assert.Equal(t, tc.verdict, tc.r.Verdict(), tc.str)
		assert.Equal(t, tc.data, tc.r.Data(), tc.str)
		assert.Equal(t, tc.identity, tc.r.Identity(), tc.str)
		assert.Equal(t, tc.state, tc.r.State(), tc.str)
		assert.NoError(t, tc.r.Err(), tc.str)
		assert.Equal(t, tc.str, tc.r.String())
	}
	ar := mqtthooks.AuthReject(mqtthooks.CodeBadAuthenticationMethod, "")
	assert.Equal(t, mqtthooks.AuthVerdictReject, ar.Verdict())
	var re *mqtthooks.RejectError
	require.ErrorAs(t, ar.Err(), &re)
	assert.Equal(t, mqtthooks.CodeBadAuthenticationMethod, re.Code)
	assert.Equal(t, "reject: mqtthooks: rejected with 0x8c (bad authentication method)", ar.String())
}

// The codes a server may send in each packet, written out from SPEC §4.
func TestReasonCodeValidity(t *testing.T) {
	span := func(lo, hi int) []int {
		var s []int
		for c := lo; c <= hi; c++ {
			s = append(s, c)
		}
		return s
	}
	join := func(parts ...[]int) map[int]bool {
		m := map[int]bool{}
		for _, p := range parts {
			for _, c := range p {
				m[c] = true
			}
		}
		return m
	}
	want := map[mqtthooks.Packet]map[int]bool{
		mqtthooks.PacketConnack: join([]int{0x00}, span(0x80, 0x8A), []int{0x8C, 0x90, 0x95, 0x97},
			span(0x99, 0x9D), []int{0x9F}),
		mqtthooks.PacketDisconnect: join([]int{0x00}, span(0x80, 0x83), []int{0x87, 0x89, 0x8B},
			span(0x8D, 0x90), span(0x93, 0xA2)),
		mqtthooks.PacketAuth: join([]int{0x00, 0x18, 0x19}),
		mqtthooks.PacketClientDisconnect: join([]int{0x00, 0x04}, span(0x80, 0x83), []int{0x90},
			span(0x93, 0x97), []int{0x99}),
	}
	for p, codes := range want {
		for c := range 256 {
			assert.Equal(t, codes[c], mqtthooks.ReasonCode(c).ValidIn(p), "%s in %s", mqtthooks.ReasonCode(c), p)
		}
	}
	assert.False(t, mqtthooks.CodeSuccess.ValidIn(mqtthooks.Packet(0)))
	assert.False(t, mqtthooks.CodeSuccess.ValidIn(mqtthooks.Packet(9)))
}

// A plugin's code goes into a packet only when it is a failure code valid
// there; otherwise 0x87, reported, and never an accept.
func TestRejectCodeFor(t *testing.T) {
	for _, tc := range []struct {
		code     mqtthooks.ReasonCode
		packet   mqtthooks.Packet
		want     mqtthooks.ReasonCode
		replaced bool
	}{
		{mqtthooks.CodeBanned, mqtthooks.PacketConnack, mqtthooks.CodeBanned, false},
		{mqtthooks.CodeSuccess, mqtthooks.PacketConnack, mqtthooks.CodeNotAuthorized, true},
		{mqtthooks.CodeSessionTakenOver, mqtthooks.PacketConnack, mqtthooks.CodeNotAuthorized, true},
		{0x10, mqtthooks.PacketConnack, mqtthooks.CodeNotAuthorized, true},
		{mqtthooks.CodeSessionTakenOver, mqtthooks.PacketDisconnect, mqtthooks.CodeSessionTakenOver, false},
		{mqtthooks.CodeBadUserNameOrPassword, mqtthooks.PacketDisconnect, mqtthooks.CodeNotAuthorized, true},
		{mqtthooks.CodeServerUnavailable, mqtthooks.PacketDisconnect, mqtthooks.CodeNotAuthorized, true},
		{mqtthooks.CodeNormalDisconnection, mqtthooks.PacketDisconnect, mqtthooks.CodeNotAuthorized, true},
		{mqtthooks.CodeContinueAuthentication, mqtthooks.PacketAuth, mqtthooks.CodeNotAuthorized, true},
	} {
		got, replaced := mqtthooks.RejectCodeFor(tc.code, tc.packet)
		assert.Equal(t, tc.want, got, "%s in %s", tc.code, tc.packet)
		assert.Equal(t, tc.replaced, replaced, "%s in %s", tc.code, tc.packet)
	}
}

// Every row of SPEC §4 and the RejectCode mapping to v3.
func TestConnackCodes(t *testing.T) {
	for _, tc := range []struct {
		name     string
		err      error
		v3       mqtthooks.ReturnCode
		v5       mqtthooks.ReasonCode
		replaced bool
	}{
		{"accepted", nil, 0, 0x00, false},
		{"protocol level not allowed", mqtthooks.ErrProtocolVersion, 1, 0x84, false},
		{"client id rejected", mqtthooks.ErrClientIDRejected, 2, 0x85, false},
		{"invalid credentials", mqtthooks.Reject(mqtthooks.ErrInvalidCredentials).Err(), 4, 0x86, false},
		{"wrapped credentials", fmt.Errorf("ldap: %w", mqtthooks.ErrInvalidCredentials), 4, 0x86, false},
		{"other reject", errFoo, 5, 0x87, false},
		{"reject nil", mqtthooks.Reject(nil).Err(), 5, 0x87, false},
		{"exhausted", mqtthooks.ErrChainExhausted, 5, 0x87, false},
		{"no plugin", mqtthooks.ErrNoPlugin, 5, 0x87, false},
		{"resume refused", mqtthooks.ErrResumeRefused, 5, 0x87, false},
		{"panic", &mqtthooks.PanicError{Plugin: "P", Value: "x"}, 3, 0x88, false},
		{"timeout", mqtthooks.ErrHookTimeout, 3, 0x88, false},
		{"invalid result", mqtthooks.ErrInvalidResult, 3, 0x88, false},
		{"invalid modifiers", &mqtthooks.ModifierError{Field: "F", Problem: "p"}, 3, 0x88, false},
		{"registration failure", fmt.Errorf("store: %w", mqtthooks.ErrRegistration), 3, 0x88, false},
		{"session limit", mqtthooks.ErrSessionLimit, 3, 0x97, false},
		{"Will QoS", mqtthooks.ErrWillQoS, 5, 0x9B, false},
		{"Will retain", mqtthooks.ErrWillRetain, 5, 0x9A, false},
		{"RejectCode 0x84", rejectErr(0x84), 1, 0x84, false},
		{"RejectCode 0x85", rejectErr(0x85), 2, 0x85, false},
		{"RejectCode 0x86", rejectErr(0x86), 4, 0x86, false},
		{"RejectCode 0x88", rejectErr(0x88), 3, 0x88, false},
		{"RejectCode 0x89", rejectErr(0x89), 3, 0x89, false},
		{"RejectCode 0x97", rejectErr(0x97), 3, 0x97, false},
		{"RejectCode 0x9C", rejectErr(0x9C), 3, 0x9C, false},
		{"RejectCode 0x9D", rejectErr(0x9D), 3, 0x9D, false},
		{"RejectCode 0x9F", rejectErr(0x9F), 3, 0x9F, false},
		{"RejectCode 0x8A", rejectErr(0x8A), 5, 0x8A, false},
		{"RejectCode 0x87", rejectErr(0x87), 5, 0x87, false},
		{"RejectCode 0x80", rejectErr(0x80), 5, 0x80, false},
		// N9: codes that are no failure, or not valid in a CONNACK, become 0x87.
		{"RejectCode 0x00", rejectErr(0x00), 5, 0x87, true},
		{"RejectCode 0x8E", rejectErr(0x8E), 5, 0x87, true},
		{"RejectCode 0x10", rejectErr(0x10), 5, 0x87, true},
		{"wrapped RejectCode", fmt.Errorf("hook: %w", rejectErr(0x8A)), 5, 0x8A, false},
	} {
		assert.Equal(t, tc.v3, mqtthooks.ConnackReturnCode(tc.err), tc.name)
		v5, replaced := mqtthooks.ConnackReasonCode(tc.err)
		assert.Equal(t, tc.v5, v5, tc.name)
		assert.Equal(t, tc.replaced, replaced, tc.name)
	}
}

func rejectErr(c mqtthooks.ReasonCode) error { return mqtthooks.RejectCode(c, "", "").Err() }

func TestStrings(t *testing.T) {
	assert.Equal(t, "0x87 (not authorized)", mqtthooks.CodeNotAuthorized.String())
	assert.Equal(t, "0x00 (success)", mqtthooks.CodeSuccess.String())
	assert.Equal(t, "0x7f", mqtthooks.ReasonCode(0x7F).String())
	assert.Equal(t, "5 (not authorized)", mqtthooks.RefusedNotAuthorized.String())
	assert.Equal(t, "9", mqtthooks.ReturnCode(9).String())
	assert.Equal(t, "CONNACK", mqtthooks.PacketConnack.String())
	assert.Equal(t, "3.1.1", mqtthooks.MQTT311.String())
	assert.Equal(t, "level 6", mqtthooks.ProtocolVersion(6).String())
	assert.True(t, mqtthooks.MQTT31.Valid())
	assert.False(t, mqtthooks.ProtocolVersion(2).Valid())
	assert.Equal(t, "taken-over", mqtthooks.ReasonTakenOver.String())
	assert.Equal(t, "Reason(99)", mqtthooks.Reason(99).String())
	assert.Equal(t, "queue-full", mqtthooks.DropQueueFull.String())
	assert.Equal(t, "reauth", mqtthooks.AuthStepReauth.String())
	assert.Equal(t, "lifo", mqtthooks.QueueLIFO.String())
	assert.Equal(t, "balance", mqtthooks.DeliverBalance.String())
	assert.Equal(t, "mp/c1", mqtthooks.SubscriberID{Mountpoint: "mp", ClientID: "c1"}.String())
	assert.Equal(t, "c1", mqtthooks.SubscriberID{ClientID: "c1"}.String())
	assert.Equal(t, 7, mqtthooks.Opt[int]{}.Or(7))
	assert.Equal(t, 0, mqtthooks.Some(0).Or(7), "a set zero is not unset")
}

func v5Rules() mqtthooks.ModifierRules {
	return mqtthooks.ModifierRules{ProtocolVersion: mqtthooks.MQTT5, MaxClientIDLen: 100,
		Capabilities: mqtthooks.DefaultCapabilities()}
}

func v3Rules() mqtthooks.ModifierRules {
	r := v5Rules()
	r.ProtocolVersion = mqtthooks.MQTT311
	return r
}

// Valid modifiers pass: every field at a legal value, for v3 and v5.
func TestModifiersValid(t *testing.T) {
	common := mqtthooks.Modifiers{
		SubscriberID:                  mqtthooks.Some(mqtthooks.SubscriberID{Mountpoint: "tenant1", ClientID: "t1-c5"}),
		Username:                      mqtthooks.Some("new"),
		CleanStart:                    mqtthooks.Some(true),
		MaxOnlineMessages:             mqtthooks.Some(-1),
		MaxOfflineMessages:            mqtthooks.Some(0),
		QueueType:                     mqtthooks.Some(mqtthooks.QueueLIFO),
		QueueDeliverMode:              mqtthooks.Some(mqtthooks.DeliverBalance),
		AllowMultipleSessions:         mqtthooks.Some(true),
		StoreQoS0Offline:              mqtthooks.Some(true),
		MaxInflightMessages:           mqtthooks.Some(65535),
		MaximumPacketSize:             mqtthooks.Some[uint32](1024),
		MaxMessageRate:                mqtthooks.Some[uint32](10),
		UpgradeQoS:                    mqtthooks.Some(true),
		MaximumQoS:                    mqtthooks.Some[byte](1),
		RetainAvailable:               mqtthooks.Some(false),
		WildcardSubscriptionAvailable: mqtthooks.Some(true),
		SharedSubscriptionAvailable:   mqtthooks.Some(false),
	}
	v3 := common
	v3.Persistent = mqtthooks.Some(true)
	assert.NoError(t, v3.Validate(v3Rules()))

	v5 := common
	v5.SessionExpiryInterval = mqtthooks.Some[uint32](0xFFFFFFFF)
	v5.ServerKeepAlive = mqtthooks.Some[uint16](30)
	v5.TopicAliasMaximum = mqtthooks.Some[uint16](0)
	v5.ReceiveMaximum = mqtthooks.Some[uint16](65535)
	v5.ResponseInformation = mqtthooks.Some("resp/")
	v5.UserProperties = mqtthooks.Some([]mqtthooks.UserProperty{{Key: "k", Value: "v"}, {Key: "k", Value: ""}})
	assert.NoError(t, v5.Validate(v5Rules()))

	assert.NoError(t, (*mqtthooks.Modifiers)(nil).Validate(v5Rules()))
	assert.NoError(t, new(mqtthooks.Modifiers).Validate(mqtthooks.ModifierRules{}), "nothing set, nothing to check")
}

// Each invalid value gives an error that errors.Is ErrInvalidModifiers and
// names the field and the problem (N13, rows 23, 26, 58, OQ3).
func TestModifiersInvalid(t *testing.T) {
	nul := "a\x00b"
	badUTF8 := "a\xffb"
	noCaps := v5Rules()
	noCaps.Capabilities = mqtthooks.Capabilities{MaximumQoS: 0, MaximumPacketSize: 100, TopicAliasMaximum: 10, ReceiveMaximum: 20}
	for _, tc := range []struct {
		name    string
		mods    mqtthooks.Modifiers
		rules   mqtthooks.ModifierRules
		field   string
		problem string
	}{
		{"empty client id", mqtthooks.Modifiers{SubscriberID: mqtthooks.Some(mqtthooks.SubscriberID{Mountpoint: "m"})},
			v3Rules(), "SubscriberID", "client id is empty"},
		{"bare mountpoint", mqtthooks.Modifiers{SubscriberID: mqtthooks.Some(mqtthooks.SubscriberID{Mountpoint: "x"})},
			v5Rules(), "SubscriberID", "client id is empty"},
		{"client id too long", mqtthooks.Modifiers{SubscriberID: mqtthooks.Some(mqtthooks.SubscriberID{ClientID: strings.Repeat("x", 101)})},
			v5Rules(), "SubscriberID", "client id is 101 bytes, above the limit of 100"},
		{"client id invalid UTF-8", mqtthooks.Modifiers{SubscriberID: mqtthooks.Some(mqtthooks.SubscriberID{ClientID: badUTF8})},
			v5Rules(), "SubscriberID", "client id is not valid UTF-8"},
		{"client id with U+0000", mqtthooks.Modifiers{SubscriberID: mqtthooks.Some(mqtthooks.SubscriberID{ClientID: nul})},
			v5Rules(), "SubscriberID", "client id contains U+0000"},
		{"mountpoint invalid UTF-8", mqtthooks.Modifiers{SubscriberID: mqtthooks.Some(mqtthooks.SubscriberID{Mountpoint: badUTF8, ClientID: "c"})},
			v5Rules(), "SubscriberID", "mountpoint is not valid UTF-8"},
		{"username with U+0000", mqtthooks.Modifiers{Username: mqtthooks.Some(nul)},
			v3Rules(), "Username", "username contains U+0000"},
		{"username too long", mqtthooks.Modifiers{Username: mqtthooks.Some(strings.Repeat("u", 65536))},
			v3Rules(), "Username", "longer than 65535 bytes"},
		{"Persistent on v5", mqtthooks.Modifiers{Persistent: mqtthooks.Some(true)},
			v5Rules(), "Persistent", "MQTT 3 only"},
		{"SessionExpiryInterval on v3", mqtthooks.Modifiers{SessionExpiryInterval: mqtthooks.Some[uint32](60)},
			v3Rules(), "SessionExpiryInterval", "MQTT 5 only"},
		{"MaxOnlineMessages -2", mqtthooks.Modifiers{MaxOnlineMessages: mqtthooks.Some(-2)},
			v5Rules(), "MaxOnlineMessages", "-2 is below -1"},
		{"MaxOfflineMessages -2", mqtthooks.Modifiers{MaxOfflineMessages: mqtthooks.Some(-2)},
			v3Rules(), "MaxOfflineMessages", "-2 is below -1"},
		{"QueueType unknown", mqtthooks.Modifiers{QueueType: mqtthooks.Some(mqtthooks.QueueType(7))},
			v3Rules(), "QueueType", "not QueueFIFO or QueueLIFO"},
		{"QueueType zero", mqtthooks.Modifiers{QueueType: mqtthooks.Some(mqtthooks.QueueType(0))},
			v3Rules(), "QueueType", "not QueueFIFO or QueueLIFO"},
		{"QueueDeliverMode unknown", mqtthooks.Modifiers{QueueDeliverMode: mqtthooks.Some(mqtthooks.DeliverMode(0))},
			v3Rules(), "QueueDeliverMode", "not DeliverFanout or DeliverBalance"},
		{"MaxInflightMessages -1", mqtthooks.Modifiers{MaxInflightMessages: mqtthooks.Some(-1)},
			v3Rules(), "MaxInflightMessages", "-1 is outside 0 to 65535"},
		{"MaxInflightMessages 65536", mqtthooks.Modifiers{MaxInflightMessages: mqtthooks.Some(65536)},
			v3Rules(), "MaxInflightMessages", "65536 is outside 0 to 65535"},
		{"MaximumPacketSize 0", mqtthooks.Modifiers{MaximumPacketSize: mqtthooks.Some[uint32](0)},
			v5Rules(), "MaximumPacketSize", "at least 1"},
		{"MaximumPacketSize above capability", mqtthooks.Modifiers{MaximumPacketSize: mqtthooks.Some[uint32](101)},
			noCaps, "MaximumPacketSize", "101 is above the broker's 100"},
		{"MaximumQoS 2", mqtthooks.Modifiers{MaximumQoS: mqtthooks.Some[byte](2)},
			v5Rules(), "MaximumQoS", "2 is not 0 or 1"},
		{"MaximumQoS above capability", mqtthooks.Modifiers{MaximumQoS: mqtthooks.Some[byte](1)},
			noCaps, "MaximumQoS", "1 is above the broker's 0"},
		{"RetainAvailable raised", mqtthooks.Modifiers{RetainAvailable: mqtthooks.Some(true)},
			noCaps, "RetainAvailable", "capability is false"},
		{"WildcardSubscriptionAvailable raised", mqtthooks.Modifiers{WildcardSubscriptionAvailable: mqtthooks.Some(true)},
			noCaps, "WildcardSubscriptionAvailable", "capability is false"},
		{"SubscriptionIdentifierAvailable raised", mqtthooks.Modifiers{SubscriptionIdentifierAvailable: mqtthooks.Some(true)},
			noCaps, "SubscriptionIdentifierAvailable", "capability is false"},
		{"SharedSubscriptionAvailable raised", mqtthooks.Modifiers{SharedSubscriptionAvailable: mqtthooks.Some(true)},
			noCaps, "SharedSubscriptionAvailable", "capability is false"},
		{"ServerKeepAlive on v3", mqtthooks.Modifiers{ServerKeepAlive: mqtthooks.Some[uint16](10)},
			v3Rules(), "ServerKeepAlive", "MQTT 5 only"},
		{"TopicAliasMaximum on v3", mqtthooks.Modifiers{TopicAliasMaximum: mqtthooks.Some[uint16](1)},
			v3Rules(), "TopicAliasMaximum", "MQTT 5 only"},
		{"TopicAliasMaximum above capability", mqtthooks.Modifiers{TopicAliasMaximum: mqtthooks.Some[uint16](11)},
			noCaps, "TopicAliasMaximum", "11 is above the broker's 10"},
		{"ReceiveMaximum 0", mqtthooks.Modifiers{ReceiveMaximum: mqtthooks.Some[uint16](0)},
			v5Rules(), "ReceiveMaximum", "is 0"},
		{"ReceiveMaximum above capability", mqtthooks.Modifiers{ReceiveMaximum: mqtthooks.Some[uint16](21)},
			noCaps, "ReceiveMaximum", "21 is above the broker's 20"},
		{"ReceiveMaximum on v3", mqtthooks.Modifiers{ReceiveMaximum: mqtthooks.Some[uint16](5)},
			v3Rules(), "ReceiveMaximum", "MQTT 5 only"},
		{"ResponseInformation on v3", mqtthooks.Modifiers{ResponseInformation: mqtthooks.Some("r")},
			v3Rules(), "ResponseInformation", "MQTT 5 only"},
		{"ResponseInformation invalid UTF-8", mqtthooks.Modifiers{ResponseInformation: mqtthooks.Some(badUTF8)},
			v5Rules(), "ResponseInformation", "not valid UTF-8"},
		{"UserProperties on v3", mqtthooks.Modifiers{UserProperties: mqtthooks.Some([]mqtthooks.UserProperty{{Key: "k"}})},
			v3Rules(), "UserProperties", "MQTT 5 only"},
		{"UserProperties key with U+0000", mqtthooks.Modifiers{UserProperties: mqtthooks.Some([]mqtthooks.UserProperty{{Key: "ok"}, {Key: nul}})},
			v5Rules(), "UserProperties", "key of property 1 contains U+0000"},
		{"UserProperties value invalid", mqtthooks.Modifiers{UserProperties: mqtthooks.Some([]mqtthooks.UserProperty{{Key: "k", Value: badUTF8}})},
			v5Rules(), "UserProperties", "value of property 0 is not valid UTF-8"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.mods.Validate(tc.rules)
			require.Error(t, err)
			assert.ErrorIs(t, err, mqtthooks.ErrInvalidModifiers)
			var me *mqtthooks.ModifierError
			require.ErrorAs(t, err, &me)
			assert.Equal(t, tc.field, me.Field)
			assert.Contains(t, me.Problem, tc.problem)
			assert.Contains(t, err.Error(), "invalid modifier "+tc.field+": ")
			assert.Equal(t, mqtthooks.RefusedServerUnavailable, mqtthooks.ConnackReturnCode(err))
		})
	}
}

// A single problem is a *ModifierError itself, not a joined error.
func TestModifiersSingleProblemIsModifierError(t *testing.T) {
	err := (&mqtthooks.Modifiers{MaxOfflineMessages: mqtthooks.Some(-2)}).Validate(v3Rules())
	me, ok := err.(*mqtthooks.ModifierError)
	require.True(t, ok, "got %T", err)
	assert.Equal(t, "MaxOfflineMessages", me.Field)
}

// MaxClientIDLen 0 in the rules means the default limit of 100 bytes.
func TestModifiersDefaultClientIDLimit(t *testing.T) {
	rules := mqtthooks.ModifierRules{ProtocolVersion: mqtthooks.MQTT5, Capabilities: mqtthooks.DefaultCapabilities()}
	ok := mqtthooks.Modifiers{SubscriberID: mqtthooks.Some(mqtthooks.SubscriberID{ClientID: strings.Repeat("x", 100)})}
	assert.NoError(t, ok.Validate(rules))
	long := mqtthooks.Modifiers{SubscriberID: mqtthooks.Some(mqtthooks.SubscriberID{ClientID: strings.Repeat("x", 101)})}
	assert.ErrorIs(t, long.Validate(rules), mqtthooks.ErrInvalidModifiers)
}

// Several invalid fields are all reported, in field order.
func TestModifiersSeveralProblems(t *testing.T) {
	m := mqtthooks.Modifiers{
		MaxOnlineMessages:     mqtthooks.Some(-5),
		Persistent:            mqtthooks.Some(false),
		SessionExpiryInterval: mqtthooks.Some[uint32](1),
	}
	err := m.Validate(v5Rules())
	require.ErrorIs(t, err, mqtthooks.ErrInvalidModifiers)
	var fields []string
	joined, ok := err.(interface{ Unwrap() []error })
	require.True(t, ok, "several problems are joined")
	for _, e := range joined.Unwrap() {
		var me *mqtthooks.ModifierError
		require.True(t, errors.As(e, &me))
		fields = append(fields, me.Field)
	}
	assert.Equal(t, []string{"Persistent", "MaxOnlineMessages"}, fields)
}
