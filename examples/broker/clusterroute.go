package main

import (
	"cmp"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/mqtthooks/mqtthooks"
)

// Routing between the nodes of a cluster (SPEC §16, "Cross-node delivery").
//
// Interest. Each node keeps the filters its sessions subscribe to in the KV
// bucket MQTTHOOKS_interest (memory storage: a node puts its own back after
// a restart of the whole NATS cluster): the key <node>.n says the node is
// there, and <node>.f.<token> that one of its sessions subscribes to a
// filter (the token encodes the mountpoint and filter, see keyToken; the
// value holds both). Every node watches the bucket and keeps the other
// nodes' filters in a router of its own (interest), in which each node is a
// subscriber, so that matching a topic against it gives the nodes that need
// a message. A key is written when the first session of the node
// subscribes to the filter and deleted when the last one leaves it, by one
// goroutine, in order; the Router's Add (so the SUBACK, and the CONNACK of
// a session that came from another node) waits until every node present has
// applied the write: each is asked, on mqtthooks.sync.<node>, to answer once
// its watcher has reached the write's revision. A PUBLISH accepted on any
// node after a SUBACK therefore reaches the new subscription.
//
// Forwarding. A PUBLISH accepted on a node is routed there as by a single
// broker, then sent to each other node whose filters match, on
// mqtthooks.route.<node> (see routeMsg for the encoding). That node routes it
// with its own router, to its own sessions, with a Receipt. QoS 0 is
// published and forgotten. QoS 1 and 2 are requests: the node answers once
// its copies are durable (its Receipt is done), and the publisher's PUBACK
// or PUBREC waits for every answer as it waits for the local copies (the
// broker closes the Receipt it got for the PUBLISH only then). A node that
// fails, or does not answer within routeTimeout, leaves the PUBLISH
// unacknowledged, and the publisher's connection is closed, so that the
// client sends it again, as for a failed store write. Unanswered requests are
// sent again every retryEvery; the receiving node recognises a request it
// has seen by its (boot, seq) among the last dedupWindow, and answers it
// once its first delivery is durable, without routing it twice. A request to
// a node that is gone (NATS has no subscriber for it, "no responders") fails:
// its sessions' copies are stored nowhere until another node adopts them,
// so the PUBLISH is not acknowledged and the client sends it again; once
// the gone node owns no session any more, its keys are purged from the
// interest bucket by a node that found out (see purgeNode; a node still
// alive puts them back when its watcher sees them go).
// Requests of one node to another travel on one subject and one connection,
// so they arrive in the order they were sent, and are routed in that order.
//
// Shared subscriptions are shared cluster-wide, preferring local members: a
// group with a member on the node that received the PUBLISH gets it there;
// otherwise one node with members is chosen in turn, and the request names
// the groups it delivers for (a node delivers a forwarded message to no other
// group).
//
// Retained messages. The node that receives a retained PUBLISH (or publishes
// a retained Will) retains it locally at once and writes it to the KV bucket
// MQTTHOOKS_retained (file storage), one key per mountpoint and topic
// (keyToken), with the message as published: an empty payload deletes the
// key. For QoS 1 and 2 the acknowledgement also waits for that write. Every
// node watches the bucket and applies each change to its local retained
// tree, in the bucket's order, counting a Message Expiry Interval from the
// entry's creation. A SUBSCRIBE first waits until the node's watcher has
// reached the bucket's last revision, so that a subscriber on any node sees
// every retained message acknowledged before it subscribed.
//
// What a single broker does not pay for: none of this is on its path. The
// server calls into the cluster only where s.cluster is set.
//
// Sessions moving between nodes: see clustermove.go; QoS 2 PUBLISHes sent
// again: see clusterresend.go.
//
// Limits. A node that does not confirm a new subscription within
// syncTimeout does not hold up the SUBACK longer. The Message Expiry
// Interval of a retained message counts from the time of its KV entry, the
// clock of the JetStream server that stored it. $SYS topics stay on their
// node.

// The names the nodes agree on: the KV buckets of the routing, and the
// first token of its NATS subjects (mqtthooks.route.<node>,
// mqtthooks.sync.<node>, mqtthooks.arrived.<node>,
// mqtthooks.adopting.<node>; natsjs.Cluster has mqtthooks.yield.<node>).
const (
	interestBucket = "MQTTHOOKS_interest"
	retainedBucket = "MQTTHOOKS_retained"
	subjectPrefix  = "mqtthooks"
)

// Timeouts of the routing, short enough for a client's PUBACK and a
// SUBACK, long enough for a JetStream cluster electing a leader.
const (
	routeTimeout = 10 * time.Second // a forwarded QoS 1/2 PUBLISH, from its sending to the last answer
	retryEvery   = time.Second      // an unanswered request is sent again this often
	syncTimeout  = 5 * time.Second  // an interest write, until every node applied it; a retained barrier
	dedupWindow  = 1 << 16          // forwarded messages remembered, to recognise a request sent again
	purgeEvery   = 2 * time.Second  // the keys of one gone node are purged at most this often
	kvTimeout    = 5 * time.Second  // one KV operation
)

// routing is the state of the routing between nodes.
type routing struct {
	srv        *server
	interestKV jetstream.KeyValue
	retainedKV jetstream.KeyValue
	seq        atomic.Uint64 // ids of forwarded messages that are answered

	// The other nodes' filters, as the interest watcher applied them.
	interest  *router // each node a subscriber: ClientID is its name
	imu       sync.Mutex
	ikeys     map[string]ikey                            // their interest keys → what they stand for
	nodes     map[string]bool                            // the nodes present (their .n key)
	mkeys     map[string]mqtthooks.SubscriberID          // the other nodes' .m. keys → the session each names
	movedFrom map[mqtthooks.SubscriberID]map[string]bool // the nodes that hold moved filters of a session (clustermove.go)
	iprog     progress                                   // the interest bucket's revision applied
	rprog     progress                                   // the retained bucket's revision applied
	rhashed   map[string]ikey                            // hashed retained keys → mountpoint and topic; the retained watcher's

	mine interestWriter // this node's filters

	fwd    forwarder
	timing routeTiming // routeTimeout and retryEvery; tests shorten them
	dedup  dedup
	resp   responder
	rmu    sync.Mutex           // the Router's: the local router's subscriptions and the interest counts change together
	moved  movedSessions        // the filters of sessions moving to another node (clustermove.go)
	resent resendWindow         // the QoS 2 PUBLISHes routed here, for their resends (clusterresend.go)
	purged map[string]time.Time // under imu: when each gone node's keys were last purged

	serving  atomic.Bool // the node announced itself (serve); cleared by stopRouting
	subs     []*nats.Subscription
	watchers []jetstream.KeyWatcher
	stop     chan struct{}
	stopCtx  context.Context // canceled with stop: what the routing's goroutines wait for ends then
	cancel   context.CancelFunc
	gmu      sync.Mutex // stopped and the start of goroutines, which must not race wg.Wait
	stopped  bool
	wg       sync.WaitGroup
	stopOnce sync.Once // stopRouting runs once
	stopErr  error
}

// spawn runs f on a goroutine that stopRouting waits for, unless the
// routing has stopped.
func (cl *cluster) spawn(f func()) { _ = cl.spawnOK(f) }

// routeTiming holds routeTimeout and retryEvery, unless changed (by a test,
// which cannot wait ten seconds): atomics, as the routing goroutines read
// them.
type routeTiming struct{ timeout, retry atomic.Int64 }

// routeTimeout is how long a forwarded QoS 1/2 PUBLISH may wait for its answers.
func (t *routeTiming) routeTimeout() time.Duration {
	return cmp.Or(time.Duration(t.timeout.Load()), routeTimeout)
}

// retryEvery is how often an unanswered request is sent again.
func (t *routeTiming) retryEvery() time.Duration {
	return cmp.Or(time.Duration(t.retry.Load()), retryEvery)
}

// ikey is a mountpoint with a filter (interest) or a topic (retained).
type ikey struct{ mountpoint, s string }

// openBuckets creates or opens the interest and retained buckets.
func (cl *cluster) openBuckets(ctx context.Context) error {
	var err error
	cl.interestKV, err = cl.js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: interestBucket,
		Description: "mqtthooks: the filters each broker's sessions subscribe to", Storage: jetstream.MemoryStorage,
		Replicas: cl.replicas})
	if err != nil {
		return err
	}
	cl.retainedKV, err = cl.js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: retainedBucket,
		Description: "mqtthooks: retained messages", Storage: jetstream.FileStorage, Replicas: cl.replicas})
	return err
}

// subject is the subject on which node takes requests of a kind (route,
// sync).
func (cl *cluster) subject(kind, node string) string { return subjectPrefix + "." + kind + "." + node }

// attach starts the routing for s, before its Core exists: the watchers,
// read to the end before this returns (a node knows the cluster's
// subscriptions and retained messages before it accepts a client), the
// writer of this node's interest, the answers to sync requests, and the
// inbox of the answers to this node's requests. The keys this node left in
// the interest bucket in an earlier life go first.
func (cl *cluster) attach(s *server) error {
	cl.srv = s
	cl.interest = newRouter()
	cl.ikeys, cl.nodes, cl.rhashed, cl.purged = map[string]ikey{}, map[string]bool{}, map[string]ikey{}, map[string]time.Time{}
	cl.mkeys, cl.movedFrom = map[string]mqtthooks.SubscriberID{}, map[mqtthooks.SubscriberID]map[string]bool{}
	cl.stop = make(chan struct{})
	cl.stopCtx, cl.cancel = context.WithCancel(context.Background())
	cl.iprog.init()
	cl.rprog.init()
	cl.mine.init()
	cl.resp.init(cl.nc, cl.stop)
	cl.dedup.init(dedupWindow)
	cl.resent.init(cl.boot)
	ctx, cancel := context.WithTimeout(context.Background(), 2*kvTimeout)
	defer cancel()
	if err := cl.purgeKeys(ctx, cl.node); err != nil {
		return fmt.Errorf("cluster: clearing this node's old subscriptions: %w", err)
	}
	ready := make(chan struct{}, 2)
	for _, w := range []struct {
		kv    jetstream.KeyValue
		apply func(jetstream.KeyValueEntry)
		prog  *progress
	}{{cl.interestKV, cl.applyInterest, &cl.iprog}, {cl.retainedKV, cl.applyRetained, &cl.rprog}} {
		kw, err := w.kv.WatchAll(context.Background())
		if err != nil {
			return fmt.Errorf("cluster: watching %s: %w", w.kv.Bucket(), err)
		}
		cl.watchers = append(cl.watchers, kw)
		cl.spawn(func() { cl.watch(kw, w.apply, w.prog, ready) })
	}
	for range 2 {
		select {
		case <-ready:
		case <-ctx.Done():
			return errors.New("cluster: reading the interest and retained buckets: timed out")
		}
	}
	cl.fwd.prefix = nats.NewInbox()
	cl.fwd.calls = map[uint64]*call{}
	for subject, handler := range map[string]nats.MsgHandler{
		cl.fwd.prefix + ".*":            cl.onReply,
		cl.subject("sync", cl.node):     cl.serveSync,
		cl.subject("arrived", cl.node):  cl.serveArrived,
		cl.subject("adopting", cl.node): cl.serveAdopting,
	} {
		sub, err := cl.nc.Subscribe(subject, handler)
		if err != nil {
			return err
		}
		cl.subs = append(cl.subs, sub)
	}
	cl.spawn(cl.writeInterest)
	cl.spawn(cl.resp.run)
	return cl.nc.FlushWithContext(ctx)
}

// serve starts answering forwarded PUBLISHes, once the Core exists, and
// announces the node.
func (cl *cluster) serve() error {
	sub, err := cl.nc.Subscribe(cl.subject("route", cl.node), cl.serveRoute)
	if err != nil {
		return err
	}
	cl.subs = append(cl.subs, sub)
	ctx, cancel := context.WithTimeout(context.Background(), kvTimeout)
	defer cancel()
	if err := cl.nc.FlushWithContext(ctx); err != nil { // answering before the others learn of the node
		return err
	}
	cl.serving.Store(true)
	seq := cl.mine.announce()
	cl.mine.wait(seq, cl.stop)
	return nil
}

// stopRouting ends the routing after Core.Shutdown: no more requests
// answered, the requests in flight failed, the node's keys purged (the
// others stop sending to it at once).
func (cl *cluster) stopRouting(ctx context.Context) error {
	if cl.stop == nil { // not attached
		return nil
	}
	cl.stopOnce.Do(func() { cl.stopErr = cl.stopRoutingOnce(ctx) })
	return cl.stopErr
}

// stopRoutingOnce is stopRouting's work.
func (cl *cluster) stopRoutingOnce(ctx context.Context) error {
	cl.serving.Store(false)
	var err error
	for _, sub := range cl.subs {
		err = errors.Join(err, sub.Unsubscribe())
	}
	cl.gmu.Lock()
	cl.stopped = true
	cl.gmu.Unlock()
	close(cl.stop)
	cl.cancel()
	cl.wg.Wait()
	// Stopping a watcher deletes its consumer, a JetStream request that the
	// last node of a cluster to stop waits for in vain; closing the
	// connection ends it then.
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		for _, w := range cl.watchers {
			_ = w.Stop()
		}
	}()
	select {
	case <-stopped:
	case <-time.After(time.Second):
	}
	cl.fwd.failAll(errors.New("cluster: the broker is shutting down"))
	// Best effort: the last node of a cluster to stop has no JetStream
	// quorum left, and a node that finds this one gone purges its keys.
	pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if perr := cl.purgeKeys(pctx, cl.node); perr != nil {
		cl.log.Warn("cluster: withdrawing this node's subscriptions", "err", perr)
	}
	return err
}

// watch applies the entries of a bucket as they come, and says when it has
// read what the bucket held when it started.
func (cl *cluster) watch(w jetstream.KeyWatcher, apply func(jetstream.KeyValueEntry), p *progress, ready chan<- struct{}) {
	synced := false
	for {
		select {
		case <-cl.stop:
			return
		case e, ok := <-w.Updates():
			if !ok {
				return
			}
			if e == nil {
				if !synced {
					synced = true
					ready <- struct{}{}
				}
				continue
			}
			apply(e)
			p.advance(e.Revision())
		}
	}
}

// purgeKeys purges the keys of node from the interest bucket.
func (cl *cluster) purgeKeys(ctx context.Context, node string) error {
	l, err := cl.interestKV.ListKeysFiltered(ctx, node+".>")
	if err != nil {
		return err
	}
	var keys []string
	for k := range l.Keys() {
		keys = append(keys, k)
	}
	for _, k := range keys {
		if perr := cl.interestKV.Purge(ctx, k); perr != nil {
			err = perr
		}
	}
	return err
}

// purgeNode purges the keys of a node that is gone, at most every
// purgeEvery, on a goroutine of its own: once its lease has run out, no
// session is owned by it any more, and then no node is adopting sessions
// (each adopted session's subscriptions are in its new node's interest:
// the Core's Adopt returns after its Router.Add). Until then the
// PUBLISHes its keys match are not acknowledged: purging them sooner would
// acknowledge messages that no session stored.
func (cl *cluster) purgeNode(node string) {
	cl.imu.Lock()
	if time.Since(cl.purged[node]) < purgeEvery || !cl.serving.Load() {
		cl.imu.Unlock()
		return
	}
	cl.purged[node] = time.Now()
	cl.imu.Unlock()
	cl.spawn(func() {
		if !cl.orphaned(node) || cl.adopting() {
			return
		}
		cl.log.Info("cluster: a node is gone and its sessions adopted; forgetting its subscriptions", "gone", node)
		ctx, cancel := context.WithTimeout(cl.stopCtx, kvTimeout)
		defer cancel()
		if err := cl.purgeKeys(ctx, node); err != nil {
			cl.log.Warn("cluster: purging a gone node's subscriptions", "gone", node, "err", err)
		}
	})
}

// adopting reports whether this node or another one is adopting the
// sessions of a gone node (asked on mqtthooks.adopting.<node>); a node
// that does not answer in time counts as adopting.
func (cl *cluster) adopting() bool {
	if cl.owners.Adopting() {
		return true
	}
	ctx, cancel := context.WithTimeout(cl.stopCtx, syncTimeout)
	defer cancel()
	var busy atomic.Bool
	var wg sync.WaitGroup
	for _, node := range cl.otherNodes() {
		wg.Go(func() {
			m, err := cl.nc.RequestWithContext(ctx, cl.subject("adopting", node), nil)
			switch {
			case errors.Is(err, nats.ErrNoResponders): // gone too
			case err != nil || len(m.Data) != 1 || m.Data[0] != 0:
				busy.Store(true)
			}
		})
	}
	wg.Wait()
	return busy.Load()
}

// serveAdopting answers whether this node is adopting sessions.
func (cl *cluster) serveAdopting(m *nats.Msg) {
	answer := []byte{0}
	if cl.owners.Adopting() {
		answer[0] = 1
	}
	_ = m.Respond(answer)
}

// orphaned reports whether node's lease has run out and no session is owned
// by it any more (the buckets of natsjs.Cluster, default names).
func (cl *cluster) orphaned(node string) bool {
	ctx, cancel := context.WithTimeout(cl.stopCtx, kvTimeout)
	defer cancel()
	nodes, err := cl.js.KeyValue(ctx, "MQTTHOOKS_nodes")
	if err != nil {
		return false
	}
	if _, err := nodes.Get(ctx, node); !errors.Is(err, jetstream.ErrKeyNotFound) {
		return false // alive, or unknown
	}
	owners, err := cl.js.KeyValue(ctx, "MQTTHOOKS_owners")
	if err != nil {
		return false
	}
	w, err := owners.WatchAll(ctx, jetstream.IgnoreDeletes())
	if err != nil {
		return false
	}
	defer func() { _ = w.Stop() }()
	for e := range w.Updates() {
		if e == nil {
			return true
		}
		if string(e.Value()) == node {
			return false
		}
	}
	return false
}

// --- Interest: the other nodes' filters ---

// applyInterest applies a change of the interest bucket.
func (cl *cluster) applyInterest(e jetstream.KeyValueEntry) {
	key := e.Key()
	node, rest, _ := strings.Cut(key, ".")
	put := e.Operation() == jetstream.KeyValuePut
	if node == cl.node {
		if !put {
			cl.mine.lost(key, cl.serving.Load())
		}
		return
	}
	cl.imu.Lock()
	defer cl.imu.Unlock()
	switch {
	case rest == "n" && put:
		cl.nodes[node] = true
	case rest == "n":
		delete(cl.nodes, node)
	case strings.HasPrefix(rest, "m."):
		cl.applyMoved(node, key, e.Value(), put)
	case !strings.HasPrefix(rest, "f."):
	case put:
		mp, filter, err := decodeInterest(e.Value())
		if err != nil {
			cl.log.Warn("cluster: an interest key this release cannot read", "key", key, "err", err)
			return
		}
		cl.ikeys[key] = ikey{mp, filter}
		cl.interest.Add(mqtthooks.SubscriberID{Mountpoint: mp, ClientID: node}, 0, mqtthooks.Subscription{Filter: filter})
	default:
		if k, ok := cl.ikeys[key]; ok {
			delete(cl.ikeys, key)
			cl.interest.Remove(mqtthooks.SubscriberID{Mountpoint: k.mountpoint, ClientID: node}, 0, k.s)
		}
	}
}

// otherNodes returns the nodes present but this one.
func (cl *cluster) otherNodes() []string {
	cl.imu.Lock()
	defer cl.imu.Unlock()
	out := make([]string, 0, len(cl.nodes))
	for n := range cl.nodes {
		out = append(out, n)
	}
	return out
}

// serveSync answers a node's sync request (a revision of the interest
// bucket, uvarint) once the interest watcher has applied it.
func (cl *cluster) serveSync(m *nats.Msg) {
	rev, n := binary.Uvarint(m.Data)
	if n <= 0 {
		return
	}
	cl.spawn(func() {
		ctx, cancel := context.WithTimeout(cl.stopCtx, syncTimeout)
		defer cancel()
		if cl.iprog.wait(ctx, rev, cl.stop) == nil {
			_ = m.Respond(nil)
		}
	})
}

// syncInterest waits until every node present has applied the interest
// bucket up to rev: this node's watcher, then each other node, asked at
// once.
func (cl *cluster) syncInterest(rev uint64) {
	ctx, cancel := context.WithTimeout(cl.stopCtx, syncTimeout)
	defer cancel()
	if err := cl.iprog.wait(ctx, rev, cl.stop); err != nil {
		return
	}
	req := binary.AppendUvarint(nil, rev)
	var wg sync.WaitGroup
	for _, node := range cl.otherNodes() {
		wg.Go(func() {
			_, err := cl.nc.RequestWithContext(ctx, cl.subject("sync", node), req)
			switch {
			case errors.Is(err, nats.ErrNoResponders):
				cl.purgeNode(node)
			case err != nil && cl.serving.Load():
				cl.log.Warn("cluster: a node did not confirm a new subscription", "other", node, "err", err)
			}
		})
	}
	wg.Wait()
}

// interestWriter keeps this node's keys in the interest bucket: how many
// sessions subscribe to each filter, the keys to write, and how far the
// writes have gone.
type interestWriter struct {
	mu       sync.Mutex
	counts   map[ikey]int
	keys     map[string]ikey // the key of each filter written, for lost
	dirty    map[ikey]bool
	presence bool          // the .n key is to be written
	seq      uint64        // changes asked for
	done     uint64        // changes written and synced
	doneCh   chan struct{} // closed when done moves
	kick     chan struct{}
}

// init makes the writer's maps and channels.
func (w *interestWriter) init() {
	w.counts, w.keys, w.dirty = map[ikey]int{}, map[string]ikey{}, map[ikey]bool{}
	w.doneCh, w.kick = make(chan struct{}), make(chan struct{}, 1)
}

// change records that a filter gained (d = +1) or lost (-1) a session, and
// returns the change's number if the key is to be written.
func (w *interestWriter) change(k ikey, d int) (seq uint64) {
	w.mu.Lock()
	defer w.mu.Unlock()
	n := w.counts[k] + d
	switch {
	case n > 0:
		w.counts[k] = n
	default:
		delete(w.counts, k)
	}
	if (d > 0 && n != 1) || (d < 0 && n > 0) {
		return 0
	}
	w.dirty[k] = true
	w.seq++
	w.kickLocked()
	return w.seq
}

// kickLocked wakes the writer goroutine; w.mu is held.
func (w *interestWriter) kickLocked() {
	select {
	case w.kick <- struct{}{}:
	default:
	}
}

// announce asks for the .n key and every filter to be written again.
func (w *interestWriter) announce() uint64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.presence = true
	for k := range w.counts {
		w.dirty[k] = true
	}
	w.seq++
	w.kickLocked()
	return w.seq
}

// lost handles the deletion of one of this node's keys, seen by the
// watcher: a node that found this one gone purged them while it is still
// here (or it is the node's own deletion, and nothing is to be done).
func (w *interestWriter) lost(key string, serving bool) {
	if !serving {
		return
	}
	if strings.HasSuffix(key, ".n") {
		w.announce()
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if k, ok := w.keys[key]; ok && w.counts[k] > 0 {
		w.dirty[k] = true
		w.seq++
		w.kickLocked()
	}
}

// wait waits until change seq is written and synced, syncTimeout at most: a
// SUBACK is not held longer when NATS is in trouble.
func (w *interestWriter) wait(seq uint64, stop <-chan struct{}) {
	t := time.NewTimer(syncTimeout)
	defer t.Stop()
	for {
		w.mu.Lock()
		done, ch := w.done, w.doneCh
		w.mu.Unlock()
		if done >= seq {
			return
		}
		select {
		case <-ch:
		case <-t.C:
			return
		case <-stop:
			return
		}
	}
}

// writeInterest is the one goroutine that writes this node's interest keys,
// so that the writes of a key keep the order of the changes: each pass
// writes the latest state of the keys changed since the one before.
func (cl *cluster) writeInterest() {
	w := &cl.mine
	backoff := 100 * time.Millisecond
	for {
		select {
		case <-cl.stop:
			return
		case <-w.kick:
		}
		for !cl.writeInterestOnce() {
			select {
			case <-cl.stop:
				return
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, 2*time.Second)
		}
		backoff = 100 * time.Millisecond
	}
}

// writeInterestOnce writes the keys changed, then syncs the nodes if any
// was put; it reports false if a write failed (the key stays to write).
func (cl *cluster) writeInterestOnce() bool {
	w := &cl.mine
	w.mu.Lock()
	target, presence, dirty := w.seq, w.presence, w.dirty
	w.presence, w.dirty = false, map[ikey]bool{}
	w.mu.Unlock()
	ctx, cancel := context.WithTimeout(cl.stopCtx, kvTimeout)
	defer cancel()
	var last uint64
	ok := true
	if presence {
		rev, err := cl.interestKV.Put(ctx, cl.node+".n", nil)
		if err != nil {
			cl.log.Warn("cluster: announcing the node", "err", err)
			w.mu.Lock()
			w.presence, ok = true, false
			w.mu.Unlock()
		}
		last = max(last, rev)
	}
	for k := range dirty {
		token, _ := keyToken(k.mountpoint, k.s)
		key := cl.node + ".f." + token
		w.mu.Lock()
		want := w.counts[k] > 0
		if want {
			w.keys[key] = k
		} else {
			delete(w.keys, key)
		}
		w.mu.Unlock()
		var err error
		if want {
			var rev uint64
			rev, err = cl.interestKV.Put(ctx, key, encodeInterest(k.mountpoint, k.s))
			last = max(last, rev)
		} else {
			err = cl.interestKV.Delete(ctx, key)
		}
		if err != nil {
			cl.log.Warn("cluster: writing a subscription to the interest bucket", "filter", k.s, "err", err)
			w.mu.Lock()
			w.dirty[k], ok = true, false
			w.mu.Unlock()
		}
	}
	if !ok {
		return false
	}
	if last > 0 {
		cl.syncInterest(last)
	}
	w.mu.Lock()
	if target > w.done {
		w.done = target
		close(w.doneCh)
		w.doneCh = make(chan struct{})
	}
	w.mu.Unlock()
	return true
}

// clusterRouter is the Core's Router on a node of a cluster: the broker's
// router, and this node's filters in the interest bucket. Add waits until
// the other nodes know of a new filter, so that the SUBACK (or the CONNACK
// of a session that came from another node) means they route to it.
type clusterRouter struct {
	local *router
	cl    *cluster
	mu    *sync.Mutex // the local router's subscriptions and the counts change together
}

// router returns the Router of the node's Core.
func (cl *cluster) router() clusterRouter {
	return clusterRouter{local: cl.srv.router, cl: cl, mu: &cl.rmu}
}

// Add records the subscription locally, and waits until every node knows
// of its filter if it is new on this node.
func (r clusterRouter) Add(id mqtthooks.SubscriberID, gen uint64, sub mqtthooks.Subscription) {
	r.mu.Lock()
	existed := r.local.has(id, sub.Filter)
	r.local.Add(id, gen, sub)
	var seq uint64
	if !existed {
		seq = r.cl.mine.change(ikey{id.Mountpoint, sub.Filter}, +1)
	}
	r.mu.Unlock()
	if seq != 0 {
		r.cl.mine.wait(seq, r.cl.stop)
	}
	r.cl.arrived(id, sub.Filter)
}

// Remove forgets the subscription, and the node's filter if no other
// session here has it; nobody waits: a node that still sends for it finds
// no subscriber.
func (r clusterRouter) Remove(id mqtthooks.SubscriberID, gen uint64, filter string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.local.has(id, filter) {
		r.cl.mine.change(ikey{id.Mountpoint, filter}, -1)
	}
	r.local.Remove(id, gen, filter)
}

// RemoveAll forgets every subscription of id, as Remove does each.
func (r clusterRouter) RemoveAll(id mqtthooks.SubscriberID, gen uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, f := range r.local.filters(id) {
		r.cl.mine.change(ikey{id.Mountpoint, f}, -1)
	}
	r.local.RemoveAll(id, gen)
}

// --- Forwarding ---

// target is a node a message goes to, with the shared subscriptions it
// delivers it for.
type target struct {
	node   string
	shares []string
}

// targets returns the other nodes whose filters match topic.
func (cl *cluster) targets(mountpoint, topic string) []target {
	ms := cl.interest.matches(mountpoint, topic, mqtthooks.SubscriberID{})
	if len(ms) == 0 {
		return nil
	}
	out := make([]target, 0, len(ms))
	for _, m := range ms {
		if m.shared && cl.srv.router.hasShared(mountpoint, m.share) {
			continue // a member here gets it
		}
		i := slices.IndexFunc(out, func(t target) bool { return t.node == m.id.ClientID })
		if i < 0 {
			out = append(out, target{node: m.id.ClientID})
			i = len(out) - 1
		}
		if m.shared {
			out[i].shares = append(out[i].shares, m.share)
		}
	}
	return out
}

// publish routes a client's PUBLISH on this node and forwards it to the
// other nodes that need it. With r (QoS 1 and 2) it reports whether it took
// r over: then it closes r once the other nodes' copies are durable, having
// withdrawn rep if they are not, and the caller must not close r.
//
// A QoS 1 or 2 PUBLISH matching the filters of a session that is moving to
// another node is refused at once (r fails; see clustermove.go), routed
// nowhere. ref names a QoS 2 PUBLISH for its resends (see resendWindow).
func (cl *cluster) publish(from mqtthooks.SubscriberID, msg *mqtthooks.Message, ref resendRef, r *mqtthooks.Receipt) bool {
	sent := cl.resent.begin(from, ref)
	if r != nil && cl.moved.refuses(from.Mountpoint, msg.Topic) {
		cl.log.Info("cluster: a PUBLISH is refused while a session it matches moves to another node", "client",
			from.String(), "topic", msg.Topic)
		r.Fail(errMoving)
		return false
	}
	if msg.Retain {
		cl.srv.router.retain(from.Mountpoint, msg)
	}
	cl.deliver(from, msg, sent, nil, true, r)
	if r == nil {
		cl.forward(from, msg, ref, nil)
		return false
	}
	return cl.forward(from, msg, ref, func(err error) {
		if err != nil {
			cl.log.Warn("cluster: a PUBLISH is not acknowledged: another node did not store it", "client",
				from.String(), "topic", msg.Topic, "err", err)
			r.Fail(err)
		}
		r.Close()
	})
}

// publishWill publishes a Will for the Core, on every node; it waits, within
// routeTimeout, until the other nodes' copies are durable.
func (cl *cluster) publishWill(ctx context.Context, id mqtthooks.SubscriberID, w *mqtthooks.Will) {
	cl.srv.route(id, &w.Message, nil)
	done := make(chan error, 1)
	if !cl.forward(id, &w.Message, resendRef{}, func(err error) { done <- err }) {
		return
	}
	select {
	case err := <-done:
		if err != nil {
			cl.log.Warn("cluster: a Will did not reach every node", "client", id.String(), "topic", w.Message.Topic, "err", err)
		}
	case <-ctx.Done():
	}
}

// forward sends msg to the nodes whose filters match, and writes it to the
// retained bucket if it is retained. With done, each node answers when its
// copies are durable; forward then reports true, and done is called once,
// with the first error. Without done nothing is answered.
func (cl *cluster) forward(from mqtthooks.SubscriberID, msg *mqtthooks.Message, ref resendRef, done func(error)) bool {
	targets := cl.targets(from.Mountpoint, msg.Topic)
	if len(targets) == 0 && !msg.Retain {
		return false
	}
	var w *fwdWait
	rm := routeMsg{boot: cl.boot, from: from, ref: ref, msg: msg}
	if done != nil {
		w = cl.fwd.newWait(done, cl.timing.routeTimeout())
		rm.seq = cl.seq.Add(1)
	}
	if msg.Retain {
		cl.putRetained(from.Mountpoint, msg, w)
	}
	var plain []byte
	for _, t := range targets {
		var data []byte
		if len(t.shares) == 0 {
			if plain == nil {
				plain = encodeRoute(&rm)
			}
			data = plain
		} else {
			rm.shares = t.shares
			data = encodeRoute(&rm)
			rm.shares = nil
		}
		m := &nats.Msg{Subject: cl.subject("route", t.node), Data: data}
		if w == nil {
			if err := cl.nc.PublishMsg(m); err != nil {
				cl.log.Warn("cluster: forwarding a message", "other", t.node, "err", err)
			}
			continue
		}
		cl.call(w, &call{m: m, node: t.node})
	}
	if w == nil {
		return false
	}
	cl.startWait(w)
	return true
}

// putRetained writes a retained message to the retained bucket, or deletes
// its topic's for an empty payload: a KV write, published directly on the
// bucket's subject so that the routing goroutine does not wait for it (and
// the writes of one node keep their order); w, if set, waits for
// JetStream's acknowledgement.
func (cl *cluster) putRetained(mountpoint string, msg *mqtthooks.Message, w *fwdWait) {
	token, _ := keyToken(mountpoint, msg.Topic)
	m := nats.NewMsg("$KV." + retainedBucket + "." + token)
	if len(msg.Payload) == 0 {
		m.Header.Set("KV-Operation", "DEL")
	} else {
		m.Data = encodeRetained(mountpoint, msg)
	}
	if w == nil {
		if err := cl.nc.PublishMsg(m); err != nil {
			cl.log.Warn("cluster: writing a retained message", "topic", msg.Topic, "err", err)
		}
		return
	}
	cl.call(w, &call{m: m, js: true})
}

// forwarder matches the answers to this node's requests (forwarded
// PUBLISHes, retained writes) with what waits for them: one subscription on
// an inbox, a token per request, so that sending does not block the
// routing goroutine and requests keep their order.
type forwarder struct {
	prefix string // answers come on prefix.<id>
	mu     sync.Mutex
	calls  map[uint64]*call
	next   uint64
}

// call is one request in flight.
type call struct {
	m    *nats.Msg // with its Reply set; sent again as it is
	node string    // the node asked, or "" for a JetStream write
	js   bool      // a JetStream write: its answer is a PubAck
	w    *fwdWait
}

// fwdWait is the requests of one message, and what to call when all have
// been answered.
type fwdWait struct {
	pending  atomic.Int64 // the requests unanswered, plus one until startWait
	mu       sync.Mutex   // err and timer
	err      error
	done     func(error)
	ids      []uint64 // the requests; complete before startWait
	deadline time.Time
	timer    *time.Timer
}

// newWait returns a wait for the requests of one message, which fails
// after timeout; done runs once, after startWait and the last answer.
func (f *forwarder) newWait(done func(error), timeout time.Duration) *fwdWait {
	w := &fwdWait{done: done, deadline: time.Now().Add(timeout)}
	w.pending.Store(1)
	return w
}

// call sends c as a request of w.
func (cl *cluster) call(w *fwdWait, c *call) {
	f := &cl.fwd
	c.w = w
	f.mu.Lock()
	f.next++
	id := f.next
	f.calls[id] = c
	f.mu.Unlock()
	c.m.Reply = f.prefix + "." + strconv.FormatUint(id, 10)
	w.ids = append(w.ids, id)
	w.pending.Add(1)
	if err := cl.nc.PublishMsg(c.m); err != nil && !c.js {
		// Not sent: the retry sends it again, or the deadline fails it.
		cl.log.Debug("cluster: forwarding a message", "other", c.node, "err", err)
	} else if err != nil {
		if c := f.take(id); c != nil {
			w.complete(err)
		}
	}
}

// startWait arms w's retries and deadline, and lets it complete.
func (cl *cluster) startWait(w *fwdWait) {
	if len(w.ids) > 0 {
		w.mu.Lock() // the timer may fire before AfterFunc returns
		w.timer = time.AfterFunc(cl.timing.retryEvery(), func() { cl.retryWait(w) })
		w.mu.Unlock()
	}
	w.complete(nil)
}

// retryWait sends w's unanswered requests to nodes again, or fails them
// once w's deadline has passed. JetStream writes are not sent again: a
// second write of the same key could land after a later one.
func (cl *cluster) retryWait(w *fwdWait) {
	f := &cl.fwd
	expired := !time.Now().Before(w.deadline)
	again := false
	for _, id := range w.ids {
		if expired {
			if c := f.take(id); c != nil {
				w.complete(fmt.Errorf("cluster: no answer within %v (node %q)", cl.timing.routeTimeout(), c.node))
			}
			continue
		}
		f.mu.Lock()
		c := f.calls[id]
		f.mu.Unlock()
		if c != nil {
			again = true
			if !c.js {
				_ = cl.nc.PublishMsg(c.m)
			}
		}
	}
	if !expired && again {
		w.mu.Lock()
		w.timer.Reset(max(min(cl.timing.retryEvery(), time.Until(w.deadline)), 0))
		w.mu.Unlock()
	}
}

// take removes and returns the request id, if it is still in flight.
func (f *forwarder) take(id uint64) *call {
	f.mu.Lock()
	defer f.mu.Unlock()
	c := f.calls[id]
	delete(f.calls, id)
	return c
}

// failAll fails every request in flight, at shutdown.
func (f *forwarder) failAll(err error) {
	f.mu.Lock()
	calls := f.calls
	f.calls = map[uint64]*call{}
	f.mu.Unlock()
	for _, c := range calls {
		c.w.complete(err)
	}
}

// complete counts one answer of w, with its error, and calls done after
// the last.
func (w *fwdWait) complete(err error) {
	if err != nil {
		w.mu.Lock()
		if w.err == nil {
			w.err = err
		}
		w.mu.Unlock()
	}
	if w.pending.Add(-1) != 0 {
		return
	}
	w.mu.Lock()
	if w.timer != nil {
		w.timer.Stop()
	}
	err = w.err
	w.mu.Unlock()
	w.done(err)
}

// onReply takes an answer to one of this node's requests.
func (cl *cluster) onReply(m *nats.Msg) {
	token, ok := strings.CutPrefix(m.Subject, cl.fwd.prefix+".")
	if !ok {
		return
	}
	id, err := strconv.ParseUint(token, 10, 64)
	if err != nil {
		return
	}
	c := cl.fwd.take(id)
	if c == nil {
		return // answered already, or failed
	}
	noResponders := len(m.Data) == 0 && m.Header.Get("Status") == "503"
	switch {
	case noResponders && c.js:
		err = errors.New("cluster: JetStream did not answer a retained message's write")
	case noResponders:
		// The node is gone, and its sessions with it until another node
		// adopts them: their copies are stored nowhere yet, so the PUBLISH
		// is not acknowledged, and its client sends it again. Once the
		// sessions are adopted, their new nodes' interest takes over and the
		// gone node's keys are purged (purgeNode).
		err = fmt.Errorf("cluster: node %s does not answer; its sessions are not yet adopted", c.node)
		cl.purgeNode(c.node)
	case c.js:
		err = pubAckError(m.Data)
	default:
		err = decodeReply(m.Data)
	}
	c.w.complete(err)
}

// pubAckError reads JetStream's answer to a publish.
func pubAckError(data []byte) error {
	var ack struct {
		Error *struct {
			Code        int    `json:"err_code"`
			Description string `json:"description"`
		} `json:"error"`
		Stream string `json:"stream"`
	}
	if err := json.Unmarshal(data, &ack); err != nil {
		return fmt.Errorf("cluster: JetStream answered %q: %w", data, err)
	}
	if ack.Error != nil {
		return fmt.Errorf("cluster: JetStream refused a retained message: %s (%d)", ack.Error.Description, ack.Error.Code)
	}
	if ack.Stream == "" {
		return fmt.Errorf("cluster: JetStream answered %q", data)
	}
	return nil
}

// --- Receiving forwarded messages ---

// serveRoute routes a PUBLISH forwarded by another node to this node's
// sessions. It runs on the subscription's goroutine, one message after
// another, in the order each node sent them: Deliver does not wait.
func (cl *cluster) serveRoute(m *nats.Msg) {
	rm, err := decodeRoute(m.Data)
	if err != nil {
		cl.log.Warn("cluster: a forwarded message this release cannot read", "err", err)
		if m.Reply != "" {
			cl.resp.send(m.Reply, encodeReply(err))
		}
		return
	}
	if rm.seq == 0 || m.Reply == "" {
		cl.deliverForwarded(rm, nil)
		return
	}
	e, first := cl.dedup.begin(dedupKey{rm.boot, rm.seq}, m.Reply)
	if !first {
		if replies, ok, err := cl.dedup.answered(e); ok { // a request sent again after its answer
			for _, reply := range replies {
				cl.resp.send(reply, encodeReply(err))
			}
		}
		return
	}
	r := mqtthooks.NewReceipt(func(err error) {
		replies := cl.dedup.finish(e, err)
		for _, reply := range replies {
			cl.resp.send(reply, encodeReply(err))
		}
	})
	cl.deliverForwarded(rm, r)
	r.Close()
}

// deliverForwarded hands a forwarded message to this node's sessions whose
// subscriptions match, and to one member of each shared subscription the
// sending node named. It is route's loop without retaining (the retained
// bucket brings retained messages) and with the shares of the request.
// A QoS 1 or 2 message matching the filters of a session moving away from
// this node is refused (r fails) and delivered to nobody here.
func (cl *cluster) deliverForwarded(rm *routeMsg, r *mqtthooks.Receipt) {
	sent := cl.resent.begin(rm.from, rm.ref)
	if r != nil && cl.moved.refuses(rm.from.Mountpoint, rm.msg.Topic) {
		r.Fail(errMoving)
		return
	}
	cl.deliver(rm.from, rm.msg, sent, rm.shares, false, r)
}

// deliver hands msg, published by from, to this node's sessions whose
// subscriptions match, and to one member of each shared subscription in
// shares (each that matches if all is set), but for those that sent, the
// resendWindow entry of a QoS 2 message, reached already. A session that
// begins moving away meanwhile (matched, or not, before its filters became
// moved ones) fails r: the message is refused, and its resend skips those
// it reached.
func (cl *cluster) deliver(from mqtthooks.SubscriberID, msg *mqtthooks.Message, sent *resendEntry, shares []string, all bool, r *mqtthooks.Receipt) {
	s, mp := cl.srv, from.Mountpoint
	defer func() {
		if r != nil && cl.moved.refuses(mp, msg.Topic) {
			r.Fail(errMoving)
		}
	}()
	for _, m := range s.router.matches(mp, msg.Topic, from) {
		to := m.id
		if m.shared {
			if !all && !slices.Contains(shares, m.share) {
				continue // the sending node or another delivers for it
			}
			to = mqtthooks.SubscriberID{Mountpoint: mp, ClientID: m.share}
		}
		if cl.resent.reached(sent, to) {
			continue
		}
		err := s.deliverMatch(mp, m, msg, r)
		switch {
		case err == nil:
			cl.resent.reach(sent, to)
		case errors.Is(err, mqtthooks.ErrSessionNotFound), errors.Is(err, mqtthooks.ErrNotOwner):
		default:
			cl.log.Warn("deliver", "session", m.id.String(), "err", err)
		}
	}
}

// dedupKey names a forwarded message: its sending process and its id there.
type dedupKey struct{ boot, seq uint64 }

// dedup remembers the last forwarded messages answered (or being answered)
// by this node, so that a request sent again is answered without routing
// its message twice: a bounded window, the oldest forgotten first.
type dedup struct {
	mu   sync.Mutex
	m    map[dedupKey]*dedupEntry
	ring []dedupKey
	pos  int
}

// dedupEntry is one forwarded message: the answers owed until its copies
// are durable, then its outcome.
type dedupEntry struct {
	done    bool
	err     error
	replies []string
}

// init sizes the window to n messages.
func (d *dedup) init(n int) {
	d.m, d.ring = make(map[dedupKey]*dedupEntry, n), make([]dedupKey, n)
}

// begin records a request for k, answered on reply; first is false if k was
// seen already (reply then waits with the others, or answered reads it).
func (d *dedup) begin(k dedupKey, reply string) (e *dedupEntry, first bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if e := d.m[k]; e != nil {
		e.replies = append(e.replies, reply)
		return e, false
	}
	if old := d.ring[d.pos]; old != (dedupKey{}) {
		delete(d.m, old)
	}
	d.ring[d.pos] = k
	d.pos = (d.pos + 1) % len(d.ring)
	e = &dedupEntry{replies: []string{reply}}
	d.m[k] = e
	return e, true
}

// answered returns the replies owed by an entry whose outcome is known.
func (d *dedup) answered(e *dedupEntry) (replies []string, ok bool, err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if !e.done {
		return nil, false, nil
	}
	replies = e.replies
	e.replies = nil
	return replies, true, e.err
}

// finish records e's outcome and returns the replies owed.
func (d *dedup) finish(e *dedupEntry, err error) []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	e.done, e.err = true, err
	replies := e.replies
	e.replies = nil
	return replies
}

// responder sends answers from one goroutine: a Receipt's done may run
// while the Core holds a session's lock, and must not wait for a socket.
type responder struct {
	mu    sync.Mutex
	queue []*nats.Msg
	wake  chan struct{}
	nc    *nats.Conn
	stop  <-chan struct{}
}

// init sets the connection the answers go out on, and what stops run.
func (r *responder) init(nc *nats.Conn, stop <-chan struct{}) {
	r.wake, r.nc, r.stop = make(chan struct{}, 1), nc, stop
}

// send queues an answer; it never blocks.
func (r *responder) send(subject string, data []byte) {
	r.mu.Lock()
	r.queue = append(r.queue, &nats.Msg{Subject: subject, Data: data})
	r.mu.Unlock()
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// run sends the queued answers until stop closes.
func (r *responder) run() {
	for {
		select {
		case <-r.stop:
			return
		case <-r.wake:
		}
		r.mu.Lock()
		q := r.queue
		r.queue = nil
		r.mu.Unlock()
		for _, m := range q {
			_ = r.nc.PublishMsg(m)
		}
	}
}

// --- Retained messages ---

// applyRetained applies a change of the retained bucket to the local
// retained messages.
func (cl *cluster) applyRetained(e jetstream.KeyValueEntry) {
	key := e.Key()
	rt := cl.srv.router
	if e.Operation() != jetstream.KeyValuePut {
		mp, topic, ok := parseKeyToken(key)
		if !ok {
			k, known := cl.rhashed[key]
			if !known {
				return
			}
			delete(cl.rhashed, key)
			mp, topic = k.mountpoint, k.s
		}
		rt.retain(mp, &mqtthooks.Message{Topic: topic}) // an empty payload clears it
		return
	}
	mp, m, err := decodeRetained(e.Value())
	if err != nil {
		cl.log.Warn("cluster: a retained message this release cannot read", "key", key, "err", err)
		return
	}
	if strings.HasPrefix(key, "h") {
		cl.rhashed[key] = ikey{mp, m.Topic}
	}
	if exp := m.Properties.MessageExpiryInterval; exp.Set {
		left := time.Duration(exp.V)*time.Second - time.Since(e.Created())
		if left <= 0 {
			rt.retain(mp, &mqtthooks.Message{Topic: m.Topic})
			return
		}
		m.Properties.MessageExpiryInterval = mqtthooks.Some(uint32((left + time.Second - 1) / time.Second))
	}
	m.Retain = true
	rt.retain(mp, m)
}

// retainedBarrier waits, syncTimeout at most, until this node has applied
// every retained message the bucket held when it was called.
func (cl *cluster) retainedBarrier(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, syncTimeout)
	defer cancel()
	st, err := cl.retainedKV.Status(ctx)
	if err != nil {
		cl.log.Warn("cluster: reading the retained bucket's state", "err", err)
		return
	}
	bs, ok := st.(*jetstream.KeyValueBucketStatus)
	if !ok {
		return
	}
	if err := cl.rprog.wait(ctx, bs.StreamInfo().State.LastSeq, cl.stop); err != nil {
		cl.log.Warn("cluster: waiting for the retained messages", "err", err)
	}
}

// progress is how far a watcher has applied its bucket.
type progress struct {
	mu  sync.Mutex
	rev uint64
	ch  chan struct{} // closed when rev moves
}

// init makes the channel of the first advance.
func (p *progress) init() { p.ch = make(chan struct{}) }

// advance records that the watcher applied rev, and wakes the waiters.
func (p *progress) advance(rev uint64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if rev > p.rev {
		p.rev = rev
		close(p.ch)
		p.ch = make(chan struct{})
	}
}

// wait waits until the watcher has applied rev.
func (p *progress) wait(ctx context.Context, rev uint64, stop <-chan struct{}) error {
	for {
		p.mu.Lock()
		cur, ch := p.rev, p.ch
		p.mu.Unlock()
		if cur >= rev {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		case <-stop:
			return errors.New("cluster: shutting down")
		}
	}
}
