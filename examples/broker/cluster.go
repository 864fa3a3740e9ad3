package main

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	natsserver "github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/mqtthooks/mqtthooks/cluster/natsjs"
)

// A broker started with -nats or -nats-embedded is one node of a cluster of
// brokers that share sessions through NATS JetStream (SPEC §16): its Core
// gets a natsjs.Store for Options.Store and a natsjs.Cluster for
// Options.Cluster, both on one NATS connection, and the broker routes
// PUBLISHes between the nodes (clusterroute.go). This file has the flags,
// the embedded nats-server, the connection, and the order of start and
// shutdown.

// clusterFlags are the command line of cluster mode.
type clusterFlags struct {
	natsURL       string        // -nats: an existing NATS cluster with JetStream
	embedded      bool          // -nats-embedded: run a nats-server node in this process
	routes        string        // -nats-routes: the embedded node's routes, comma-separated
	listen        string        // -nats-listen: the embedded node's client address; "": in-process only
	clusterListen string        // -nats-cluster-listen: the embedded node's route address
	clusterName   string        // -nats-cluster-name
	node          string        // -node
	replicas      int           // -nats-replicas
	wait          time.Duration // -nats-wait: how long to wait for NATS and JetStream at start
	lease         time.Duration // -nats-lease: natsjs.ClusterOptions.Lease
}

// enabled reports whether the broker is a node of a cluster.
func (f *clusterFlags) enabled() bool { return f.natsURL != "" || f.embedded }

// registerClusterFlags adds the cluster flags to fs, so that -help lists them
// with the rest.
func registerClusterFlags(fs *flag.FlagSet, f *clusterFlags) {
	fs.StringVar(&f.natsURL, "nats", "", "join a cluster of brokers through this NATS server (nats://host:4222, "+
		"comma-separated for several), which must have JetStream: sessions are kept in JetStream and shared by "+
		"the brokers, and PUBLISHes are routed between them; -data-dir is then not used for sessions")
	fs.BoolVar(&f.embedded, "nats-embedded", false, "like -nats, with a nats-server node run inside this broker "+
		"(JetStream stored under -data-dir/nats, or in a temporary directory removed at exit); with -nats-routes, "+
		"the embedded nodes of several brokers form one NATS cluster. -data-dir is then not used for sessions")
	fs.StringVar(&f.routes, "nats-routes", "", "with -nats-embedded: the route URLs of the other brokers' embedded "+
		"nodes (nats-route://host:port or host:port, comma-separated; listing this node's own is harmless)")
	fs.StringVar(&f.listen, "nats-listen", "", "with -nats-embedded: host:port where the embedded node accepts "+
		"NATS clients (such as the nats CLI); the broker itself connects in process. Default: none, or a random "+
		"port of 127.0.0.1 with -nats-cluster-listen (nats-server needs a client port to start its routes)")
	fs.StringVar(&f.clusterListen, "nats-cluster-listen", "", "with -nats-embedded: host:port where the embedded "+
		"node accepts routes from the other nodes; needed with -nats-routes")
	fs.StringVar(&f.clusterName, "nats-cluster-name", "mqtthooks", "with -nats-embedded: the NATS cluster's name, "+
		"the same on every node")
	fs.StringVar(&f.node, "node", "", "this broker's name in the cluster: letters, digits, '-' and '_', unique "+
		"and the same across restarts (default: hostname-pid)")
	fs.IntVar(&f.replicas, "nats-replicas", 1, "how many NATS servers keep each session, retained message and "+
		"ownership record: 3 in a cluster of three or more")
	fs.DurationVar(&f.wait, "nats-wait", time.Minute, "how long to wait at start for NATS and its JetStream "+
		"cluster (all -nats-replicas servers up)")
	fs.DurationVar(&f.lease, "nats-lease", 10*time.Second, "how long a node that stopped renewing its presence "+
		"(it died, or lost NATS) still counts as alive: its sessions are adopted by the other nodes once it ran out, "+
		"and a client of the dead node cannot resume its session elsewhere before; the same on every node, at "+
		"least 100ms")
}

// nodeNameRe is what natsjs accepts as a node name, and what a NATS subject
// token and a KV key token may hold.
var nodeNameRe = regexp.MustCompile(`^[A-Za-z0-9_-]+$`)

// check validates the cluster flags and fills in the node's default name.
func (f *clusterFlags) check() error {
	if !f.enabled() {
		if f.routes != "" || f.listen != "" || f.clusterListen != "" || f.node != "" {
			return errors.New("-nats-routes, -nats-listen, -nats-cluster-listen and -node need -nats or -nats-embedded")
		}
		return nil
	}
	switch {
	case f.natsURL != "" && f.embedded:
		return errors.New("-nats and -nats-embedded exclude each other")
	case !f.embedded && (f.routes != "" || f.listen != "" || f.clusterListen != ""):
		return errors.New("-nats-routes, -nats-listen and -nats-cluster-listen need -nats-embedded")
	case f.routes != "" && f.clusterListen == "":
		return errors.New("-nats-routes needs -nats-cluster-listen")
	case f.replicas < 1:
		return errors.New("-nats-replicas must be at least 1")
	case f.wait <= 0:
		return errors.New("-nats-wait must be positive")
	case f.lease != 0 && f.lease < 100*time.Millisecond: // 0: natsjs's default
		return errors.New("-nats-lease must be at least 100ms")
	}
	if f.node == "" {
		f.node = defaultNodeName()
	}
	if !nodeNameRe.MatchString(f.node) {
		return fmt.Errorf("-node %q: want letters, digits, '-' and '_'", f.node)
	}
	return nil
}

// defaultNodeName is hostname-pid, with what a node name may not hold
// replaced by '-': unique on a network, though not across restarts.
func defaultNodeName() string {
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "broker"
	}
	host = regexp.MustCompile(`[^A-Za-z0-9_-]`).ReplaceAllString(host, "-")
	return host + "-" + strconv.Itoa(os.Getpid())
}

// cluster is this broker's membership of a cluster: the NATS connection
// (and the embedded node, if any), the shared session store, the ownership
// of sessions, and the routing of PUBLISHes and retained messages between
// the nodes (clusterroute.go).
type cluster struct {
	node     string
	boot     uint64 // this process, in route messages: ids of a previous life are not duplicates
	log      *slog.Logger
	replicas int
	ns       *natsserver.Server // the embedded node; nil with -nats
	routed   bool               // the embedded node has routes to others
	tmpDir   string             // the embedded node's store when there is no -data-dir; removed at close
	nc       *nats.Conn
	js       jetstream.JetStream
	store    *natsjs.Store
	owners   *natsjs.Cluster

	closeOnce sync.Once // close runs once, whoever calls it
	closeErr  error

	routing // what clusterroute.go keeps
}

// startCluster starts the embedded node (-nats-embedded) or connects to NATS
// (-nats), then opens the store, the ownership buckets and the routing
// buckets, retrying until the JetStream cluster can hold them (every
// replica's server is up) or f.wait has passed. dataDir, if set, holds the
// embedded node's store.
func startCluster(f *clusterFlags, dataDir string, logger *slog.Logger) (_ *cluster, err error) {
	var b [8]byte
	_, _ = rand.Read(b[:])
	cl := &cluster{node: f.node, boot: binary.LittleEndian.Uint64(b[:]), log: logger.With("node", f.node),
		replicas: f.replicas}
	defer func() {
		if err != nil {
			cl.closeConn()
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), f.wait)
	defer cancel()
	opts := []nats.Option{nats.Name("mqtthooks broker " + f.node), nats.MaxReconnects(-1),
		nats.ReconnectWait(250 * time.Millisecond), nats.RetryOnFailedConnect(true),
		nats.ErrorHandler(func(_ *nats.Conn, sub *nats.Subscription, err error) {
			subject := ""
			if sub != nil {
				subject = sub.Subject
			}
			cl.log.Warn("cluster: NATS", "subject", subject, "err", err)
		})}
	url := f.natsURL
	if f.embedded {
		if err := cl.startEmbedded(f, dataDir); err != nil {
			return nil, err
		}
		opts, url = append(opts, nats.InProcessServer(cl.ns)), ""
	}
	if cl.nc, err = nats.Connect(url, opts...); err != nil {
		return nil, fmt.Errorf("cluster: connecting to NATS: %w", err)
	}
	if cl.js, err = jetstream.New(cl.nc); err != nil {
		return nil, err
	}
	if err := cl.retry(ctx, "opening the session store", func(ctx context.Context) (err error) {
		cl.store, err = natsjs.Open(ctx, cl.nc, natsjs.Options{Replicas: f.replicas, Logger: logger})
		return err
	}); err != nil {
		return nil, err
	}
	if err := cl.retry(ctx, "opening the session owners", func(ctx context.Context) (err error) {
		cl.owners, err = natsjs.NewCluster(ctx, natsjs.ClusterOptions{Node: f.node, Conn: cl.nc,
			Replicas: f.replicas, Lease: f.lease, Logger: logger})
		return err
	}); err != nil {
		return nil, err
	}
	if err := cl.retry(ctx, "opening the routing buckets", cl.openBuckets); err != nil {
		return nil, err
	}
	return cl, nil
}

// retry runs op until it succeeds or ctx ends: while the servers of a new
// NATS cluster come up, JetStream refuses what needs more replicas than it
// has, and a request made before its meta leader is elected is not
// answered at all. Neither is, with nats-server 2.15, the creation of a
// replicated stream that other clients create at the same moment (the
// brokers of a new cluster, started together): the stream is created, and
// the next attempt finds it. So the first attempt gets half a second
// (creating a stream takes tens of milliseconds), and the later ones
// longer, up to four seconds.
func (cl *cluster) retry(ctx context.Context, what string, op func(context.Context) error) error {
	wait, timeout := 50*time.Millisecond, 500*time.Millisecond
	for n := 0; ; n++ {
		actx, cancel := context.WithTimeout(ctx, timeout)
		err := op(actx)
		cancel()
		if err == nil {
			return nil
		}
		if n == 0 {
			cl.log.Info("cluster: waiting for NATS JetStream", "step", what, "err", err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("cluster: %s: %w", what, err)
		case <-time.After(wait):
		}
		wait, timeout = min(2*wait, time.Second), min(2*timeout, 4*time.Second)
	}
}

// startEmbedded starts the embedded nats-server node, with JetStream.
func (cl *cluster) startEmbedded(f *clusterFlags, dataDir string) error {
	dir := filepath.Join(dataDir, "nats")
	if dataDir == "" {
		tmp, err := os.MkdirTemp("", "mqtthooks-nats-")
		if err != nil {
			return err
		}
		cl.tmpDir, dir = tmp, tmp
	}
	opts := &natsserver.Options{ServerName: f.node, JetStream: true, StoreDir: dir, NoSigs: true,
		DontListen: f.listen == "" && f.clusterListen == ""}
	switch {
	case f.listen == "" && !opts.DontListen:
		// nats-server starts its routes only once its client listener is
		// open: a random port of the loopback interface.
		opts.Host, opts.Port = "127.0.0.1", natsserver.RANDOM_PORT
	case f.listen != "":
		host, port, err := hostPort(f.listen)
		if err != nil {
			return fmt.Errorf("-nats-listen: %w", err)
		}
		opts.Host, opts.Port = host, port
	}
	if f.clusterListen != "" {
		host, port, err := hostPort(f.clusterListen)
		if err != nil {
			return fmt.Errorf("-nats-cluster-listen: %w", err)
		}
		opts.Cluster = natsserver.ClusterOpts{Name: f.clusterName, Host: host, Port: port}
		// Lame duck mode, at shutdown, closes the clients of -nats-listen
		// within this, after this grace period.
		opts.LameDuckDuration, opts.LameDuckGracePeriod = 3*time.Second, time.Second
		cl.routed = true
		routes, err := parseRoutes(f.routes)
		if err != nil {
			return err
		}
		opts.Routes = routes
	}
	ns, err := natsserver.NewServer(opts)
	if err != nil {
		return fmt.Errorf("cluster: the embedded NATS server: %w", err)
	}
	ns.SetLoggerV2(natsLogger{cl.log}, false, false, false)
	ns.Start()
	cl.ns = ns
	if !ns.ReadyForConnections(f.wait) {
		return errors.New("cluster: the embedded NATS server did not start")
	}
	// A JetStream request sent before the node knows its meta leader goes
	// unanswered: wait for it here rather than time out there.
	for deadline := time.Now().Add(f.wait); !ns.JetStreamIsCurrent(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			return errors.New("cluster: the embedded NATS node found no JetStream meta leader (are the other nodes up?)")
		}
	}
	return nil
}

// hostPort splits host:port; port 0 asks for a free port, which
// nats-server spells -1.
func hostPort(addr string) (string, int, error) {
	host, p, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, err
	}
	port, err := strconv.Atoi(p)
	if err != nil || port < 0 || port > 65535 {
		return "", 0, fmt.Errorf("bad port in %q", addr)
	}
	if port == 0 {
		port = natsserver.RANDOM_PORT
	}
	return host, port, nil
}

// parseRoutes reads -nats-routes: URLs, or host:port for nats-route://host:port.
func parseRoutes(s string) ([]*url.URL, error) {
	var out []*url.URL
	for r := range strings.SplitSeq(s, ",") {
		if r = strings.TrimSpace(r); r == "" {
			continue
		}
		if !strings.Contains(r, "://") {
			r = "nats-route://" + r
		}
		u, err := url.Parse(r)
		if err != nil || u.Host == "" {
			return nil, fmt.Errorf("-nats-routes: bad route %q", r)
		}
		out = append(out, u)
	}
	return out, nil
}

// natsLogger passes the embedded server's warnings and errors to the
// broker's log, as warnings (a route that cannot connect yet while the
// other nodes start is one), and its notices at debug level (a node prints
// a dozen at start).
type natsLogger struct{ l *slog.Logger }

// Noticef logs a notice of nats-server at debug level.
func (n natsLogger) Noticef(format string, v ...any) {
	n.l.Debug("nats-server: " + fmt.Sprintf(format, v...))
}

// Warnf logs a warning of nats-server.
func (n natsLogger) Warnf(format string, v ...any) {
	n.l.Warn("nats-server: " + fmt.Sprintf(format, v...))
}

// Fatalf logs what nats-server calls fatal; the broker does not exit, its
// shutdown ends the server.
func (n natsLogger) Fatalf(format string, v ...any) {
	n.l.Error("nats-server: " + fmt.Sprintf(format, v...))
}

// Errorf logs an error of nats-server as a warning (see natsLogger).
func (n natsLogger) Errorf(format string, v ...any) {
	n.l.Warn("nats-server: " + fmt.Sprintf(format, v...))
}

// Debugf drops nats-server's debug output, off in the server anyway.
func (n natsLogger) Debugf(format string, v ...any) {}

// Tracef drops nats-server's protocol traces, off in the server anyway.
func (n natsLogger) Tracef(format string, v ...any) {}

// close ends the node's part in the cluster after Core.Shutdown (which
// left the natsjs.Cluster and stored every session): the routing, then the
// store, the connection and the embedded server, in that order, each
// needing the next.
func (cl *cluster) close(ctx context.Context) error {
	cl.closeOnce.Do(func() {
		err := cl.stopRouting(ctx)
		cl.closeErr = errors.Join(err, cl.closeConn())
	})
	return cl.closeErr
}

// closeConn closes the store, the connection, and the embedded server.
func (cl *cluster) closeConn() error {
	var err error
	if cl.store != nil {
		err = cl.store.Close()
	}
	if cl.nc != nil {
		cl.nc.Close()
	}
	if cl.ns != nil {
		if cl.routed {
			// Hand the leadership of the JetStream groups this node leads to
			// the others first: they would otherwise wait for an election
			// timeout (4 to 9 s) before they can write again.
			cl.ns.LameDuckShutdown()
		}
		cl.ns.Shutdown()
		cl.ns.WaitForShutdown()
	}
	if cl.tmpDir != "" {
		err = errors.Join(err, os.RemoveAll(cl.tmpDir))
	}
	return err
}

// clientURL is where NATS clients reach this node's NATS server: the
// embedded node's client port, or -nats; "" when the embedded node has none.
func (cl *cluster) clientURL() string {
	if cl.ns == nil {
		return cl.nc.ConnectedUrlRedacted()
	}
	if cl.ns.Addr() == nil {
		return ""
	}
	return cl.ns.ClientURL()
}
