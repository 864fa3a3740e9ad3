// Package passwd is an mqtthooks plugin that authenticates clients against a
// Mosquitto password file, as mosquitto_passwd writes it: one "user:hash"
// line per user, where the hash is one of
//
//	$6$<base64 salt>$<base64 SHA-512(password ‖ salt)>            (one round)
//	$7$<iterations>$<base64 salt>$<base64 PBKDF2-HMAC-SHA512>      (64 bytes)
//	$argon2id$v=19$m=<KiB>,t=<passes>,p=<lanes>$<salt>$<hash>     (PHC format, unpadded base64)
//
// A user the file does not know gets Next, so a later plugin may know them;
// when none does, the client is not authorized (v3 return code 5, v5 0x87).
// A wrong or missing password gets the same answer, Reject(ErrRejected), so
// neither the reply code nor the timing tells a client which users exist:
// unknown users are hashed too, and hashes are compared in constant time.
// Options.TellWrongPassword answers a wrong password with
// ErrInvalidCredentials instead (v3 4, v5 0x86), as Mosquitto does.
//
// The package installs no signal handler: a broker calls Reload, on SIGHUP
// say. A file that does not load leaves the plugin with the file it had.
package passwd

import (
	"bufio"
	"bytes"
	"context"
	"crypto/pbkdf2"
	"crypto/sha512"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"golang.org/x/crypto/argon2"

	"github.com/mqtthooks/mqtthooks"
)

// ErrFormat is the error of a password file that does not parse; the error
// names the line.
var ErrFormat = errors.New("passwd: malformed password file")

// Plugin authenticates against a password file. It is safe for concurrent
// use; Reload swaps the file atomically.
type Plugin struct {
	path  string
	opts  Options
	users atomic.Pointer[map[string]hash]
	mu    sync.Mutex // serialises Reload
}

// Options configure a Plugin. The zero value is the default.
type Options struct {
	// TellWrongPassword rejects a known user's wrong or missing password with
	// ErrInvalidCredentials (v3 return code 4, v5 0x86, "bad user name or
	// password") rather than ErrRejected (5, 0x87, "not authorized"), the
	// answer an unknown user gets once no plugin knows them. The two answers
	// then tell a client which user names exist.
	TellWrongPassword bool
}

// Open loads the password file at path, with the default Options.
func Open(path string) (*Plugin, error) { return OpenWith(path, Options{}) }

// OpenWith loads the password file at path.
func OpenWith(path string, opts Options) (*Plugin, error) {
	p := &Plugin{path: path, opts: opts}
	if err := p.Reload(); err != nil {
		return nil, err
	}
	return p, nil
}

// Reload reads the file again. If it does not load, the plugin keeps the
// users it had and Reload returns the error.
func (p *Plugin) Reload() error {
	_, err := p.ReloadRevoked()
	return err
}

// ReloadRevoked is Reload, and returns, sorted, the users whose credentials
// the new file revokes: those it no longer lists, or lists with another
// hash. A broker disconnects their connections (see
// mqtthooks.Core.DisconnectWith): a plugin decides only at CONNECT.
func (p *Plugin) ReloadRevoked() ([]string, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	data, err := os.ReadFile(p.path)
	if err != nil {
		return nil, fmt.Errorf("passwd: %w", err)
	}
	users, err := parse(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", p.path, err)
	}
	var revoked []string
	if old := p.users.Load(); old != nil {
		for user, h := range *old {
			if nh, ok := users[user]; !ok || !nh.equal(&h) {
				revoked = append(revoked, user)
			}
		}
	}
	slices.Sort(revoked)
	p.users.Store(&users)
	return revoked, nil
}

// Users returns how many users the loaded file has.
func (p *Plugin) Users() int { return len(*p.users.Load()) }

// hash is one parsed password hash.
type hash struct {
	kind       string // "6", "7", "argon2id"
	salt, sum  []byte
	iterations int
	// argon2id
	memory  uint32
	threads uint8
}

func (h *hash) equal(o *hash) bool {
	return h.kind == o.kind && bytes.Equal(h.salt, o.salt) && bytes.Equal(h.sum, o.sum) &&
		h.iterations == o.iterations && h.memory == o.memory && h.threads == o.threads
}

// parse parses the contents of a password file. Empty lines and lines that
// start with '#' are skipped; any other line must be "user:hash" with a hash
// of a known type.
func parse(data []byte) (map[string]hash, error) {
	users := map[string]hash{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimRight(sc.Text(), "\r")
		if strings.TrimSpace(line) == "" || strings.HasPrefix(line, "#") {
			continue
		}
		user, encoded, ok := strings.Cut(line, ":")
		if !ok || user == "" {
			return nil, fmt.Errorf("%w: line %d: want user:hash", ErrFormat, n)
		}
		if encoded == "" {
			return nil, fmt.Errorf("%w: line %d: user %q has no hash", ErrFormat, n, user)
		}
		h, err := parseHash(encoded)
		if err != nil {
			return nil, fmt.Errorf("%w: line %d: user %q: %s", ErrFormat, n, user, err)
		}
		if _, dup := users[user]; dup {
			return nil, fmt.Errorf("%w: line %d: user %q appears twice", ErrFormat, n, user)
		}
		users[user] = h
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("passwd: %w", err)
	}
	return users, nil
}

func parseHash(s string) (hash, error) {
	parts := strings.Split(s, "$")
	if len(parts) < 2 || parts[0] != "" {
		return hash{}, errors.New("not a $type$… hash")
	}
	b64 := base64.StdEncoding
	switch parts[1] {
	case "6":
		if len(parts) != 4 {
			return hash{}, errors.New("$6$ needs $6$salt$hash")
		}
		salt, err1 := b64.DecodeString(parts[2])
		sum, err2 := b64.DecodeString(parts[3])
		if err := errors.Join(err1, err2); err != nil || len(salt) == 0 || len(sum) != sha512.Size {
			return hash{}, errors.New("bad base64 salt or hash in $6$")
		}
		return hash{kind: "6", salt: salt, sum: sum}, nil
	case "7":
		if len(parts) != 5 {
			return hash{}, errors.New("$7$ needs $7$iterations$salt$hash")
		}
		iter, err := strconv.Atoi(parts[2])
		if err != nil || iter < 1 {
			return hash{}, errors.New("bad iteration count in $7$")
		}
		salt, err1 := b64.DecodeString(parts[3])
		sum, err2 := b64.DecodeString(parts[4])
		if err := errors.Join(err1, err2); err != nil || len(salt) == 0 || len(sum) == 0 {
			return hash{}, errors.New("bad base64 salt or hash in $7$")
		}
		return hash{kind: "7", salt: salt, sum: sum, iterations: iter}, nil
	case "argon2id":
		if len(parts) != 6 || parts[2] != "v=19" {
			return hash{}, errors.New("$argon2id$ needs $argon2id$v=19$m=…,t=…,p=…$salt$hash")
		}
		var m, t, p int
		if _, err := fmt.Sscanf(parts[3], "m=%d,t=%d,p=%d", &m, &t, &p); err != nil || m < 1 || t < 1 || p < 1 || p > 255 {
			return hash{}, errors.New("bad parameters in $argon2id$")
		}
		raw := base64.RawStdEncoding
		salt, err1 := raw.DecodeString(parts[4])
		sum, err2 := raw.DecodeString(parts[5])
		if err := errors.Join(err1, err2); err != nil || len(salt) == 0 || len(sum) == 0 {
			return hash{}, errors.New("bad base64 salt or hash in $argon2id$")
		}
		return hash{kind: "argon2id", salt: salt, sum: sum, iterations: t, memory: uint32(m), threads: uint8(p)}, nil
	}
	return hash{}, fmt.Errorf("unknown hash type %q", parts[1])
}

// matches reports whether password hashes to h, in constant time.
func (h hash) matches(password []byte) bool {
	var sum []byte
	switch h.kind {
	case "6":
		d := sha512.New()
		d.Write(password)
		d.Write(h.salt)
		sum = d.Sum(nil)
	case "7":
		var err error
		if sum, err = pbkdf2.Key(sha512.New, string(password), h.salt, h.iterations, len(h.sum)); err != nil {
			return false
		}
	case "argon2id":
		sum = argon2.IDKey(password, h.salt, uint32(h.iterations), h.memory, h.threads, uint32(len(h.sum)))
	}
	return subtle.ConstantTimeCompare(sum, h.sum) == 1
}

// decoy is hashed for unknown users, so that they take as long as known ones
// (mosquitto_passwd's default, $7$ with 101 iterations).
var decoy = hash{kind: "7", salt: make([]byte, 12), sum: make([]byte, 64), iterations: 101}

func (p *Plugin) check(req *mqtthooks.RegisterRequest) mqtthooks.RegisterResult {
	c := req.Connect
	if !c.HasUsername {
		return mqtthooks.Next()
	}
	h, known := (*p.users.Load())[c.Username]
	if !known {
		decoy.matches(c.Password)
		return mqtthooks.Next()
	}
	if !c.HasPassword || !h.matches(c.Password) {
		if p.opts.TellWrongPassword {
			return mqtthooks.Reject(mqtthooks.ErrInvalidCredentials)
		}
		return mqtthooks.Reject(mqtthooks.ErrRejected) // what an unknown user gets in the end
	}
	return mqtthooks.Accept()
}

// AuthOnRegister checks an MQTT 3 client's username and password.
func (p *Plugin) AuthOnRegister(_ context.Context, req *mqtthooks.RegisterRequest) mqtthooks.RegisterResult {
	return p.check(req)
}

// AuthOnRegisterM5 checks an MQTT 5 client's username and password.
func (p *Plugin) AuthOnRegisterM5(_ context.Context, req *mqtthooks.RegisterRequest) mqtthooks.RegisterResult {
	return p.check(req)
}
