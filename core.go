package mqtthooks

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"iter"
	"log/slog"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Errors of the Core's methods. Compare with errors.Is.
var (
	// ErrSessionNotFound: no session exists for the SubscriberID.
	ErrSessionNotFound = errors.New("mqtthooks: no such session")
	// ErrShutdown: the Core has been shut down.
	ErrShutdown = errors.New("mqtthooks: core shut down")
)

// Options configure a Core. The zero value is usable: every field has a
// default, given in its comment.
type Options struct {
	// Listeners holds per-listener settings, by ConnInfo.Listener. A listener
	// without an entry gets the zero ListenerOptions.
	Listeners map[string]ListenerOptions

	// MaxClientIDLen bounds client ids, in UTF-8 bytes; default 100. Values
	// below 23 are refused: MQTT requires servers to accept 23.
	MaxClientIDLen int
	// ClientIDGenerator makes client ids for clients that send none; default
	// "auto-" followed by 18 base62 characters from crypto/rand (23 bytes).
	// An id that names an existing session is replaced by another, up to 8
	// times.
	ClientIDGenerator func() string
	// ResumePolicy decides whether a CONNECT may take over or discard an
	// existing session; default SameUsername.
	ResumePolicy ResumePolicy
	// PersistentExpiry is how long an offline MQTT 3 persistent session lives;
	// default 0, never expire.
	PersistentExpiry time.Duration
	// ConnectTimeout bounds a CONNECT from its hand-over to the CONNACK
	// decision, without the time spent waiting for the client during enhanced
	// authentication; default 5 s.
	ConnectTimeout time.Duration
	// HookTimeout bounds the hooks that run outside a CONNECT; default 5 s.
	HookTimeout time.Duration
	// AuthExchangeTimeout bounds a whole enhanced-authentication exchange;
	// default 30 s.
	AuthExchangeTimeout time.Duration
	// MaxSessions bounds the number of sessions, online or offline; 0 means
	// no limit. A CONNECT that would create one more gets 3 / 0x97. In a
	// cluster it bounds the sessions this node creates; those it takes over
	// from other nodes (claimed or adopted) count, but are never refused.
	MaxSessions int
	// Capabilities are what the broker supports; default DefaultCapabilities().
	Capabilities *Capabilities

	// MaxOnlineMessages and MaxOfflineMessages bound a session's pending
	// messages while connected and while offline: -1 unlimited, 0 none;
	// default 1000 each. Modifiers may change them per session.
	MaxOnlineMessages, MaxOfflineMessages Opt[int]
	// MaxInflightMessages bounds a connection's unacknowledged QoS 1 and 2
	// deliveries, together with the client's Receive Maximum; 0 means only the
	// Receive Maximum; default 20.
	MaxInflightMessages Opt[int]
	// QueueType is QueueFIFO (default) or QueueLIFO, which is not conformant.
	QueueType QueueType
	// DeliverMode shares the messages of a multiple session: DeliverFanout
	// (default) or DeliverBalance.
	DeliverMode DeliverMode
	// StoreQoS0Offline keeps QoS 0 messages for offline sessions.
	StoreQoS0Offline bool

	// PublishWill publishes a Will for the broker. The Core calls it when a
	// Will is due, before the session's terminal hook, never under a lock.
	// Nil drops Wills.
	PublishWill func(ctx context.Context, id SubscriberID, will *Will)
	// Discarded, if set, receives the messages a session held unacknowledged
	// when it ended (gone or expired): pending, or sent and not acknowledged
	// (a QoS 2 message past PUBREC has reached its client and is not among
	// them), each with the end of its Message Expiry Interval. They count in
	// Stats.Discarded and fire no OnMessageDrop. A broker may hand them to
	// another subscriber, as MQTT 5 §4.8.2 asks for those of a shared
	// subscription. The Core calls it after Router.RemoveAll for the session
	// and before its terminal hook, never under a lock; a panic is recovered
	// and logged.
	Discarded func(ctx context.Context, id SubscriberID, msgs []Unacknowledged)
	// Router is told when subscriptions start and end; nil means no router.
	Router Router
	// Store keeps the persistent sessions beyond the process, and NewCore
	// restores what it holds. Nil, the default, keeps sessions in the Core
	// only: nothing is written, and they end with the process.
	Store SessionStore
	// Cluster, if set, makes the Core one node of a cluster that shares
	// sessions (see Cluster); Store must then be a SessionLoader shared by
	// every node. A clustered Core loads nothing when it starts: a session
	// comes to a node when a CONNECT there claims it.
	Cluster Cluster
	// StoreLoadTimeout bounds NewCore's Load of the Store; 0, the default,
	// sets no bound (a million sessions take seconds to load).
	StoreLoadTimeout time.Duration
	// Logger receives what goes wrong in plugins and callers; default
	// slog.Default().
	Logger *slog.Logger
	// Workers bounds the goroutines that run timed work (expiry, delayed
	// Wills) and their hooks, and those that end the sessions at Shutdown;
	// default 4 × GOMAXPROCS.
	Workers int
}

// ListenerOptions are the settings of one listener.
type ListenerOptions struct {
	// AllowedVersions are the protocol levels the listener accepts; empty
	// means all of 3, 4 and 5.
	AllowedVersions []ProtocolVersion
	// AllowAnonymous accepts clients without a username when no plugin
	// decides (ErrChainExhausted or ErrNoPlugin). The chain still runs, and a
	// plugin's Reject still rejects.
	AllowAnonymous bool
	// AuthPlugins, when not empty, are the plugins (by name, in this order)
	// that run the conditional hooks for this listener.
	AuthPlugins []string
}

// Router is the broker's topic router. The Core calls it whenever a
// subscription starts or ends, never under a lock; matching stays in the
// broker. When a session ends, the Core calls RemoveAll once, before the
// terminal hook, if the session held a subscription. A panic in a Router
// method is logged and the Core goes on as if it had returned.
//
// Each call names the session's life (its Generation). A router that keeps
// it with the subscription can pass it to Core.Deliver in DeliverOptions, so
// that a message matched against one life never lands in the next.
type Router interface {
	Add(id SubscriberID, generation uint64, sub Subscription)
	Remove(id SubscriberID, generation uint64, filter string)
	RemoveAll(id SubscriberID, generation uint64)
}

// A MovingRouter is a Router that learns when a session's subscriptions
// leave this node because this node just handed the session over to
// another one (see Options.Cluster and ClusterNode.Yield): the Core then
// calls Moved, not RemoveAll, inside the hand-over, which waits for it. A
// session another node took earlier, while this one was cut off, leaves
// with RemoveAll: its new owner routes it already.
//
// The new owner adds the subscriptions to its own Router only once it has
// read the session, so a message matched between the two is stored nowhere
// if the broker takes Moved for RemoveAll. A broker that acknowledges
// PUBLISHes cluster-wide should keep refusing (not acknowledging) messages
// that match a moved session's filters until the new owner routes them;
// meanwhile Deliver to the session fails with ErrNotOwner.
type MovingRouter interface {
	Router
	Moved(id SubscriberID, generation uint64)
}

// ResumeRequest is what a ResumePolicy decides on: a CONNECT that would take
// over, resume or discard the existing session of the same SubscriberID.
type ResumeRequest struct {
	SubscriberID SubscriberID
	// Username and HasUsername are the new CONNECT's, after modifiers.
	Username    string
	HasUsername bool
	// PrevUsername and PrevHasUsername are those of the session's last
	// connection.
	PrevUsername    string
	PrevHasUsername bool
	CleanStart      bool
	Conn            *ConnInfo
}

// ResumePolicy decides whether a CONNECT may take over, resume, discard or
// join an existing session. A refusal rejects the CONNECT with 5 / 0x87 and
// leaves the session untouched.
type ResumePolicy func(ctx context.Context, r *ResumeRequest) bool

// SameUsername allows a CONNECT to touch an existing session only with the
// username of the session's last connection; an absent username matches only
// an absent one. It is the default policy.
func SameUsername(_ context.Context, r *ResumeRequest) bool {
	return r.HasUsername == r.PrevHasUsername && r.Username == r.PrevUsername
}

// AnyUser allows any CONNECT to take over any session, as VerneMQ does.
func AnyUser(context.Context, *ResumeRequest) bool { return true }

// Unacknowledged is a message a session held when it ended (see
// Options.Discarded).
type Unacknowledged struct {
	Message *Message
	// ExpiresAt is when its v5 Message Expiry Interval runs out, counted from
	// when it was routed; zero for never. A message handed on carries what is
	// left of it.
	ExpiresAt time.Time
}

// Stats are the Core's counters.
type Stats struct {
	// Sessions exist now, online or offline; Connections are attached now.
	Sessions, Connections int64
	// ConnectsAccepted and ConnectsRejected count CONNECT outcomes;
	// ConnectsAbandoned those that got no CONNACK.
	ConnectsAccepted, ConnectsRejected, ConnectsAbandoned uint64
	// SessionsCreated, SessionsResumed, Takeovers, SessionsExpired and
	// SessionsGone (ended with OnClientGone) count lifecycle events.
	SessionsCreated, SessionsResumed, Takeovers, SessionsExpired, SessionsGone uint64
	// WillsPublished counts Wills handed to PublishWill.
	WillsPublished uint64
	// In a cluster: SessionsClaimed counts the sessions this node claimed
	// for a CONNECT, SessionsYielded those it handed to another node, and
	// SessionsAdopted those it took over from a node that died or left.
	SessionsClaimed, SessionsYielded, SessionsAdopted uint64

	// Messages: every Deliver that reached a session is Routed, and every
	// message a Core found in its store at start Restored; each ends up
	// Delivered (QoS 0 handed out, QoS 1 PUBACK, QoS 2 PUBCOMP), Dropped
	// (queue full, expired; OnMessageDrop fired), NotStoredQoS0 (QoS 0 for an
	// offline session), Discarded (its session ended), HandedOver (its
	// session moved to another node of a cluster, which counts it Restored),
	// or is still pending or in flight (SessionInfo). Nothing is lost: Routed
	// + Restored = Delivered + Dropped + NotStoredQoS0 + Discarded +
	// HandedOver + pending + in flight.
	Routed, Restored, Delivered, Dropped, NotStoredQoS0, Discarded, HandedOver uint64

	// Hooks are the counters of each hook the Core called, in a fixed
	// order; Panics counts every panic of the Core's chain.
	Hooks []HookStats
	// Connacks counts the CONNACKs the Core decided, by protocol version and
	// code, and Disconnects the connections it ended, by reason code; both
	// leave out the counts that are zero.
	Connacks    []ConnackCount
	Disconnects []DisconnectCount
	// Drops are the dropped messages by reason (they add up to Dropped).
	Drops []DropCount
	// Store are the writes to the SessionStore; zero without one.
	Store StoreStats
}

type counters struct {
	sessions, connections                                          atomic.Int64
	accepted, rejected, abandoned                                  atomic.Uint64
	created, resumed, takeovers, expired, gone, willsPublished     atomic.Uint64
	routed, restored, delivered, dropped, notStoredQoS0, discarded atomic.Uint64
	claimed, yielded, adopted, handedOver                          atomic.Uint64
}

// Core owns the MQTT sessions of a broker and fires the hooks of a Chain at
// the points of their lifecycle. Create it with NewCore; it is safe for
// concurrent use.
//
// For one SubscriberID, lifecycle operations (registration, the end of a
// connection, expiry, admin calls) run one at a time, in the order they
// arrive; different SubscriberIDs never wait for each other. No lock is held
// while the Core calls a hook, a Conn, the Router or PublishWill, so those may
// call back into the Core. A call made with the context of a lifecycle hook is
// queued behind that hook and returns at once.
type Core struct {
	chain   *Chain
	opts    Options
	caps    Capabilities
	subsets map[string]*Subset
	logger  *slog.Logger
	store   SessionStore
	router  Router

	reg   *registry
	sched *scheduler
	stats counters
	hookm [numHooks]hookMetrics // the hooks as the Core called them
	codes codeCounters

	connIDs atomic.Uint64
	gens    atomic.Uint64 // generations, without a store
	msgIDs  atomic.Uint64 // ids of stored messages
	// A clustered Core's: its Cluster, its store as a SessionLoader, and the
	// block its message ids come from (see nextMsgID).
	cluster  Cluster
	loader   SessionLoader
	msgEpoch atomic.Uint64
	msgMu    sync.Mutex
	// unended: the lives of clustered sessions that ended here while the
	// store failed to delete them (SubscriberID → Generation), deleted
	// again later, and before any other node may take them.
	unended sync.Map
	// rechecks: the SubscriberIDs whose ownership is being checked again
	// after a write was refused as stale (see recheckOwner).
	rechecks sync.Map
	// inboundPending: the QoS 2 identifiers whose PUBLISH's Receipt has
	// not settled, inboundKey → that *Receipt; refusedInbound: those whose
	// Receipt failed, until they are forgotten (see Session.InboundPublish).
	inboundPending sync.Map
	refusedInbound sync.Map
	closed         atomic.Bool
	conns          sync.WaitGroup // calls to Conn.Disconnect in flight
	writes         sync.WaitGroup // store commits in flight
}

// NewCore returns a Core that runs chain's hooks. It fails with
// ErrInvalidArgument when chain is nil or an option is out of range, and with
// ErrUnknownPlugin when a listener names a plugin chain does not have.
func NewCore(chain *Chain, opts Options) (*Core, error) {
	if chain == nil {
		return nil, fmt.Errorf("%w: nil chain", ErrInvalidArgument)
	}
	opts.MaxClientIDLen = cmp.Or(opts.MaxClientIDLen, DefaultMaxClientIDLen)
	opts.ConnectTimeout = cmp.Or(opts.ConnectTimeout, 5*time.Second)
	opts.HookTimeout = cmp.Or(opts.HookTimeout, 5*time.Second)
	opts.AuthExchangeTimeout = cmp.Or(opts.AuthExchangeTimeout, 30*time.Second)
	opts.Workers = cmp.Or(opts.Workers, 4*runtime.GOMAXPROCS(0))
	switch {
	case opts.MaxClientIDLen < 23:
		return nil, fmt.Errorf("%w: MaxClientIDLen %d is below 23, which MQTT requires", ErrInvalidArgument, opts.MaxClientIDLen)
	case opts.ConnectTimeout < 0, opts.HookTimeout < 0, opts.AuthExchangeTimeout < 0, opts.PersistentExpiry < 0,
		opts.StoreLoadTimeout < 0:
		return nil, fmt.Errorf("%w: negative timeout", ErrInvalidArgument)
	case opts.MaxSessions < 0 || opts.Workers < 0:
		return nil, fmt.Errorf("%w: negative MaxSessions or Workers", ErrInvalidArgument)
	}
	defaults := Modifiers{MaxOnlineMessages: opts.MaxOnlineMessages, MaxOfflineMessages: opts.MaxOfflineMessages,
		MaxInflightMessages: opts.MaxInflightMessages}
	if opts.QueueType != 0 {
		defaults.QueueType = Some(opts.QueueType)
	}
	if opts.DeliverMode != 0 {
		defaults.QueueDeliverMode = Some(opts.DeliverMode)
	}
	if err := defaults.Validate(ModifierRules{ProtocolVersion: MQTT311}); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidArgument, err)
	}
	c := &Core{
		chain:   chain,
		opts:    opts,
		caps:    DefaultCapabilities(),
		subsets: map[string]*Subset{},
		logger:  cmp.Or(opts.Logger, slog.Default()),
		store:   opts.Store,
		router:  opts.Router,
		reg:     newRegistry(opts.HookTimeout, cmp.Or(opts.Logger, slog.Default())),
		sched:   newScheduler(opts.Workers),
	}
	if opts.Capabilities != nil {
		c.caps = *opts.Capabilities
		if c.caps.MaximumQoS > 2 {
			return nil, fmt.Errorf("%w: Capabilities.MaximumQoS %d is above 2", ErrInvalidArgument, c.caps.MaximumQoS)
		}
	}
	if c.router == nil {
		c.router = nopRouter{}
	}
	if c.opts.ResumePolicy == nil {
		c.opts.ResumePolicy = SameUsername
	}
	if c.opts.ClientIDGenerator == nil {
		c.opts.ClientIDGenerator = generateClientID
	}
	for name, l := range opts.Listeners {
		for _, v := range l.AllowedVersions {
			if !v.Valid() {
				return nil, fmt.Errorf("%w: listener %q allows unknown protocol level %d", ErrInvalidArgument, name, v)
			}
		}
		if len(l.AuthPlugins) > 0 {
			sub, err := chain.Subset(l.AuthPlugins...)
			if err != nil {
				return nil, fmt.Errorf("listener %q: %w", name, err)
			}
			c.subsets[name] = sub
		}
	}
	if opts.Cluster != nil {
		if err := c.joinCluster(); err != nil {
			c.sched.close()
			return nil, err
		}
	} else if err := c.restore(); err != nil {
		c.sched.close() // the timers of what was restored
		c.writes.Wait()
		return nil, fmt.Errorf("mqtthooks: restoring sessions from the store: %w", err)
	}
	return c, nil
}

type nopRouter struct{}

func (nopRouter) Add(SubscriberID, uint64, Subscription) {}
func (nopRouter) Remove(SubscriberID, uint64, string)    {}
func (nopRouter) RemoveAll(SubscriberID, uint64)         {}

// restore takes over the sessions the store holds, offline, as a restart
// finds them: a session stored while a connection was attached lost that
// connection when the process stopped, so OnClientOffline (ReasonRestart)
// fires for it and its expiry runs from now; an expiry or a delayed Will that
// came due while the process was down fires at once.
func (c *Core) restore() error {
	if c.store == nil {
		return nil
	}
	ctx, cancel := context.WithCancel(context.Background())
	if d := c.opts.StoreLoadTimeout; d > 0 {
		ctx, cancel = context.WithTimeout(context.Background(), d)
	}
	defer cancel()
	var (
		err      error
		restored []*sessionState
		lost     []lostConnection
	)
	perr := c.guard("SessionStore.Load", SubscriberID{}, func() {
		for ss, lerr := range c.store.Load(ctx) {
			if lerr != nil {
				err = lerr
				return
			}
			st, l := c.restoreSession(ss)
			restored = append(restored, st)
			if l != nil {
				lost = append(lost, *l)
			}
		}
	})
	if err = cmp.Or(perr, err); err != nil {
		return err
	}
	// Only now that every session and subscription is back: a Will published
	// earlier would miss the sessions restored after it.
	for _, l := range lost {
		hctx, cancel := context.WithTimeout(context.Background(), c.opts.HookTimeout)
		for _, w := range l.wills {
			c.publishWill(hctx, l.ev.SubscriberID, w)
		}
		c.sessionHook(hctx, hookOnClientOffline, &l.ev)
		cancel()
	}
	for _, st := range restored { // in an operation: a timer that fires at once waits for the arming to end
		_ = c.reg.do(context.Background(), st.rec.ID, newOp(func(context.Context, *entry) { c.armTimers(st) }))
	}
	return nil
}

// lostConnection is a connection a restored session had when the process
// stopped: its Wills due at once, and the event of its end.
type lostConnection struct {
	wills []*Will
	ev    SessionEvent
}

// restoreSession installs one stored session, and returns it with the
// connection it lost, if any. Its timers are not armed yet.
func (c *Core) restoreSession(ss *StoredSession) (*sessionState, *lostConnection) {
	st := new(sessionState)
	st.reset(&ss.Record)
	st.stored = true
	st.jn = journal{c: c, st: st}
	r := &st.rec
	r.ID, r.Username = cloneIdentity(r.ID, r.Username)
	lost := r.Connected // the process stopped under an attached connection
	r.Connected = false
	changed := lost
	now := time.Now()
	if (lost || r.ExpiresAt.IsZero()) && r.Expiry > 0 {
		r.ExpiresAt = now.Add(r.Expiry)
		changed = true
	}
	var lc *lostConnection
	if lost {
		// The Wills of the lost connections come due as for any connection
		// lost without a DISCONNECT: now, or after their delay.
		lc = &lostConnection{}
		for _, w := range r.ConnectionWills {
			if delay := time.Duration(w.DelayInterval) * time.Second; r.ProtocolVersion.IsV5() && delay > 0 {
				r.Wills = insertWill(r.Wills, DelayedWill{Will: w, At: now.Add(delay)})
			} else {
				lc.wills = append(lc.wills, w)
			}
		}
	}
	r.ConnectionWills = nil
	st.q.set = r.Queue
	for _, sub := range ss.Subscriptions {
		st.subscribe(sub)
	}
	if n := len(ss.Entries); n > 0 {
		st.q.pending.buf = make([]queued, n) // the ring's capacity: no growing while restoring
	}
	for _, le := range ss.Entries {
		m := queued{msg: le.Message, subIDs: le.SubscriptionIdentifiers, expires: unixNano(le.ExpiresAt),
			seq: le.Seq, msgID: le.MessageID, qos: le.QoS, retain: le.Retain}
		st.seq = max(st.seq, le.Seq)
		// Read from the store, so durable.
		st.durable.Store(st.seq)
		if c.cluster == nil { // a clustered Core's ids come from blocks the store hands out
			c.msgIDs.Store(max(c.msgIDs.Load(), le.MessageID))
		}
		if le.State == EntryPending {
			st.q.pending.pushBack(m)
			continue
		}
		f := newFlight(m)
		f.pubrel, f.sent = le.State == EntryPubrelOwed, le.Sent
		st.q.inflight = append(st.q.inflight, f)
		st.q.track(PacketIDOf(m.seq))
	}
	// Sent again in the order they first went out [MQTT-4.6.0-1].
	slices.SortStableFunc(st.q.inflight, func(a, b flight) int { return int(int32(a.sent - b.sent)) })
	if n := len(st.q.inflight); n > 0 {
		st.q.sent = st.q.inflight[n-1].sent
	}
	st.q.inbound = slices.Clone(ss.Inbound)
	c.stats.restored.Add(uint64(len(ss.Entries)))
	e := c.reg.acquire(r.ID)
	e.mu.Lock()
	e.state.Store(st)
	e.mu.Unlock()
	c.stats.sessions.Add(1)
	if changed { // offline now, expiring from now
		st.mu.Lock()
		j := st.journal()
		j.updateRecord()
		j.commit(nil)
		st.mu.Unlock()
	}
	for _, sub := range st.subs {
		c.routerAdd(r.ID, r.Generation, sub)
	}
	if lc != nil {
		lc.ev = st.offlineEvent(ReasonRestart)
	}
	c.reg.release(e)
	return st, lc
}

// Stats returns the Core's counters.
func (c *Core) Stats() Stats {
	s := &c.stats
	return Stats{
		Sessions: s.sessions.Load(), Connections: s.connections.Load(),
		ConnectsAccepted: s.accepted.Load(), ConnectsRejected: s.rejected.Load(), ConnectsAbandoned: s.abandoned.Load(),
		SessionsCreated: s.created.Load(), SessionsResumed: s.resumed.Load(), Takeovers: s.takeovers.Load(),
		SessionsExpired: s.expired.Load(), SessionsGone: s.gone.Load(), WillsPublished: s.willsPublished.Load(),
		Routed: s.routed.Load(), Restored: s.restored.Load(), Delivered: s.delivered.Load(), Dropped: s.dropped.Load(),
		NotStoredQoS0: s.notStoredQoS0.Load(), Discarded: s.discarded.Load(), HandedOver: s.handedOver.Load(),
		SessionsClaimed: s.claimed.Load(), SessionsYielded: s.yielded.Load(), SessionsAdopted: s.adopted.Load(),
		Hooks: c.hookStats(), Connacks: c.connackStats(), Disconnects: c.disconnectStats(),
		Drops: c.dropStats(), Store: c.storeStats(),
	}
}

// SessionInfo describes a session at one moment.
type SessionInfo struct {
	ID         SubscriberID
	Generation uint64
	// Connections attached now; 0 for an offline session.
	Connections int
	// Username of the last connection.
	Username    string
	HasUsername bool
	// Subscriptions are the session's subscriptions, sorted by filter.
	Subscriptions []Subscription
	// ExpiresAt is when the offline session expires; zero for never and for
	// online sessions.
	ExpiresAt time.Time
	// Pending and Inflight count the messages waiting and those handed out
	// and not yet acknowledged.
	Pending, Inflight int
}

// Lookup describes the session of id, if one exists.
func (c *Core) Lookup(id SubscriberID) (SessionInfo, bool) {
	e := c.reg.lookup(id)
	if e == nil {
		return SessionInfo{}, false
	}
	e.mu.Lock()
	st := e.state.Load()
	e.mu.Unlock()
	if st == nil {
		return SessionInfo{}, false
	}
	return st.info(), true
}

// Sessions returns an iterator over the sessions, online and offline, in no
// particular order:
//
//	for info := range core.Sessions() { … }
//
// Sessions created or ended during the iteration may or may not be seen; the
// iteration holds no lock while the loop body runs.
func (c *Core) Sessions() iter.Seq[SessionInfo] {
	return func(yield func(SessionInfo) bool) {
		c.reg.each(func(e *entry) bool {
			e.mu.Lock()
			st := e.state.Load()
			e.mu.Unlock()
			if st == nil {
				return true
			}
			return yield(st.info())
		})
	}
}

// Disconnect ends the session of id for an administrator. Its connections
// get DISCONNECT 0x98 (MQTT 3: closed) and their Wills are due. Without
// cleanup the session then goes offline (or is gone, if it had cleanup on
// disconnect), like after any server-side close; an offline session is left
// as it is. With cleanup its state is deleted and OnClientGone fires, also for
// an offline session. Disconnect waits for the hooks to run and fails with
// ErrSessionNotFound when no session exists; called with a hook's context, it
// is queued behind that hook and returns nil at once, before knowing either.
func (c *Core) Disconnect(ctx context.Context, id SubscriberID, cleanup bool) error {
	return c.DisconnectWith(ctx, id, DisconnectOptions{Cleanup: cleanup})
}

// DisconnectOptions say how DisconnectWith ends a session.
type DisconnectOptions struct {
	// Cleanup deletes the session's state, as Disconnect's cleanup does.
	Cleanup bool
	// Code is the reason code of the MQTT 5 DISCONNECT its connections get:
	// a failure code a server may send in a DISCONNECT (MQTT 5 §3.14.2.1),
	// such as CodeNotAuthorized when its credentials were revoked. Zero
	// means CodeAdministrativeAction (0x98).
	Code ReasonCode
}

// DisconnectWith is Disconnect with options. A Code that is not a failure
// code gives ErrInvalidArgument.
func (c *Core) DisconnectWith(ctx context.Context, id SubscriberID, opts DisconnectOptions) error {
	if ctx == nil {
		return fmt.Errorf("%w: nil context", ErrInvalidArgument)
	}
	code := cmp.Or(opts.Code, CodeAdministrativeAction)
	if !code.IsFailure() || !code.ValidIn(PacketDisconnect) {
		return fmt.Errorf("%w: %s is not a failure code of a server's DISCONNECT", ErrInvalidArgument, code)
	}
	cleanup := opts.Cleanup
	if c.closed.Load() {
		return ErrShutdown
	}
	var err error
	async := insideHook(ctx)
	derr := c.reg.do(ctx, id, newOp(func(ctx context.Context, e *entry) {
		st := e.state.Load()
		if st == nil {
			err = ErrSessionNotFound
			return
		}
		c.adminDisconnect(ctx, e, st, cleanup, code)
	}))
	if async {
		return nil
	}
	return cmp.Or(derr, err)
}

// Shutdown ends every connection with DISCONNECT 0x8B (MQTT 3: closed), fires
// OnClientOffline or OnClientGone for the connected sessions, and stops the
// Core's timers. Offline sessions fire nothing: they stay in the store, or,
// without one, end with the process, and their pending delayed Wills are
// published now. Shutdown waits for the store's writes in flight. A CONNECT
// still in progress is refused (3 / 0x88).
//
// Shutdown returns when no goroutine of the Core is left, or with ctx's error
// when ctx ends first (a hook or a Conn that does not return holds it up; the
// rest of the work goes on). Called with a hook's context, it starts the
// shutdown and returns at once, since it would wait for that very hook.
// Later calls return ErrShutdown.
func (c *Core) Shutdown(ctx context.Context) error {
	if ctx == nil {
		return fmt.Errorf("%w: nil context", ErrInvalidArgument)
	}
	if !c.closed.CompareAndSwap(false, true) {
		return ErrShutdown
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		c.shutdown()
	}()
	if insideHook(ctx) {
		return nil
	}
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("mqtthooks: shutdown still waiting for hooks or connections: %w", ctx.Err())
	}
}

// shutdown does the work of Shutdown. The sessions' ends run on a pool of
// Options.Workers goroutines, like every other end the Core runs on its own.
func (c *Core) shutdown() {
	c.sched.close()
	c.sched.wait()
	var wg sync.WaitGroup
	slots := make(chan struct{}, c.opts.Workers)
	c.reg.each(func(e *entry) bool {
		slots <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-slots }()
			_ = c.reg.do(context.Background(), e.id, newOp(func(ctx context.Context, e *entry) {
				if st := e.state.Load(); st != nil {
					c.shutdownSession(ctx, e, st)
				}
			}))
		}()
		return true
	})
	wg.Wait()
	c.conns.Wait()
	c.writes.Wait()
	if c.cluster != nil {
		ctx, cancel := context.WithTimeout(context.Background(), c.opts.HookTimeout)
		if perr := c.guard("Cluster.Leave", SubscriberID{}, func() {
			if err := c.cluster.Leave(ctx); err != nil {
				c.logger.Error("mqtthooks: cluster: leave failed", "err", err)
			}
		}); perr != nil {
			c.logger.Error("mqtthooks: cluster: leave failed", "err", perr)
		}
		cancel()
	}
}

// listener returns the options and subset of a listener.
func (c *Core) listener(name string) (ListenerOptions, *Subset) {
	return c.opts.Listeners[name], c.subsets[name]
}

func (l ListenerOptions) allows(v ProtocolVersion) bool {
	return len(l.AllowedVersions) == 0 || slices.Contains(l.AllowedVersions, v)
}
