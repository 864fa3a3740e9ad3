package natsjs_test

// The ACCEPTANCE rows C1–C4, C7 and C8 on a 3-node NATS JetStream cluster in
// process: three Cores, each with its own nats-server node, sharing one
// Store and deciding ownership through natsjs.Cluster.

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mqtthooks/mqtthooks"
	"github.com/mqtthooks/mqtthooks/cluster/natsjs"
	"github.com/mqtthooks/mqtthooks/cluster/natsjs/internal/natstest"
	"github.com/mqtthooks/mqtthooks/mqtthookstest"
)

// node is one broker of a test cluster.
type node struct {
	name  string
	srv   *server.Server
	nc    *nats.Conn
	core  *mqtthooks.Core
	rec   *mqtthookstest.Recorder
	store *natsjs.Store
	cl    *natsjs.Cluster
	logs  *syncBuffer
}

type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// testCluster is three nodes and a Recorder they share, whose log is the
// order of the hooks across the cluster.
type testCluster struct {
	nodes map[string]*node
	all   *mqtthookstest.Recorder
	wills *willLog
	// offlineGate, while set, holds every OnClientOffline until closed.
	offlineGate atomic.Pointer[chan struct{}]
}

type willLog struct {
	mu    sync.Mutex
	wills []string
}

func (w *willLog) add(s string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.wills = append(w.wills, s)
}

func (w *willLog) get() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]string(nil), w.wills...)
}

const testLease = time.Second

func newTestCluster(t *testing.T) *testCluster {
	t.Helper()
	srvs := natstest.StartCluster(t, 3)
	tc := &testCluster{nodes: map[string]*node{}, all: &mqtthookstest.Recorder{}, wills: &willLog{}}
	tc.all.Lifecycle = func(_ context.Context, c mqtthookstest.Call) {
		if gate := tc.offlineGate.Load(); gate != nil && c.Hook == "OnClientOffline" {
			<-*gate
		}
	}
	for i, name := range []string{"A", "B", "C"} {
		n := &node{name: name, srv: srvs[i], rec: &mqtthookstest.Recorder{Accept: true}, logs: new(syncBuffer)}
		n.nc = natstest.Connect(t, srvs[i])
		logger := slog.New(slog.NewTextHandler(n.logs, nil))
		n.store = openStore(t, n.nc, logger)
		cl, err := natsjs.NewCluster(t.Context(), natsjs.ClusterOptions{Node: name, Conn: n.nc, Replicas: 3,
			Lease: testLease, Logger: logger})
		require.NoError(t, err)
		n.cl = cl
		chain := mqtthooks.NewChain(mqtthooks.ChainOptions{Logger: logger})
		require.NoError(t, chain.Register("P", n.rec))
		require.NoError(t, chain.Register("all", tc.all))
		n.core, err = mqtthooks.NewCore(chain, mqtthooks.Options{Store: n.store, Cluster: cl, Logger: logger,
			Router: n.rec.Router(), ConnectTimeout: 10 * time.Second,
			PublishWill: func(_ context.Context, _ mqtthooks.SubscriberID, w *mqtthooks.Will) {
				tc.wills.add(name + ":" + w.Message.Topic)
			}})
		require.NoError(t, err)
		t.Cleanup(func() { _ = n.core.Shutdown(context.Background()) })
		tc.nodes[name] = n
	}
	return tc
}

func sid(clientID string) mqtthooks.SubscriberID { return mqtthooks.SubscriberID{ClientID: clientID} }

func withWill(req *mqtthooks.ConnectRequest, topic string) *mqtthooks.ConnectRequest {
	req.Will = &mqtthooks.Will{Message: mqtthooks.Message{Topic: topic, Payload: []byte("bye"), QoS: 1}}
	return req
}

func publish(t *testing.T, core *mqtthooks.Core, id mqtthooks.SubscriberID, payloads ...string) {
	t.Helper()
	for _, p := range payloads {
		done := make(chan error, 1)
		r := mqtthooks.NewReceipt(func(err error) { done <- err })
		require.NoError(t, core.Deliver(id, &mqtthooks.Message{Topic: "t", Payload: []byte(p), QoS: 1},
			mqtthooks.DeliverOptions{QoS: 1, Receipt: r}))
		r.Close()
		require.NoError(t, <-done, "the message is durable before the publisher's PUBACK")
	}
}

func payloads(ds []mqtthooks.Delivery) []string {
	var out []string
	for _, d := range ds {
		if d.Message != nil {
			out = append(out, string(d.Message.Payload))
		}
	}
	return out
}

func requireAccepted(t *testing.T, c *mqtthookstest.Client) {
	t.Helper()
	require.True(t, c.Accepted(), "CONNECT rejected: %+v (%v)", c.Connack(), c.Step.Err)
}

// C1: a persistent session online on A, with a message in flight and one
// pending, moves to B: 0x8E on A, A's OnClientOffline{TakenOver} before B's
// OnClientWakeup, SP 1, both messages on B, the one in flight first with
// DUP and its packet id.
func TestC1TakeoverBetweenNodes(t *testing.T) {
	tc := newTestCluster(t)
	a, b := tc.nodes["A"], tc.nodes["B"]
	id := sid("s")
	c1 := mqtthookstest.NewClient(a.core)
	c1.Connect(t.Context(), withWill(mqtthookstest.V5("s", "u", false, 3600), "will/s"))
	requireAccepted(t, c1)
	require.NoError(t, c1.Subscribe(t.Context(), "t"))
	publish(t, a.core, id, "1")
	sent, err := c1.Pull()
	require.NoError(t, err)
	require.Len(t, sent, 1)
	publish(t, a.core, id, "2")

	c2 := mqtthookstest.ConnectV5(t.Context(), b.core, "s", "u", false, 3600)
	requireAccepted(t, c2)
	assert.True(t, c2.Connack().SessionPresent)
	<-c1.Conn.Disconnected()
	assert.Equal(t, []mqtthooks.ReasonCode{mqtthooks.CodeSessionTakenOver}, c1.Conn.Disconnects())
	tc.all.ExpectHooks(t, id, "OnClientWakeup", "OnRegisterM5", "OnClientOffline", "OnClientWakeup", "OnRegisterM5")
	assert.Empty(t, tc.all.Overlaps())
	off, ok := a.rec.Last(id, "OnClientOffline")
	require.True(t, ok)
	assert.Equal(t, mqtthooks.ReasonTakenOver, off.Event.Reason)
	assert.Equal(t, 1, b.rec.Count(id, "OnClientWakeup"))

	got, err := c2.Receive()
	require.NoError(t, err)
	require.Equal(t, []string{"1", "2"}, payloads(got))
	assert.True(t, got[0].Dup)
	assert.Equal(t, sent[0].PacketID, got[0].PacketID)
	_, held := a.core.Lookup(id)
	assert.False(t, held, "A forgot the session")

	// And back to A, with v3: the session keeps moving, and keeps its subscription.
	c3 := mqtthookstest.ConnectV5(t.Context(), a.core, "s", "u", false, 3600)
	requireAccepted(t, c3)
	assert.True(t, c3.Connack().SessionPresent)
	info, ok := a.core.Lookup(id)
	require.True(t, ok)
	assert.Len(t, info.Subscriptions, 1)
	publish(t, a.core, id, "3")
	got, err = c3.Receive()
	require.NoError(t, err)
	assert.Equal(t, []string{"3"}, payloads(got))
}

// C2: a clean start on B over a session online on A.
func TestC2CleanStartBetweenNodes(t *testing.T) {
	tc := newTestCluster(t)
	a, b := tc.nodes["A"], tc.nodes["B"]
	id := sid("s")
	c1 := mqtthookstest.NewClient(a.core)
	c1.Connect(t.Context(), withWill(mqtthookstest.V5("s", "u", false, 3600), "will/s"))
	requireAccepted(t, c1)
	require.NoError(t, c1.Subscribe(t.Context(), "t"))
	publish(t, a.core, id, "1")
	old, _ := a.core.Lookup(id)

	c2 := mqtthookstest.ConnectV5(t.Context(), b.core, "s", "u", true, 3600)
	requireAccepted(t, c2)
	assert.False(t, c2.Connack().SessionPresent)
	<-c1.Conn.Disconnected()
	assert.Equal(t, []mqtthooks.ReasonCode{mqtthooks.CodeSessionTakenOver}, c1.Conn.Disconnects())
	tc.all.ExpectHooks(t, id, "OnClientWakeup", "OnRegisterM5", "OnClientGone", "OnClientWakeup", "OnRegisterM5")
	gone, ok := a.rec.Last(id, "OnClientGone")
	require.True(t, ok)
	assert.Equal(t, mqtthooks.ReasonCleanStart, gone.Event.Reason)
	assert.Equal(t, []string{"A:will/s"}, tc.wills.get())
	info, ok := b.core.Lookup(id)
	require.True(t, ok)
	assert.NotEqual(t, old.Generation, info.Generation)
	assert.Empty(t, info.Subscriptions)
	assert.Zero(t, info.Pending)
}

// C3: CONNECTs with one client id at once on A and B: never two live
// connections, one session, the lifecycle grammar kept.
func TestC3RacingConnectsBetweenNodes(t *testing.T) {
	tc := newTestCluster(t)
	for round := range 8 {
		name := fmt.Sprintf("r%d", round)
		id := sid(name)
		clients := make([]*mqtthookstest.Client, 2)
		var wg sync.WaitGroup
		for i, n := range []string{"A", "B"} {
			wg.Go(func() {
				clients[i] = mqtthookstest.ConnectV5(context.Background(), tc.nodes[n].core, name, "u", round%2 == 0, 60)
			})
		}
		wg.Wait()
		live, holders := 0, 0
		for _, c := range clients {
			if !c.Accepted() {
				continue
			}
			if _, err := c.Pull(); err == nil {
				live++
			}
		}
		for _, n := range tc.nodes {
			if info, ok := n.core.Lookup(id); ok {
				holders++
				assert.Equal(t, 1, info.Connections, "round %d", round)
			}
		}
		assert.Equal(t, 1, live, "round %d: live connections", round)
		assert.Equal(t, 1, holders, "round %d: nodes holding the session", round)
		tc.all.CheckLifecycle(t, id)
	}
	assert.Empty(t, tc.all.Overlaps())
}

// C4 and C7: node A loses NATS with sessions online (its nats-server is
// shut down; its Core, cut off, goes on). Once A's lease ran out, one
// surviving node fires, once, OnClientOffline{NodeDown} for the persistent
// session and OnClientGone{NodeDown} for the clean one, and publishes their
// Wills; a CONNECT on B resumes the persistent session with every
// acknowledged message; A's later writes are refused by the store.
func TestC4C7NodeDown(t *testing.T) {
	tc := newTestCluster(t)
	a, b := tc.nodes["A"], tc.nodes["B"]
	id, clean := sid("s"), sid("k")
	c1 := mqtthookstest.NewClient(a.core)
	c1.Connect(t.Context(), withWill(mqtthookstest.V5("s", "u", false, 3600), "will/s"))
	requireAccepted(t, c1)
	require.NoError(t, c1.Subscribe(t.Context(), "t"))
	publish(t, a.core, id, "1", "2")
	k1 := mqtthookstest.NewClient(a.core)
	k1.Connect(t.Context(), withWill(mqtthookstest.V3("k", "u", true), "will/k"))
	requireAccepted(t, k1)

	gate := make(chan struct{})
	tc.offlineGate.Store(&gate)
	a.nc.Close() // A is cut off: no more lease renewals, no answers to claims
	a.srv.Shutdown()
	start := time.Now()
	adopting := func() bool { return b.cl.Adopting() || tc.nodes["C"].cl.Adopting() }
	require.Eventually(t, adopting, 30*time.Second, testLease/20,
		"a surviving node is adopting A's session, its OnClientOffline held")
	close(gate)
	require.Eventually(t, func() bool {
		return tc.all.Count(id, "OnClientOffline") == 1 && tc.all.Count(clean, "OnClientGone") == 1
	}, 30*time.Second, testLease/20, "a surviving node ends the connections A held")
	require.Eventually(t, func() bool { return !adopting() }, 10*time.Second, testLease/20,
		"no node is adopting once the sessions are installed")
	t.Logf("the sessions were taken over %v after A was cut off (lease %v)", time.Since(start), testLease)
	var heir string
	for _, name := range []string{"B", "C"} {
		if off, ok := tc.nodes[name].rec.Last(id, "OnClientOffline"); ok {
			heir = name
			assert.Equal(t, mqtthooks.ReasonNodeDown, off.Event.Reason)
		}
	}
	require.NotEmpty(t, heir)
	gone, ok := tc.all.Last(clean, "OnClientGone")
	require.True(t, ok)
	assert.Equal(t, mqtthooks.ReasonNodeDown, gone.Event.Reason)
	assert.ElementsMatch(t, []string{heir + ":will/s", "?:will/k"}, replaceNode(tc.wills.get(), "will/k"))

	c2 := mqtthookstest.ConnectV5(t.Context(), b.core, "s", "u", false, 3600)
	requireAccepted(t, c2)
	assert.True(t, c2.Connack().SessionPresent)
	assert.Equal(t, 1, tc.all.Count(id, "OnClientOffline"), "the connection A held ended once")
	got, err := c2.Receive()
	require.NoError(t, err)
	assert.Equal(t, []string{"1", "2"}, payloads(got))

	// A, cut off, still holds its copy: its writes fail.
	r := mqtthooks.NewReceipt(nil)
	_ = a.core.Deliver(id, &mqtthooks.Message{Topic: "t", Payload: []byte("late"), QoS: 1},
		mqtthooks.DeliverOptions{QoS: 1, Receipt: r})
	r.Close()
	ss, err := b.store.LoadSession(t.Context(), id)
	require.NoError(t, err)
	require.NotNil(t, ss)
	for _, e := range ss.Entries {
		assert.NotEqual(t, "late", string(e.Message.Payload), "a write of the node that was cut off reached the store")
	}
}

// replaceNode replaces the node of the Will to topic with "?".
func replaceNode(wills []string, topic string) []string {
	out := make([]string, len(wills))
	for i, w := range wills {
		if strings.HasSuffix(w, ":"+topic) {
			w = "?:" + topic
		}
		out[i] = w
	}
	return out
}

// C8: SameUsername across nodes.
func TestC8ResumePolicyBetweenNodes(t *testing.T) {
	tc := newTestCluster(t)
	id := sid("s")
	c1 := mqtthookstest.ConnectV5(t.Context(), tc.nodes["A"].core, "s", "u", false, 3600)
	requireAccepted(t, c1)
	c2 := mqtthookstest.ConnectV5(t.Context(), tc.nodes["B"].core, "s", "mallory", false, 0)
	require.False(t, c2.Accepted())
	assert.Equal(t, mqtthooks.CodeNotAuthorized, c2.Connack().ReasonCode)
	c3 := mqtthookstest.ConnectV3(t.Context(), tc.nodes["C"].core, "s", "mallory", true)
	require.False(t, c3.Accepted())
	assert.Equal(t, mqtthooks.RefusedNotAuthorized, c3.Connack().ReturnCode)
	_, err := c1.Pull()
	assert.NoError(t, err, "the session on A goes on")
	tc.all.ExpectHooks(t, id, "OnClientWakeup", "OnRegisterM5")
}

// qos2Client is the QoS 2 side of a client that keeps its session state
// across connections, as MQTT requires: a packet identifier it answered
// with PUBREC is remembered until the PUBREL, and a PUBLISH that comes again
// with it (DUP) is not delivered again.
type qos2Client struct {
	mu       sync.Mutex
	awaiting map[uint16]bool
	got      map[string]int // payload → deliveries to the application
}

// TestC4KilledUnderTraffic: QoS 1 and QoS 2 messages flow to two sessions
// online on A while A is killed (its NATS connection and nats-server go, and
// its client connections with them). After the sessions resume on B, every
// message whose Receipt reported it durable (the publisher's PUBACK or
// PUBREC) has arrived: QoS 1 at least once, QoS 2 exactly once.
func TestC4KilledUnderTraffic(t *testing.T) {
	tc := newTestCluster(t)
	a, b := tc.nodes["A"], tc.nodes["B"]
	q1, q2 := sid("q1"), sid("q2")
	var cut atomic.Bool
	acked := map[byte]*sync.Map{1: new(sync.Map), 2: new(sync.Map)}
	got1 := &sync.Map{} // payload → true, QoS 1
	c2 := &qos2Client{awaiting: map[uint16]bool{}, got: map[string]int{}}

	// receive settles what c holds, as a client on a live connection does,
	// until stop says the connection is gone.
	receive := func(c *mqtthookstest.Client, qos byte, stop func() bool) error {
		for !stop() {
			ds, err := c.PullAll()
			if err != nil || len(ds) == 0 {
				return err
			}
			for _, d := range ds {
				if stop() {
					return nil
				}
				if qos == 1 {
					got1.Store(string(d.Message.Payload), true)
					if err := c.Session.Puback(d.PacketID); err != nil {
						return err
					}
					continue
				}
				if err := c2.settle(c.Session, d); err != nil {
					return err
				}
			}
		}
		return nil
	}
	connect := func(core *mqtthooks.Core, id string) *mqtthookstest.Client {
		c := mqtthookstest.ConnectV5(t.Context(), core, id, "u", false, 3600)
		requireAccepted(t, c)
		return c
	}
	s1, s2 := connect(a.core, "q1"), connect(a.core, "q2")
	require.NoError(t, s1.Subscribe(t.Context(), "t"))
	require.NoError(t, s2.Subscribe(t.Context(), "t"))

	var wg sync.WaitGroup
	for _, s := range []struct {
		c   *mqtthookstest.Client
		qos byte
	}{{s1, 1}, {s2, 2}} {
		wg.Go(func() {
			for !cut.Load() {
				select {
				case <-s.c.Conn.Notified():
				case <-time.After(50 * time.Millisecond):
				}
				_ = receive(s.c, s.qos, cut.Load)
			}
		})
	}
	const total = 400
	var n atomic.Int64 // acknowledged
	wg.Go(func() {     // the publisher, 16 PUBLISHes in flight
		window := make(chan struct{}, 16)
		for i := range total {
			window <- struct{}{}
			if cut.Load() {
				return
			}
			for _, dst := range []struct {
				id  mqtthooks.SubscriberID
				qos byte
			}{{q1, 1}, {q2, 2}} {
				payload := fmt.Sprintf("%d-%d", dst.qos, i)
				r := mqtthooks.NewReceipt(func(err error) {
					if err == nil {
						acked[dst.qos].Store(payload, true)
						n.Add(1)
					}
					if dst.qos == 2 {
						<-window
					}
				})
				_ = a.core.Deliver(dst.id, &mqtthooks.Message{Topic: "t", Payload: []byte(payload), QoS: dst.qos},
					mqtthooks.DeliverOptions{QoS: dst.qos, Receipt: r})
				r.Close()
			}
		}
	})
	require.Eventually(t, func() bool { return n.Load() >= total/2 }, 20*time.Second, time.Millisecond)
	cut.Store(true) // A dies: its clients' connections with it
	a.nc.Close()
	a.srv.Shutdown()
	wg.Wait()

	ok := assert.Eventually(t, func() bool {
		return tc.all.Count(q1, "OnClientOffline") == 1 && tc.all.Count(q2, "OnClientOffline") == 1
	}, 30*time.Second, testLease/20)
	if !ok {
		t.Fatalf("hooks: %v / %v\nB: %s\nC: %s", tc.all.Hooks(q1), tc.all.Hooks(q2), b.logs, tc.nodes["C"].logs)
	}
	r1, r2 := connect(b.core, "q1"), connect(b.core, "q2")
	never := func() bool { return false }
	require.NoError(t, receive(r1, 1, never))
	require.NoError(t, receive(r2, 2, never))

	count := map[byte]int{}
	for qos, m := range acked {
		m.Range(func(k, _ any) bool {
			count[qos]++
			if qos == 1 {
				_, ok := got1.Load(k)
				assert.True(t, ok, "acknowledged QoS 1 message %s lost", k)
			} else {
				assert.Equal(t, 1, c2.got[k.(string)], "acknowledged QoS 2 message %s delivered %d times", k, c2.got[k.(string)])
			}
			return true
		})
	}
	for k, times := range c2.got {
		assert.Equal(t, 1, times, "QoS 2 message %s delivered %d times", k, times)
	}
	t.Logf("acknowledged before the kill: %d QoS 1, %d QoS 2", count[1], count[2])
	assert.Positive(t, count[1])
	assert.Positive(t, count[2])
}

// settle answers d as a conforming QoS 2 client: PUBREC, remembered until
// the broker's PUBREL (here: once the PUBREC's state is durable, when a
// broker sends it), then PUBCOMP.
func (c *qos2Client) settle(s *mqtthooks.Session, d mqtthooks.Delivery) error {
	c.mu.Lock()
	if d.Pubrel {
		delete(c.awaiting, d.PacketID)
		c.mu.Unlock()
		return s.Pubcomp(d.PacketID)
	}
	if !c.awaiting[d.PacketID] {
		c.got[string(d.Message.Payload)]++
		c.awaiting[d.PacketID] = true
	}
	c.mu.Unlock()
	durable := make(chan error, 1)
	r := mqtthooks.NewReceipt(func(err error) { durable <- err })
	if err := s.Pubrec(d.PacketID, r); err != nil {
		return err
	}
	r.Close()
	if err := <-durable; err != nil {
		return nil // the PUBREL never comes on this connection: the id stays awaited
	}
	c.mu.Lock()
	delete(c.awaiting, d.PacketID)
	c.mu.Unlock()
	return s.Pubcomp(d.PacketID)
}

// C6: the expiry of an offline session runs on exactly one node, the one
// that held it last; the node it left holds nothing that could expire it.
func TestC6ExpiryOnOneNode(t *testing.T) {
	tc := newTestCluster(t)
	a, b := tc.nodes["A"], tc.nodes["B"]
	id := sid("s")
	c1 := mqtthookstest.ConnectV5(t.Context(), a.core, "s", "u", false, 1)
	requireAccepted(t, c1)
	require.NoError(t, c1.Disconnect(t.Context(), mqtthooks.CodeSuccess)) // offline on A, expiring in 1 s
	c2 := mqtthookstest.ConnectV5(t.Context(), b.core, "s", "u", false, 1)
	requireAccepted(t, c2)
	assert.True(t, c2.Connack().SessionPresent)
	require.NoError(t, c2.Disconnect(t.Context(), mqtthooks.CodeSuccess)) // offline on B
	_, held := a.core.Lookup(id)
	assert.False(t, held, "A keeps nothing of the session that could expire")
	require.Eventually(t, func() bool { return tc.all.Count(id, "OnSessionExpired") == 1 }, 30*time.Second, 10*time.Millisecond)
	assert.Equal(t, 1, b.rec.Count(id, "OnSessionExpired"))
	ss, err := b.store.LoadSession(t.Context(), id)
	require.NoError(t, err)
	assert.Nil(t, ss, "the expired session left the store")
	for _, n := range tc.nodes { // the count drops just after the terminal hook returns
		assert.Eventually(t, func() bool { return n.core.Stats().Sessions == 0 }, 10*time.Second, 5*time.Millisecond,
			"node %s", n.name)
	}
}

// A node that still holds a session the owners bucket gives to another node
// (it kept it through an isolation, its fenced write passing because the new
// owner had not renewed it yet; or the other node took it for gone) forgets
// it as soon as it sees the change, and once more on the audit after an
// isolation: otherwise its writes, each moving the session's log on, would
// keep the new owner's renewal from ever landing. It fires nothing: the new
// owner reports the end of the connection.
func TestIsolatedNodeForgetsSessionsOwnedElsewhere(t *testing.T) {
	tc := newTestCluster(t)
	a := tc.nodes["A"]
	id := sid("s")
	c1 := mqtthookstest.NewClient(a.core)
	c1.Connect(t.Context(), mqtthookstest.V5("s", "u", false, 3600))
	requireAccepted(t, c1)
	offline := a.rec.Count(id, "OnClientOffline")

	js, err := jetstream.New(a.nc)
	require.NoError(t, err)
	owners, err := js.KeyValue(t.Context(), "MQTTHOOKS_owners")
	require.NoError(t, err)
	key := natsjs.OwnerKey(id)
	e, err := owners.Get(t.Context(), key)
	require.NoError(t, err)
	require.Equal(t, "A", string(e.Value()))
	_, err = owners.Update(t.Context(), key, []byte("B"), e.Revision()) // B took it while A was cut off
	require.NoError(t, err)

	require.Eventually(t, func() bool {
		_, held := a.core.Lookup(id)
		return !held
	}, 10*time.Second, 5*time.Millisecond, "A forgets the session B owns as soon as it sees the owners bucket change")
	<-c1.Conn.Disconnected()
	assert.Equal(t, []mqtthooks.ReasonCode{mqtthooks.CodeSessionTakenOver}, c1.Conn.Disconnects())
	assert.Equal(t, offline, a.rec.Count(id, "OnClientOffline"), "A fires nothing for it")

	c2 := mqtthookstest.NewClient(a.core) // a session A still owns stays
	c2.Connect(t.Context(), mqtthookstest.V5("t", "u", false, 3600))
	requireAccepted(t, c2)
	natsjs.AuditHeld(a.cl, natsjs.OwnerKey(sid("t")))
	_, held := a.core.Lookup(sid("t"))
	assert.True(t, held)
}
