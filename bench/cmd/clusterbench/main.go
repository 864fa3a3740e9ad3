// Command clusterbench measures the cost of sharing sessions between the
// nodes of a cluster (cluster/natsjs), at the level of the Core, with
// nats-server nodes running in this process:
//
//	go run ./bench/cmd/clusterbench                       # takeover, connects, QoS 1, bytes per session
//	go run ./bench/cmd/clusterbench -mode nodedown -sessions 1000
//	go run ./bench/cmd/clusterbench -mode nodedown -sessions 100000
//
// The default mode reports: the latency of a takeover of a persistent session
// from one node by another (p50, p99), against a takeover on one node; CONNECTs
// per second of clean sessions spread over a 3-node cluster (R3), a 1-node
// cluster, and a Core without a cluster or store; QoS 1 messages per second
// through Deliver to persistent sessions, each on its owner node, in the same
// three settings; and the bytes and messages JetStream keeps per session
// (2 subscriptions, 10 queued messages of 32 bytes).
//
// -mode nodedown fills node A with -sessions offline persistent sessions,
// cuts A off (its NATS connection and nats-server go), and times until the
// surviving nodes have adopted them all; the time includes the lease.
//
// The clients are fake connections (mqtthookstest), not sockets: what is
// measured is the Core, the store and NATS. The load shares the machine's
// cores with the three nats-server nodes.
package main

import (
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/mqtthooks/mqtthooks"
	"github.com/mqtthooks/mqtthooks/cluster/natsjs"
	"github.com/mqtthooks/mqtthooks/mqtthookstest"
)

func main() {
	mode := flag.String("mode", "all", "all: takeover, connects, QoS 1, bytes; nodedown: adoption of a dead node's sessions")
	rounds := flag.Int("rounds", 500, "takeovers to time")
	connects := flag.Int("connects", 3000, "CONNECTs to time")
	conc := flag.Int("c", 32, "concurrent CONNECTs")
	messages := flag.Int("messages", 20000, "QoS 1 messages to time")
	sessions := flag.Int("sessions", 1000, "sessions (nodedown; bytes per session)")
	lease := flag.Duration("lease", 0, "node lease (default: natsjs's 10 s; 2 s for -mode nodedown)")
	flag.Parse()
	fmt.Printf("clusterbench: %s/%s, %d cores, %s\n", runtime.GOOS, runtime.GOARCH, runtime.NumCPU(), runtime.Version())
	var err error
	switch *mode {
	case "all":
		err = runAll(*rounds, *connects, *conc, *messages, *sessions, *lease)
	case "nodedown":
		err = runNodeDown(*sessions, *conc, cmp.Or(*lease, 2*time.Second))
	default:
		err = fmt.Errorf("unknown -mode %q", *mode)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "clusterbench:", err)
		os.Exit(1)
	}
}

// bench is a cluster of nodes in this process.
type bench struct {
	dir   string
	srvs  []*server.Server
	nodes []*node
}

type node struct {
	name  string
	srv   *server.Server
	nc    *nats.Conn
	store *natsjs.Store
	core  *mqtthooks.Core
}

var quiet = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))

// startCluster starts n nats-server nodes forming one JetStream cluster (or
// one plain server for n = 1), and a clustered Core on each.
func startCluster(n int, lease time.Duration) (*bench, error) {
	dir, err := os.MkdirTemp("", "clusterbench")
	if err != nil {
		return nil, err
	}
	b := &bench{dir: dir}
	ports := make([]int, n)
	for i := range ports {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		ports[i] = l.Addr().(*net.TCPAddr).Port
		_ = l.Close()
	}
	var routes []*url.URL
	for _, p := range ports {
		routes = append(routes, &url.URL{Scheme: "nats-route", Host: fmt.Sprintf("127.0.0.1:%d", p)})
	}
	for i := range n {
		opts := &server.Options{ServerName: fmt.Sprintf("n%d", i), Host: "127.0.0.1", Port: server.RANDOM_PORT,
			JetStream: true, StoreDir: fmt.Sprintf("%s/n%d", dir, i), NoLog: true, NoSigs: true}
		if n > 1 {
			opts.Cluster = server.ClusterOpts{Name: "bench", Host: "127.0.0.1", Port: ports[i]}
			opts.Routes = routes
		}
		s, err := server.NewServer(opts)
		if err != nil {
			return nil, err
		}
		s.Start()
		if !s.ReadyForConnections(20 * time.Second) {
			return nil, fmt.Errorf("nats-server %d not ready", i)
		}
		b.srvs = append(b.srvs, s)
	}
	replicas := min(n, 3)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for i, s := range b.srvs {
		nd := &node{name: string(rune('A' + i)), srv: s}
		if nd.nc, err = nats.Connect(s.ClientURL()); err != nil {
			return nil, err
		}
		if err := waitJetStream(ctx, nd.nc); err != nil {
			return nil, err
		}
		if nd.store, err = natsjs.Open(ctx, nd.nc, natsjs.Options{Replicas: replicas, Logger: quiet}); err != nil {
			return nil, fmt.Errorf("opening the store on %s: %w", nd.name, err)
		}
		cl, err := natsjs.NewCluster(ctx, natsjs.ClusterOptions{Node: nd.name, Conn: nd.nc, Replicas: replicas,
			Lease: lease, Logger: quiet})
		if err != nil {
			return nil, err
		}
		if nd.core, err = newCore(mqtthooks.Options{Store: nd.store, Cluster: cl}); err != nil {
			return nil, err
		}
		b.nodes = append(b.nodes, nd)
	}
	return b, nil
}

// waitJetStream waits until the cluster answers JetStream requests.
func waitJetStream(ctx context.Context, nc *nats.Conn) error {
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	for {
		actx, cancel := context.WithTimeout(ctx, time.Second)
		_, err := js.AccountInfo(actx)
		cancel()
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("JetStream not ready: %w (%v)", ctx.Err(), err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func newCore(opts mqtthooks.Options) (*mqtthooks.Core, error) {
	chain := mqtthooks.NewChain(mqtthooks.ChainOptions{Logger: quiet})
	if err := chain.Register("accept", mqtthooks.AuthOnRegisterBothFunc(
		func(context.Context, *mqtthooks.RegisterRequest) mqtthooks.RegisterResult { return mqtthooks.Accept() })); err != nil {
		return nil, err
	}
	opts.Logger = quiet
	opts.MaxOfflineMessages, opts.MaxOnlineMessages = mqtthooks.Some(-1), mqtthooks.Some(-1)
	opts.ConnectTimeout = 30 * time.Second
	opts.HookTimeout = 30 * time.Second
	return mqtthooks.NewCore(chain, opts)
}

func (b *bench) close() {
	for _, n := range b.nodes {
		_ = n.core.Shutdown(context.Background())
		_ = n.store.Close()
		n.nc.Close()
	}
	for _, s := range b.srvs {
		s.Shutdown()
		s.WaitForShutdown()
	}
	_ = os.RemoveAll(b.dir)
}

func runAll(rounds, connects, conc, messages, sessions int, lease time.Duration) error {
	three, err := startCluster(3, lease)
	if err != nil {
		return err
	}
	defer three.close()
	one, err := startCluster(1, lease)
	if err != nil {
		return err
	}
	defer one.close()
	plain, err := newCore(mqtthooks.Options{})
	if err != nil {
		return err
	}
	defer func() { _ = plain.Shutdown(context.Background()) }()

	fmt.Printf("\ntakeover of a persistent session (%d rounds)      p50        p99\n", rounds)
	for _, tc := range []struct {
		name string
		a, b *mqtthooks.Core
	}{{"between nodes, 3-node cluster R3", three.nodes[0].core, three.nodes[1].core},
		{"on one node, 3-node cluster R3", three.nodes[0].core, three.nodes[0].core},
		{"on one Core, no cluster, no store", plain, plain}} {
		lat, err := takeovers(tc.a, tc.b, rounds)
		if err != nil {
			return fmt.Errorf("%s: %w", tc.name, err)
		}
		fmt.Printf("  %-46s %10v %10v\n", tc.name, pct(lat, 50), pct(lat, 99))
	}

	fmt.Printf("\nclean CONNECTs (%d, %d at once)                   connects/s\n", connects, conc)
	for _, tc := range []struct {
		name  string
		cores []*mqtthooks.Core
	}{{"3-node cluster R3, spread over the nodes", three.cores()}, {"1-node cluster", one.cores()},
		{"one Core, no cluster, no store", []*mqtthooks.Core{plain}}} {
		rate, err := connectRate(tc.cores, connects, conc)
		if err != nil {
			return fmt.Errorf("%s: %w", tc.name, err)
		}
		fmt.Printf("  %-46s %10.0f\n", tc.name, rate)
	}

	fmt.Printf("\nQoS 1 messages to persistent sessions (%d, Receipt per message, 64 in flight)  messages/s\n", messages)
	for _, tc := range []struct {
		name  string
		cores []*mqtthooks.Core
	}{{"3-node cluster R3, one session per node", three.cores()}, {"1-node cluster", one.cores()},
		{"one Core, no cluster, no store", []*mqtthooks.Core{plain}}} {
		rate, err := messageRate(tc.cores, messages)
		if err != nil {
			return fmt.Errorf("%s: %w", tc.name, err)
		}
		fmt.Printf("  %-46s %10.0f\n", tc.name, rate)
	}

	per, err := bytesPerSession(three, sessions, conc)
	if err != nil {
		return err
	}
	fmt.Printf("\n%s\n", per)
	return nil
}

func (b *bench) cores() []*mqtthooks.Core {
	var out []*mqtthooks.Core
	for _, n := range b.nodes {
		out = append(out, n.core)
	}
	return out
}

func pct(d []time.Duration, p int) time.Duration {
	slices.Sort(d)
	return d[min(len(d)-1, len(d)*p/100)].Round(time.Microsecond)
}

var ids atomic.Uint64

// takeovers times CONNECTs that take a persistent session over, alternately
// on a and b.
func takeovers(a, b *mqtthooks.Core, rounds int) ([]time.Duration, error) {
	name := fmt.Sprintf("t%d", ids.Add(1))
	ctx := context.Background()
	prev := mqtthookstest.ConnectV5(ctx, a, name, "u", false, 3600)
	if !prev.Accepted() {
		return nil, fmt.Errorf("CONNECT refused: %v", prev.Step.Err)
	}
	var lat []time.Duration
	for i := range rounds {
		core := b
		if i%2 == 1 {
			core = a
		}
		start := time.Now()
		c := mqtthookstest.ConnectV5(ctx, core, name, "u", false, 3600)
		lat = append(lat, time.Since(start))
		if !c.Accepted() {
			return nil, fmt.Errorf("round %d: CONNECT refused: %v", i, c.Step.Err)
		}
		prev = c
	}
	_ = prev.Disconnect(ctx, mqtthooks.CodeSuccess)
	return lat, nil
}

// connectRate makes n clean CONNECTs and DISCONNECTs, conc at once, spread
// over cores.
func connectRate(cores []*mqtthooks.Core, n, conc int) (float64, error) {
	ctx := context.Background()
	var next atomic.Int64
	var failed atomic.Value
	var wg sync.WaitGroup
	start := time.Now()
	for range conc {
		wg.Go(func() {
			for {
				i := next.Add(1) - 1
				if i >= int64(n) {
					return
				}
				c := mqtthookstest.ConnectV5(ctx, cores[int(i)%len(cores)], fmt.Sprintf("c%d", ids.Add(1)), "u", true, 0)
				if !c.Accepted() {
					failed.Store(fmt.Errorf("CONNECT refused: %v", c.Step.Err))
					return
				}
				_ = c.Disconnect(ctx, mqtthooks.CodeSuccess)
			}
		})
	}
	wg.Wait()
	if err, _ := failed.Load().(error); err != nil {
		return 0, err
	}
	return float64(n) / time.Since(start).Seconds(), nil
}

// messageRate delivers n QoS 1 messages, spread over one persistent session
// per Core, each with a Receipt whose done the publisher waits for (64 in
// flight per session, as a publisher's window), while a subscriber pulls and
// acknowledges.
func messageRate(cores []*mqtthooks.Core, n int) (float64, error) {
	ctx := context.Background()
	per := n / len(cores)
	var wg sync.WaitGroup
	errs := make(chan error, 2*len(cores))
	start := time.Now()
	for _, core := range cores {
		name := fmt.Sprintf("m%d", ids.Add(1))
		c := mqtthookstest.ConnectV5(ctx, core, name, "u", false, 3600)
		if !c.Accepted() {
			return 0, fmt.Errorf("CONNECT refused: %v", c.Step.Err)
		}
		id := mqtthooks.SubscriberID{ClientID: name}
		got := make(chan struct{}, per)
		wg.Go(func() { // the subscriber
			received := 0
			for received < per {
				select {
				case <-c.Conn.Notified():
				case <-time.After(10 * time.Second):
					errs <- fmt.Errorf("subscriber: %d of %d messages", received, per)
					return
				}
				ds, err := c.Receive()
				if err != nil {
					errs <- err
					return
				}
				received += len(ds)
			}
			close(got)
		})
		wg.Go(func() { // the publisher
			window := make(chan struct{}, 64)
			msg := &mqtthooks.Message{Topic: "t", Payload: make([]byte, 32), QoS: 1}
			for range per {
				window <- struct{}{}
				r := mqtthooks.NewReceipt(func(err error) {
					if err != nil {
						errs <- err
					}
					<-window
				})
				if err := core.Deliver(id, msg, mqtthooks.DeliverOptions{QoS: 1, Receipt: r}); err != nil {
					errs <- err
					return
				}
				r.Close()
			}
			<-got
		})
	}
	wg.Wait()
	select {
	case err := <-errs:
		return 0, err
	default:
	}
	return float64(per*len(cores)) / time.Since(start).Seconds(), nil
}

// fill makes n offline persistent sessions on core, each with 2
// subscriptions and queued QoS 1 messages of 32 bytes.
func fill(core *mqtthooks.Core, prefix string, n, queued, conc int) error {
	ctx := context.Background()
	var next atomic.Int64
	errs := make(chan error, conc)
	var wg sync.WaitGroup
	for range conc {
		wg.Go(func() {
			for {
				i := next.Add(1) - 1
				if i >= int64(n) {
					return
				}
				name := fmt.Sprintf("%s%d", prefix, i)
				c := mqtthookstest.ConnectV5(ctx, core, name, "u", false, 3600)
				if !c.Accepted() {
					errs <- fmt.Errorf("CONNECT refused: %v", c.Step.Err)
					return
				}
				if err := c.Subscribe(ctx, "a/"+name, "b/+"); err != nil {
					errs <- err
					return
				}
				_ = c.Disconnect(ctx, mqtthooks.CodeSuccess)
				id := mqtthooks.SubscriberID{ClientID: name}
				done := make(chan error, queued)
				for q := range queued {
					r := mqtthooks.NewReceipt(func(err error) { done <- err })
					msg := &mqtthooks.Message{Topic: "a/" + name, Payload: fmt.Appendf(make([]byte, 0, 32), "%032d", q), QoS: 1}
					if err := core.Deliver(id, msg, mqtthooks.DeliverOptions{QoS: 1, Receipt: r}); err != nil {
						errs <- err
						return
					}
					r.Close()
				}
				for range queued {
					if err := <-done; err != nil {
						errs <- err
						return
					}
				}
			}
		})
	}
	wg.Wait()
	select {
	case err := <-errs:
		return err
	default:
		return nil
	}
}

// bytesPerSession fills n sessions and reports what the store's stream holds.
func bytesPerSession(b *bench, n, conc int) (string, error) {
	js, err := jetstream.New(b.nodes[0].nc)
	if err != nil {
		return "", err
	}
	ctx := context.Background()
	stream, err := js.Stream(ctx, "MQTTHOOKS")
	if err != nil {
		return "", err
	}
	before, err := stream.Info(ctx)
	if err != nil {
		return "", err
	}
	start := time.Now()
	if err := fill(b.nodes[0].core, "bytes", n, 10, conc); err != nil {
		return "", err
	}
	took := time.Since(start)
	after, err := stream.Info(ctx)
	if err != nil {
		return "", err
	}
	bytes := after.State.Bytes - before.State.Bytes
	msgs := after.State.Msgs - before.State.Msgs
	return fmt.Sprintf("JetStream per session (%d offline sessions, 2 subscriptions and 10 queued 32-byte messages each, filled in %v):\n"+
		"  %.0f bytes and %.1f stream messages per session (each kept on 3 servers)",
		n, took.Round(time.Millisecond), float64(bytes)/float64(n), float64(msgs)/float64(n)), nil
}

// runNodeDown fills node A, cuts it off, and times the adoption of its
// sessions by B and C.
func runNodeDown(n, conc int, lease time.Duration) error {
	b, err := startCluster(3, lease)
	if err != nil {
		return err
	}
	defer b.close()
	a := b.nodes[0]
	start := time.Now()
	if err := fill(a.core, "s", n, 1, conc); err != nil {
		return err
	}
	fmt.Printf("\nnode down: %d offline sessions (2 subscriptions, 1 queued message each) on A, filled in %v; lease %v\n",
		n, time.Since(start).Round(time.Millisecond), lease)
	a.nc.Close()
	a.srv.Shutdown()
	cut := time.Now()
	var first time.Duration
	for {
		adopted := b.nodes[1].core.Stats().SessionsAdopted + b.nodes[2].core.Stats().SessionsAdopted
		if adopted > 0 && first == 0 {
			first = time.Since(cut)
		}
		if adopted >= uint64(n) {
			break
		}
		if time.Since(cut) > lease+10*time.Minute {
			return fmt.Errorf("%d of %d sessions adopted after %v", adopted, n, time.Since(cut))
		}
		time.Sleep(10 * time.Millisecond)
	}
	all := time.Since(cut)
	fmt.Printf("  first session adopted %v after A was cut off; all %d after %v (%v after the lease)\n",
		first.Round(time.Millisecond), n, all.Round(time.Millisecond), (all - lease).Round(time.Millisecond))
	fmt.Printf("  adopted by B: %d, by C: %d\n", b.nodes[1].core.Stats().SessionsAdopted, b.nodes[2].core.Stats().SessionsAdopted)
	// A's Core, cut off, is still running: stop it without a cluster to leave.
	b.nodes = b.nodes[1:]
	b.srvs = b.srvs[1:]
	if err := errors.Join(a.store.Close()); err != nil && !errors.Is(err, natsjs.ErrClosed) {
		fmt.Println("  (A's store:", err, ")")
	}
	return nil
}
