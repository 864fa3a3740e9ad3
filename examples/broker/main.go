// Command broker is a small, real MQTT broker built on mqtthooks: any MQTT
// 3.1, 3.1.1 or 5 client can connect, subscribe and publish, and a chain of
// plugins decides who may connect.
//
//	go run ./examples/broker                       # anonymous, 127.0.0.1:1883
//	go run ./examples/broker -passwd passwords      # Mosquitto password file
//	go run ./examples/broker -scram scram.txt       # SCRAM-SHA-256 (MQTT 5)
//
// The broker owns sockets, topic matching, retained messages and
// keep-alive; sessions, queues, Wills and hooks are the core's. Packets are
// decoded and encoded by github.com/mochi-mqtt/server/v2/packets.
//
// A SCRAM credential file has one "user:credential" line per user, with the
// credential in RFC 5803 form (SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:
// <ServerKey>, base64); no password is stored. Add a user with
//
//	echo -n 'secret' | go run ./examples/broker -scram scram.txt -scram-adduser alice
//
// SIGINT and SIGTERM shut the broker down cleanly (MQTT 5 clients get
// DISCONNECT 0x8B); SIGHUP reloads the password file and disconnects the
// users it no longer accepts.
package main

import (
	"bufio"
	"cmp"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"os/signal"
	"runtime"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/mqtthooks/mqtthooks"
	mqttprom "github.com/mqtthooks/mqtthooks/metrics/prometheus"
	"github.com/mqtthooks/mqtthooks/plugins/passwd"
	"github.com/mqtthooks/mqtthooks/plugins/scram"
	"github.com/mqtthooks/mqtthooks/plugins/webhooks"
	"github.com/mqtthooks/mqtthooks/stores/pebble"
)

func main() {
	err := run(os.Args[1:], os.Stdin, os.Stderr)
	switch {
	case errors.Is(err, flag.ErrHelp):
	case err != nil:
		fmt.Fprintln(os.Stderr, "broker:", err)
		os.Exit(1)
	}
}

// flags are the command line.
type flags struct {
	addr, tlsCert, tlsKey, passwd, scram, scramAdd string
	allowAnonymous                                 bool
	allowAnonymousSet                              bool
	maxPacketSize                                  uint
	maxQueued                                      int
	debugAddr, metricsAddr                         string
	verbose                                        bool
	dataDir, sync                                  string
	passwdTellWrong                                bool
	connectTimeout, authTimeout                    time.Duration
	maxConnectSize                                 uint
	maxConnecting                                  int
	topicAliasMax                                  uint
	sysInterval                                    time.Duration
	webhooks                                       webhookFlags
	webhookTimeout                                 time.Duration
	webhookCA, webhookCert, webhookKey             string
	cluster                                        clusterFlags
}

// webhookFlags collects -webhook HOOK=URL, repeatable, in order.
type webhookFlags []string

func (w *webhookFlags) String() string { return strings.Join(*w, ",") }

func (w *webhookFlags) Set(v string) error {
	hook, url, ok := strings.Cut(v, "=")
	if !ok || hook == "" || url == "" {
		return fmt.Errorf("want HOOK=URL, such as auth_on_register=http://127.0.0.1:8080/auth")
	}
	*w = append(*w, v)
	return nil
}

func parseFlags(args []string, stderr io.Writer) (*flags, error) {
	f := &flags{}
	fs := flag.NewFlagSet("broker", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&f.addr, "addr", "127.0.0.1:1883", "address to listen on")
	fs.StringVar(&f.tlsCert, "tls-cert", "", "TLS certificate file (PEM); with -tls-key, the listener speaks TLS")
	fs.StringVar(&f.tlsKey, "tls-key", "", "TLS private key file (PEM)")
	fs.StringVar(&f.passwd, "passwd", "", "Mosquitto password file ($6$, $7$, $argon2id$); reloaded on SIGHUP")
	fs.BoolVar(&f.passwdTellWrong, "passwd-tell-wrong-password", false, "answer a known user's wrong password with "+
		"\"bad user name or password\" (v3 4, v5 0x86); by default it gets \"not authorized\" (5, 0x87), as an unknown "+
		"user does, so that the answer does not tell who exists")
	fs.Var(&f.webhooks, "webhook", "call URL for HOOK, VerneMQ's webhook protocol (auth_on_register, auth_on_register_m5, "+
		"on_register, on_register_m5, on_client_wakeup, on_client_offline, on_client_gone, on_session_expired); "+
		"repeat it for more, called in order")
	fs.DurationVar(&f.webhookTimeout, "webhook-timeout", 4*time.Second, "deadline of one webhook call (keep it below the 5 s a CONNECT has)")
	fs.StringVar(&f.webhookCA, "webhook-ca", "", "CA certificates (PEM) to trust for https webhooks, instead of the system's")
	fs.StringVar(&f.webhookCert, "webhook-cert", "", "client certificate (PEM) for https webhooks that ask for one")
	fs.StringVar(&f.webhookKey, "webhook-key", "", "its private key (PEM)")
	fs.StringVar(&f.scram, "scram", "", "SCRAM-SHA-256 credential file (user:SCRAM-SHA-256$iter:salt$StoredKey:ServerKey)")
	fs.StringVar(&f.scramAdd, "scram-adduser", "", "add this user to the -scram file, password from stdin, and exit")
	fs.BoolVar(&f.allowAnonymous, "allow-anonymous", false,
		"accept clients without a username when no plugin decides (default: on only without auth plugins on a loopback address)")
	fs.UintVar(&f.maxPacketSize, "max-packet-size", 1<<20, "largest packet accepted from a client, in bytes (0: no limit)")
	fs.IntVar(&f.maxQueued, "max-queued", 1000, "messages a session may have waiting, online or offline (-1: no limit)")
	fs.StringVar(&f.dataDir, "data-dir", "", "keep persistent sessions and their messages in this directory (Pebble), "+
		"across restarts and crashes; default: in memory, lost when the broker stops. With -nats or -nats-embedded "+
		"sessions are kept in NATS JetStream instead, and this directory holds only the embedded NATS node's store")
	fs.StringVar(&f.sync, "sync", "always", "with -data-dir: when a write is durable: always (fsync before each "+
		"acknowledgement, shared by concurrent ones), a duration such as 100ms (sync that often; a power loss may cost "+
		"that much), or none")
	fs.UintVar(&f.maxConnectSize, "max-connect-size", 64<<10, "largest CONNECT (and AUTH before the CONNACK) "+
		"accepted, in bytes: an unauthenticated client costs at most this much to decode")
	fs.IntVar(&f.maxConnecting, "max-connecting", 1024, "connections that may be between accept and CONNACK at once; "+
		"more wait, within -connect-timeout (0: no limit)")
	fs.UintVar(&f.topicAliasMax, "topic-alias-maximum", 10, "topic aliases an MQTT 5 client may set on its "+
		"connection (0: none)")
	fs.DurationVar(&f.sysInterval, "sys-interval", 10*time.Second, "how often the $SYS/broker/... topics "+
		"(version, uptime, clients, messages, load averages) are published, retained (0: never)")
	fs.DurationVar(&f.connectTimeout, "connect-timeout", 10*time.Second,
		"time a new connection has to send its CONNECT (TLS handshake included) before it is closed")
	fs.DurationVar(&f.authTimeout, "auth-timeout", 10*time.Second,
		"time an MQTT 5 enhanced-authentication exchange (SCRAM) has to complete before the connection is closed")
	fs.StringVar(&f.metricsAddr, "metrics-addr", "", "serve Prometheus metrics at http://ADDR/metrics")
	fs.StringVar(&f.debugAddr, "debug-addr", "", "serve the core's counters as JSON at http://ADDR/stats, and pprof at /debug/pprof/")
	fs.BoolVar(&f.verbose, "v", false, "log every hook call")
	registerClusterFlags(fs, &f.cluster)
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	fs.Visit(func(fl *flag.Flag) {
		if fl.Name == "allow-anonymous" {
			f.allowAnonymousSet = true
		}
	})
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	if f.connectTimeout <= 0 || f.authTimeout <= 0 {
		return nil, errors.New("-connect-timeout and -auth-timeout must be positive")
	}
	if err := f.cluster.check(); err != nil {
		return nil, err
	}
	return f, nil
}

// run is main, testable: it returns when the broker has shut down.
func run(args []string, stdin io.Reader, stderr io.Writer) error {
	f, err := parseFlags(args, stderr)
	if err != nil {
		return err
	}
	if f.scramAdd != "" {
		return addSCRAMUser(f.scram, f.scramAdd, stdin)
	}
	level := slog.LevelInfo
	if f.verbose {
		level = slog.LevelDebug
	}
	logger := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	b, err := build(f, logger)
	if err != nil {
		return err
	}
	if err := b.srv.listen(); err != nil {
		return err
	}
	if f.dataDir != "" && b.srv.cluster == nil {
		st := b.srv.core.Stats()
		logger.Info("sessions restored", "data-dir", f.dataDir, "sync", f.sync, "sessions", st.Sessions,
			"messages", st.Restored)
	}
	if cl := b.srv.cluster; cl != nil {
		logger.Info("cluster node", "node", cl.node, "nats-replicas", cl.replicas, "nats-client-url", cl.clientURL())
	}
	logger.Info("listening", "addr", b.srv.addr().String(), "tls", b.srv.cfg.tls != nil,
		"allow-anonymous", b.srv.cfg.allowAnonymous)
	if f.debugAddr != "" {
		stop, err := serveStats(f.debugAddr, b.srv)
		if err != nil {
			return err
		}
		defer stop()
	}
	if f.metricsAddr != "" {
		addr, stop, err := serveMetrics(f.metricsAddr, b.srv, b.webhooks)
		if err != nil {
			return err
		}
		defer stop()
		logger.Info("metrics", "url", "http://"+addr+"/metrics")
	}

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(sigs)
	served := make(chan error, 1)
	go func() { served <- b.srv.serve() }()
	for {
		select {
		case err := <-served:
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			_ = b.srv.shutdown(ctx)
			cancel()
			return err
		case sig := <-sigs:
			if sig == syscall.SIGHUP {
				b.reload(logger)
				continue
			}
			logger.Info("shutting down", "signal", sig.String())
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			err := b.srv.shutdown(ctx)
			cancel()
			<-served
			return err
		}
	}
}

// broker is a configured server with its plugins.
type broker struct {
	srv      *server
	chain    *mqtthooks.Chain
	passwd   *passwd.Plugin
	webhooks *webhooks.Plugin // nil without -webhook
}

func (b *broker) reload(logger *slog.Logger) {
	if b.passwd == nil {
		return
	}
	revoked, err := b.passwd.ReloadRevoked()
	if err != nil {
		logger.Error("password file not reloaded; keeping the old one", "err", err)
		return
	}
	logger.Info("password file reloaded", "users", b.passwd.Users(), "revoked", len(revoked))
	b.revoke(revoked, logger)
}

// revoke disconnects the connected sessions of users, whose credentials the
// password file no longer accepts: MQTT 5 clients get DISCONNECT 0x87 (not
// authorized), MQTT 3 clients a close. Their sessions stay, offline: a
// client may not reconnect to them without valid credentials.
func (b *broker) revoke(users []string, logger *slog.Logger) {
	if len(users) == 0 {
		return
	}
	gone := make(map[string]bool, len(users))
	for _, u := range users {
		gone[u] = true
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for info := range b.srv.core.Sessions() {
		if info.Connections == 0 || !info.HasUsername || !gone[info.Username] {
			continue
		}
		err := b.srv.core.DisconnectWith(ctx, info.ID, mqtthooks.DisconnectOptions{Code: mqtthooks.CodeNotAuthorized})
		if err != nil && !errors.Is(err, mqtthooks.ErrSessionNotFound) {
			logger.Warn("could not disconnect a revoked user", "client", info.ID.String(), "err", err)
			continue
		}
		logger.Info("disconnected: credentials revoked", "client", info.ID.String(), "user", info.Username)
	}
}

// build makes the chain and the server from the flags.
func build(f *flags, logger *slog.Logger) (*broker, error) {
	chain := mqtthooks.NewChain(mqtthooks.ChainOptions{Logger: logger})
	b := &broker{chain: chain}
	if f.verbose {
		if err := chain.Register("log", hookLogger{logger}, mqtthooks.Priority(-1)); err != nil {
			return nil, err
		}
	}
	auth := false
	if f.passwd != "" {
		p, err := passwd.OpenWith(f.passwd, passwd.Options{TellWrongPassword: f.passwdTellWrong})
		if err != nil {
			return nil, err
		}
		if err := chain.Register("passwd", p); err != nil {
			return nil, err
		}
		b.passwd, auth = p, true
	}
	if len(f.webhooks) > 0 {
		hooks := map[string][]webhooks.Endpoint{}
		for _, w := range f.webhooks {
			hook, url, _ := strings.Cut(w, "=")
			hooks[hook] = append(hooks[hook], webhooks.Endpoint{URL: url, Timeout: f.webhookTimeout})
		}
		tlsCfg, err := webhooks.LoadTLS(f.webhookCA, f.webhookCert, f.webhookKey)
		if err != nil {
			return nil, err
		}
		p, err := webhooks.New(webhooks.Options{Hooks: hooks, Logger: logger, TLS: tlsCfg})
		if err != nil {
			return nil, err
		}
		if err := chain.Register("webhooks", p); err != nil {
			return nil, err
		}
		b.webhooks = p
		if hooks[webhooks.HookAuthOnRegister] != nil || hooks[webhooks.HookAuthOnRegisterM5] != nil {
			auth = true
		}
	}
	if f.scram != "" {
		store, err := scram.LoadFile(f.scram)
		if err != nil {
			return nil, err
		}
		p, err := scram.New(store, scram.Options{Name: "scram"})
		if err != nil {
			return nil, err
		}
		if err := chain.Register("scram", p); err != nil {
			return nil, err
		}
		auth = true
	}
	cfg := config{addr: f.addr, maxPacketSize: uint32(f.maxPacketSize), connectTimeout: cmp.Or(f.connectTimeout, 10*time.Second), authTimeout: cmp.Or(f.authTimeout, 10*time.Second),
		maxConnectSize: uint32(f.maxConnectSize), maxConnecting: f.maxConnecting, topicAliasMax: uint16(min(f.topicAliasMax, 65535)),
		sysInterval:    f.sysInterval,
		allowAnonymous: f.allowAnonymous, maxQueued: f.maxQueued, dataDir: f.dataDir}
	switch f.sync {
	case "always", "":
		cfg.sync = pebble.Always
	case "none":
		cfg.sync = pebble.None
	default:
		d, err := time.ParseDuration(f.sync)
		if err != nil || d <= 0 {
			return nil, fmt.Errorf("-sync %q: want always, none or a duration", f.sync)
		}
		cfg.sync = pebble.Interval(d)
	}
	if !f.allowAnonymousSet {
		switch {
		case !auth && loopback(f.addr):
			cfg.allowAnonymous = true
			logger.Warn("no auth plugin on a loopback address: allowing anonymous clients (-allow-anonymous=false to refuse)")
		case !auth:
			return nil, errors.New("refusing to start without an auth plugin (-passwd, -scram) on a non-loopback address; " +
				"pass -allow-anonymous to accept anybody")
		}
	}
	if (f.tlsCert == "") != (f.tlsKey == "") {
		return nil, errors.New("-tls-cert and -tls-key go together")
	}
	if f.tlsCert != "" {
		cert, err := tls.LoadX509KeyPair(f.tlsCert, f.tlsKey)
		if err != nil {
			return nil, err
		}
		cfg.tls = &tls.Config{Certificates: []tls.Certificate{cert}, ClientAuth: tls.RequestClientCert,
			MinVersion: tls.VersionTLS12}
	}
	if f.cluster.enabled() {
		if err := f.cluster.check(); err != nil { // build may be called without parseFlags
			return nil, err
		}
		cl, err := startCluster(&f.cluster, f.dataDir, logger)
		if err != nil {
			return nil, err
		}
		cfg.cluster, cfg.dataDir = cl, ""
	}
	srv, err := newServer(cfg, chain, logger)
	if err != nil {
		return nil, err
	}
	if err := chain.Register("shared-drops", sharedDrops{&srv.shared}); err != nil {
		return nil, err
	}
	b.srv = srv
	return b, nil
}

// loopback reports whether addr listens on a loopback address only.
func loopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// addSCRAMUser appends a user, with the password read from stdin, to file.
func addSCRAMUser(file, user string, stdin io.Reader) error {
	if file == "" {
		return errors.New("-scram-adduser needs -scram FILE")
	}
	if user == "" || strings.ContainsAny(user, ":\n") {
		return fmt.Errorf("bad user name %q", user)
	}
	line, err := bufio.NewReader(stdin).ReadString('\n')
	if err != nil && !errors.Is(err, io.EOF) {
		return err
	}
	password := strings.TrimRight(line, "\r\n")
	if password == "" {
		return errors.New("empty password on stdin")
	}
	cred, err := scram.NewCredential(password, 0)
	if err != nil {
		return err
	}
	out, err := os.OpenFile(file, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	if _, err := fmt.Fprintf(out, "%s:%s\n", user, cred); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// hookLogger is a plugin that logs every hook call at debug level (-v). It
// runs first and decides nothing.
type hookLogger struct{ l *slog.Logger }

func (h hookLogger) AuthOnRegister(ctx context.Context, r *mqtthooks.RegisterRequest) mqtthooks.RegisterResult {
	h.l.DebugContext(ctx, "AuthOnRegister", "id", r.SubscriberID.String(), "user", r.Connect.Username, "clean", r.Connect.CleanStart)
	return mqtthooks.Next()
}

func (h hookLogger) AuthOnRegisterM5(ctx context.Context, r *mqtthooks.RegisterRequest) mqtthooks.RegisterResult {
	h.l.DebugContext(ctx, "AuthOnRegisterM5", "id", r.SubscriberID.String(), "user", r.Connect.Username, "clean", r.Connect.CleanStart)
	return mqtthooks.Next()
}

func (h hookLogger) OnAuthM5(ctx context.Context, r *mqtthooks.AuthRequest) mqtthooks.AuthResult {
	h.l.DebugContext(ctx, "OnAuthM5", "id", r.SubscriberID.String(), "step", r.Step.String(), "method", r.Method)
	return mqtthooks.AuthNext()
}

func (h hookLogger) OnRegister(ctx context.Context, e *mqtthooks.RegisterEvent) {
	h.l.DebugContext(ctx, "OnRegister", "id", e.SubscriberID.String(), "user", e.Username, "present", e.SessionPresent)
}

func (h hookLogger) OnRegisterM5(ctx context.Context, e *mqtthooks.RegisterEvent) {
	h.l.DebugContext(ctx, "OnRegisterM5", "id", e.SubscriberID.String(), "user", e.Username, "present", e.SessionPresent)
}

func (h hookLogger) event(ctx context.Context, hook string, e *mqtthooks.SessionEvent) {
	h.l.DebugContext(ctx, hook, "id", e.SubscriberID.String(), "generation", e.Generation, "reason", e.Reason.String(),
		"conn", e.ConnID)
}

func (h hookLogger) OnClientWakeup(ctx context.Context, e *mqtthooks.SessionEvent) {
	h.event(ctx, "OnClientWakeup", e)
}
func (h hookLogger) OnClientOffline(ctx context.Context, e *mqtthooks.SessionEvent) {
	h.event(ctx, "OnClientOffline", e)
}
func (h hookLogger) OnClientGone(ctx context.Context, e *mqtthooks.SessionEvent) {
	h.event(ctx, "OnClientGone", e)
}
func (h hookLogger) OnSessionExpired(ctx context.Context, e *mqtthooks.SessionEvent) {
	h.event(ctx, "OnSessionExpired", e)
}
func (h hookLogger) OnMessageDrop(ctx context.Context, e *mqtthooks.DropEvent) {
	h.l.DebugContext(ctx, "OnMessageDrop", "id", e.SubscriberID.String(), "reason", e.Reason.String())
}

// serveMetrics serves the core's counters to Prometheus at /metrics (see
// metrics/prometheus), with the Go runtime's and the process's.
func serveMetrics(addr string, srv *server, wh *webhooks.Plugin) (bound string, stop func(), err error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return "", nil, err
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(mqttprom.New(srv.core, mqttprom.Options{}), collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	if wh != nil {
		reg.MustRegister(webhookCollector{wh})
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	hs := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = hs.Serve(ln) }()
	return ln.Addr().String(), func() { _ = hs.Close() }, nil
}

// serveStats serves the core's counters, the goroutine count and the heap as
// JSON at /stats, for the soak test and for curious operators, and the
// profiles of net/http/pprof under /debug/pprof/.
func serveStats(addr string, srv *server) (stop func(), err error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /stats", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Has("gc") {
			runtime.GC()
		}
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		var store *pebble.Stats // with -data-dir
		if srv.store != nil {
			st := srv.store.Stats()
			store = &st
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(struct {
			Core       mqtthooks.Stats
			Store      *pebble.Stats `json:",omitempty"`
			Goroutines int
			HeapAlloc  uint64
		}{srv.core.Stats(), store, runtime.NumGoroutine(), ms.HeapAlloc})
	})
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	hs := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = hs.Serve(ln) }()
	return func() { _ = hs.Close() }, nil
}
