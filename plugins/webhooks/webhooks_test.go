package webhooks_test

import (
	"context"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/mqtthooks/mqtthooks"
	"github.com/mqtthooks/mqtthooks/mqtthookstest"
	"github.com/mqtthooks/mqtthooks/plugins/webhooks"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// endpoint is an httptest server that records what it receives and answers
// with answer.
type endpoint struct {
	*httptest.Server
	mu     sync.Mutex
	hooks  []string
	bodies []string
	calls  atomic.Int32
}

func newEndpoint(t *testing.T, answer func(w http.ResponseWriter)) *endpoint {
	e := &endpoint{}
	e.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		e.mu.Lock()
		e.hooks = append(e.hooks, r.Header.Get("vernemq-hook"))
		e.bodies = append(e.bodies, string(body))
		e.mu.Unlock()
		e.calls.Add(1)
		assert.Equal(t, http.MethodPost, r.Method)
		assert.Equal(t, "application/json", r.Header.Get("Content-Type"))
		answer(w)
	}))
	t.Cleanup(e.Close)
	return e
}

func says(body string) func(http.ResponseWriter) {
	return func(w http.ResponseWriter) { _, _ = io.WriteString(w, body) }
}

// connect runs a CONNECT through a Core whose only plugin is p.
func connect(t *testing.T, p *webhooks.Plugin, req *mqtthooks.ConnectRequest, opts mqtthooks.Options) (*mqtthooks.Core, *mqtthookstest.Client, mqtthooks.Step) {
	t.Helper()
	chain := mqtthooks.NewChain(mqtthooks.ChainOptions{})
	require.NoError(t, chain.Register("webhooks", p))
	core, err := mqtthooks.NewCore(chain, opts)
	require.NoError(t, err)
	t.Cleanup(func() { _ = core.Shutdown(context.Background()) })
	c := mqtthookstest.NewClient(core)
	c.Info.Peer = netip.MustParseAddrPort("10.0.0.5:40000")
	step := c.Connect(t.Context(), req)
	return core, c, step
}

func hooks(urls map[string]string) *webhooks.Plugin {
	m := map[string][]webhooks.Endpoint{}
	for h, u := range urls {
		m[h] = []webhooks.Endpoint{{URL: u}}
	}
	p, err := webhooks.New(webhooks.Options{Hooks: m})
	if err != nil {
		panic(err)
	}
	return p
}

// W1, W2: a v3 CONNECT posts VerneMQ's auth_on_register body, key for key,
// with null for absent credentials.
func TestW1W2AuthOnRegisterBody(t *testing.T) {
	e := newEndpoint(t, says(`{"result":"ok"}`))
	p := hooks(map[string]string{webhooks.HookAuthOnRegister: e.URL})
	req := mqtthookstest.V3("c1", "u", true)
	req.Password, req.HasPassword = []byte("p"), true
	_, c, _ := connect(t, p, req, mqtthooks.Options{})
	require.True(t, c.Accepted())
	require.Equal(t, []string{"auth_on_register"}, e.hooks)
	assert.JSONEq(t, `{"peer_addr":"10.0.0.5","peer_port":40000,"mountpoint":"","client_id":"c1","username":"u","password":"p","clean_session":true}`, e.bodies[0])
	assert.Equal(t, `{"peer_addr":"10.0.0.5","peer_port":40000,"mountpoint":"","client_id":"c1","username":"u","password":"p","clean_session":true}`, e.bodies[0], "in VerneMQ's order")

	e2 := newEndpoint(t, says(`{"result":"ok"}`))
	p2 := hooks(map[string]string{webhooks.HookAuthOnRegister: e2.URL})
	anon := mqtthookstest.V3("c2", "", true)
	anon.HasUsername = false
	_, _, _ = connect(t, p2, anon, mqtthooks.Options{})
	assert.JSONEq(t, `{"peer_addr":"10.0.0.5","peer_port":40000,"mountpoint":"","client_id":"c2","username":null,"password":null,"clean_session":true}`, e2.bodies[0])
}

// W3: a v5 CONNECT: auth_on_register_m5, clean_start, properties with user
// properties in base64.
func TestW3AuthOnRegisterM5Body(t *testing.T) {
	e := newEndpoint(t, says(`{"result":"ok"}`))
	p := hooks(map[string]string{webhooks.HookAuthOnRegisterM5: e.URL})
	req := mqtthookstest.V5("c1", "u", true, 60)
	req.Properties.UserProperties = []mqtthooks.UserProperty{{Key: "k1", Value: "v1"}}
	_, c, _ := connect(t, p, req, mqtthooks.Options{})
	require.True(t, c.Accepted())
	require.Equal(t, []string{"auth_on_register_m5"}, e.hooks)
	var body map[string]any
	require.NoError(t, json.Unmarshal([]byte(e.bodies[0]), &body))
	assert.Equal(t, true, body["clean_start"])
	assert.NotContains(t, body, "clean_session")
	props := body["properties"].(map[string]any)
	assert.Equal(t, float64(60), props["p_session_expiry_interval"])
	assert.Equal(t, []any{map[string]any{"key": "azE=", "val": "djE="}}, props["p_user_property"])
}

// W4, W12: the answers. ok accepts; next passes on; an error rejects (3: 5,
// 5: 0x86); a reason_code is used; ok with a username modifier changes it;
// an answer without result, {} or not JSON, or a status other than 200
// rejects with a CONNACK.
func TestW4W12Answers(t *testing.T) {
	for _, tc := range []struct {
		name, answer string
		status       int
		v5           bool
		accepted     bool
		code         byte // CONNACK return or reason code when refused
	}{
		{"ok", `{"result":"ok"}`, 200, false, true, 0},
		{"next", `{"result":"next"}`, 200, false, false, byte(mqtthooks.RefusedNotAuthorized)},
		{"error v3", `{"result":{"error":"not_allowed"}}`, 200, false, false, byte(mqtthooks.RefusedNotAuthorized)},
		{"error v5", `{"result":{"error":"not_allowed"}}`, 200, true, false, byte(mqtthooks.CodeBadUserNameOrPassword)},
		{"reason code", `{"result":{"error":"banned","reason_code":138}}`, 200, true, false, 0x8A},
		{"no result", `{}`, 200, true, false, byte(mqtthooks.CodeBadUserNameOrPassword)},
		{"not json", `<html>`, 200, false, false, byte(mqtthooks.RefusedNotAuthorized)},
		{"status 500", `{"result":"ok"}`, 500, true, false, byte(mqtthooks.CodeBadUserNameOrPassword)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEndpoint(t, func(w http.ResponseWriter) {
				w.WriteHeader(tc.status)
				_, _ = io.WriteString(w, tc.answer)
			})
			hook, req := webhooks.HookAuthOnRegister, mqtthookstest.V3("c1", "u", true)
			if tc.v5 {
				hook, req = webhooks.HookAuthOnRegisterM5, mqtthookstest.V5("c1", "u", true, 0)
			}
			_, c, step := connect(t, hooks(map[string]string{hook: e.URL}), req, mqtthooks.Options{})
			require.Equal(t, mqtthooks.SendConnack, step.Kind, "always a CONNACK, never a silent close")
			assert.Equal(t, tc.accepted, c.Accepted())
			if !tc.accepted {
				got := byte(step.Connack.ReturnCode)
				if tc.v5 {
					got = byte(step.Connack.ReasonCode)
				}
				assert.Equal(t, tc.code, got)
			}
		})
	}
	e := newEndpoint(t, says(`{"result":"ok","modifiers":{"username":"x"}}`))
	core, c, _ := connect(t, hooks(map[string]string{webhooks.HookAuthOnRegister: e.URL}),
		mqtthookstest.V3("c1", "u", false), mqtthooks.Options{})
	require.True(t, c.Accepted())
	info, ok := core.Lookup(mqtthooks.SubscriberID{ClientID: "c1"})
	require.True(t, ok)
	assert.Equal(t, "x", info.Username)
}

// W5: the first of two endpoints fails (500, or refuses the connection):
// reject, and the second is not called. With OnTransportFailure Next, a
// refused connection passes to the second.
func TestW5FailureStopsTheChain(t *testing.T) {
	second := newEndpoint(t, says(`{"result":"ok"}`))
	failing := newEndpoint(t, func(w http.ResponseWriter) { w.WriteHeader(500) })
	dead := httptest.NewServer(http.NotFoundHandler())
	deadURL := dead.URL
	dead.Close()
	for _, first := range []string{failing.URL, deadURL} {
		p, err := webhooks.New(webhooks.Options{Hooks: map[string][]webhooks.Endpoint{
			webhooks.HookAuthOnRegister: {{URL: first}, {URL: second.URL}}}})
		require.NoError(t, err)
		_, c, _ := connect(t, p, mqtthookstest.V3("c1", "u", true), mqtthooks.Options{})
		assert.False(t, c.Accepted())
	}
	assert.Zero(t, second.calls.Load())

	p, err := webhooks.New(webhooks.Options{Hooks: map[string][]webhooks.Endpoint{
		webhooks.HookAuthOnRegister: {{URL: deadURL, OnTransportFailure: webhooks.Next}, {URL: second.URL}}}})
	require.NoError(t, err)
	_, c, _ := connect(t, p, mqtthookstest.V3("c1", "u", true), mqtthooks.Options{})
	assert.True(t, c.Accepted())
	assert.Equal(t, int32(1), second.calls.Load())
}

// W6: an endpoint slower than its timeout: reject within the timeout, and
// the timeout is counted.
func TestW6Timeout(t *testing.T) {
	release := make(chan struct{})
	slow := newEndpoint(t, func(w http.ResponseWriter) { <-release; _, _ = io.WriteString(w, `{"result":"ok"}`) })
	defer close(release)
	p, err := webhooks.New(webhooks.Options{Hooks: map[string][]webhooks.Endpoint{
		webhooks.HookAuthOnRegister: {{URL: slow.URL, Timeout: 50 * time.Millisecond}}}})
	require.NoError(t, err)
	start := time.Now()
	_, c, _ := connect(t, p, mqtthookstest.V3("c1", "u", true), mqtthooks.Options{})
	assert.False(t, c.Accepted())
	assert.Less(t, time.Since(start), 2*time.Second)
	st := p.Stats()
	require.Len(t, st, 1)
	assert.Equal(t, uint64(1), st[0].Timeouts)
}

// W9: modifiers as VerneMQ has them: client_id alone rejects; with a
// mountpoint it is the session key; an unknown key rejects; a fraction is
// rounded.
func TestW9Modifiers(t *testing.T) {
	for _, tc := range []struct {
		mods     string
		accepted bool
		check    func(t *testing.T, core *mqtthooks.Core)
	}{
		{`{"client_id":"x"}`, false, nil},
		{`{"client_id":"x","mountpoint":"m"}`, true, func(t *testing.T, core *mqtthooks.Core) {
			_, ok := core.Lookup(mqtthooks.SubscriberID{Mountpoint: "m", ClientID: "x"})
			assert.True(t, ok)
		}},
		{`{"reg_view":"r"}`, false, nil},
		{`{"max_message_size":1000.4}`, true, nil},
		{`{"allow_publish":true}`, true, nil},
	} {
		e := newEndpoint(t, says(`{"result":"ok","modifiers":`+tc.mods+`}`))
		core, c, _ := connect(t, hooks(map[string]string{webhooks.HookAuthOnRegister: e.URL}),
			mqtthookstest.V3("c1", "u", false), mqtthooks.Options{})
		assert.Equal(t, tc.accepted, c.Accepted(), tc.mods)
		if c.Accepted() && tc.check != nil {
			tc.check(t, core)
		}
		if tc.mods == `{"max_message_size":1000.4}` {
			assert.Equal(t, uint32(1000), c.Session.Limits().MaximumPacketSize)
		}
	}
}

// W10: on_client_gone posts {"mountpoint","client_id"}; a failing answer
// changes nothing.
func TestW10Notifications(t *testing.T) {
	gone := newEndpoint(t, func(w http.ResponseWriter) { w.WriteHeader(500) })
	p := hooks(map[string]string{webhooks.HookOnClientGone: gone.URL})
	_, c, _ := connect(t, p, mqtthookstest.V3("c1", "", true), mqtthooks.Options{Listeners: map[string]mqtthooks.ListenerOptions{"default": {AllowAnonymous: true}}})
	require.True(t, c.Accepted())
	require.NoError(t, c.Disconnect(t.Context(), mqtthooks.CodeNormalDisconnection))
	require.Equal(t, []string{"on_client_gone"}, gone.hooks)
	assert.Equal(t, `{"mountpoint":"","client_id":"c1"}`, gone.bodies[0])
}

// Bad configurations are refused with an error that says what.
func TestConfig(t *testing.T) {
	_, err := webhooks.New(webhooks.Options{Hooks: map[string][]webhooks.Endpoint{"auth_on_publish": {{URL: "http://x"}}}})
	assert.ErrorIs(t, err, webhooks.ErrConfig)
	_, err = webhooks.New(webhooks.Options{Hooks: map[string][]webhooks.Endpoint{webhooks.HookOnClientGone: {{URL: "ftp://x"}}}})
	assert.ErrorContains(t, err, "not an http or https URL")
}

// W7: the client goes away while the auth call waits: the call is
// canceled, no CONNACK, counted as canceled, not as an error.
func TestW7ClientGoesAway(t *testing.T) {
	arrived, release := make(chan struct{}), make(chan struct{})
	slow := newEndpoint(t, func(w http.ResponseWriter) {
		close(arrived)
		<-release
	})
	defer close(release)
	p := hooks(map[string]string{webhooks.HookAuthOnRegister: slow.URL})
	chain := mqtthooks.NewChain(mqtthooks.ChainOptions{})
	require.NoError(t, chain.Register("webhooks", p))
	core, err := mqtthooks.NewCore(chain, mqtthooks.Options{})
	require.NoError(t, err)
	defer func() { _ = core.Shutdown(context.Background()) }()
	ctx, cancel := context.WithCancel(t.Context())
	go func() { <-arrived; cancel() }() // the client's socket closes
	c := mqtthookstest.NewClient(core)
	step := c.Connect(ctx, mqtthookstest.V3("c1", "u", true))
	assert.Equal(t, mqtthooks.CloseConnection, step.Kind, "no CONNACK for a client that left")
	st := p.Stats()[0]
	assert.Equal(t, uint64(1), st.Canceled)
	assert.Zero(t, st.Errors)
}

// W8: an "ok" with Cache-Control: max-age=30 is reused for the same
// credentials from another port within 30 s; another password calls; next
// and errors are never kept; after 31 s the endpoint is called again. The
// clock is injected.
func TestW8Cache(t *testing.T) {
	answer := `{"result":"ok","modifiers":{"username":"cached"}}`
	e := newEndpoint(t, func(w http.ResponseWriter) {
		w.Header().Set("Cache-Control", "  max-age=30,private")
		_, _ = io.WriteString(w, answer)
	})
	now := time.Unix(1_000_000, 0)
	p, err := webhooks.New(webhooks.Options{Hooks: map[string][]webhooks.Endpoint{webhooks.HookAuthOnRegister: {{URL: e.URL}}},
		Now: func() time.Time { return now }})
	require.NoError(t, err)
	chain := mqtthooks.NewChain(mqtthooks.ChainOptions{})
	require.NoError(t, chain.Register("webhooks", p))
	core, err := mqtthooks.NewCore(chain, mqtthooks.Options{})
	require.NoError(t, err)
	defer func() { _ = core.Shutdown(context.Background()) }()
	try := func(port uint16, pass string) bool {
		c := mqtthookstest.NewClient(core)
		c.Info.Peer = netip.AddrPortFrom(netip.MustParseAddr("10.0.0.5"), port)
		req := mqtthookstest.V3("c1", "u", true)
		req.Password, req.HasPassword = []byte(pass), true
		c.Connect(t.Context(), req)
		if c.Accepted() {
			_ = c.Disconnect(t.Context(), mqtthooks.CodeNormalDisconnection)
		}
		return c.Accepted()
	}
	require.True(t, try(40000, "p"))
	require.True(t, try(40001, "p"))
	assert.Equal(t, int32(1), e.calls.Load(), "the second CONNECT, from another port, came from the cache")
	require.True(t, try(40002, "other"))
	assert.Equal(t, int32(2), e.calls.Load(), "another password is another key")
	now = now.Add(31 * time.Second)
	require.True(t, try(40003, "p"))
	assert.Equal(t, int32(3), e.calls.Load(), "expired")
	st := p.CacheStats()
	assert.Equal(t, uint64(1), st.Hits)
	assert.Equal(t, uint64(3), st.Misses)

	answer = `{"result":{"error":"no"}}`
	now = now.Add(time.Hour)
	assert.False(t, try(40004, "x"))
	assert.False(t, try(40005, "x"))
	assert.Equal(t, int32(5), e.calls.Load(), "an error is never cached")
}

// W11: on_auth_m5 during a CONNECT: username null, client_id "undefined",
// the Authentication Data in base64 both ways; reason_code 24 continues the
// exchange with the same endpoint, 0 completes it.
func TestW11OnAuthM5(t *testing.T) {
	var mu sync.Mutex
	var bodies []map[string]any
	auth := newEndpoint(t, func(w http.ResponseWriter) {})
	auth.Config.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var body map[string]any
		data, _ := io.ReadAll(r.Body)
		require.NoError(t, json.Unmarshal(data, &body))
		mu.Lock()
		bodies = append(bodies, body)
		step := len(bodies)
		mu.Unlock()
		if step%2 == 1 {
			_, _ = io.WriteString(w, `{"result":"ok","modifiers":{"properties":{"p_authentication_method":"M","p_authentication_data":"QVVUSF9EQVRBMQ=="},"reason_code":24}}`)
			return
		}
		_, _ = io.WriteString(w, `{"result":"ok","modifiers":{"properties":{"p_authentication_data":"ZG9uZQ=="},"reason_code":0}}`)
	})
	register := newEndpoint(t, says(`{"result":"ok"}`))
	p, err := webhooks.New(webhooks.Options{Hooks: map[string][]webhooks.Endpoint{
		webhooks.HookOnAuthM5: {{URL: auth.URL}}, webhooks.HookAuthOnRegisterM5: {{URL: register.URL}}}})
	require.NoError(t, err)
	req := mqtthookstest.V5("c1", "u", true, 0) // a user name, sent as null before the CONNACK, as VerneMQ does
	req.Properties.AuthenticationMethod, req.Properties.AuthenticationData = "M", []byte("AUTH_DATA0")
	_, c, step := connect(t, p, req, mqtthooks.Options{})
	require.Equal(t, mqtthooks.SendAuth, step.Kind)
	assert.Equal(t, []byte("AUTH_DATA1"), step.Auth.Data)
	step = c.Auth(t.Context(), []byte("AUTH_DATA2"))
	require.True(t, c.Accepted(), "%+v", step)
	assert.Equal(t, []byte("done"), c.Connack().Properties.AuthenticationData)

	// A re-authentication names the client: its id is known by then.
	reply, err := c.Reauth(t.Context(), "M", []byte("AUTH_DATA0"))
	require.NoError(t, err)
	assert.Equal(t, mqtthooks.CodeContinueAuthentication, reply.ReasonCode)
	reply, err = c.ReauthContinue(t.Context(), "M", []byte("AUTH_DATA2"))
	require.NoError(t, err)
	assert.Equal(t, mqtthooks.CodeSuccess, reply.ReasonCode)
	require.Len(t, bodies, 4)
	assert.Equal(t, "c1", bodies[2]["client_id"])
	assert.Equal(t, "c1", bodies[3]["client_id"], "the continue step of a re-authentication too")

	assert.Nil(t, bodies[0]["username"])
	assert.Equal(t, "undefined", bodies[0]["client_id"])
	assert.Equal(t, map[string]any{"p_authentication_method": "M", "p_authentication_data": "QVVUSF9EQVRBMA=="},
		bodies[0]["properties"])
	assert.Equal(t, "QVVUSF9EQVRBMg==", bodies[1]["properties"].(map[string]any)["p_authentication_data"])
}

// 200 CONNECTs at once against a slow endpoint and a dead one: each is
// answered within the timeout and a margin, and no goroutine is left behind
// (goleak, at the end of the package).
func TestManyConnectsSlowAndDeadEndpoints(t *testing.T) {
	release := make(chan struct{})
	slow := newEndpoint(t, func(w http.ResponseWriter) { <-release })
	dead := httptest.NewServer(http.NotFoundHandler())
	deadURL := dead.URL
	dead.Close()
	defer close(release)
	const timeout = 200 * time.Millisecond
	for _, url := range []string{slow.URL, deadURL} {
		p, err := webhooks.New(webhooks.Options{Hooks: map[string][]webhooks.Endpoint{
			webhooks.HookAuthOnRegister: {{URL: url, Timeout: timeout}}}, Logger: slog.New(slog.DiscardHandler)})
		require.NoError(t, err)
		chain := mqtthooks.NewChain(mqtthooks.ChainOptions{})
		require.NoError(t, chain.Register("webhooks", p))
		core, err := mqtthooks.NewCore(chain, mqtthooks.Options{})
		require.NoError(t, err)
		var wg sync.WaitGroup
		var slowest atomic.Int64
		for i := range 200 {
			wg.Go(func() {
				start := time.Now()
				c := mqtthookstest.NewClient(core)
				step := c.Connect(t.Context(), mqtthookstest.V3(fmt.Sprint("c", i), "u", true))
				assert.Equal(t, mqtthooks.SendConnack, step.Kind)
				assert.False(t, c.Accepted())
				d := int64(time.Since(start))
				for {
					cur := slowest.Load()
					if d <= cur || slowest.CompareAndSwap(cur, d) {
						break
					}
				}
			})
		}
		wg.Wait()
		t.Logf("%s: the slowest of 200 CONNECTs was answered after %v", url, time.Duration(slowest.Load()))
		assert.Less(t, time.Duration(slowest.Load()), timeout+100*time.Millisecond+time.Second,
			"every CONNECT answered within the timeout (and the machine's slack under -race)")
		require.NoError(t, core.Shutdown(context.Background()))
	}
}

// An https endpoint with the CA given by LoadTLS; without it the
// certificate is not trusted and the client is refused.
func TestHTTPSEndpoint(t *testing.T) {
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(w, `{"result":"ok"}`)
	}))
	defer srv.Close()
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	require.NoError(t, os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE",
		Bytes: srv.Certificate().Raw}), 0o600))
	cfg, err := webhooks.LoadTLS(caFile, "", "")
	require.NoError(t, err)
	for _, trusted := range []bool{true, false} {
		opts := webhooks.Options{Hooks: map[string][]webhooks.Endpoint{webhooks.HookAuthOnRegister: {{URL: srv.URL}}},
			Logger: slog.New(slog.DiscardHandler)}
		if trusted {
			opts.TLS = cfg
		}
		p, err := webhooks.New(opts)
		require.NoError(t, err)
		_, c, _ := connect(t, p, mqtthookstest.V3("c1", "u", true), mqtthooks.Options{})
		assert.Equal(t, trusted, c.Accepted())
	}
	_, err = webhooks.LoadTLS("", "cert.pem", "")
	assert.ErrorIs(t, err, webhooks.ErrConfig)
}

// Found by review: a redirect is not followed (and so a password is not
// posted to another host); "modifiers": [] is no modifiers; numbers out of
// range and keys VerneMQ refuses reject; a request without ConnInfo does
// not panic; on_register_m5 always sends its properties.
func TestReviewFindings(t *testing.T) {
	var elsewhere atomic.Int32
	other := newEndpoint(t, func(w http.ResponseWriter) { elsewhere.Add(1); _, _ = io.WriteString(w, `{"result":"ok"}`) })
	for _, status := range []int{http.StatusFound, http.StatusTemporaryRedirect} {
		redirect := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			http.Redirect(w, r, other.URL, status)
		}))
		_, c, _ := connect(t, hooks(map[string]string{webhooks.HookAuthOnRegister: redirect.URL}),
			mqtthookstest.V3("c1", "u", true), mqtthooks.Options{})
		assert.False(t, c.Accepted(), "redirect %d", status)
		redirect.Close()
	}
	assert.Zero(t, elsewhere.Load(), "never followed")

	for mods, accepted := range map[string]bool{`[]`: true, `{"session_expiry_interval":-1}`: false,
		`{"max_message_rate":-1}`: false, `{"max_online_messages":-1}`: true, `{"clean_start":true}`: false,
		`{"queue_deliver_mode":"balance"}`: false} {
		e := newEndpoint(t, says(`{"result":"ok","modifiers":`+mods+`}`))
		_, c, _ := connect(t, hooks(map[string]string{webhooks.HookAuthOnRegister: e.URL}),
			mqtthookstest.V3("c1", "u", false), mqtthooks.Options{})
		assert.Equal(t, accepted, c.Accepted(), mods)
	}

	e := newEndpoint(t, says(`{"result":"ok"}`))
	p := hooks(map[string]string{webhooks.HookAuthOnRegister: e.URL, webhooks.HookOnRegisterM5: e.URL})
	r := p.AuthOnRegister(t.Context(), &mqtthooks.RegisterRequest{Connect: mqtthookstest.V3("c1", "u", true)})
	assert.Equal(t, mqtthooks.VerdictAccept, r.Verdict(), "no ConnInfo: peer_addr null")
	p.OnRegisterM5(t.Context(), &mqtthooks.RegisterEvent{SessionEvent: mqtthooks.SessionEvent{
		SubscriberID: mqtthooks.SubscriberID{ClientID: "c1"}}})
	e.mu.Lock()
	defer e.mu.Unlock()
	require.Len(t, e.bodies, 2)
	assert.Contains(t, e.bodies[0], `"peer_addr":null`)
	assert.Contains(t, e.bodies[1], `"properties":{}`)
}
