// Package scram is an mqtthooks plugin for MQTT 5 enhanced authentication
// with SCRAM-SHA-256 (RFC 5802, RFC 7677), the method "SCRAM-SHA-256".
//
// The SCRAM exchange itself is github.com/xdg-go/scram's server side; this
// package adapts it to OnAuthM5 and keeps the credentials. A client sends
// client-first in the CONNECT's Authentication Data, gets server-first in an
// AUTH 0x18, answers client-final, and gets server-final as the CONNACK's
// Authentication Data. The plugin also implements AuthOnRegisterM5: it accepts
// a client it authenticated itself, with its SCRAM user as the username, and
// answers Next for anybody else.
//
// Channel binding: the plugin offers only "SCRAM-SHA-256", so a client that
// asks for binding (gs2 flag "p") is refused; "n" and "y" are accepted.
package scram

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"

	"github.com/xdg-go/scram"

	"github.com/mqtthooks/mqtthooks"
)

// Method is the Authentication Method the plugin answers.
const Method = "SCRAM-SHA-256"

// ErrUnknownUser is what a CredentialStore returns for a user it does not
// know.
var ErrUnknownUser = errors.New("scram: unknown user")

// Credential is what a server stores for one user: never the password, only
// what RFC 5802 derives from it.
type Credential struct {
	Salt       []byte
	Iterations int
	StoredKey  []byte
	ServerKey  []byte
}

// DefaultIterations is the PBKDF2 iteration count NewCredential uses when
// given 0. RFC 7677 asks for at least 4096.
const DefaultIterations = 4096

// NewCredential derives the stored credential of password with a random
// 16-byte salt and iterations rounds (0 means DefaultIterations).
func NewCredential(password string, iterations int) (Credential, error) {
	salt := make([]byte, 16)
	_, _ = rand.Read(salt) // crypto/rand never fails (Go 1.24+)
	return NewCredentialWithSalt(password, salt, iterations)
}

// NewCredentialWithSalt is NewCredential with a given salt, for tests and for
// importing existing credentials.
func NewCredentialWithSalt(password string, salt []byte, iterations int) (Credential, error) {
	if iterations == 0 {
		iterations = DefaultIterations
	}
	if iterations < 1 || len(salt) == 0 {
		return Credential{}, fmt.Errorf("scram: need a salt and a positive iteration count")
	}
	client, err := scram.SHA256.NewClient("", password, "")
	if err != nil {
		return Credential{}, fmt.Errorf("scram: password: %w", err)
	}
	sc, err := client.GetStoredCredentialsWithError(scram.KeyFactors{Salt: string(salt), Iters: iterations})
	if err != nil {
		return Credential{}, fmt.Errorf("scram: deriving the keys: %w", err)
	}
	return Credential{Salt: salt, Iterations: iterations, StoredKey: sc.StoredKey, ServerKey: sc.ServerKey}, nil
}

// CredentialStore looks up the credential of a user.
type CredentialStore interface {
	// Lookup returns the credential of username, or ErrUnknownUser.
	Lookup(ctx context.Context, username string) (Credential, error)
}

// MemoryStore is a CredentialStore in memory; its zero value is empty and
// ready to use. It is safe for concurrent use.
type MemoryStore struct {
	mu    sync.RWMutex
	users map[string]Credential
}

// Set stores the credential of username, replacing any.
func (m *MemoryStore) Set(username string, c Credential) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.users == nil {
		m.users = map[string]Credential{}
	}
	m.users[username] = c
}

// Delete forgets username.
func (m *MemoryStore) Delete(username string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.users, username)
}

// Lookup returns the credential of username, or ErrUnknownUser.
func (m *MemoryStore) Lookup(_ context.Context, username string) (Credential, error) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	c, ok := m.users[username]
	if !ok {
		return Credential{}, ErrUnknownUser
	}
	return c, nil
}

// Options configure a Plugin.
type Options struct {
	// Name is the name under which the plugin is registered in the chain;
	// AuthOnRegisterM5 accepts only clients whose EnhancedAuth.Plugin is it.
	// Default "scram".
	Name string
	// NonceGenerator makes the server's part of the nonce; default 24 random
	// bytes in base64. Set it only in tests.
	NonceGenerator func() string
}

// Plugin authenticates MQTT 5 clients with SCRAM-SHA-256. An unknown user gets
// a made-up credential, so the exchange fails at the proof, like a wrong
// password, and does not tell who exists. Register it under
// Options.Name. It is safe for concurrent use: each exchange keeps its state
// in AuthRequest.State, so concurrent exchanges, also for one client id,
// never mix.
type Plugin struct {
	store  CredentialStore
	opts   Options
	secret [32]byte // derives the made-up credentials of unknown users
}

// New returns a Plugin that looks up credentials in store.
func New(store CredentialStore, opts Options) (*Plugin, error) {
	if store == nil {
		return nil, fmt.Errorf("scram: nil credential store: %w", mqtthooks.ErrInvalidArgument)
	}
	if opts.Name == "" {
		opts.Name = "scram"
	}
	p := &Plugin{store: store, opts: opts}
	_, _ = rand.Read(p.secret[:])
	return p, nil
}

// decoy returns a credential for an unknown user that stays the same for
// that user, so that probing twice does not tell it apart from a real one.
func (p *Plugin) decoy(user string) scram.StoredCredentials {
	mac := hmac.New(sha256.New, p.secret[:])
	mac.Write([]byte(user))
	sum := mac.Sum(nil)
	return scram.StoredCredentials{KeyFactors: scram.KeyFactors{Salt: string(sum[:16]), Iters: DefaultIterations},
		StoredKey: sum, ServerKey: sum}
}

// OnAuthM5 runs one step of a SCRAM-SHA-256 exchange: client-first at the
// start of a CONNECT or a re-authentication, client-final after it. Other
// methods get Next.
func (p *Plugin) OnAuthM5(ctx context.Context, req *mqtthooks.AuthRequest) mqtthooks.AuthResult {
	if req.Method != Method {
		return mqtthooks.AuthNext()
	}
	conv, ok := req.State.(*scram.ServerConversation)
	if req.Step != mqtthooks.AuthStepContinue || !ok {
		if req.Step == mqtthooks.AuthStepContinue {
			return mqtthooks.AuthReject(mqtthooks.CodeProtocolError, "no SCRAM exchange running")
		}
		conv = p.newConversation(ctx)
	}
	resp, err := conv.Step(string(req.Data))
	switch {
	case err != nil:
		return mqtthooks.AuthReject(mqtthooks.CodeNotAuthorized, "SCRAM authentication failed")
	case conv.Done() && conv.Valid():
		return mqtthooks.AuthSuccess([]byte(resp), conv.Username())
	case conv.Done():
		return mqtthooks.AuthReject(mqtthooks.CodeNotAuthorized, "SCRAM authentication failed")
	}
	return mqtthooks.AuthContinue([]byte(resp), conv)
}

func (p *Plugin) newConversation(ctx context.Context) *scram.ServerConversation {
	lookup := func(user string) (scram.StoredCredentials, error) {
		c, err := p.store.Lookup(ctx, user)
		if errors.Is(err, ErrUnknownUser) {
			return p.decoy(user), nil
		}
		if err != nil {
			return scram.StoredCredentials{}, err
		}
		return scram.StoredCredentials{KeyFactors: scram.KeyFactors{Salt: string(c.Salt), Iters: c.Iterations},
			StoredKey: c.StoredKey, ServerKey: c.ServerKey}, nil
	}
	server, _ := scram.SHA256.NewServer(lookup) // never fails for SHA-256
	if p.opts.NonceGenerator != nil {
		server = server.WithNonceGenerator(p.opts.NonceGenerator)
	}
	return server.NewConversation()
}

// AuthOnRegisterM5 accepts a client this plugin authenticated, with its SCRAM
// user as the username, and answers Next for any other.
func (p *Plugin) AuthOnRegisterM5(_ context.Context, req *mqtthooks.RegisterRequest) mqtthooks.RegisterResult {
	ea := req.EnhancedAuth
	if ea == nil || ea.Plugin != p.opts.Name {
		return mqtthooks.Next()
	}
	user, ok := ea.Identity.(string)
	if !ok || user == "" {
		return mqtthooks.Next()
	}
	return mqtthooks.AcceptWith(&mqtthooks.Modifiers{Username: mqtthooks.Some(user)})
}

// String returns c in the form of RFC 5803:
// "SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>", base64.
func (c Credential) String() string {
	b := base64.StdEncoding
	return fmt.Sprintf("%s$%d:%s$%s:%s", Method, c.Iterations, b.EncodeToString(c.Salt),
		b.EncodeToString(c.StoredKey), b.EncodeToString(c.ServerKey))
}

// ParseCredential parses the RFC 5803 form that Credential.String writes.
func ParseCredential(s string) (Credential, error) {
	rest, ok := strings.CutPrefix(s, Method+"$")
	if !ok {
		return Credential{}, fmt.Errorf("scram: credential does not start with %q", Method+"$")
	}
	params, keys, ok := strings.Cut(rest, "$")
	iter, salt, ok1 := strings.Cut(params, ":")
	stored, server, ok2 := strings.Cut(keys, ":")
	if !ok || !ok1 || !ok2 {
		return Credential{}, fmt.Errorf("scram: credential is not %s$<iterations>:<salt>$<StoredKey>:<ServerKey>", Method)
	}
	var c Credential
	var err error
	if c.Iterations, err = strconv.Atoi(iter); err != nil || c.Iterations < 1 {
		return Credential{}, fmt.Errorf("scram: bad iteration count %q", iter)
	}
	b := base64.StdEncoding
	var e1, e2, e3 error
	c.Salt, e1 = b.DecodeString(salt)
	c.StoredKey, e2 = b.DecodeString(stored)
	c.ServerKey, e3 = b.DecodeString(server)
	if err := errors.Join(e1, e2, e3); err != nil || len(c.Salt) == 0 || len(c.StoredKey) != sha256.Size ||
		len(c.ServerKey) != sha256.Size {
		return Credential{}, errors.New("scram: bad base64 salt or keys")
	}
	return c, nil
}

// LoadFile reads a credential file: one "user:credential" line per user,
// with the credential in the form of Credential.String. Empty lines and
// lines starting with '#' are skipped. An error names the line.
func LoadFile(path string) (*MemoryStore, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("scram: %w", err)
	}
	store := new(MemoryStore)
	for n, line := range strings.Split(string(data), "\n") {
		line = strings.TrimRight(line, "\r")
		if strings.TrimSpace(line) == "" || strings.HasPrefix(line, "#") {
			continue
		}
		user, cred, ok := strings.Cut(line, ":")
		if !ok || user == "" {
			return nil, fmt.Errorf("scram: %s: line %d: want user:credential", path, n+1)
		}
		c, err := ParseCredential(cred)
		if err != nil {
			return nil, fmt.Errorf("%s: line %d: %w", path, n+1, err)
		}
		store.Set(user, c)
	}
	return store, nil
}
