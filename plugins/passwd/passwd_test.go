package passwd_test

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
	"golang.org/x/crypto/argon2"

	"github.com/mqtthooks/mqtthooks"
	"github.com/mqtthooks/mqtthooks/mqtthookstest"
	"github.com/mqtthooks/mqtthooks/plugins/passwd"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// argon2Line returns a password-file line for user with an $argon2id$ hash
// of password made with x/crypto's argon2.
func argon2Line(user, password string) string {
	salt := make([]byte, 16)
	_, _ = rand.Read(salt)
	sum := argon2.IDKey([]byte(password), salt, 2, 1024, 1, 32)
	enc := base64.RawStdEncoding
	return fmt.Sprintf("%s:$argon2id$v=19$m=1024,t=2,p=1$%s$%s\n", user, enc.EncodeToString(salt), enc.EncodeToString(sum))
}

// file writes a password file: the mosquitto_passwd test data plus argon2id
// users, and returns its path.
func file(t *testing.T, extra string) string {
	t.Helper()
	data, err := os.ReadFile("testdata/mosquitto.passwd")
	require.NoError(t, err)
	path := filepath.Join(t.TempDir(), "passwd")
	require.NoError(t, os.WriteFile(path, append(data, extra...), 0o600))
	return path
}

func connect(user, pass string, hasPass bool) *mqtthooks.RegisterRequest {
	return &mqtthooks.RegisterRequest{Connect: &mqtthooks.ConnectRequest{ProtocolVersion: mqtthooks.MQTT311,
		Username: user, HasUsername: user != "", Password: []byte(pass), HasPassword: hasPass}}
}

// Every hash type, with files written by the real mosquitto_passwd.
func TestCheck(t *testing.T) {
	p, err := passwd.Open(file(t, argon2Line("erin", "argon-pass")))
	require.NoError(t, err)
	assert.Equal(t, 5, p.Users())
	for _, tc := range []struct {
		user, pass string
		hasPass    bool
		want       mqtthooks.Verdict
	}{
		{"alice", "wonderland", true, mqtthooks.VerdictAccept},  // $7$
		{"bob", "builder", true, mqtthooks.VerdictAccept},       // $7$
		{"carol", "sha512-once", true, mqtthooks.VerdictAccept}, // $6$
		{"dave", "ünïcødé pass", true, mqtthooks.VerdictAccept}, // $6$, UTF-8
		{"erin", "argon-pass", true, mqtthooks.VerdictAccept},   // $argon2id$
		{"alice", "Wonderland", true, mqtthooks.VerdictReject},
		{"carol", "sha512-once ", true, mqtthooks.VerdictReject},
		{"erin", "argon", true, mqtthooks.VerdictReject},
		{"alice", "", false, mqtthooks.VerdictReject},          // no password
		{"mallory", "wonderland", true, mqtthooks.VerdictNext}, // unknown user
		{"", "", false, mqtthooks.VerdictNext},                 // no username
	} {
		for name, check := range map[string]func(context.Context, *mqtthooks.RegisterRequest) mqtthooks.RegisterResult{
			"v3": p.AuthOnRegister, "v5": p.AuthOnRegisterM5} {
			r := check(t.Context(), connect(tc.user, tc.pass, tc.hasPass))
			assert.Equal(t, tc.want, r.Verdict(), "%s %s/%q", name, tc.user, tc.pass)
			if tc.want == mqtthooks.VerdictReject {
				assert.ErrorIs(t, r.Err(), mqtthooks.ErrRejected, "the answer an unknown user gets")
			}
		}
	}
}

// Bad files are refused at load with the line number.
func TestBadFiles(t *testing.T) {
	for name, tc := range map[string]struct{ content, want string }{
		"no hash":       {"alice:$7$101$c2FsdA==$aGFzaA==\nbob:\n", "line 2: user \"bob\" has no hash"},
		"no colon":      {"# comment\n\nalice\n", "line 3: want user:hash"},
		"unknown type":  {"alice:$5$abc$def\n", "line 1: user \"alice\": unknown hash type \"5\""},
		"bad base64":    {"alice:$6$!!!$???\n", "bad base64"},
		"bad iteration": {"alice:$7$x$c2FsdA==$aGFzaA==\n", "bad iteration count"},
		"bad argon2":    {"alice:$argon2id$v=19$m=0,t=1,p=1$c2FsdA$aGFzaA\n", "bad parameters"},
		"duplicate":     {"alice:$7$101$c2FsdA==$aGFzaA==\nalice:$7$101$c2FsdA==$aGFzaA==\n", "line 2: user \"alice\" appears twice"},
		"plain text":    {"alice:wonderland\n", "not a $type$"},
	} {
		path := filepath.Join(t.TempDir(), "passwd")
		require.NoError(t, os.WriteFile(path, []byte(tc.content), 0o600))
		_, err := passwd.Open(path)
		assert.ErrorIs(t, err, passwd.ErrFormat, name)
		assert.ErrorContains(t, err, tc.want, name)
	}
	_, err := passwd.Open(filepath.Join(t.TempDir(), "missing"))
	assert.Error(t, err)
}

// Reload picks up a new file, and keeps the old one if the new one is bad.
func TestReload(t *testing.T) {
	path := file(t, "")
	p, err := passwd.Open(path)
	require.NoError(t, err)

	require.NoError(t, os.WriteFile(path, []byte("garbage line\n"), 0o600))
	assert.ErrorIs(t, p.Reload(), passwd.ErrFormat)
	assert.Equal(t, mqtthooks.VerdictAccept, p.AuthOnRegister(t.Context(), connect("alice", "wonderland", true)).Verdict(),
		"the old file stays")

	require.NoError(t, os.WriteFile(path, []byte(argon2Line("zed", "z")), 0o600))
	require.NoError(t, p.Reload())
	assert.Equal(t, mqtthooks.VerdictNext, p.AuthOnRegister(t.Context(), connect("alice", "wonderland", true)).Verdict())
	assert.Equal(t, mqtthooks.VerdictAccept, p.AuthOnRegister(t.Context(), connect("zed", "z", true)).Verdict())
}

// The CONNACK does not tell who exists: through a Core, an unknown user and a
// known user with a wrong or missing password get the same code, in MQTT 3
// and 5. TellWrongPassword restores the distinction.
func TestSameAnswerForUnknownUsers(t *testing.T) {
	connack := func(p *passwd.Plugin, v mqtthooks.ProtocolVersion, user, pass string, hasPass bool) (mqtthooks.ReturnCode, mqtthooks.ReasonCode) {
		chain := mqtthooks.NewChain(mqtthooks.ChainOptions{})
		require.NoError(t, chain.Register("passwd", p))
		core, err := mqtthooks.NewCore(chain, mqtthooks.Options{})
		require.NoError(t, err)
		defer func() { _ = core.Shutdown(context.Background()) }()
		c := mqtthookstest.NewClient(core)
		c.Connect(t.Context(), &mqtthooks.ConnectRequest{ProtocolVersion: v, ClientID: "c", CleanStart: true,
			Username: user, HasUsername: true, Password: []byte(pass), HasPassword: hasPass})
		require.False(t, c.Accepted())
		ack := c.Connack()
		require.NotNil(t, ack)
		return ack.ReturnCode, ack.ReasonCode
	}
	path := file(t, "")
	def, err := passwd.Open(path)
	require.NoError(t, err)
	tell, err := passwd.OpenWith(path, passwd.Options{TellWrongPassword: true})
	require.NoError(t, err)
	for _, v := range []mqtthooks.ProtocolVersion{mqtthooks.MQTT311, mqtthooks.MQTT5} {
		unknown3, unknown5 := connack(def, v, "mallory", "wonderland", true)
		wrong3, wrong5 := connack(def, v, "alice", "Wonderland", true)
		missing3, missing5 := connack(def, v, "alice", "", false)
		if v == mqtthooks.MQTT5 {
			assert.Equal(t, mqtthooks.CodeNotAuthorized, unknown5)
			assert.Equal(t, unknown5, wrong5)
			assert.Equal(t, unknown5, missing5)
		} else {
			assert.Equal(t, mqtthooks.RefusedNotAuthorized, unknown3)
			assert.Equal(t, unknown3, wrong3)
			assert.Equal(t, unknown3, missing3)
		}
		told3, told5 := connack(tell, v, "alice", "Wonderland", true)
		if v == mqtthooks.MQTT5 {
			assert.Equal(t, mqtthooks.CodeBadUserNameOrPassword, told5)
		} else {
			assert.Equal(t, mqtthooks.RefusedBadUsernameOrPassword, told3)
		}
	}
}

// ReloadRevoked names the users the new file drops or gives another
// password, and no one else.
func TestReloadRevoked(t *testing.T) {
	path := file(t, argon2Line("erin", "argon-pass"))
	p, err := passwd.Open(path)
	require.NoError(t, err)
	data, err := os.ReadFile(path)
	require.NoError(t, err)
	var kept []string
	for line := range strings.Lines(string(data)) {
		switch {
		case strings.HasPrefix(line, "alice:"): // dropped
		case strings.HasPrefix(line, "erin:"):
			kept = append(kept, argon2Line("erin", "new-pass")) // a new password
		default:
			kept = append(kept, line)
		}
	}
	require.NoError(t, os.WriteFile(path, []byte(strings.Join(kept, "")), 0o600))
	revoked, err := p.ReloadRevoked()
	require.NoError(t, err)
	assert.Equal(t, []string{"alice", "erin"}, revoked)
	assert.Equal(t, mqtthooks.VerdictAccept, p.AuthOnRegister(t.Context(), connect("bob", "builder", true)).Verdict())

	revoked, err = p.ReloadRevoked()
	require.NoError(t, err)
	assert.Empty(t, revoked, "the same file again revokes nobody")
}
