package crashcheck

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"
)

// RunCluster is Run for a cluster of brokers that share their sessions: it
// starts every node, places persistent subscribers (MQTT 5 and 3.1.1, QoS 1
// and 2 subscriptions, several filters) and publishers on the nodes, and in
// each cycle kills one node with SIGKILL after a random number of
// acknowledgements, while publishers on every node send QoS 1 and QoS 2
// messages. The clients of the killed node resume on the others (the
// subscribers with their sessions, Clean Start 0), retrying while the
// cluster refuses them or does not answer (until the node's lease has run
// out); then the publishers stop and the node is started again. Each cycle
// kills another node than the one before. At the end every subscriber
// connects and must receive every acknowledged message its subscription
// matches, QoS 2 messages no more than once.
//
// Clients are placed anew at the start of each cycle (client i on node
// (i + cycle) mod nodes), while no publisher sends: a PUBLISH that arrives
// while a session moves between two live nodes may miss it, which is a
// documented limit of the example broker and not what this checks.
func RunCluster(ctx context.Context, o ClusterOptions) (ClusterReport, error) {
	if o.Start == nil {
		return ClusterReport{}, errors.New("crashcheck: ClusterOptions.Start is nil")
	}
	if len(o.Nodes) == 0 {
		o.Nodes = []string{"A", "B", "C"}
	}
	if len(o.Nodes) < 2 {
		return ClusterReport{}, errors.New("crashcheck: a cluster needs two nodes at least")
	}
	o.Cycles = cmp.Or(o.Cycles, 3)
	o.MaxAcks = cmp.Or(o.MaxAcks, 200)
	o.After = cmp.Or(o.After, 100)
	o.Resume = cmp.Or(o.Resume, 2*time.Minute)
	o.Drain = cmp.Or(o.Drain, 2*time.Minute)
	if o.Logf == nil {
		o.Logf = func(string, ...any) {}
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	r := &clusterRun{o: o, ctx: ctx, brokers: make([]Broker, len(o.Nodes)), acked: map[string]*ack{},
		failed: make(chan struct{}), began: time.Now()}
	r.members = []*member{
		{subscriber: &subscriber{name: "c-v5-q2-all", v5: true, online: true, filter: "crash/#", qos: 2}},
		{subscriber: &subscriber{name: "c-v5-q1-plus", v5: true, online: true, filter: "crash/+/+", qos: 1}},
		{subscriber: &subscriber{name: "c-v3-q2-all", online: true, filter: "crash/#", qos: 2}},
		{subscriber: &subscriber{name: "c-v3-q1-qos2", online: true, filter: "crash/+/q2", qos: 1}},
		{subscriber: &subscriber{name: "c-v5-q2-qos2", v5: true, online: true, filter: "crash/+/q2", qos: 2}},
		{subscriber: &subscriber{name: "c-v3-q1-p2", online: true, filter: "crash/2/#", qos: 1}},
		{subscriber: &subscriber{name: "c-v3-q2-all-offline", filter: "crash/#", qos: 2}},
		{subscriber: &subscriber{name: "c-v5-q1-p1-offline", v5: true, filter: "crash/1/#", qos: 1}},
		{subscriber: &subscriber{name: "c-v5-q2-qos1-offline", v5: true, filter: "crash/+/q1", qos: 2}},
	}
	for _, m := range r.members {
		m.init()
		m.node = -1
	}
	for i := range 6 {
		r.pubs = append(r.pubs, &clusterPub{id: i, name: fmt.Sprintf("c-pub-%d", i), v3: i%2 == 1, node: -1})
	}
	err := r.run()
	r.closeAll()
	var rep ClusterReport
	rep.StopErrors = r.stopAll()
	r.fill(&rep)
	// Without the drain, what is missing may only be late: then only the
	// duplicates and lost sessions are reported, with the error.
	if problems := r.problems(err == nil); len(problems) > 0 {
		return rep, errors.Join(err, &Violation{Problems: problems})
	}
	return rep, err
}

// ClusterOptions configure RunCluster. Start is required.
type ClusterOptions struct {
	// Start starts node i (an index of Nodes) on its data directory, the
	// same from one call to the next, and returns once the node accepts
	// MQTT clients. At first RunCluster calls it for every node at once,
	// each on a goroutine of its own (a node of a new cluster waits for the
	// others); later for a killed node, alone.
	Start func(ctx context.Context, node int) (Broker, error)
	// Nodes names the nodes, in the order of Start's index (default A, B,
	// C). The cluster must keep working with one node down.
	Nodes []string
	// Cycles is how many times a node is killed (default 3).
	Cycles int
	// MaxAcks bounds the acknowledgements publishers receive in a cycle
	// before the kill; the number is drawn uniformly from [1, MaxAcks]
	// (default 200).
	MaxAcks int
	// After is how many acknowledgements the publishers receive once the
	// clients of the killed node have resumed, before the cycle ends
	// (default 100).
	After int
	// Seed makes the kill points and the killed nodes reproducible.
	Seed uint64
	// Resume bounds how long the clients of a killed node may take to
	// resume on the other nodes, and how long the publishers may go
	// without an acknowledgement (default 2 min).
	Resume time.Duration
	// Drain bounds how long, at the end, the subscribers may take to
	// receive every acknowledged message (default 2 min).
	Drain time.Duration
	// Logf, if set, reports progress.
	Logf func(format string, args ...any)
}

// ClusterReport is what a cluster run saw.
type ClusterReport struct {
	// Kills has one entry per cycle.
	Kills []Kill
	// Acked is the number of messages the publishers saw acknowledged
	// (PUBACK, PUBCOMP), AckedQoS2 those of QoS 2 among them; Unacked the
	// number they sent without seeing the acknowledgement.
	Acked, AckedQoS2, Unacked int
	// Subscribers is the number of subscribers; Expected the number of
	// (acknowledged message, subscriber whose subscription matches it)
	// pairs, Delivered those among them that the subscriber received, and
	// Lost those it did not: Expected = Delivered + Lost.
	Subscribers, Expected, Delivered, Lost int
	// LostInWindow is the part of Lost whose message was acknowledged
	// between a kill and the moment the killed node's clients had all
	// resumed.
	LostInWindow int
	// Received counts the PUBLISH packets the subscribers read; DupQoS1 the
	// messages delivered at QoS 0 or 1 that came again (allowed);
	// RetransQoS2 the QoS 2 PUBLISHes sent again with the same packet
	// identifier before their PUBREL (the same delivery, allowed); DupQoS2
	// the QoS 2 messages delivered twice (not allowed).
	Received, DupQoS1, RetransQoS2, DupQoS2 int
	// SessionsLost counts the reconnections that found no session.
	SessionsLost int
	// Drained is false when the run stopped before the final drain: what
	// Lost counts then may only be late.
	Drained bool
	// StopErrors are the errors of the brokers' last shutdown (SIGTERM);
	// they do not fail the run.
	StopErrors []error
	// Elapsed is the run's duration.
	Elapsed time.Duration
}

// Kill is one cycle of a cluster run.
type Kill struct {
	// Node is the name of the node killed.
	Node string
	// After is the acknowledgements received in the cycle before the kill.
	After int
	// Subscribers and Publishers are the clients connected to the node
	// when it died; Sessions the subscribers' sessions it held (offline
	// ones too).
	Subscribers, Publishers, Sessions int
	// FirstAck is the time from the kill to the first acknowledgement any
	// publisher received after it.
	FirstAck time.Duration
	// Resume is the time from the kill until every client of the killed
	// node had resumed on another node: each subscriber had its CONNACK
	// (session present), each publisher an acknowledgement.
	Resume time.Duration
	// Refused counts the connection attempts that failed (refused, or no
	// answer) in the cycle after the kill.
	Refused int
	// Restart is the time ClusterOptions.Start took to start the killed
	// node again.
	Restart time.Duration
}

// clusterRun is the state of RunCluster.
type clusterRun struct {
	o       ClusterOptions
	ctx     context.Context
	members []*member
	pubs    []*clusterPub
	began   time.Time

	mu      sync.Mutex
	brokers []Broker // nil for a node that is down
	acked   map[string]*ack
	unacked int
	kills   []*kill
	cur     *kill // the cycle's kill, once it happened
	drained bool

	once    sync.Once
	failed  chan struct{}
	failErr error
}

// member is a subscriber of the cluster run.
type member struct {
	*subscriber
	node    int  // the node it is connected to, or was last (its session is there); -1: none yet; under clusterRun.mu
	created bool // its session exists
}

// clusterPub is a publisher, with a clean session.
type clusterPub struct {
	id   int
	name string
	v3   bool
	node int // the node it is connected to; -1: none; under clusterRun.mu
}

// ack is a message a publisher saw acknowledged.
type ack struct {
	topic string
	qos   byte
	node  int // where it was published
	cycle int
	at    time.Time
}

// kill is one cycle's kill.
type kill struct {
	Kill
	node       int
	at         time.Time
	resumedAt  time.Time
	sessions   map[string]int  // subscriber -> node of its session at the kill
	waiting    map[string]bool // clients of the killed node yet to resume
	allResumed chan struct{}
}

// fail records the run's first error and stops it.
func (r *clusterRun) fail(err error) {
	r.once.Do(func() {
		r.failErr = err
		close(r.failed)
	})
}

func (r *clusterRun) name(node int) string {
	if node < 0 || node >= len(r.o.Nodes) {
		return "-"
	}
	return r.o.Nodes[node]
}

// pick returns target if it is up, else the next node up, with its address;
// -1 if none is.
func (r *clusterRun) pick(target int) (int, string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for d := range len(r.brokers) {
		n := (target + d) % len(r.brokers)
		if b := r.brokers[n]; b != nil {
			return n, b.Addr()
		}
	}
	return -1, ""
}

// run starts the cluster, runs the cycles and the drain; it returns the
// first error that stopped it.
func (r *clusterRun) run() error {
	o := r.o
	rng := rand.New(rand.NewPCG(o.Seed, o.Seed^0x9e3779b97f4a7c15))
	if err := r.startAll(); err != nil {
		return err
	}
	n := len(o.Nodes)
	victim := rng.IntN(n)
	for cycle := range o.Cycles {
		if cycle > 0 {
			victim = (victim + 1 + rng.IntN(n-1)) % n // another node than the last
		}
		k := 1 + rng.IntN(o.MaxAcks)
		if err := r.cycle(cycle, victim, k); err != nil {
			return fmt.Errorf("crashcheck: cycle %d: %w", cycle, err)
		}
		kl := r.kills[cycle]
		o.Logf("cycle %d: killed %s after %d acknowledgements (subscribers %d, publishers %d, sessions %d); "+
			"first acknowledgement after %v, its clients resumed after %v (%d attempts failed); restarted in %v; "+
			"%d acknowledged so far", cycle, kl.Node, kl.After, kl.Subscribers, kl.Publishers, kl.Sessions,
			kl.FirstAck.Round(time.Millisecond), kl.Resume.Round(time.Millisecond), kl.Refused,
			kl.Restart.Round(time.Millisecond), r.ackedCount())
	}
	if err := r.drain(o.Cycles); err != nil {
		return fmt.Errorf("crashcheck: drain: %w", err)
	}
	r.mu.Lock()
	r.drained = true
	r.mu.Unlock()
	return nil
}

func (r *clusterRun) ackedCount() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.acked)
}

// startAll starts every node at once.
func (r *clusterRun) startAll() error {
	errs := make([]error, len(r.o.Nodes))
	var wg sync.WaitGroup
	for i := range r.o.Nodes {
		wg.Go(func() {
			b, err := r.o.Start(r.ctx, i)
			if err != nil {
				errs[i] = fmt.Errorf("crashcheck: starting node %s: %w", r.name(i), err)
				return
			}
			r.mu.Lock()
			r.brokers[i] = b
			r.mu.Unlock()
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

// cycle places the clients, publishes until k acknowledgements have come,
// kills victim, waits until its clients have resumed and After more
// acknowledgements, stops the publishers and starts victim again.
func (r *clusterRun) cycle(cycle, victim, k int) error {
	o := r.o
	n := len(o.Nodes)
	stopKeep := make(chan struct{})
	var keepers sync.WaitGroup
	defer func() {
		close(stopKeep)
		keepers.Wait()
	}()
	if err := r.place(cycle, stopKeep, &keepers); err != nil {
		return err
	}

	acks := make(chan struct{}, 1<<16)
	stopPub := make(chan struct{})
	pctx, cancel := context.WithCancel(r.ctx)
	var pubs sync.WaitGroup
	var once sync.Once
	stopPubs := func() {
		once.Do(func() {
			close(stopPub)
			cancel()
			pubs.Wait()
		})
	}
	defer stopPubs()
	for i, p := range r.pubs {
		pubs.Go(func() { r.publishLoop(pctx, p, (i+cycle)%n, cycle, stopPub, acks) })
	}
	if err := r.awaitAcks(acks, k, "before the kill"); err != nil {
		return err
	}

	kl := r.kill(cycle, victim, k)
	select {
	case <-kl.allResumed:
	case <-time.After(o.Resume):
		r.mu.Lock()
		var names []string
		for c := range kl.waiting {
			names = append(names, c)
		}
		r.mu.Unlock()
		slices.Sort(names)
		return fmt.Errorf("the clients of node %s did not resume within %v: %s", kl.Node, o.Resume,
			strings.Join(names, ", "))
	case <-r.failed:
		return r.failErr
	case <-r.ctx.Done():
		return r.ctx.Err()
	}
	for len(acks) > 0 { // what came while the clients resumed
		<-acks
	}
	if err := r.awaitAcks(acks, o.After, "after the resume"); err != nil {
		return err
	}
	stopPubs()

	began := time.Now()
	b, err := o.Start(r.ctx, victim)
	if err != nil {
		return fmt.Errorf("restarting node %s: %w", kl.Node, err)
	}
	r.mu.Lock()
	r.brokers[victim] = b
	kl.Restart = time.Since(began)
	r.cur = nil
	r.mu.Unlock()
	return nil
}

// awaitAcks waits for k acknowledgements, failing when none comes within
// Resume.
func (r *clusterRun) awaitAcks(acks <-chan struct{}, k int, when string) error {
	idle := time.NewTimer(r.o.Resume)
	defer idle.Stop()
	for i := range k {
		select {
		case <-acks:
			idle.Reset(r.o.Resume)
		case <-idle.C:
			return fmt.Errorf("%d acknowledgements of %d %s, then none for %v", i, k, when, r.o.Resume)
		case <-r.failed:
			return r.failErr
		case <-r.ctx.Done():
			return r.ctx.Err()
		}
	}
	return nil
}

// place puts each subscriber on its node of the cycle: the online ones get
// a keeper, which keeps them connected until stop closes; the offline ones
// connect and leave, their session staying on the node. It returns once
// every online subscriber is connected.
func (r *clusterRun) place(cycle int, stop <-chan struct{}, keepers *sync.WaitGroup) error {
	n := len(r.o.Nodes)
	ready := make(chan struct{}, len(r.members))
	online := 0
	for i, m := range r.members {
		target := (i + cycle) % n
		if !m.online && cycle < r.o.Cycles {
			if err := r.connect(m, target, stop); err != nil {
				return err
			}
			m.close()
			continue
		}
		online++
		keepers.Go(func() { r.keep(m, target, stop, ready) })
	}
	for range online {
		select {
		case <-ready:
		case <-r.failed:
			return r.failErr
		case <-r.ctx.Done():
			return r.ctx.Err()
		}
	}
	return nil
}

// keep connects m to target, unless it is connected there already, and
// reconnects it whenever its connection ends, to target if it is up and
// else to another node, until stop closes.
func (r *clusterRun) keep(m *member, target int, stop <-chan struct{}, ready chan<- struct{}) {
	r.mu.Lock()
	here := m.node == target
	r.mu.Unlock()
	live := false
	if d := m.dropped(); d != nil {
		select {
		case <-d:
		default:
			live = here
		}
	}
	if !live {
		m.close()
		if err := r.connect(m, target, stop); err != nil {
			r.fail(err)
			return
		}
	}
	ready <- struct{}{}
	for {
		select {
		case <-stop:
			return
		case <-m.dropped():
		}
		m.close()
		if err := r.connect(m, target, stop); err != nil {
			r.fail(err)
			return
		}
		r.resumed(m.name)
	}
}

// connect connects m to target, or to another node while target is down,
// retrying with backoff for as long as Resume; on success m is connected
// unless stop closed first.
func (r *clusterRun) connect(m *member, target int, stop <-chan struct{}) error {
	deadline := time.Now().Add(r.o.Resume)
	backoff := 50 * time.Millisecond
	var last error
	for time.Now().Before(deadline) {
		node, addr := r.pick(target)
		if node >= 0 {
			err := m.connect(r.ctx, addr, !m.created)
			if err == nil {
				r.mu.Lock()
				m.node, m.created = node, true
				r.mu.Unlock()
				return nil
			}
			m.close()
			last = fmt.Errorf("node %s: %w", r.name(node), err)
			r.refused()
		}
		select {
		case <-stop:
			return nil
		case <-r.failed:
			return r.failErr
		case <-r.ctx.Done():
			return r.ctx.Err()
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, time.Second)
	}
	return fmt.Errorf("%s could not connect for %v: %w", m.name, r.o.Resume, last)
}

// refused counts a failed connection attempt after the cycle's kill.
func (r *clusterRun) refused() {
	r.mu.Lock()
	if r.cur != nil {
		r.cur.Refused++
	}
	r.mu.Unlock()
}

// publishLoop publishes QoS 1 and 2 messages alternately through target,
// or another node while it is down, reconnecting whenever a PUBLISH fails,
// until stop closes.
func (r *clusterRun) publishLoop(ctx context.Context, p *clusterPub, target, cycle int, stop <-chan struct{},
	acks chan<- struct{}) {
	backoff := 50 * time.Millisecond
	failingSince := time.Time{}
	for seq := 0; ; {
		select {
		case <-stop:
			return
		default:
		}
		node, addr := r.pick(target)
		var pub *publisher
		err := errors.New("no node is up")
		if node >= 0 {
			pub, err = dialPublisher(ctx, addr, p.name, p.v3)
		}
		if err != nil {
			select {
			case <-stop:
				return
			default:
			}
			r.refused()
			if failingSince.IsZero() {
				failingSince = time.Now()
			} else if time.Since(failingSince) > r.o.Resume {
				r.fail(fmt.Errorf("%s could not connect for %v: %w", p.name, r.o.Resume, err))
				return
			}
			select {
			case <-stop:
				return
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, time.Second)
			continue
		}
		backoff, failingSince = 50*time.Millisecond, time.Time{}
		r.mu.Lock()
		p.node = node
		r.mu.Unlock()
		first := true
		for ; ; seq++ {
			select {
			case <-stop:
				pub.close()
				return
			default:
			}
			qos := byte(1 + seq%2)
			topic := fmt.Sprintf("crash/%d/q%d", p.id, qos)
			payload := fmt.Sprintf("c%d-p%d-%d-q%d", cycle, p.id, seq, qos)
			r.mu.Lock()
			r.unacked++
			r.mu.Unlock()
			pctx, cancel := context.WithTimeout(ctx, clientTimeout)
			err := pub.publish(pctx, topic, qos, payload)
			cancel()
			if err != nil {
				seq++
				break // the node died, or does not answer: connect again
			}
			now := time.Now()
			r.mu.Lock()
			r.unacked--
			r.acked[payload] = &ack{topic: topic, qos: qos, node: node, cycle: cycle, at: now}
			if k := r.cur; k != nil && k.FirstAck == 0 {
				k.FirstAck = now.Sub(k.at)
			}
			r.mu.Unlock()
			if first {
				first = false
				r.resumed(p.name)
			}
			select {
			case acks <- struct{}{}:
			default:
			}
		}
		pub.close()
		r.mu.Lock()
		p.node = -1
		r.mu.Unlock()
	}
}

// kill kills node victim and records who was on it.
func (r *clusterRun) kill(cycle, victim, after int) *kill {
	r.mu.Lock()
	b := r.brokers[victim]
	r.brokers[victim] = nil // no client goes there any more
	kl := &kill{Kill: Kill{Node: r.name(victim), After: after}, node: victim, sessions: map[string]int{},
		waiting: map[string]bool{}, allResumed: make(chan struct{})}
	for _, m := range r.members {
		kl.sessions[m.name] = m.node
		if m.node != victim {
			continue
		}
		kl.Sessions++
		if m.online {
			kl.Subscribers++
			kl.waiting[m.name] = true
		}
	}
	for _, p := range r.pubs {
		if p.node == victim {
			kl.Publishers++
			kl.waiting[p.name] = true
		}
	}
	if len(kl.waiting) == 0 {
		close(kl.allResumed)
	}
	kl.at = time.Now()
	r.cur = kl
	r.kills = append(r.kills, kl)
	r.mu.Unlock()
	if err := b.Kill(); err != nil {
		r.fail(fmt.Errorf("killing node %s: %w", kl.Node, err))
	}
	return kl
}

// resumed records that a client (subscriber or publisher name) is working
// again after the cycle's kill.
func (r *clusterRun) resumed(name string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	k := r.cur
	if k == nil || !k.waiting[name] {
		return
	}
	delete(k.waiting, name)
	if len(k.waiting) == 0 {
		k.resumedAt = time.Now()
		k.Resume = k.resumedAt.Sub(k.at)
		close(k.allResumed)
	}
}

// drain connects every subscriber and waits until each has received every
// acknowledged message its subscription matches.
func (r *clusterRun) drain(cycle int) error {
	stop := make(chan struct{})
	var keepers sync.WaitGroup
	defer func() {
		close(stop)
		keepers.Wait()
	}()
	if err := r.place(cycle, stop, &keepers); err != nil {
		return err
	}
	r.mu.Lock()
	acked := make(map[string]string, len(r.acked))
	for p, a := range r.acked {
		acked[p] = a.topic
	}
	r.mu.Unlock()
	waits := make([]<-chan struct{}, len(r.members))
	for i, m := range r.members {
		waits[i] = m.await(acked)
	}
	// The subscribers have until Drain to receive everything, and stop
	// waiting sooner when none has received anything for drainQuiet: what
	// is still missing then is lost (problems() reports it).
	began, moved, last := time.Now(), time.Now(), r.received()
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	for {
		all := true
		for _, w := range waits {
			select {
			case <-w:
			default:
				all = false
			}
		}
		if all {
			return nil
		}
		select {
		case <-tick.C:
		case <-r.failed:
			return r.failErr
		case <-r.ctx.Done():
			return r.ctx.Err()
		}
		if n := r.received(); n != last {
			last, moved = n, time.Now()
		}
		if time.Since(moved) >= min(drainQuiet, r.o.Drain) || time.Since(began) >= r.o.Drain {
			r.o.Logf("drain: stopped waiting after %v, %v without a new message", time.Since(began).Round(time.Second),
				time.Since(moved).Round(time.Second))
			return nil
		}
	}
}

// drainQuiet is how long the drain waits for a message, once the
// subscribers have received nothing for that long.
const drainQuiet = 20 * time.Second

// received returns the PUBLISH packets the subscribers have read.
func (r *clusterRun) received() int {
	n := 0
	for _, m := range r.members {
		m.mu.Lock()
		n += m.received
		m.mu.Unlock()
	}
	return n
}

func (r *clusterRun) closeAll() {
	for _, m := range r.members {
		m.close()
	}
}

// stopAll stops the nodes up, at once.
func (r *clusterRun) stopAll() []error {
	r.mu.Lock()
	bs := slices.Clone(r.brokers)
	r.mu.Unlock()
	errs := make([]error, len(bs))
	var wg sync.WaitGroup
	for i, b := range bs {
		if b != nil {
			wg.Go(func() {
				if err := b.Stop(); err != nil {
					errs[i] = fmt.Errorf("node %s: %w", r.name(i), err)
				}
			})
		}
	}
	wg.Wait()
	var out []error
	for _, err := range errs {
		if err != nil {
			out = append(out, err)
		}
	}
	return out
}

// fill completes the report from the state of the run.
func (r *clusterRun) fill(rep *ClusterReport) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, k := range r.kills {
		rep.Kills = append(rep.Kills, k.Kill)
	}
	rep.Acked, rep.Unacked, rep.Subscribers, rep.Drained = len(r.acked), r.unacked, len(r.members), r.drained
	for _, a := range r.acked {
		if a.qos == 2 {
			rep.AckedQoS2++
		}
	}
	for _, m := range r.members {
		m.mu.Lock()
		rep.Received += m.received
		rep.DupQoS1 += m.dup1
		rep.RetransQoS2 += m.retrans2
		rep.DupQoS2 += m.dup2
		for _, p := range m.problems {
			if strings.Contains(p, "session was lost") {
				rep.SessionsLost++
			}
		}
		for p, a := range r.acked {
			if !m.matches(a.topic) {
				continue
			}
			rep.Expected++
			if _, ok := m.seen[p]; ok {
				rep.Delivered++
				continue
			}
			rep.Lost++
			if r.inWindow(a) {
				rep.LostInWindow++
			}
		}
		m.mu.Unlock()
	}
	rep.Elapsed = time.Since(r.began)
}

// inWindow reports whether a was acknowledged after its cycle's kill and
// before the killed node's clients had all resumed; r.mu is held.
func (r *clusterRun) inWindow(a *ack) bool {
	if a.cycle >= len(r.kills) {
		return false
	}
	k := r.kills[a.cycle]
	return !a.at.Before(k.at) && (k.resumedAt.IsZero() || a.at.Before(k.resumedAt))
}

// problems lists what was delivered twice, the sessions lost and, with
// missing, the messages lost; each lost message says when it was
// acknowledged, relative to its cycle's kill, and where the subscriber's
// session was then.
func (r *clusterRun) problems(missing bool) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, m := range r.members {
		m.mu.Lock()
		out = append(out, m.problems...)
		m.mu.Unlock()
	}
	if !missing {
		return out
	}
	type lost struct {
		sub, payload string
		a            *ack
	}
	var ls []lost
	acked := topics(r.acked)
	for _, m := range r.members {
		for _, p := range m.missing(acked) {
			ls = append(ls, lost{m.name, p, r.acked[p]})
		}
	}
	sort.Slice(ls, func(i, j int) bool {
		if !ls[i].a.at.Equal(ls[j].a.at) {
			return ls[i].a.at.Before(ls[j].a.at)
		}
		return ls[i].sub < ls[j].sub
	})
	for _, l := range ls {
		a := l.a
		where := ""
		if a.cycle < len(r.kills) {
			k := r.kills[a.cycle]
			rel := a.at.Sub(k.at)
			when := fmt.Sprintf("%.3fs after", rel.Seconds())
			if rel < 0 {
				when = fmt.Sprintf("%.3fs before", -rel.Seconds())
			}
			where = fmt.Sprintf(", acknowledged %s node %s was killed", when, k.Node)
			if !k.resumedAt.IsZero() {
				where += fmt.Sprintf(" (its clients resumed %.3fs after)", k.Resume.Seconds())
			}
			where += fmt.Sprintf("; the subscriber's session was on node %s at the kill", r.name(k.sessions[l.sub]))
		}
		out = append(out, fmt.Sprintf("%s: acknowledged message %s (topic %s, QoS %d, published on node %s%s) "+
			"never delivered", l.sub, l.payload, a.topic, a.qos, r.name(a.node), where))
	}
	return out
}

// topics returns payload -> topic.
func topics(acked map[string]*ack) map[string]string {
	out := make(map[string]string, len(acked))
	for p, a := range acked {
		out[p] = a.topic
	}
	return out
}
