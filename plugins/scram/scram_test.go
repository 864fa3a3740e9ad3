package scram_test

import (
	"context"
	"encoding/base64"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	xdg "github.com/xdg-go/scram"
	"go.uber.org/goleak"

	"github.com/mqtthooks/mqtthooks"
	"github.com/mqtthooks/mqtthooks/mqtthookstest"
	"github.com/mqtthooks/mqtthooks/plugins/scram"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// fixture is a Core whose chain holds the SCRAM plugin and a Recorder.
type fixture struct {
	core  *mqtthooks.Core
	rec   *mqtthookstest.Recorder
	users *scram.MemoryStore
}

func newFixture(t *testing.T, opts scram.Options) *fixture {
	t.Helper()
	f := &fixture{rec: new(mqtthookstest.Recorder), users: new(scram.MemoryStore)}
	for user, pass := range map[string]string{"alice": "wonderland", "bob": "builder"} {
		c, err := scram.NewCredential(pass, 4096)
		require.NoError(t, err)
		f.users.Set(user, c)
	}
	p, err := scram.New(f.users, opts)
	require.NoError(t, err)
	chain := mqtthooks.NewChain(mqtthooks.ChainOptions{})
	require.NoError(t, chain.Register("rec", f.rec)) // first: it records, then answers Next
	require.NoError(t, chain.Register("scram", p))
	// AnyUser: concurrent exchanges for one client id with different users
	// take the session over from each other instead of being refused.
	f.core, err = mqtthooks.NewCore(chain, mqtthooks.Options{ResumePolicy: mqtthooks.AnyUser})
	require.NoError(t, err)
	t.Cleanup(func() { _ = f.core.Shutdown(context.Background()) })
	return f
}

// exchange runs a SCRAM exchange for clientID as user with password, with the
// xdg-go client, and returns the fake client and the client conversation.
func (f *fixture) exchange(t *testing.T, clientID, user, password string) (*mqtthookstest.Client, *xdg.ClientConversation) {
	t.Helper()
	client, err := xdg.SHA256.NewClient(user, password, "")
	require.NoError(t, err)
	conv := client.NewConversation()
	first, err := conv.Step("")
	require.NoError(t, err)
	c := mqtthookstest.NewClient(f.core)
	req := mqtthookstest.V5(clientID, "", true, 0)
	req.Properties.AuthenticationMethod = scram.Method
	req.Properties.AuthenticationData = []byte(first)
	step := c.Connect(t.Context(), req)
	require.Equal(t, mqtthooks.SendAuth, step.Kind, "server-first in an AUTH 0x18 (%v)", step.Err)
	final, err := conv.Step(string(step.Auth.Data))
	require.NoError(t, err)
	c.Auth(t.Context(), []byte(final))
	return c, conv
}

func TestSCRAMSuccess(t *testing.T) {
	f := newFixture(t, scram.Options{})
	c, conv := f.exchange(t, "c1", "alice", "wonderland")

	require.True(t, c.Accepted(), "CONNACK %+v", c.Connack())
	ack := c.Connack()
	assert.Equal(t, scram.Method, ack.Properties.AuthenticationMethod)
	_, err := conv.Step(string(ack.Properties.AuthenticationData)) // server-final verifies the server
	require.NoError(t, err)
	assert.True(t, conv.Valid())
	user, ok := c.Session.Username()
	assert.True(t, ok)
	assert.Equal(t, "alice", user, "the SCRAM user becomes the username")
	reg, _ := f.rec.Last(mqtthooks.SubscriberID{ClientID: "c1"}, "AuthOnRegisterM5")
	assert.Equal(t, &mqtthooks.EnhancedAuth{Method: scram.Method, Plugin: "scram", Identity: "alice"}, reg.Register.EnhancedAuth)
}

func TestSCRAMFailures(t *testing.T) {
	f := newFixture(t, scram.Options{})
	for name, creds := range map[string][2]string{
		"wrong password": {"alice", "looking-glass"},
		"unknown user":   {"mallory", "anything"},
	} {
		c, _ := f.exchange(t, "c-"+strings.ReplaceAll(name, " ", "-"), creds[0], creds[1])
		assert.False(t, c.Accepted(), name)
		assert.Equal(t, mqtthooks.CodeNotAuthorized, c.Connack().ReasonCode, name)
	}
}

// A client-final from one exchange does not pass in another (replayed nonce),
// and a tampered proof fails.
func TestSCRAMReplayAndTamper(t *testing.T) {
	f := newFixture(t, scram.Options{})
	client, err := xdg.SHA256.NewClient("alice", "wonderland", "")
	require.NoError(t, err)

	start := func(id string, conv *xdg.ClientConversation) (*mqtthookstest.Client, string) {
		first, err := conv.Step("")
		require.NoError(t, err)
		c := mqtthookstest.NewClient(f.core)
		req := mqtthookstest.V5(id, "", true, 0)
		req.Properties.AuthenticationMethod = scram.Method
		req.Properties.AuthenticationData = []byte(first)
		step := c.Connect(t.Context(), req)
		require.Equal(t, mqtthooks.SendAuth, step.Kind)
		final, err := conv.Step(string(step.Auth.Data))
		require.NoError(t, err)
		return c, final
	}
	a, finalA := start("a", client.NewConversation())
	a.Auth(t.Context(), []byte(finalA))
	require.True(t, a.Accepted())

	b, _ := start("b", client.NewConversation())
	b.Auth(t.Context(), []byte(finalA)) // replay A's client-final
	assert.Equal(t, mqtthooks.CodeNotAuthorized, b.Connack().ReasonCode)

	c, finalC := start("c", client.NewConversation())
	i := strings.Index(finalC, ",p=") + 3
	proof, err := base64.StdEncoding.DecodeString(finalC[i:])
	require.NoError(t, err)
	proof[0] ^= 0xFF
	c.Auth(t.Context(), []byte(finalC[:i]+base64.StdEncoding.EncodeToString(proof)))
	assert.Equal(t, mqtthooks.CodeNotAuthorized, c.Connack().ReasonCode)
}

// The example of RFC 7677 §3, with the server's nonce injected.
func TestSCRAMRFC7677Example(t *testing.T) {
	salt, err := base64.StdEncoding.DecodeString("W22ZaJ0SNY7soEsUEjb6gQ==")
	require.NoError(t, err)
	cred, err := scram.NewCredentialWithSalt("pencil", salt, 4096)
	require.NoError(t, err)
	f := newFixture(t, scram.Options{NonceGenerator: func() string { return "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0" }})
	f.users.Set("user", cred)

	c := mqtthookstest.NewClient(f.core)
	req := mqtthookstest.V5("rfc", "", true, 0)
	req.Properties.AuthenticationMethod = scram.Method
	req.Properties.AuthenticationData = []byte("n,,n=user,r=rOprNGfwEbeRWgbNEkqO")
	step := c.Connect(t.Context(), req)
	require.Equal(t, mqtthooks.SendAuth, step.Kind)
	assert.Equal(t, "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
		string(step.Auth.Data))

	step = c.Auth(t.Context(), []byte("c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"+
		"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="))

	require.True(t, c.Accepted(), "%v", step.Err)
	assert.Equal(t, "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=", string(c.Connack().Properties.AuthenticationData))
}

// With only SCRAM-SHA-256 offered, a client asking for channel binding ("p")
// is refused; "y" (supports it, but the server offers none) passes.
func TestSCRAMChannelBinding(t *testing.T) {
	f := newFixture(t, scram.Options{})
	for flag, ok := range map[string]bool{"p=tls-unique": false, "y": true, "n": true} {
		c := mqtthookstest.NewClient(f.core)
		req := mqtthookstest.V5("cb-"+flag[:1], "", true, 0)
		req.Properties.AuthenticationMethod = scram.Method
		req.Properties.AuthenticationData = []byte(flag + ",,n=alice,r=abcdefghijklmnop")
		step := c.Connect(t.Context(), req)
		if ok {
			assert.Equal(t, mqtthooks.SendAuth, step.Kind, flag)
		} else {
			require.Equal(t, mqtthooks.SendConnack, step.Kind, flag)
			assert.Equal(t, mqtthooks.CodeNotAuthorized, step.Connack.ReasonCode, flag)
		}
	}
}

// A SCRAM re-authentication of an established session, with a second full
// exchange.
func TestSCRAMReauth(t *testing.T) {
	f := newFixture(t, scram.Options{})
	c, _ := f.exchange(t, "c1", "alice", "wonderland")
	require.True(t, c.Accepted())

	client, err := xdg.SHA256.NewClient("alice", "wonderland", "")
	require.NoError(t, err)
	conv := client.NewConversation()
	first, _ := conv.Step("")
	reply, err := c.Reauth(t.Context(), scram.Method, []byte(first))
	require.NoError(t, err)
	final, err := conv.Step(string(reply.Data))
	require.NoError(t, err)
	reply, err = c.ReauthContinue(t.Context(), scram.Method, []byte(final))
	require.NoError(t, err)
	assert.Equal(t, mqtthooks.CodeSuccess, reply.ReasonCode)
	_, err = conv.Step(string(reply.Data))
	assert.NoError(t, err)

	wrong, _ := xdg.SHA256.NewClient("alice", "nope", "")
	conv = wrong.NewConversation()
	first, _ = conv.Step("")
	reply, err = c.Reauth(t.Context(), scram.Method, []byte(first))
	require.NoError(t, err)
	final, _ = conv.Step(string(reply.Data))
	_, err = c.ReauthContinue(t.Context(), scram.Method, []byte(final))
	var ended *mqtthooks.EndedError
	require.ErrorAs(t, err, &ended)
	assert.Equal(t, mqtthooks.CodeNotAuthorized, ended.Code)
}

// Concurrent exchanges for the same client id keep their own state.
func TestSCRAMConcurrentExchangesDoNotMix(t *testing.T) {
	f := newFixture(t, scram.Options{})
	var wg sync.WaitGroup
	results := make(chan string, 40)
	for i := range 40 {
		user, pass := "alice", "wonderland"
		if i%2 == 1 {
			user, pass = "bob", "builder"
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			client, _ := xdg.SHA256.NewClient(user, pass, "")
			conv := client.NewConversation()
			first, _ := conv.Step("")
			c := mqtthookstest.NewClient(f.core)
			req := mqtthookstest.V5("same", "", true, 0)
			req.Properties.AuthenticationMethod = scram.Method
			req.Properties.AuthenticationData = []byte(first)
			step := c.Connect(context.Background(), req)
			if step.Kind != mqtthooks.SendAuth {
				results <- "no challenge"
				return
			}
			final, _ := conv.Step(string(step.Auth.Data))
			c.Auth(context.Background(), []byte(final))
			if !c.Accepted() {
				results <- "rejected " + user
				return
			}
			got, _ := c.Session.Username()
			results <- got + "=" + user
		}()
	}
	wg.Wait()
	close(results)
	for r := range results {
		parts := strings.Split(r, "=")
		require.Len(t, parts, 2, r)
		assert.Equal(t, parts[1], parts[0])
	}
}

func TestCredentials(t *testing.T) {
	c, err := scram.NewCredential("secret", 0)
	require.NoError(t, err)
	assert.Equal(t, scram.DefaultIterations, c.Iterations)
	assert.Len(t, c.Salt, 16)
	other, _ := scram.NewCredential("secret", 0)
	assert.NotEqual(t, c.Salt, other.Salt, "a fresh salt each time")
	_, err = scram.NewCredentialWithSalt("x", nil, 1)
	assert.Error(t, err)

	var store scram.MemoryStore
	_, err = store.Lookup(t.Context(), "u")
	assert.ErrorIs(t, err, scram.ErrUnknownUser)
	store.Set("u", c)
	got, err := store.Lookup(t.Context(), "u")
	require.NoError(t, err)
	assert.Equal(t, c, got)
	store.Delete("u")
	_, err = store.Lookup(t.Context(), "u")
	assert.ErrorIs(t, err, scram.ErrUnknownUser)
	_, err = scram.New(nil, scram.Options{})
	assert.ErrorIs(t, err, mqtthooks.ErrInvalidArgument)
}

// Other methods are left to other plugins.
func TestOtherMethodIsNext(t *testing.T) {
	p, err := scram.New(new(scram.MemoryStore), scram.Options{})
	require.NoError(t, err)
	r := p.OnAuthM5(t.Context(), &mqtthooks.AuthRequest{Step: mqtthooks.AuthStepStart, Method: "PLAIN"})
	assert.Equal(t, mqtthooks.AuthVerdictNext, r.Verdict())
	reg := p.AuthOnRegisterM5(t.Context(), &mqtthooks.RegisterRequest{
		EnhancedAuth: &mqtthooks.EnhancedAuth{Method: "X", Plugin: "other", Identity: "eve"}})
	assert.Equal(t, mqtthooks.VerdictNext, reg.Verdict())
}
