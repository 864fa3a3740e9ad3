package mqtthooks_test

import (
	"context"
	"fmt"
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
	other := &mqtthookstest.Recorder{Accept: true}
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
	f.rec.Accept = false // Next
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
		time.Sleep(time.Until(c.Handshake.Deadline()))

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

// connectEnhanced connects s with method M through twoStep and returns the
// client, for re-authentication tests.
func connectEnhanced(t *testing.T, f *fixture, sei uint32) *mqtthookstest.Client {
	t.Helper()
	c := mqtthookstest.NewClient(f.core)
	c.Connect(t.Context(), withWill(withMethod(mqtthookstest.V5("s", "u", true, sei), "c1")))
	c.Auth(t.Context(), []byte("c2"))
	requireAccepted(t, c)
	return c
}

// ACCEPTANCE 67, N19 (b): a re-authentication goes to the plugin that
// completed the CONNECT's exchange, may take several steps, and other
// packets keep flowing meanwhile.
func TestReauthSucceeds(t *testing.T) {
	f := newFixture(t, mqtthooks.Options{})
	f.rec.OnAuthM5Func = func(ctx context.Context, req *mqtthooks.AuthRequest) mqtthooks.AuthResult {
		switch {
		case req.Step == mqtthooks.AuthStepReauth:
			return mqtthooks.AuthContinue([]byte("r1"), "rst")
		case req.Step == mqtthooks.AuthStepContinue && req.State == "rst":
			return mqtthooks.AuthSuccess([]byte("ok"), "id")
		}
		return twoStep(ctx, req)
	}
	other := &mqtthookstest.Recorder{Accept: true}
	other.OnAuthM5Func = func(context.Context, *mqtthooks.AuthRequest) mqtthooks.AuthResult {
		return mqtthooks.AuthReject(mqtthooks.CodeBanned, "")
	}
	require.NoError(t, f.chain.Register("other", other))
	c := connectEnhanced(t, f, 0)
	f.rec.Reset()

	reply, err := c.Reauth(t.Context(), "M", []byte("r"))
	require.NoError(t, err)
	assert.Equal(t, &mqtthooks.AuthPacket{ReasonCode: mqtthooks.CodeContinueAuthentication, Method: "M", Data: []byte("r1")}, reply)
	f.publish(t, sid("s"), 1, 1) // other packets flow between the steps
	ds, err := c.Receive()
	require.NoError(t, err)
	assert.Len(t, ds, 1)
	reply, err = c.ReauthContinue(t.Context(), "M", []byte("r2"))
	require.NoError(t, err)
	assert.Equal(t, &mqtthooks.AuthPacket{ReasonCode: mqtthooks.CodeSuccess, Method: "M", Data: []byte("ok")}, reply)

	f.rec.ExpectHooks(t, sid("s"), "OnAuthM5", "OnAuthM5")
	start, _ := f.rec.Last(sid("s"), "OnAuthM5")
	assert.Equal(t, "rst", start.Auth.State)
	assert.Zero(t, other.Count(sid("s"), "OnAuthM5"))
	assert.Zero(t, f.rec.Count(sid("s"), "AuthOnRegisterM5"), "AuthOnRegisterM5 is not called again")
	require.NoError(t, c.Disconnect(t.Context(), mqtthooks.CodeNormalDisconnection))
	gone, _ := f.rec.Last(sid("s"), "OnClientGone")
	assert.Equal(t, "u", gone.Event.Username, "the username does not change")
}

// ACCEPTANCE 68, N9, N5: a rejected re-authentication ends the connection
// with the plugin's code if DISCONNECT allows it, else 0x87; the Will, then
// Offline or Gone with Reason AuthFailed.
func TestReauthRejected(t *testing.T) {
	for _, tc := range []struct {
		name   string
		answer mqtthooks.AuthResult
		panics bool
		code   mqtthooks.ReasonCode
	}{
		{"0x87", mqtthooks.AuthReject(mqtthooks.CodeNotAuthorized, ""), false, 0x87},
		{"0x86 is not a DISCONNECT code", mqtthooks.AuthReject(mqtthooks.CodeBadUserNameOrPassword, ""), false, 0x87},
		{"0x89", mqtthooks.AuthReject(mqtthooks.CodeServerBusy, ""), false, 0x89},
		{"panic", mqtthooks.AuthResult{}, true, 0x87},
		{"zero result", mqtthooks.AuthResult{}, false, 0x87},
		{"Next", mqtthooks.AuthNext(), false, 0x87},
	} {
		for _, sei := range []uint32{0, 300} {
			t.Run(fmt.Sprint(tc.name, " SEI ", sei), func(t *testing.T) {
				f := newFixture(t, mqtthooks.Options{})
				f.rec.OnAuthM5Func = func(ctx context.Context, req *mqtthooks.AuthRequest) mqtthooks.AuthResult {
					if req.Step != mqtthooks.AuthStepReauth {
						return twoStep(ctx, req)
					}
					if tc.panics {
						panic("reauth")
					}
					return tc.answer
				}
				c := connectEnhanced(t, f, sei)
				f.rec.Reset()

				reply, err := c.Reauth(t.Context(), "M", nil)

				assert.Nil(t, reply)
				var ended *mqtthooks.EndedError
				require.ErrorAs(t, err, &ended)
				assert.Equal(t, tc.code, ended.Code)
				terminal := "OnClientGone"
				if sei > 0 {
					terminal = "OnClientOffline"
				}
				f.rec.ExpectHooks(t, sid("s"), "OnAuthM5", "PublishWill", terminal)
				ev, _ := f.rec.Last(sid("s"), terminal)
				assert.Equal(t, mqtthooks.ReasonAuthFailed, ev.Event.Reason)
				assert.Equal(t, tc.code, ev.Event.Code)
				_, err = c.Session.Pull(make([]mqtthooks.Delivery, 1))
				assert.Error(t, err)
			})
		}
	}
}

// ACCEPTANCE 69, N19 (a): AUTH without enhanced auth at CONNECT, with another
// method, or AUTH 0x18 with no exchange running: DISCONNECT 0x82, then the
// Will and Offline or Gone.
func TestReauthProtocolErrors(t *testing.T) {
	for name, run := range map[string]func(f *fixture) (*mqtthookstest.Client, error){
		"no enhanced auth at CONNECT": func(f *fixture) (*mqtthookstest.Client, error) {
			c := f.connect(withWill(mqtthookstest.V5("s", "u", true, 0)))
			_, err := c.Reauth(context.Background(), "M", nil)
			return c, err
		},
		"another method": func(f *fixture) (*mqtthookstest.Client, error) {
			c := connectEnhanced(f.t.(*testing.T), f, 0)
			_, err := c.Reauth(context.Background(), "N", nil)
			return c, err
		},
		"0x18 with no exchange running": func(f *fixture) (*mqtthookstest.Client, error) {
			c := connectEnhanced(f.t.(*testing.T), f, 0)
			_, err := c.ReauthContinue(context.Background(), "M", nil)
			return c, err
		},
	} {
		t.Run(name, func(t *testing.T) {
			f := newFixture(t, mqtthooks.Options{})
			f.rec.OnAuthM5Func = twoStep
			c, err := run(f)
			var ended *mqtthooks.EndedError
			require.ErrorAs(t, err, &ended)
			assert.Equal(t, mqtthooks.CodeProtocolError, ended.Code)
			assert.Equal(t, mqtthookstest.Sent{Packet: "DISCONNECT", Code: mqtthooks.CodeProtocolError}, c.Sent[len(c.Sent)-1])
			gone, ok := f.rec.Last(sid("s"), "OnClientGone")
			require.True(t, ok)
			assert.Equal(t, mqtthooks.ReasonProtocolError, gone.Event.Reason)
			assert.Equal(t, 1, f.rec.Count(sid("s"), "PublishWill"))
		})
	}
}

// N19 (c), OQ9: a plugin past HookTimeout, or a client silent past
// AuthExchangeTimeout, ends the connection with 0x87.
func TestReauthDeadlines(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFixture(t, mqtthooks.Options{})
		f.rec.OnAuthM5Func = func(ctx context.Context, req *mqtthooks.AuthRequest) mqtthooks.AuthResult {
			if req.Step == mqtthooks.AuthStepReauth {
				time.Sleep(6 * time.Second)
				return mqtthooks.AuthSuccess(nil, nil)
			}
			return twoStep(ctx, req)
		}
		c := connectEnhanced(t, f, 300)
		_, err := c.Reauth(t.Context(), "M", nil)
		var ended *mqtthooks.EndedError
		require.ErrorAs(t, err, &ended)
		assert.Equal(t, mqtthooks.CodeNotAuthorized, ended.Code)
		assert.Equal(t, 1, f.rec.Count(sid("s"), "OnClientOffline"))
	})
	synctest.Test(t, func(t *testing.T) {
		f := newFixture(t, mqtthooks.Options{})
		f.rec.OnAuthM5Func = func(ctx context.Context, req *mqtthooks.AuthRequest) mqtthooks.AuthResult {
			if req.Step == mqtthooks.AuthStepReauth {
				return mqtthooks.AuthContinue(nil, nil)
			}
			return twoStep(ctx, req)
		}
		c := connectEnhanced(t, f, 300)
		_, err := c.Reauth(t.Context(), "M", nil)
		require.NoError(t, err)
		time.Sleep(29 * time.Second)
		synctest.Wait()
		assert.Empty(t, c.Conn.Disconnects())
		time.Sleep(time.Second)
		synctest.Wait()
		assert.Equal(t, []mqtthooks.ReasonCode{mqtthooks.CodeNotAuthorized}, c.Conn.Disconnects())
		off, _ := f.rec.Last(sid("s"), "OnClientOffline")
		assert.Equal(t, mqtthooks.ReasonAuthFailed, off.Event.Reason)
		_, err = c.ReauthContinue(t.Context(), "M", nil)
		assert.Error(t, err, "too late")
	})
}
