package main

import (
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mqtthooks/mqtthooks"
	"github.com/mqtthooks/mqtthooks/stores/pebble"
)

// config is the broker's configuration, from the flags.
type config struct {
	addr           string
	dataDir        string            // where sessions are stored; "" keeps them in memory
	sync           pebble.SyncPolicy // the store's
	tls            *tls.Config
	maxPacketSize  uint32
	connectTimeout time.Duration // from accept to the CONNECT, TLS handshake included
	authTimeout    time.Duration // a whole enhanced-authentication exchange
	allowAnonymous bool
	maxQueued      int
	maxConnectSize uint32        // the largest CONNECT or AUTH before the CONNACK; 0: maxPacketSize
	maxConnecting  int           // connections between accept and CONNACK at once; 0: no limit
	topicAliasMax  uint16        // topic aliases a client may set (MQTT 5); 0: none
	sysInterval    time.Duration // how often the $SYS topics are published; 0: never
	cluster        *cluster      // with -nats or -nats-embedded: the node's cluster, started; dataDir is then unused
}

// server is the example broker: sockets, topic matching, retained messages
// and keep-alive. Everything about sessions is the core's.
type server struct {
	cfg     config
	core    *mqtthooks.Core
	store   *pebble.Store // nil without -data-dir
	cluster *cluster      // nil unless the broker is a node of a cluster
	durable bool          // sessions are stored (Pebble or the cluster's): acknowledgements wait for their writes
	router  *router
	logger  *slog.Logger

	willMu     sync.Mutex
	started    bool        // under willMu: s.core is set
	earlyWills []earlyWill // under willMu: Wills the Core published before NewCore returned

	connIDs    atomic.Uint64
	connecting chan struct{} // a slot per connection between accept and CONNACK; nil: no limit
	sys        sysStats
	shared     sharedInFlight // deliveries through share groups, not yet acknowledged
	onlineMu   sync.Mutex
	online     map[mqtthooks.SubscriberID]int // connections of each session; share groups prefer those with one
	sysStop    chan struct{}
	wg         sync.WaitGroup
	mu         sync.Mutex
	ln         net.Listener
	closing    bool
	clients    map[*client]struct{}
}

// listenerName is the name of the broker's one listener in the core's options.
const listenerName = "mqtt"

// newServer builds the core for chain and the server around it.
func newServer(cfg config, chain *mqtthooks.Chain, logger *slog.Logger) (*server, error) {
	s := &server{cfg: cfg, router: newRouter(), logger: logger, clients: map[*client]struct{}{},
		sys: sysStats{started: time.Now()}, sysStop: make(chan struct{}), online: map[mqtthooks.SubscriberID]int{}}
	s.router.online = s.isOnline
	if cfg.maxConnecting > 0 {
		s.connecting = make(chan struct{}, cfg.maxConnecting)
	}
	var store mqtthooks.SessionStore
	var rt mqtthooks.Router = s.router
	var cl mqtthooks.Cluster
	switch {
	case cfg.cluster != nil: // sessions in JetStream, shared by the nodes
		if err := cfg.cluster.attach(s); err != nil {
			_ = cfg.cluster.close(context.Background())
			return nil, err
		}
		s.cluster, store, cl = cfg.cluster, cfg.cluster.store, cfg.cluster.owners
		rt = s.cluster.router()
	case cfg.dataDir != "":
		ps, err := pebble.Open(cfg.dataDir, pebble.Options{Sync: cfg.sync})
		if err != nil {
			return nil, err
		}
		s.store, store = ps, ps
	}
	s.durable = store != nil
	caps := mqtthooks.DefaultCapabilities()
	caps.MaximumPacketSize = cfg.maxPacketSize
	caps.TopicAliasMaximum = cfg.topicAliasMax
	core, err := mqtthooks.NewCore(chain, mqtthooks.Options{
		Listeners:           map[string]mqtthooks.ListenerOptions{listenerName: {AllowAnonymous: cfg.allowAnonymous}},
		Capabilities:        &caps,
		MaxOnlineMessages:   mqtthooks.Some(cfg.maxQueued),
		MaxOfflineMessages:  mqtthooks.Some(cfg.maxQueued),
		Router:              rt,
		PublishWill:         s.publishWill,
		Discarded:           s.discarded,
		Logger:              logger,
		Store:               store,
		Cluster:             cl,
		AuthExchangeTimeout: cfg.authTimeout,
	})
	if err != nil {
		if s.store != nil {
			_ = s.store.Close()
		}
		if s.cluster != nil {
			_ = s.cluster.close(context.Background())
		}
		return nil, err
	}
	s.core = core
	s.willMu.Lock()
	s.started = true
	early := s.earlyWills
	s.earlyWills = nil
	s.willMu.Unlock()
	for _, w := range early {
		s.publishWill(context.Background(), w.id, w.will)
	}
	if s.cluster != nil {
		if err := s.cluster.serve(); err != nil {
			_ = core.Shutdown(context.Background())
			_ = s.cluster.close(context.Background())
			return nil, err
		}
	}
	return s, nil
}

// listen opens the listener; addr returns its address.
func (s *server) listen() error {
	// No TCP keep-alive on accepted connections (Go's default turns it on,
	// 4 setsockopt calls per accept): MQTT's Keep Alive finds the dead
	// peers, and a session without one turns it on for itself (see
	// client.enableTCPKeepAlive); before the CONNECT, the connect timeout.
	lc := net.ListenConfig{KeepAlive: -1}
	ln, err := lc.Listen(context.Background(), "tcp", s.cfg.addr)
	if err != nil {
		return err
	}
	if s.cfg.tls != nil {
		ln = tls.NewListener(ln, s.cfg.tls)
	}
	s.mu.Lock()
	s.ln = ln
	s.mu.Unlock()
	return nil
}

func (s *server) addr() net.Addr { return s.ln.Addr() }

// serve accepts connections until the listener closes.
func (s *server) serve() error {
	if s.cfg.sysInterval > 0 {
		s.mu.Lock()
		if !s.closing {
			s.wg.Go(func() { s.sysLoop(s.cfg.sysInterval, s.sysStop) })
		}
		s.mu.Unlock()
	}
	for {
		nc, err := s.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return err
		}
		c := newClient(s, nc, listenerName, s.connIDs.Add(1))
		c.writeDue = time.Now().Add(s.cfg.connectTimeout) // TLS handshake and CONNECT, within the timeout
		_ = nc.SetDeadline(c.writeDue)
		s.mu.Lock()
		if s.closing {
			s.mu.Unlock()
			_ = nc.Close()
			continue
		}
		s.clients[c] = struct{}{}
		s.wg.Go(func() { // under mu: shutdown's Wait cannot have begun
			defer func() {
				s.mu.Lock()
				delete(s.clients, c)
				s.mu.Unlock()
			}()
			c.serve()
			c.releaseBuffers()
		})
		s.mu.Unlock()
	}
}

// setOnline counts a connection of id in (+1) or out (-1).
func (s *server) setOnline(id mqtthooks.SubscriberID, d int) {
	s.onlineMu.Lock()
	defer s.onlineMu.Unlock()
	if n := s.online[id] + d; n > 0 {
		s.online[id] = n
	} else {
		delete(s.online, id)
	}
}

func (s *server) isOnline(id mqtthooks.SubscriberID) bool {
	s.onlineMu.Lock()
	defer s.onlineMu.Unlock()
	return s.online[id] > 0
}

// enterConnecting takes one of the slots of connections that have not had
// their CONNACK, waiting at most the connect timeout; leaveConnecting gives
// it back. A free slot is taken without a timer: one is made only to wait.
func (s *server) enterConnecting() bool {
	if s.connecting == nil {
		return true
	}
	select {
	case s.connecting <- struct{}{}:
		return true
	default:
	}
	t := time.NewTimer(s.cfg.connectTimeout)
	defer t.Stop()
	select {
	case s.connecting <- struct{}{}:
		return true
	case <-t.C:
		return false
	}
}

// leaveConnecting gives back a slot enterConnecting took.
func (s *server) leaveConnecting() {
	if s.connecting != nil {
		<-s.connecting
	}
}

// shutdown stops accepting, lets the core end every session (DISCONNECT
// 0x8B), closes what is left and waits for the connections' goroutines.
func (s *server) shutdown(ctx context.Context) error {
	s.mu.Lock()
	if !s.closing {
		close(s.sysStop)
	}
	s.closing = true
	if s.ln != nil {
		_ = s.ln.Close()
	}
	s.mu.Unlock()
	err := s.core.Shutdown(ctx)
	s.mu.Lock()
	for c := range s.clients {
		c.close()
	}
	s.mu.Unlock()
	s.wg.Wait()
	if s.store != nil {
		err = errors.Join(err, s.store.Close())
	}
	if s.cluster != nil { // after the Core: it stored the sessions and left the cluster
		err = errors.Join(err, s.cluster.close(ctx))
	}
	return err
}

// stored reports whether sessions are kept in a store, so that
// acknowledgements wait for their writes.
func (s *server) stored() bool { return s.durable }

// matchPool holds the slices route collects a message's matches in: one
// allocation (and its growth) per message less.
var matchPool = sync.Pool{New: func() any { return new([]match) }}

// route hands a message published by from to every matching session; r, if
// not nil, follows the writes of its copies.
func (s *server) route(from mqtthooks.SubscriberID, msg *mqtthooks.Message, r *mqtthooks.Receipt) {
	if msg.Retain {
		s.router.retain(from.Mountpoint, msg)
	}
	mp := matchPool.Get().(*[]match)
	ms := s.router.appendMatches((*mp)[:0], from.Mountpoint, msg.Topic, from)
	defer func() {
		clear(ms) // the pool holds no session's identifiers
		*mp = ms[:0]
		matchPool.Put(mp)
	}()
	for _, m := range ms {
		if err := s.deliverMatch(from.Mountpoint, m, msg, r); err != nil && !errors.Is(err, mqtthooks.ErrSessionNotFound) {
			s.logger.Warn("deliver", "session", m.id.String(), "err", err)
		}
	}
}

// deliverMatch hands msg to the session m matched on mountpoint, or to a
// member of its share group, with the QoS, Retain flag and subscription
// identifiers of the match.
func (s *server) deliverMatch(mountpoint string, m match, msg *mqtthooks.Message, r *mqtthooks.Receipt) error {
	if m.shared {
		return s.deliverShared(shareRef{mountpoint, m.share}, m, msg, r)
	}
	return s.core.Deliver(m.id, msg, mqtthooks.DeliverOptions{QoS: min(msg.QoS, m.qos), Retain: m.rap && msg.Retain,
		SubscriptionIdentifiers: m.identity, Generation: m.gen, Receipt: r})
}

// earlyWill is a Will the Core published before the server had it.
type earlyWill struct {
	id   mqtthooks.SubscriberID
	will *mqtthooks.Will
}

// publishWill publishes a Will for the core, on every node of a cluster.
// The Core may publish Wills before NewCore returns (the connections lost
// in a crash, when it restores sessions; the sessions of a dead node it
// adopts, in a cluster): they wait until the server has its Core.
func (s *server) publishWill(ctx context.Context, id mqtthooks.SubscriberID, w *mqtthooks.Will) {
	s.willMu.Lock()
	if !s.started {
		s.earlyWills = append(s.earlyWills, earlyWill{id, w})
		s.willMu.Unlock()
		return
	}
	s.willMu.Unlock()
	if s.cluster != nil {
		s.cluster.publishWill(ctx, id, w)
		return
	}
	s.route(id, &w.Message, nil)
}
