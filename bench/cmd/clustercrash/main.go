// Command clustercrash runs three example brokers as one cluster (each with
// an embedded NATS node, JetStream with three replicas, its own data
// directory) and kills one of them with SIGKILL, over and over, while
// publishers connected to every node send QoS 1 and QoS 2 messages to
// persistent subscribers connected to every node (MQTT 5 and 3.1.1, QoS 1
// and QoS 2 subscriptions). The clients of the killed node resume on the
// others, once its lease has run out (-lease); then it is started again,
// with the same -node name and data directory, and once it is a current
// replica of every JetStream stream again (so that each kill is a single
// failure) the next cycle kills another node. At the end it checks that
// every message a publisher saw
// acknowledged (PUBACK, PUBCOMP) reached every subscriber whose
// subscription matches it, and no QoS 2 message one twice:
//
//	go run ./bench/cmd/clustercrash -cycles 10
//
// It is the real-process form of the example broker's cluster test; it is
// not part of CI. Run it from the repository root: it builds the broker. It
// prints the counts and the time the clients of each killed node took to
// resume, and exits non-zero when a message was lost or a QoS 2 message
// delivered twice, printing which (all of them in problems.txt), and the
// seed that reproduces the kill points; the brokers' logs (node-A.log …,
// with a line marking each kill) and data are then kept, in the directory
// it prints.
package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/mqtthooks/mqtthooks/bench/internal/procs"
	"github.com/mqtthooks/mqtthooks/examples/broker/crashcheck"
)

func main() {
	cycles := flag.Int("cycles", 10, "how many times to kill a node (each time another than the last)")
	maxAcks := flag.Int("max-acks", 300, "kill after a random number of acknowledgements in [1, max-acks]")
	after := flag.Int("after", 100, "acknowledgements to wait for once the killed node's clients have resumed, "+
		"before it is started again")
	seed := flag.Uint64("seed", uint64(time.Now().UnixNano()), "seed of the kill points and of the nodes killed")
	lease := flag.Duration("lease", 3*time.Second, "the brokers' -nats-lease: how long after its death a node's "+
		"sessions are adopted by the others")
	resume := flag.Duration("resume", 2*time.Minute, "how long the clients of a killed node may take to resume")
	drain := flag.Duration("drain", 2*time.Minute, "how long the subscribers may take, at the end, to receive "+
		"every acknowledged message")
	verbose := flag.Bool("v", false, "run the brokers with -v (every hook call in their logs)")
	keep := flag.Bool("keep", false, "keep the temporary directory (data directories, logs) when the run passes")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, config{cycles: *cycles, maxAcks: *maxAcks, after: *after, seed: *seed, lease: *lease,
		resume: *resume, drain: *drain, verbose: *verbose, keep: *keep})
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "clustercrash:", err)
		os.Exit(1)
	}
}

type config struct {
	cycles, maxAcks, after int
	seed                   uint64
	lease, resume, drain   time.Duration
	verbose, keep          bool
}

func run(ctx context.Context, cfg config) (err error) {
	began := time.Now()
	tmp, err := os.MkdirTemp("", "mqtthooks-clustercrash-")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil || cfg.keep {
			fmt.Printf("brokers' logs and data kept in %s\n", tmp)
			return
		}
		_ = os.RemoveAll(tmp)
	}()
	bin, err := procs.BuildBroker(tmp)
	if err != nil {
		return err
	}
	c, err := newCluster(bin, tmp, []string{"A", "B", "C"}, cfg)
	if err != nil {
		return err
	}
	defer c.close()
	fmt.Printf("clustercrash: seed %d, %d cycles, nodes %s (routes %s), -nats-lease %v, max-acks %d\n",
		cfg.seed, cfg.cycles, strings.Join(c.names, " "), strings.Join(c.routes, ","), cfg.lease, cfg.maxAcks)
	rep, err := crashcheck.RunCluster(ctx, crashcheck.ClusterOptions{
		Start:   c.start,
		Nodes:   c.names,
		Cycles:  cfg.cycles,
		MaxAcks: cfg.maxAcks,
		After:   cfg.after,
		Seed:    cfg.seed,
		Resume:  cfg.resume,
		Drain:   cfg.drain,
		Logf:    func(format string, args ...any) { fmt.Printf(format+"\n", args...) },
	})
	printReport(os.Stdout, rep)
	for _, serr := range rep.StopErrors {
		fmt.Printf("warning: stopping a broker: %v\n", serr)
	}
	fmt.Printf("run time %v\n", time.Since(began).Round(time.Second))
	if err != nil {
		var v *crashcheck.Violation
		if errors.As(err, &v) {
			all := filepath.Join(tmp, "problems.txt")
			if werr := os.WriteFile(all, []byte(strings.Join(v.Problems, "\n")+"\n"), 0o644); werr == nil {
				fmt.Printf("all %d problems in %s\n", len(v.Problems), all)
			}
			return fmt.Errorf("%w\nseed %d (reproduce the kill points with -seed %d -cycles %d -max-acks %d)",
				err, cfg.seed, cfg.seed, cfg.cycles, cfg.maxAcks)
		}
		return fmt.Errorf("%w (seed %d)", err, cfg.seed)
	}
	return nil
}

func printReport(w io.Writer, rep crashcheck.ClusterReport) {
	fmt.Fprintf(w, "acknowledged %d (QoS 1 %d, QoS 2 %d; sent but unacknowledged %d)\n", rep.Acked,
		rep.Acked-rep.AckedQoS2, rep.AckedQoS2, rep.Unacked)
	lost := "lost"
	if !rep.Drained {
		lost = "not delivered when the run stopped (before the final drain)"
	}
	fmt.Fprintf(w, "subscribers %d: expected %d deliveries, delivered %d, %s %d (acknowledged between a kill "+
		"and the resume of its clients: %d)\n", rep.Subscribers, rep.Expected, rep.Delivered, lost, rep.Lost,
		rep.LostInWindow)
	fmt.Fprintf(w, "received %d PUBLISH packets: QoS 1 duplicates %d, QoS 2 retransmissions before PUBREL %d, "+
		"QoS 2 duplicates %d; sessions lost %d\n", rep.Received, rep.DupQoS1, rep.RetransQoS2, rep.DupQoS2,
		rep.SessionsLost)
	if len(rep.Kills) == 0 {
		return
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "cycle\tkilled\tafter acks\tsubscribers\tpublishers\tsessions\tfirst ack\tresumed\tfailed connects\trestart\t")
	for i, k := range rep.Kills {
		fmt.Fprintf(tw, "%d\t%s\t%d\t%d\t%d\t%d\t%v\t%v\t%d\t%v\t\n", i, k.Node, k.After, k.Subscribers, k.Publishers,
			k.Sessions, k.FirstAck.Round(time.Millisecond), k.Resume.Round(time.Millisecond), k.Refused,
			k.Restart.Round(time.Millisecond))
	}
	_ = tw.Flush()
}

// cluster starts the broker processes: node i always with the same name,
// data directory and route port.
type cluster struct {
	bin, dir string
	names    []string
	routes   []string // the embedded NATS nodes' route addresses
	cfg      config
	logs     []*os.File

	mu       sync.Mutex
	launched []bool
}

func newCluster(bin, dir string, names []string, cfg config) (*cluster, error) {
	c := &cluster{bin: bin, dir: dir, names: names, cfg: cfg, launched: make([]bool, len(names))}
	for _, name := range names {
		addr, err := procs.FreeAddr()
		if err != nil {
			return nil, err
		}
		c.routes = append(c.routes, addr)
		f, err := os.Create(filepath.Join(dir, "node-"+name+".log"))
		if err != nil {
			c.close()
			return nil, err
		}
		c.logs = append(c.logs, f)
	}
	return c, nil
}

func (c *cluster) close() {
	for _, f := range c.logs {
		_ = f.Close()
	}
}

// start starts node i and returns once it accepts MQTT clients. The first
// start of each node but the first waits until the node before listens
// for routes: a JetStream cluster whose first node is alone elects its meta
// leader at once, and one whose nodes start together only after an
// election timeout. A start that fails because a port is taken (the route
// port of a killed node, reused at once by a client's connection) is tried
// again.
func (c *cluster) start(ctx context.Context, i int) (crashcheck.Broker, error) {
	c.mu.Lock()
	first := !c.launched[i]
	c.launched[i] = true
	c.mu.Unlock()
	if first && i > 0 {
		if err := procs.WaitListening(c.routes[i-1]); err != nil {
			return nil, err
		}
	}
	args := []string{"-addr", "127.0.0.1:0", "-node", c.names[i], "-nats-embedded", "-nats-listen", "127.0.0.1:0",
		"-nats-cluster-listen", c.routes[i], "-nats-routes", strings.Join(c.routes, ","),
		"-nats-replicas", fmt.Sprint(len(c.names)), "-nats-lease", c.cfg.lease.String(),
		"-data-dir", filepath.Join(c.dir, "data-"+c.names[i]), "-max-queued", "-1"}
	if c.cfg.verbose {
		args = append(args, "-v")
	}
	log := c.logs[i]
	backoff := 100 * time.Millisecond
	for attempt := 1; ; attempt++ {
		fmt.Fprintf(log, "=== clustercrash: %s: starting %s %s\n", time.Now().Format(time.RFC3339Nano), c.bin,
			strings.Join(args, " "))
		w := &watch{w: log}
		b, err := crashcheck.Exec(ctx, exec.Command(c.bin, args...), w)
		if err == nil {
			n := &node{Broker: b, c: c, i: i}
			if first {
				return n, nil
			}
			// A node killed while another is still catching up is a
			// double failure, which three replicas do not survive: the
			// next cycle waits until this one is a current replica of
			// every stream again.
			if err = waitCurrent(ctx, w.natsURL(), time.Minute); err == nil {
				return n, nil
			}
			_ = b.Kill()
			return nil, fmt.Errorf("node %s: %w (its log: %s)", c.names[i], err, log.Name())
		}
		if !w.inUse() || attempt == 5 {
			return nil, fmt.Errorf("node %s: %w (its log: %s)", c.names[i], err, log.Name())
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(backoff):
		}
		backoff *= 2
	}
}

// node is a broker process that notes in every node's log when it is
// killed, so that the logs line up with the kills.
type node struct {
	crashcheck.Broker
	c *cluster
	i int
}

func (n *node) Kill() error {
	n.c.mark(fmt.Sprintf("SIGKILL to node %s", n.c.names[n.i]))
	err := n.Broker.Kill()
	n.c.mark(fmt.Sprintf("node %s is dead", n.c.names[n.i]))
	return err
}

// mark writes a line to every node's log.
func (c *cluster) mark(what string) {
	for _, f := range c.logs {
		fmt.Fprintf(f, "=== clustercrash: %s: %s\n", time.Now().Format(time.RFC3339Nano), what)
	}
}

// watch copies a broker's log to w and notes whether a port it wanted was
// taken, and the URL of its embedded NATS node.
type watch struct {
	w     io.Writer
	mu    sync.Mutex
	taken bool
	url   string
}

var natsURLRe = regexp.MustCompile(`nats-client-url=(\S+)`)

func (w *watch) Write(b []byte) (int, error) {
	w.mu.Lock()
	if bytes.Contains(b, []byte("address already in use")) {
		w.taken = true
	}
	if m := natsURLRe.FindSubmatch(b); m != nil {
		w.url = string(m[1])
	}
	w.mu.Unlock()
	return w.w.Write(b)
}

func (w *watch) inUse() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.taken
}

func (w *watch) natsURL() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.url
}

// waitCurrent waits, for at most limit, until every JetStream stream has a
// leader and every replica of it is current, asking the NATS node at url.
func waitCurrent(ctx context.Context, url string, limit time.Duration) error {
	if url == "" {
		return errors.New("the broker did not log its nats-client-url")
	}
	nc, err := nats.Connect(url)
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	deadline := time.Now().Add(limit)
	for {
		why := notCurrent(ctx, js)
		if why == "" {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("JetStream not current after %v: %s", limit, why)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// notCurrent says what is not current yet in JetStream, or "".
func notCurrent(ctx context.Context, js jetstream.JetStream) string {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	l := js.ListStreams(ctx)
	n := 0
	for si := range l.Info() {
		n++
		name, c := si.Config.Name, si.Cluster
		switch {
		case c == nil || c.Leader == "":
			return name + ": no leader"
		case len(c.Replicas) < si.Config.Replicas-1:
			return fmt.Sprintf("%s: %d replicas besides the leader", name, len(c.Replicas))
		}
		for _, p := range c.Replicas {
			if !p.Current || p.Offline {
				return fmt.Sprintf("%s: replica %s not current (lag %d)", name, p.Name, p.Lag)
			}
		}
	}
	if err := l.Err(); err != nil {
		return err.Error()
	}
	if n == 0 {
		return "no streams"
	}
	return ""
}
