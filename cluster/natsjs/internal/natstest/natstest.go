// Package natstest runs nats-server with JetStream inside the test process:
// one server, or a cluster of several, each on random local ports with its
// store in a temporary directory, shut down when the test ends.
package natstest

import (
	"fmt"
	"net"
	"net/url"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"
)

// readyTimeout bounds the wait for a server to accept clients, and for a
// cluster to elect its JetStream meta leader.
const readyTimeout = 20 * time.Second

// StartServer starts one nats-server with JetStream, listening on a random
// port of 127.0.0.1, its store in t.TempDir(). It returns once the server
// accepts connections; t.Cleanup shuts it down.
func StartServer(t testing.TB) *server.Server {
	t.Helper()
	opts := baseOptions(t, "single")
	return start(t, opts)
}

// StartCluster starts n nats-servers (n >= 1) forming one JetStream cluster,
// each on random ports of 127.0.0.1 with routes to all the others. It
// returns once every server accepts connections, the JetStream meta leader
// is elected and every server follows it. t.Cleanup shuts each one down;
// a test may shut one down before (s.Shutdown()) to lose a node.
func StartCluster(t testing.TB, n int) []*server.Server {
	t.Helper()
	if n < 1 {
		t.Fatalf("natstest: a cluster of %d servers", n)
	}
	ports := freePorts(t, n)
	routes := make([]*url.URL, n)
	for i, p := range ports {
		routes[i] = &url.URL{Scheme: "nats-route", Host: fmt.Sprintf("127.0.0.1:%d", p)}
	}
	servers := make([]*server.Server, n)
	for i := range n {
		opts := baseOptions(t, fmt.Sprintf("n%d", i+1))
		opts.Cluster = server.ClusterOpts{Name: "natstest", Host: "127.0.0.1", Port: ports[i]}
		opts.Routes = routes
		servers[i] = start(t, opts)
	}
	waitForCluster(t, servers)
	return servers
}

// Connect connects to s; t.Cleanup closes the connection.
func Connect(t testing.TB, s *server.Server, opts ...nats.Option) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(s.ClientURL(), opts...)
	if err != nil {
		t.Fatalf("natstest: connecting to %s: %v", s.Name(), err)
	}
	t.Cleanup(nc.Close)
	return nc
}

func baseOptions(t testing.TB, name string) *server.Options {
	return &server.Options{
		ServerName: name,
		Host:       "127.0.0.1",
		Port:       server.RANDOM_PORT,
		JetStream:  true,
		StoreDir:   t.TempDir(),
		NoLog:      true,
		NoSigs:     true,
	}
}

func start(t testing.TB, opts *server.Options) *server.Server {
	t.Helper()
	s, err := server.NewServer(opts)
	if err != nil {
		t.Fatalf("natstest: %v", err)
	}
	s.Start()
	t.Cleanup(func() {
		s.Shutdown()
		s.WaitForShutdown()
	})
	if !s.ReadyForConnections(readyTimeout) {
		t.Fatalf("natstest: server %s not ready within %v", opts.ServerName, readyTimeout)
	}
	return s
}

// freePorts returns n ports of 127.0.0.1 free at the time of the call.
func freePorts(t testing.TB, n int) []int {
	t.Helper()
	ports := make([]int, n)
	ls := make([]net.Listener, n)
	for i := range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("natstest: %v", err)
		}
		ls[i], ports[i] = l, l.Addr().(*net.TCPAddr).Port
	}
	for _, l := range ls {
		_ = l.Close()
	}
	return ports
}

// waitForCluster waits until one server leads the JetStream meta group with
// every server as a peer, and every server is current with it.
func waitForCluster(t testing.TB, servers []*server.Server) {
	t.Helper()
	require.Eventually(t, func() bool {
		leaders, current, complete := 0, 0, false
		for _, s := range servers {
			if s.JetStreamIsLeader() {
				leaders++
				complete = len(s.JetStreamClusterPeers()) == len(servers)
			}
			if s.JetStreamIsCurrent() {
				current++
			}
		}
		return leaders == 1 && complete && current == len(servers)
	}, readyTimeout, 10*time.Millisecond, "natstest: no JetStream meta leader with %d peers", len(servers))
}
