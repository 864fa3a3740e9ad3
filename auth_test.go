package mqtthooks_test

import (
	"context"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mqtthooks/mqtthooks"
	"github.com/mqtthooks/mqtthooks/mqtthookstest"
)

// withMethod returns a v5 CONNECT with Authentication Method M and data.
func withMethod(req *mqtthooks.ConnectRequest, data string) *mqtthooks.ConnectRequest {
	req.Properties.AuthenticationMethod = "M"
	req.Properties.AuthenticationData = []byte(data)
	return req
}

// twoStep is an OnAuthM5 answer: Continue("s1", "st") at Start, then Success
// ("sf", "id") for data "c2" with the state back.
func twoStep(_ context.Context, req *mqtthooks.AuthRequest) mqtthooks.AuthResult {
	switch {
	case req.Step == mqtthooks.AuthStepStart:
		return mqtthooks.AuthContinue([]byte("s1"), "st")
	case req.State == "st" && string(req.Data) == "c2":
		return mqtthooks.AuthSuccess([]byte("sf"), "id")
	}
	return mqtthooks.AuthReject(mqtthooks.CodeNotAuthorized, "bad answer")
}

// ACCEPTANCE 59, 60, 65: a two-step exchange to its end, with the client's
// method echoed in every AUTH and in the CONNACK.
func TestEnhancedAuthTwoSteps(t *testing.T) {
	f := newFixture(t, mqtthooks.Options{})
	f.rec.OnAuthM5Func = twoStep
	other := mqtthookstest.NewRecorder()
	other.OnAuthM5Func = func(context.Context, *mqtthooks.AuthRequest) mqtthooks.AuthResult {
		return mqtthooks.AuthSuccess(nil, "not me")
	}
	require.NoError(t, f.chain.Register("other", other))
	c := mqtthookstest.NewClient(f.core)

	step := c.Connect(t.Context(), withMethod(mqtthookstest.V5("c5", "u", true, 0), "c1"))

	require.Equal(t, mqtthooks.SendAuth, step.Kind)
	assert.Equal(t, &mqtthooks.AuthPacket{ReasonCode: mqtthooks.CodeContinueAuthentication, Method: "M", Data: []byte("s1")}, step.Auth)
	start, _ := f.rec.Last(sid("c5"), "OnAuthM5")
	assert.Equal(t, mqtthooks.AuthStepStart, start.Auth.Step)
	assert.Equal(t, "c1", string(start.Auth.Data))
	assert.Nil(t, start.Auth.State)
	assert.Equal(t, sid("c5"), start.Auth.SubscriberID)
	assert.Equal(t, "u", start.Auth.Username)
	assert.True(t, start.Auth.HasUsername)
	assert.Equal(t, &c.Info, start.Auth.Conn)
	assert.Equal(t, "M", start.Auth.Connect.Properties.AuthenticationMethod)

	step = c.Auth(t.Context(), []byte("c2"))

	require.Equal(t, mqtthooks.SendConnack, step.Kind)
	requireAccepted(t, c)
	assert.Equal(t, "M", c.Connack().Properties.AuthenticationMethod)
	assert.Equal(t, []byte("sf"), c.Connack().Properties.AuthenticationData)
	cont, _ := f.rec.Last(sid("c5"), "OnAuthM5")
	assert.Equal(t, mqtthooks.AuthStepContinue, cont.Auth.Step)
	assert.Equal(t, "st", cont.Auth.State)
	reg, _ := f.rec.Last(sid("c5"), "AuthOnRegisterM5")
	assert.Equal(t, &mqtthooks.EnhancedAuth{Method: "M", Plugin: "P", Identity: "id"}, reg.Register.EnhancedAuth)
	f.rec.ExpectHooks(t, sid("c5"), "OnAuthM5", "OnAuthM5", "AuthOnRegisterM5", "OnClientWakeup", "OnRegisterM5")
	assert.Zero(t, other.Count(sid("c5"), "OnAuthM5"), "the owner decided at Start; later steps go to it only")
	onreg, _ := f.rec.Last(sid("c5"), "OnRegisterM5")
	assert.Equal(t, "M", onreg.Connack.AuthenticationMethod)
}

// ACCEPTANCE 61, 62, 64, N9: how an exchange is refused.
func TestEnhancedAuthRejections(t *testing.T) {
	for _, tc := range []struct {
		name   string
		answer func(context.Context, *mqtthooks.AuthRequest) mqtthooks.AuthResult
		steps  int
		code   mqtthooks.ReasonCode
	}{
		{"61 reject with bad method", func(context.Context, *mqtthooks.AuthRequest) mqtthooks.AuthResult {
			return mqtthooks.AuthReject(mqtthooks.CodeBadAuthenticationMethod, "")
		}, 1, 0x8C},
		{"62 reject without a code", func(context.Context, *mqtthooks.AuthRequest) mqtthooks.AuthResult {
			return mqtthooks.AuthReject(0, "")
		}, 1, 0x87},
		{"N9 reject with 0x10", func(context.Context, *mqtthooks.AuthRequest) mqtthooks.AuthResult {
			return mqtthooks.AuthReject(0x10, "")
		}, 1, 0x87},
		{"62 all Next", func(context.Context, *mqtthooks.AuthRequest) mqtthooks.AuthResult {
			return mqtthooks.AuthNext()
		}, 1, 0x8C},
		{"62 Next from the owner", func(_ context.Context, req *mqtthooks.AuthRequest) mqtthooks.AuthResult {
			if req.Step == mqtthooks.AuthStepStart {
				return mqtthooks.AuthContinue(nil, nil)
			}
			return mqtthooks.AuthNext()
		}, 2, 0x87},
		{"64 reject at a Continue step", func(_ context.Context, req *mqtthooks.AuthRequest) mqtthooks.AuthResult {
			if req.Step == mqtthooks.AuthStepStart {
				return mqtthooks.AuthContinue(nil, nil)
			}
			return mqtthooks.AuthReject(mqtthooks.CodeNotAuthorized, "no")
		}, 2, 0x87},
		{"N5 panic", func(context.Context, *mqtthooks.AuthRequest) mqtthooks.AuthResult {
			panic("auth")
		}, 1, 0x88},
		{"5 zero result", func(context.Context, *mqtthooks.AuthRequest) mqtthooks.AuthResult {
			return mqtthooks.AuthResult{}
		}, 1, 0x88},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, mqtthooks.Options{})
			f.rec.OnAuthM5Func = tc.answer
			c := mqtthookstest.NewClient(f.core)
			step := c.Connect(t.Context(), withMethod(mqtthookstest.V5("c5", "u", true, 0), "c1"))
			if tc.steps == 2 {
				require.Equal(t, mqtthooks.SendAuth, step.Kind)
				step = c.Auth(t.Context(), []byte("c2"))
			}
			require.Equal(t, mqtthooks.SendConnack, step.Kind, "never a DISCONNECT before the CONNACK")
			assert.Equal(t, tc.code, c.Connack().ReasonCode)
			assert.False(t, c.Accepted())
			assert.Equal(t, tc.steps, f.rec.Count(sid("c5"), "OnAuthM5"))
			assert.Zero(t, f.rec.Count(sid("c5"), "AuthOnRegisterM5"))
			assert.Zero(t, f.rec.Count(sid("c5"), "OnClientWakeup"))
		})
	}
}

// ACCEPTANCE 62: no OnAuthM5 plugin at all → 0x8C.
func TestEnhancedAuthNoPlugin(t *testing.T) {
	chain := mqtthooks.NewChain(mqtthooks.ChainOptions{})
	require.NoError(t, chain.Register("P", mqtthooks.AuthOnRegisterM5Func(
		func(context.Context, *mqtthooks.RegisterRequest) mqtthooks.RegisterResult { return mqtthooks.Accept() })))
	core, err := mqtthooks.NewCore(chain, mqtthooks.Options{})
	require.NoError(t, err)
	defer core.Shutdown(context.Background())
	c := mqtthookstest.NewClient(core)
	c.Connect(t.Context(), withMethod(mqtthookstest.V5("c5", "u", true, 0), ""))
	assert.Equal(t, mqtthooks.CodeBadAuthenticationMethod, c.Connack().ReasonCode)
}

// ACCEPTANCE 63: a wrong packet during the exchange: CONNACK 0x82, closed.
func TestEnhancedAuthWrongPacket(t *testing.T) {
	for name, send := range map[string]func(c *mqtthookstest.Client) mqtthooks.Step{
		"PINGREQ": func(c *mqtthookstest.Client) mqtthooks.Step { return c.Handshake.Unexpected() },
		"AUTH with another method": func(c *mqtthookstest.Client) mqtthooks.Step {
			return c.Handshake.Auth(context.Background(), &mqtthooks.AuthPacket{ReasonCode: 0x18, Method: "N"})
		},
		"AUTH 0x19": func(c *mqtthookstest.Client) mqtthooks.Step {
			return c.Handshake.Auth(context.Background(), &mqtthooks.AuthPacket{ReasonCode: 0x19, Method: "M"})
		},
	} {
		t.Run(name, func(t *testing.T) {
			f := newFixture(t, mqtthooks.Options{})
			f.rec.OnAuthM5Func = twoStep
			c := mqtthookstest.NewClient(f.core)
			c.Connect(t.Context(), withMethod(mqtthookstest.V5("c5", "u", true, 0), "c1"))

			step := send(c)

			require.Equal(t, mqtthooks.SendConnack, step.Kind)
			assert.Equal(t, mqtthooks.CodeProtocolError, step.Connack.ReasonCode)
			f.rec.ExpectHooks(t, sid("c5"), "OnAuthM5")
			after := c.Handshake.Auth(t.Context(), &mqtthooks.AuthPacket{ReasonCode: 0x18, Method: "M"})
			assert.Equal(t, mqtthooks.CloseConnection, after.Kind, "the exchange is over")
		})
	}
}

// ACCEPTANCE 66: enhanced auth with AllowAnonymous: AuthOnRegisterM5 still
// runs, and the anonymous rule applies to clients without a username.
func TestEnhancedAuthAnonymous(t *testing.T) {
	anon := mqtthooks.Options{Listeners: map[string]mqtthooks.ListenerOptions{"default": {AllowAnonymous: true}}}
	f := newFixture(t, anon)
	f.rec.OnAuthM5Func = func(context.Context, *mqtthooks.AuthRequest) mqtthooks.AuthResult {
		return mqtthooks.AuthSuccess(nil, "id")
	}
	f.rec.AuthOnRegisterM5Func = nil // Next
	c := f.connect(withMethod(mqtthookstest.V5("c5", "", true, 0), ""))
	requireAccepted(t, c)
	reg, _ := f.rec.Last(sid("c5"), "AuthOnRegisterM5")
	require.NotNil(t, reg.Register.EnhancedAuth)

	named := f.connect(withMethod(mqtthookstest.V5("c6", "u", true, 0), ""))
	assert.Equal(t, mqtthooks.CodeNotAuthorized, named.Connack().ReasonCode)
}

// N6 (c, d), ACCEPTANCE 83: time waiting for the client does not count
// against ConnectTimeout; AuthExchangeTimeout bounds the whole exchange; a
// late plugin gets 0x88.
func TestEnhancedAuthTime(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFixture(t, mqtthooks.Options{})
		f.rec.OnAuthM5Func = twoStep
		c := mqtthookstest.NewClient(f.core)
		c.Connect(t.Context(), withMethod(mqtthookstest.V5("slow", "u", true, 0), "c1"))
		time.Sleep(20 * time.Second) // the client thinks; ConnectTimeout is 5 s
		c.Auth(t.Context(), []byte("c2"))
		requireAccepted(t, c)
	})
	synctest.Test(t, func(t *testing.T) {
		f := newFixture(t, mqtthooks.Options{})
		f.rec.OnAuthM5Func = twoStep
		c := mqtthookstest.NewClient(f.core)
		c.Connect(t.Context(), withMethod(mqtthookstest.V5("silent", "u", true, 0), "c1"))
		assert.Equal(t, time.Now().Add(30*time.Second), c.Handshake.Deadline())
		time.Sleep(7500 * time.Millisecond)
		assert.Nil(t, c.Connack(), "nothing happens at 1.5 × keep-alive")
		time.Sleep(c.Handshake.Deadline().Sub(time.Now()))

		step := c.Handshake.Timeout()

		assert.Equal(t, mqtthooks.CodeNotAuthorized, step.Connack.ReasonCode)
		f.rec.ExpectHooks(t, sid("silent"), "OnAuthM5")
		late := c.Handshake.Auth(t.Context(), &mqtthooks.AuthPacket{ReasonCode: 0x18, Method: "M"})
		assert.Equal(t, mqtthooks.CloseConnection, late.Kind)
	})
	synctest.Test(t, func(t *testing.T) {
		f := newFixture(t, mqtthooks.Options{})
		f.rec.OnAuthM5Func = func(context.Context, *mqtthooks.AuthRequest) mqtthooks.AuthResult {
			time.Sleep(6 * time.Second)
			return mqtthooks.AuthSuccess(nil, nil)
		}
		c := f.connect(withMethod(mqtthookstest.V5("late", "u", true, 0), ""))
		assert.Equal(t, mqtthooks.CodeServerUnavailable, c.Connack().ReasonCode)
	})
	synctest.Test(t, func(t *testing.T) {
		// An answer that arrives after the deadline is a timeout too.
		f := newFixture(t, mqtthooks.Options{})
		f.rec.OnAuthM5Func = twoStep
		c := mqtthookstest.NewClient(f.core)
		c.Connect(t.Context(), withMethod(mqtthookstest.V5("c5", "u", true, 0), "c1"))
		time.Sleep(31 * time.Second)
		c.Auth(t.Context(), []byte("c2"))
		assert.Equal(t, mqtthooks.CodeNotAuthorized, c.Connack().ReasonCode)
	})
}

// N8: the client sends DISCONNECT during the exchange: nothing is sent, no
// further hook runs, an existing session is untouched.
func TestEnhancedAuthAbort(t *testing.T) {
	f := newFixture(t, mqtthooks.Options{})
	f.rec.OnAuthM5Func = twoStep
	existing := f.v5("c5", false, 300)
	requireAccepted(t, existing)
	f.rec.Reset()
	c := mqtthookstest.NewClient(f.core)
	c.Connect(t.Context(), withMethod(mqtthookstest.V5("c5", "u", false, 300), "c1"))

	step := c.Handshake.Abort()

	assert.Equal(t, mqtthooks.CloseConnection, step.Kind)
	assert.Nil(t, c.Connack())
	f.rec.ExpectHooks(t, sid("c5"), "OnAuthM5")
	assert.Empty(t, existing.Conn.Disconnects())
	assert.Equal(t, mqtthooks.CloseConnection, c.Handshake.Abort().Kind, "a second Abort is harmless")
}
