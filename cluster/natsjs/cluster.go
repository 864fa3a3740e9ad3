package natsjs

import (
	"cmp"
	"context"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"regexp"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/mqtthooks/mqtthooks"
)

// ClusterOptions configure a Cluster.
type ClusterOptions struct {
	// Node names this node: unique among the nodes, made of letters,
	// digits, '-' and '_'. Required.
	Node string
	// Conn is the connection to NATS; the caller owns it and closes it
	// after Core.Shutdown. Required.
	Conn *nats.Conn
	// Bucket prefixes the names of the two key-value buckets the cluster
	// keeps: <Bucket>_owners (which node owns each session) and
	// <Bucket>_nodes (the nodes alive); default "MQTTHOOKS".
	Bucket string
	// Replicas is how many servers keep the buckets; default 1. Use 3 in a
	// cluster of three or more NATS servers.
	Replicas int
	// Lease is how long a node that stopped renewing its presence still
	// counts as alive: the sessions of a node that died are claimed once
	// it ran out. The node renews it every Lease/4. Default 10 s.
	Lease time.Duration
	// Subject prefixes the subjects of the requests nodes send each other;
	// default "mqtthooks".
	Subject string
	// YieldTimeout bounds the hand-over of a session this node owns to a
	// node that claims it; default 10 s.
	YieldTimeout time.Duration
	// Logger receives what goes wrong; default slog.Default().
	Logger *slog.Logger
}

// Cluster is a mqtthooks.Cluster on NATS JetStream: session ownership in a
// key-value bucket, changed only by compare-and-set on the key's revision;
// nodes alive in a second bucket whose entries expire after the Lease; and
// the hand-over of a session by a request to the node that owns it. Give
// each node's Core its own Cluster, and one Store shared by all.
//
// A node that does not answer (it died, or lost NATS) keeps its sessions
// until its lease runs out; a claim meanwhile waits, within the claiming
// CONNECT's deadline. A node cut off from NATS but still running may still
// hold sessions that another node has claimed: the Store refuses its writes,
// since the claim renewed their generation.
type Cluster struct {
	opts   ClusterOptions
	log    *slog.Logger
	js     jetstream.JetStream
	owners jetstream.KeyValue
	nodes  jetstream.KeyValue

	adopting sync.Map // owner key → chan struct{}, closed once this node adopted it
	// revs holds, for each session this node owns, the revision of the
	// owners bucket that made it the owner (owner key → uint64): later
	// changes are conditional on it, without reading the key first (a read
	// may come from a replica that lags).
	revs sync.Map

	mu      sync.Mutex
	node    mqtthooks.ClusterNode
	sub     *nats.Subscription
	stop    chan struct{}
	unwatch context.CancelFunc // ends the watch of the nodes
	bg      sync.WaitGroup
	yield   sync.WaitGroup // hand-overs in flight
	handing chan struct{}  // a slot per hand-over in flight, up to maxHandOvers
}

var nodeName = regexp.MustCompile(`^[A-Za-z0-9_-]+$`)

// NewCluster creates or opens the buckets of a cluster on opts.Conn.
func NewCluster(ctx context.Context, opts ClusterOptions) (*Cluster, error) {
	if !nodeName.MatchString(opts.Node) {
		return nil, fmt.Errorf("%w: node name %q: want letters, digits, '-' and '_'", mqtthooks.ErrInvalidArgument, opts.Node)
	}
	if opts.Conn == nil {
		return nil, fmt.Errorf("%w: ClusterOptions.Conn is nil", mqtthooks.ErrInvalidArgument)
	}
	opts.Bucket = cmp.Or(opts.Bucket, "MQTTHOOKS")
	opts.Replicas = cmp.Or(opts.Replicas, 1)
	opts.Lease = cmp.Or(opts.Lease, 10*time.Second)
	opts.Subject = cmp.Or(opts.Subject, "mqtthooks")
	opts.YieldTimeout = cmp.Or(opts.YieldTimeout, 10*time.Second)
	if opts.Lease < 100*time.Millisecond {
		return nil, fmt.Errorf("%w: Lease %v is below 100ms", mqtthooks.ErrInvalidArgument, opts.Lease)
	}
	js, err := jetstream.New(opts.Conn)
	if err != nil {
		return nil, fmt.Errorf("natsjs: %w", err)
	}
	c := &Cluster{opts: opts, log: cmp.Or(opts.Logger, slog.Default()), js: js, stop: make(chan struct{}),
		handing: make(chan struct{}, maxHandOvers)}
	c.owners, err = js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: opts.Bucket + "_owners",
		Replicas: opts.Replicas, Storage: jetstream.FileStorage,
		LimitMarkerTTL: ownerMarkerTTL}) // the markers of disowned sessions expire
	if err != nil {
		return nil, fmt.Errorf("natsjs: the owners bucket: %w", err)
	}
	c.nodes, err = js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: opts.Bucket + "_nodes",
		Replicas: opts.Replicas, Storage: jetstream.FileStorage, TTL: opts.Lease,
		LimitMarkerTTL: max(opts.Lease, time.Second)}) // a lease that runs out leaves a marker watchers see
	if err != nil {
		return nil, fmt.Errorf("natsjs: the nodes bucket: %w", err)
	}
	return c, nil
}

// Join makes the node present and starts answering the claims of other
// nodes on sessions it owns.
func (c *Cluster) Join(n mqtthooks.ClusterNode) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.node != nil {
		return fmt.Errorf("%w: node %s joined twice", mqtthooks.ErrInvalidArgument, c.opts.Node)
	}
	ctx, cancel := context.WithTimeout(context.Background(), c.opts.Lease)
	defer cancel()
	if _, err := c.nodes.Put(ctx, c.opts.Node, nil); err != nil {
		return fmt.Errorf("natsjs: announcing node %s: %w", c.opts.Node, err)
	}
	sub, err := c.opts.Conn.Subscribe(c.yieldSubject(c.opts.Node), c.serveYield)
	if err != nil {
		return fmt.Errorf("natsjs: %w", err)
	}
	if err := c.opts.Conn.FlushWithContext(ctx); err != nil { // the subscription is in place before a claim can come
		_ = sub.Unsubscribe()
		return fmt.Errorf("natsjs: %w", err)
	}
	wctx, wcancel := context.WithCancel(context.Background())
	w, err := c.nodes.WatchAll(wctx)
	if err != nil {
		wcancel()
		_ = sub.Unsubscribe()
		return fmt.Errorf("natsjs: watching the nodes: %w", err)
	}
	ow, err := c.owners.WatchAll(wctx, jetstream.UpdatesOnly(), jetstream.IgnoreDeletes())
	if err != nil {
		wcancel()
		_ = sub.Unsubscribe()
		return fmt.Errorf("natsjs: watching the owners: %w", err)
	}
	c.unwatch = wcancel
	c.node, c.sub = n, sub
	c.bg.Add(3)
	go c.renew()
	go c.watchNodes(w)
	go c.watchOwners(ow)
	return nil
}

// watchOwners has the Core forget a session this node holds as soon as the
// owners bucket names another node for it: one that took this node for
// gone (a lease it saw run out while JetStream elected leaders, say) and
// adopted the session, whose renewal the writes of this node would
// otherwise keep from ever landing.
func (c *Cluster) watchOwners(w jetstream.KeyWatcher) {
	defer c.bg.Done()
	defer func() { _ = w.Stop() }()
	updates := w.Updates()
	for {
		select {
		case <-c.stop:
			return
		case e, ok := <-updates:
			if !ok {
				return
			}
			if e != nil {
				c.ownerChanged(e.Key(), string(e.Value()), e.Revision())
			}
		}
	}
}

// ownerChanged handles the owners bucket naming owner for key at revision
// rev: a session this node owned at an earlier revision is another node's.
func (c *Cluster) ownerChanged(key, owner string, rev uint64) {
	if owner == c.opts.Node {
		return
	}
	mine, ok := c.revs.Load(key)
	if !ok || mine.(uint64) >= rev || !c.revs.CompareAndDelete(key, mine) {
		return
	}
	id, err := parseOwnerKey(key)
	if err != nil {
		return
	}
	c.bg.Add(1)
	go func() {
		defer c.bg.Done()
		ctx, cancel := context.WithTimeout(context.Background(), c.opts.YieldTimeout)
		defer cancel()
		if err := c.node.Disowned(ctx, id); err != nil {
			c.log.Warn("natsjs: forgetting a session another node owns", "session", id.String(), "err", err)
		}
	}()
}

// watchNodes adopts the sessions of every node that is not alive when this
// one joins (and those still under this node's own name), and of every node
// whose lease runs out or that leaves later. The watch tells at once; a
// listing of the nodes every half lease catches what a watch can miss (its
// consumer may live on a server that died with the node).
func (c *Cluster) watchNodes(w jetstream.KeyWatcher) {
	defer c.bg.Done()
	defer func() { _ = w.Stop() }()
	alive := map[string]bool{}
	synced := false
	gone := func(node string) {
		delete(alive, node)
		if synced && node != c.opts.Node {
			c.adoptOrphans(func(owner string) bool { return owner == node })
		}
	}
	poll := time.NewTicker(c.opts.Lease / 2)
	defer poll.Stop()
	updates := w.Updates()
	for {
		select {
		case <-c.stop:
			return
		case <-poll.C:
			if !synced {
				continue
			}
			ctx, cancel := context.WithTimeout(context.Background(), c.opts.Lease/2)
			keys, err := c.nodes.Keys(ctx)
			cancel()
			if err != nil && !errors.Is(err, jetstream.ErrNoKeysFound) {
				continue
			}
			now := map[string]bool{}
			for _, k := range keys {
				now[k] = true
			}
			for node := range alive {
				if !now[node] {
					gone(node)
				}
			}
			for node := range now {
				alive[node] = true
			}
		case e, ok := <-updates:
			if !ok {
				updates = nil // the listing goes on
				continue
			}
			if e == nil { // the current nodes are all in: the owners of others are gone
				synced = true
				// This node's own name among them: a process before this
				// one, that died or left, under the same name.
				c.adoptOrphans(func(owner string) bool { return !alive[owner] || owner == c.opts.Node })
				continue
			}
			if e.Operation() == jetstream.KeyValuePut {
				alive[e.Key()] = true
				continue
			}
			gone(e.Key())
		}
	}
}

// adoptOrphans claims each session whose owner gone says is gone, and hands
// those it won to the Core. Every node alive races for each session; the
// compare-and-set on its owner decides, once, for the whole cluster.
func (c *Cluster) adoptOrphans(gone func(owner string) bool) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-c.stop:
			cancel()
		case <-ctx.Done():
		}
	}()
	w, err := c.owners.WatchAll(ctx, jetstream.IgnoreDeletes())
	if err != nil {
		if ctx.Err() == nil { // not Leave
			c.log.Error("natsjs: listing the owners of sessions", "err", err)
		}
		return
	}
	defer func() { _ = w.Stop() }()
	type orphan struct {
		key string
		rev uint64
	}
	var orphans []orphan
	for e := range w.Updates() {
		if e == nil {
			break
		}
		if gone(string(e.Value())) {
			orphans = append(orphans, orphan{e.Key(), e.Revision()})
		}
	}
	// Each node goes through them in an order of its own, so that the nodes
	// alive share the work instead of racing for the same sessions.
	rand.Shuffle(len(orphans), func(i, j int) { orphans[i], orphans[j] = orphans[j], orphans[i] })
	work := make(chan orphan)
	var wg sync.WaitGroup
	for range adoptWorkers {
		wg.Go(func() {
			for o := range work {
				id, err := parseOwnerKey(o.key)
				if err != nil {
					c.log.Error("natsjs: a malformed key in the owners bucket", "key", o.key, "err", err)
					continue
				}
				// Claims wait until the adoption is over: the Core holds
				// nothing to hand over before.
				done := make(chan struct{})
				c.adopting.Store(o.key, done)
				rev, err := c.casOrphan(ctx, o.key, o.rev, gone)
				if err == nil {
					c.revs.Store(o.key, rev)
				}
				if err != nil {
					c.adopting.Delete(o.key)
					close(done)
					if !errors.Is(err, jetstream.ErrKeyRevisionMismatch) && ctx.Err() == nil {
						c.log.Warn("natsjs: adopting a session", "session", id.String(), "err", err)
					}
					continue // another node adopted it, or a client claimed it
				}
				if err := c.node.Adopt(ctx, id); err != nil {
					c.log.Error("natsjs: adopting a session; trying again", "session", id.String(), "err", err)
					c.bg.Add(1)
					go func() { // adopting until it is installed: a broker may wait for that (Adopting)
						defer c.bg.Done()
						c.adoptAgain(id)
						c.adopting.Delete(o.key)
						close(done)
					}()
					continue
				}
				c.adopting.Delete(o.key)
				close(done)
			}
		})
	}
	for _, o := range orphans {
		work <- o
	}
	close(work)
	wg.Wait()
}

// adoptAgain asks the Core to adopt id until it has, with a growing pause,
// while this node owns it and runs.
func (c *Cluster) adoptAgain(id mqtthooks.SubscriberID) {
	wait := time.Second
	for {
		select {
		case <-c.stop:
			return
		case <-time.After(wait):
		}
		ctx, cancel := context.WithTimeout(context.Background(), c.opts.YieldTimeout)
		err := c.node.Adopt(ctx, id)
		if err == nil {
			cancel()
			return
		}
		_, oerr := c.ownRevision(ctx, ownerKey(id))
		cancel()
		if errors.Is(oerr, mqtthooks.ErrNotOwner) {
			return // another node has it now
		}
		wait = min(2*wait, 10*time.Second)
	}
}

// maxHandOvers bounds the hand-overs a node runs at once, each on a
// goroutine of its own while its hooks run.
const maxHandOvers = 1024

// casOrphan makes this node the owner of key, whose revision rev names an
// owner that is gone. A write that fails for another reason than a change
// of the key (JetStream electing a leader, say) is tried again, with the
// key read afresh, for as long as its owner is still one gone says is gone:
// a dead node's session left to it would be served by nobody.
func (c *Cluster) casOrphan(ctx context.Context, key string, rev uint64, gone func(owner string) bool) (uint64, error) {
	me := []byte(c.opts.Node)
	wait := 100 * time.Millisecond
	for {
		nrev, err := c.owners.Update(ctx, key, me, rev)
		if err == nil || errors.Is(err, jetstream.ErrKeyRevisionMismatch) || ctx.Err() != nil {
			return nrev, err
		}
		c.log.Warn("natsjs: adopting a session; trying again", "key", key, "err", err)
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-time.After(wait):
		}
		wait = min(2*wait, 5*time.Second)
		e, gerr := c.owners.Get(ctx, key)
		if gerr != nil {
			if errors.Is(gerr, jetstream.ErrKeyNotFound) {
				return 0, jetstream.ErrKeyRevisionMismatch // it ended meanwhile
			}
			continue // and read again after the next failure
		}
		if !gone(string(e.Value())) {
			return 0, jetstream.ErrKeyRevisionMismatch // another node took it
		}
		rev = e.Revision()
	}
}

// adoptWorkers bounds the adoptions a node runs at once.
const adoptWorkers = 16

// renew keeps the node's presence alive.
// A node that has not renewed its lease for half of it may have lost it by
// the time other nodes look: it isolates itself (ClusterNode.Isolated)
// before they adopt its sessions, once per loss.
func (c *Cluster) renew() {
	defer c.bg.Done()
	t := time.NewTicker(c.opts.Lease / 4)
	defer t.Stop()
	last := time.Now()
	isolated := false
	var held []string // the owner keys this node held when it isolated itself
	for {
		select {
		case <-c.stop:
			return
		case <-t.C:
			ctx, cancel := context.WithTimeout(context.Background(), c.opts.Lease/4)
			_, err := c.nodes.Put(ctx, c.opts.Node, nil)
			cancel()
			if err == nil {
				// A renewal that came too late may have let the lease run
				// out in between, and other nodes adopt the sessions.
				if late := time.Since(last) >= c.opts.Lease*3/4; late && !isolated {
					held = c.isolate()
					isolated = true
				}
				last = time.Now()
				if isolated {
					// The lease holds again. The sessions no other node
					// adopted meanwhile (the lease may never have run out:
					// JetStream was only electing a leader) are still this
					// node's: take them back, or nobody would serve them.
					isolated = false
					c.bg.Add(1)
					go func(held []string) { // renewals go on meanwhile
						defer c.bg.Done()
						c.adoptOrphans(func(owner string) bool { return owner == c.opts.Node })
						c.auditHeld(held)
					}(held)
					held = nil
				}
				continue
			}
			c.log.Warn("natsjs: renewing the node's lease", "node", c.opts.Node, "err", err)
			if !isolated && time.Since(last) >= c.opts.Lease/2 {
				isolated = true
				held = c.isolate()
			}
		}
	}
}

// isolate tells the Core that this node lost its place in the cluster, and
// returns the owner keys it held.
func (c *Cluster) isolate() (held []string) {
	c.log.Error("natsjs: this node could not renew its lease; ending its sessions here, for other nodes to adopt",
		"node", c.opts.Node)
	ctx, cancel := context.WithTimeout(context.Background(), c.opts.YieldTimeout)
	defer cancel()
	c.revs.Range(func(k, _ any) bool {
		held = append(held, k.(string))
		return true
	})
	c.revs.Clear() // what this node owned, other nodes adopt
	c.node.Isolated(ctx)
	return held
}

// auditHeld tells the Core to forget, of the sessions this node held when
// it isolated itself, those another node owns now: the Core kept them if
// their new owner had not renewed them yet, and its writes would keep that
// owner from ever doing so.
func (c *Cluster) auditHeld(held []string) {
	for _, key := range held {
		select {
		case <-c.stop:
			return
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), c.opts.YieldTimeout)
		e, err := c.owners.Get(ctx, key)
		if err == nil && string(e.Value()) != c.opts.Node {
			if id, perr := parseOwnerKey(key); perr == nil {
				if derr := c.node.Disowned(ctx, id); derr != nil {
					c.log.Warn("natsjs: forgetting a session another node owns", "session", id.String(), "err", derr)
				}
			}
		}
		cancel()
	}
}

// Leave stops answering claims and withdraws the node's presence, so that
// other nodes claim its sessions at once.
func (c *Cluster) Leave(ctx context.Context) error {
	c.mu.Lock()
	sub := c.sub
	c.sub = nil
	c.mu.Unlock()
	if sub == nil {
		return nil
	}
	err := sub.Drain()
	close(c.stop)
	c.unwatch()
	c.bg.Wait()
	c.yield.Wait()
	return errors.Join(err, c.nodes.Purge(ctx, c.opts.Node))
}

// Adopting reports whether this node is adopting sessions of a node that is
// gone: it is making itself their owner, or its Core has not installed them
// yet (a failed Adopt is tried again until it succeeds or another node owns
// the session). Once no node owns a session of the gone node (the owners bucket) and
// no node is adopting, every one of them is installed on a node alive.
func (c *Cluster) Adopting() bool {
	busy := false
	c.adopting.Range(func(any, any) bool {
		busy = true
		return false
	})
	return busy
}

func (c *Cluster) yieldSubject(node string) string { return c.opts.Subject + ".yield." + node }

// Claim makes this node the owner of the session: at once if no node owns
// it, or its owner is gone; otherwise by asking the owner to hand it over.
func (c *Cluster) Claim(ctx context.Context, r *mqtthooks.ClaimRequest) error {
	key := ownerKey(r.Resume.SubscriberID)
	me := []byte(c.opts.Node)
	req, err := json.Marshal(toYieldMsg(r))
	if err != nil {
		return err
	}
	retry := min(c.opts.Lease/10, 100*time.Millisecond)
	for {
		e, err := c.owners.Get(ctx, key)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			var rev uint64
			if rev, err = c.owners.Create(ctx, key, me); err == nil {
				c.revs.Store(key, rev)
				return nil
			}
			if errors.Is(err, jetstream.ErrKeyExists) {
				continue // another node created it first: ask it
			}
		}
		if err != nil {
			return fmt.Errorf("natsjs: reading the owner of %s: %w", r.Resume.SubscriberID, err)
		}
		owner := string(e.Value())
		if owner == c.opts.Node {
			c.revs.Store(key, e.Revision())
			return nil
		}
		if _, err := c.nodes.Get(ctx, owner); errors.Is(err, jetstream.ErrKeyNotFound) {
			// Its lease ran out: take the session without it.
			rev, err := c.owners.Update(ctx, key, me, e.Revision())
			if err == nil {
				c.revs.Store(key, rev)
				return nil
			}
			if !errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
				return err
			}
			continue
		} else if err != nil {
			return fmt.Errorf("natsjs: reading the lease of node %s: %w", owner, err)
		}
		rev, err := c.askYield(ctx, owner, req)
		switch {
		case err == nil:
			c.revs.Store(key, rev)
			return nil
		case errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout):
			// The hand-over may have finished after all: then this node owns
			// the session, and must take it, or nobody would.
			rctx, cancel := context.WithTimeout(context.Background(), c.opts.Lease)
			e, rerr := c.owners.Get(rctx, key)
			cancel()
			if rerr == nil && string(e.Value()) == c.opts.Node {
				c.revs.Store(key, e.Revision())
				return nil
			}
			return err
		case errors.Is(err, mqtthooks.ErrNotOwner): // it was handed over meanwhile: ask again
		case errors.Is(err, nats.ErrNoResponders): // the owner is gone, its lease not yet
			select {
			case <-ctx.Done():
				return fmt.Errorf("natsjs: node %s owns %s and does not answer: %w", owner, r.Resume.SubscriberID, ctx.Err())
			case <-time.After(retry):
			}
		default:
			return err
		}
	}
}

// Disown drops this node's ownership of id.
func (c *Cluster) Disown(ctx context.Context, id mqtthooks.SubscriberID) error {
	key := ownerKey(id)
	rev, err := c.ownRevision(ctx, key)
	if err != nil {
		return err
	}
	err = c.owners.Purge(ctx, key, jetstream.LastRevision(rev), jetstream.PurgeTTL(ownerMarkerTTL))
	if errors.Is(err, jetstream.ErrKeyExists) || errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
		err = mqtthooks.ErrNotOwner
	}
	c.revs.Delete(key)
	return err
}

// ownRevision returns the revision that made this node the owner of key,
// or ErrNotOwner. It reads the key only if this node did not write it.
func (c *Cluster) ownRevision(ctx context.Context, key string) (uint64, error) {
	if rev, ok := c.revs.Load(key); ok {
		return rev.(uint64), nil
	}
	e, err := c.owners.Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return 0, mqtthooks.ErrNotOwner
	}
	if err != nil {
		return 0, err
	}
	if string(e.Value()) != c.opts.Node {
		return 0, mqtthooks.ErrNotOwner
	}
	return e.Revision(), nil
}

// ownerMarkerTTL is how long the owners bucket keeps the marker of a session
// that was disowned: the bucket holds live sessions, not every client id
// ever seen.
const ownerMarkerTTL = time.Minute

// yieldMsg is a claim as it travels to the owner.
type yieldMsg struct {
	Mountpoint  string `json:"mountpoint"`
	ClientID    string `json:"client_id"`
	Username    string `json:"username,omitempty"`
	HasUsername bool   `json:"has_username,omitempty"`
	CleanStart  bool   `json:"clean_start,omitempty"`
	Listener    string `json:"listener,omitempty"`
	Transport   string `json:"transport,omitempty"`
	Local       string `json:"local,omitempty"`
	Peer        string `json:"peer,omitempty"`
	ConnID      uint64 `json:"conn_id,omitempty"`
	// To is the claiming node.
	To string `json:"to"`
}

// yieldReply is the owner's answer.
type yieldReply struct {
	// Result is "ok", "refused" (the ResumePolicy), "not-owner" or "error".
	Result string `json:"result"`
	Error  string `json:"error,omitempty"`
	// Revision is, with "ok", the revision of the owners bucket that made
	// the claimant the owner.
	Revision uint64 `json:"revision,omitempty"`
}

func toYieldMsg(r *mqtthooks.ClaimRequest) *yieldMsg {
	res := &r.Resume
	m := &yieldMsg{Mountpoint: res.SubscriberID.Mountpoint, ClientID: res.SubscriberID.ClientID,
		Username: res.Username, HasUsername: res.HasUsername, CleanStart: res.CleanStart}
	if ci := res.Conn; ci != nil {
		m.Listener, m.Transport, m.ConnID = ci.Listener, ci.Transport, ci.ConnID
		if ci.Local.IsValid() {
			m.Local = ci.Local.String()
		}
		if ci.Peer.IsValid() {
			m.Peer = ci.Peer.String()
		}
	}
	return m
}

func (m *yieldMsg) resume() mqtthooks.ResumeRequest {
	ci := &mqtthooks.ConnInfo{Listener: m.Listener, Mountpoint: m.Mountpoint, Transport: m.Transport, ConnID: m.ConnID}
	ci.Local, _ = netip.ParseAddrPort(m.Local)
	ci.Peer, _ = netip.ParseAddrPort(m.Peer)
	return mqtthooks.ResumeRequest{SubscriberID: mqtthooks.SubscriberID{Mountpoint: m.Mountpoint, ClientID: m.ClientID},
		Username: m.Username, HasUsername: m.HasUsername, CleanStart: m.CleanStart, Conn: ci}
}

// askYield asks owner to hand the session over to this node.
func (c *Cluster) askYield(ctx context.Context, owner string, req []byte) (uint64, error) {
	msg := &yieldMsg{}
	_ = json.Unmarshal(req, msg)
	msg.To = c.opts.Node
	data, err := json.Marshal(msg)
	if err != nil {
		return 0, err
	}
	resp, err := c.opts.Conn.RequestWithContext(ctx, c.yieldSubject(owner), data)
	if err != nil {
		return 0, err
	}
	var rep yieldReply
	if err := json.Unmarshal(resp.Data, &rep); err != nil {
		return 0, fmt.Errorf("natsjs: node %s answered a claim with %q: %w", owner, resp.Data, err)
	}
	switch rep.Result {
	case "ok":
		return rep.Revision, nil
	case "refused":
		return 0, fmt.Errorf("%w: %s", mqtthooks.ErrResumeRefused, rep.Error)
	case "not-owner":
		return 0, mqtthooks.ErrNotOwner
	}
	return 0, fmt.Errorf("natsjs: node %s could not hand the session over: %s", owner, rep.Error)
}

// serveYield answers a claim on a session this node owns, on a goroutine
// of its own: the hand-over runs hooks.
func (c *Cluster) serveYield(m *nats.Msg) {
	c.mu.Lock()
	node := c.node
	if c.sub == nil { // leaving: its sessions go to other nodes
		c.mu.Unlock()
		data, _ := json.Marshal(yieldReply{Result: "not-owner"})
		_ = m.Respond(data)
		return
	}
	select {
	case c.handing <- struct{}{}:
	default: // too many at once: the claimant's CONNECT fails, and its client tries again
		c.mu.Unlock()
		data, _ := json.Marshal(yieldReply{Result: "error", Error: "too many hand-overs at once"})
		_ = m.Respond(data)
		return
	}
	c.yield.Add(1)
	c.mu.Unlock()
	go func() {
		defer func() { <-c.handing }()
		defer c.yield.Done()
		rep := c.handOver(node, m.Data)
		data, _ := json.Marshal(rep)
		if err := m.Respond(data); err != nil {
			c.log.Warn("natsjs: answering a claim", "err", err)
		}
	}()
}

func (c *Cluster) handOver(node mqtthooks.ClusterNode, data []byte) yieldReply {
	var msg yieldMsg
	if err := json.Unmarshal(data, &msg); err != nil || !nodeName.MatchString(msg.To) {
		return yieldReply{Result: "error", Error: fmt.Sprintf("malformed claim %q", data)}
	}
	ctx, cancel := context.WithTimeout(context.Background(), c.opts.YieldTimeout)
	defer cancel()
	res := msg.resume()
	key := ownerKey(res.SubscriberID)
	if done, ok := c.adopting.Load(key); ok {
		select {
		case <-done.(chan struct{}):
		case <-ctx.Done():
			return yieldReply{Result: "error", Error: "the session is still being adopted"}
		}
	}
	var rev uint64 // of the claimant's ownership
	err := node.Yield(ctx, &mqtthooks.YieldRequest{Resume: res, Transfer: func(ctx context.Context) error {
		own, err := c.ownRevision(ctx, key)
		if errors.Is(err, mqtthooks.ErrNotOwner) {
			if _, gerr := c.owners.Get(ctx, key); !errors.Is(gerr, jetstream.ErrKeyNotFound) {
				return err
			}
			// Nobody owns it (it was disowned here): the claimant does.
			rev, err = c.owners.Create(ctx, key, []byte(msg.To))
			if errors.Is(err, jetstream.ErrKeyExists) {
				return mqtthooks.ErrNotOwner
			}
			return err
		}
		if err != nil {
			return err
		}
		rev, err = c.owners.Update(ctx, key, []byte(msg.To), own)
		if errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
			c.revs.Delete(key)
			return mqtthooks.ErrNotOwner
		}
		if err == nil {
			c.revs.Delete(key)
		}
		return err
	}})
	switch {
	case err == nil:
		return yieldReply{Result: "ok", Revision: rev}
	case errors.Is(err, mqtthooks.ErrResumeRefused):
		return yieldReply{Result: "refused", Error: err.Error()}
	case errors.Is(err, mqtthooks.ErrNotOwner):
		return yieldReply{Result: "not-owner"}
	}
	return yieldReply{Result: "error", Error: err.Error()}
}

// parseOwnerKey returns the session of a key of the owners bucket.
func parseOwnerKey(key string) (mqtthooks.SubscriberID, error) {
	b, err := base64.RawURLEncoding.DecodeString(key)
	if err != nil {
		return mqtthooks.SubscriberID{}, err
	}
	n, k := binary.Uvarint(b)
	if k <= 0 || n > uint64(len(b)-k) {
		return mqtthooks.SubscriberID{}, errors.New("bad length")
	}
	b = b[k:]
	return mqtthooks.SubscriberID{Mountpoint: string(b[:n]), ClientID: string(b[n:])}, nil
}

// ownerKey returns the key of a session in the owners bucket: one token of
// base64url, since client ids may hold any character.
func ownerKey(id mqtthooks.SubscriberID) string {
	b := binary.AppendUvarint(nil, uint64(len(id.Mountpoint)))
	b = append(b, id.Mountpoint...)
	b = append(b, id.ClientID...)
	return base64.RawURLEncoding.EncodeToString(b)
}
