// Package webhooks is an mqtthooks plugin that calls HTTP endpoints for the
// session hooks, speaking VerneMQ's vmq_webhooks protocol: a JSON POST per
// call with the header "vernemq-hook: <hook>", answered by
// {"result": "ok"}, {"result": "next"} or {"result": {"error": ...}}, with
// modifiers. An endpoint written for VerneMQ works unchanged.
//
// Where VerneMQ fails silently this plugin answers: an auth endpoint that
// answers with a status other than 200, with a body that is not JSON, or
// without a result rejects the client with a CONNACK (MQTT 3: 5, MQTT 5:
// 0x86) rather than closing the connection; an error may carry a
// "reason_code" the core validates like any plugin's; every call has a
// deadline; a transport failure rejects, or, with OnTransportFailure Next,
// passes to the next endpoint.
//
//	p, err := webhooks.New(webhooks.Options{Hooks: map[string][]webhooks.Endpoint{
//		"auth_on_register":    {{URL: "http://auth.internal/mqtt"}},
//		"auth_on_register_m5": {{URL: "http://auth.internal/mqtt"}},
//		"on_client_gone":      {{URL: "http://audit.internal/gone"}},
//	}})
//	chain.Register("webhooks", p)
package webhooks

import (
	"cmp"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"slices"
	"sync/atomic"
	"time"
)

// The hooks an endpoint may be registered for, by their VerneMQ names.
const (
	HookAuthOnRegister   = "auth_on_register"
	HookAuthOnRegisterM5 = "auth_on_register_m5"
	HookOnAuthM5         = "on_auth_m5"
	HookOnRegister       = "on_register"
	HookOnRegisterM5     = "on_register_m5"
	HookOnClientWakeup   = "on_client_wakeup"
	HookOnClientOffline  = "on_client_offline"
	HookOnClientGone     = "on_client_gone"
	HookOnSessionExpired = "on_session_expired"
)

var knownHooks = []string{HookAuthOnRegister, HookAuthOnRegisterM5, HookOnAuthM5, HookOnRegister, HookOnRegisterM5,
	HookOnClientWakeup, HookOnClientOffline, HookOnClientGone, HookOnSessionExpired}

// ErrConfig is the error of an invalid Options.
var ErrConfig = errors.New("webhooks: invalid configuration")

// ErrInvalidResponse is the error an auth hook rejects with when its
// endpoint's answer is not one of the protocol's: a status other than 200,
// a body that is not JSON, a missing or unknown result, or modifiers that
// are not valid.
var ErrInvalidResponse = errors.New("webhooks: invalid endpoint response")

// ErrTransport is the error an auth hook rejects with when its endpoint
// could not be reached, or did not answer within its timeout.
var ErrTransport = errors.New("webhooks: endpoint unreachable")

// TransportPolicy says what an auth hook does when its endpoint cannot be
// reached or does not answer in time.
type TransportPolicy uint8

const (
	// Reject the client (the default): an unreachable authority says no.
	Reject TransportPolicy = iota
	// Next passes to the next endpoint, or the next plugin.
	Next
)

// Endpoint is one URL called for one hook.
type Endpoint struct {
	URL string
	// Timeout bounds one call, within the hook's own deadline; default 4 s,
	// below the core's default ConnectTimeout (5 s), so that an endpoint's
	// timeout is answered as such (and OnTransportFailure applies) before
	// the CONNECT's own deadline passes. Keep it below ConnectTimeout.
	Timeout time.Duration
	// OnTransportFailure is what an auth hook does when the endpoint cannot
	// be reached or times out; default Reject. Notification hooks only log.
	OnTransportFailure TransportPolicy
}

// Options configure a Plugin.
type Options struct {
	// Hooks lists, for each hook (HookAuthOnRegister, …), its endpoints, in
	// the order they are called: "next" goes on to the following one.
	Hooks map[string][]Endpoint
	// Client makes the requests; default a client with keep-alive
	// connections, shared by all endpoints, using TLS for https.
	Client *http.Client
	// TLS configures https endpoints of the default client: the CAs to
	// trust (RootCAs, e.g. from LoadTLS) and a client certificate.
	TLS *tls.Config
	// Logger receives the failures of notification hooks and of transport;
	// default slog.Default().
	Logger *slog.Logger
	// MaxCacheEntries bounds the cache of auth answers (see Plugin);
	// default DefaultMaxCacheEntries; negative turns the cache off.
	MaxCacheEntries int
	// Now is the clock of the cache; default time.Now.
	Now func() time.Time
}

// Plugin calls the configured endpoints. It is safe for concurrent use.
//
// An auth endpoint's "ok" sent with Cache-Control: max-age=N is kept for N
// seconds, keyed by endpoint, hook and request without the peer's port (a
// reconnecting client comes from a new port): the same CONNECT within N
// seconds gets the same answer without a call.
type Plugin struct {
	hooks  map[string][]*endpoint
	client *http.Client
	logger *slog.Logger
	cache  *cache // nil: off
}

// endpoint is an Endpoint with its counters.
type endpoint struct {
	Endpoint
	stats endpointCounters
}

type endpointCounters struct {
	requests, errors, timeouts, canceled atomic.Uint64
	elapsed                              atomic.Int64 // nanoseconds, in all
}

// EndpointStats are one endpoint's counters for one hook.
type EndpointStats struct {
	Hook, URL                            string
	Requests, Errors, Timeouts, Canceled uint64
	// Elapsed is the time spent in all calls.
	Elapsed time.Duration
}

// New checks opts and returns the plugin. Every hook name must be one of
// the Hook constants and every URL absolute http or https.
func New(opts Options) (*Plugin, error) {
	p := &Plugin{hooks: map[string][]*endpoint{}, client: opts.Client, logger: opts.Logger}
	if p.client == nil {
		p.client = &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 100, IdleConnTimeout: time.Minute,
			TLSClientConfig: opts.TLS, ForceAttemptHTTP2: true},
			// A redirect is an answer other than 200, as VerneMQ has it: never
			// followed, so a password is not posted to another host.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	}
	if p.logger == nil {
		p.logger = slog.Default()
	}
	if opts.MaxCacheEntries >= 0 {
		p.cache = &cache{max: cmp.Or(opts.MaxCacheEntries, DefaultMaxCacheEntries), now: opts.Now}
		if p.cache.now == nil {
			p.cache.now = time.Now
		}
	}
	for hook, eps := range opts.Hooks {
		if !slices.Contains(knownHooks, hook) {
			return nil, fmt.Errorf("%w: unknown hook %q", ErrConfig, hook)
		}
		for _, e := range eps {
			u, err := url.Parse(e.URL)
			if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
				return nil, fmt.Errorf("%w: hook %s: endpoint %q is not an http or https URL", ErrConfig, hook, e.URL)
			}
			if e.Timeout < 0 {
				return nil, fmt.Errorf("%w: hook %s: negative timeout", ErrConfig, hook)
			}
			if e.Timeout == 0 {
				e.Timeout = 4 * time.Second
			}
			p.hooks[hook] = append(p.hooks[hook], &endpoint{Endpoint: e})
		}
	}
	return p, nil
}

// CacheStats are the counters of the answer cache.
type CacheStats struct {
	Entries      int
	Hits, Misses uint64
}

// CacheStats returns the cache's counters.
func (p *Plugin) CacheStats() CacheStats {
	if p.cache == nil {
		return CacheStats{}
	}
	return CacheStats{Entries: p.cache.len(), Hits: p.cache.hits.Load(), Misses: p.cache.misses.Load()}
}

// LoadTLS returns a TLS configuration for https endpoints: caFile (PEM),
// if not empty, replaces the system's CAs; certFile and keyFile, if not
// empty, are the client certificate the endpoints may ask for.
func LoadTLS(caFile, certFile, keyFile string) (*tls.Config, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("webhooks: %w", err)
		}
		cfg.RootCAs = x509.NewCertPool()
		if !cfg.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("%w: %s holds no PEM certificate", ErrConfig, caFile)
		}
	}
	if (certFile == "") != (keyFile == "") {
		return nil, fmt.Errorf("%w: a client certificate needs its key, and the other way round", ErrConfig)
	}
	if certFile != "" {
		cert, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return nil, fmt.Errorf("webhooks: %w", err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return cfg, nil
}

// Stats returns the counters of every endpoint, by hook.
func (p *Plugin) Stats() []EndpointStats {
	var out []EndpointStats
	for _, hook := range knownHooks {
		for _, e := range p.hooks[hook] {
			out = append(out, EndpointStats{Hook: hook, URL: e.URL, Requests: e.stats.requests.Load(),
				Errors: e.stats.errors.Load(), Timeouts: e.stats.timeouts.Load(), Canceled: e.stats.canceled.Load(),
				Elapsed: time.Duration(e.stats.elapsed.Load())})
		}
	}
	return out
}
