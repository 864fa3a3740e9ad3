package mqtthooks_test

// Sessions shared by the Cores of a cluster, on mqtthookstest.Cluster and one
// MemoryStore: the ACCEPTANCE rows C1–C3 and C6–C8 as the core sees them
// (cluster/natsjs runs them again on a NATS JetStream cluster).

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mqtthooks/mqtthooks"
	"github.com/mqtthooks/mqtthooks/mqtthookstest"
)

// cluster is a test's nodes: each a Core with its own Recorder ("P", which
// accepts every client) and a Recorder shared by all, "all", whose log is
// the order of the hooks across the cluster.
type cluster struct {
	cl    *mqtthookstest.Cluster
	store mqtthooks.SessionStore
	all   *mqtthookstest.Recorder
	nodes map[string]*fixture
	wills *willLog
}

// willLog records the Wills published, by node.
type willLog struct {
	mu    sync.Mutex
	wills []string
}

func (w *willLog) add(node string, will *mqtthooks.Will) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.wills = append(w.wills, node+":"+will.Message.Topic)
}

func (w *willLog) get() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]string(nil), w.wills...)
}

func newCluster(t *testing.T, store mqtthooks.SessionStore, opts mqtthooks.Options, names ...string) *cluster {
	t.Helper()
	c := &cluster{cl: mqtthookstest.NewCluster(), store: store, all: &mqtthookstest.Recorder{},
		nodes: map[string]*fixture{}, wills: &willLog{}}
	for _, name := range names {
		c.start(t, name, opts)
	}
	return c
}

// start starts the node name.
func (c *cluster) start(t *testing.T, name string, opts mqtthooks.Options) *fixture {
	t.Helper()
	return c.startWith(t, name, opts, nil)
}

// startWith is start with one more plugin, extra, registered on the node.
func (c *cluster) startWith(t *testing.T, name string, opts mqtthooks.Options, extra any) *fixture {
	t.Helper()
	f := &fixture{t: t, rec: &mqtthookstest.Recorder{Accept: true}, logs: new(logBuffer)}
	logger := slog.New(slog.NewTextHandler(f.logs, nil))
	f.chain = mqtthooks.NewChain(mqtthooks.ChainOptions{Logger: logger})
	require.NoError(t, f.chain.Register("P", f.rec))
	require.NoError(t, f.chain.Register("all", c.all))
	if extra != nil {
		require.NoError(t, f.chain.Register("extra", extra))
	}
	opts.Store, opts.Cluster, opts.Logger = c.store, c.cl.Node(name), logger
	opts.Router = f.rec.Router()
	opts.PublishWill = func(ctx context.Context, id mqtthooks.SubscriberID, w *mqtthooks.Will) {
		c.wills.add(name, w)
		f.rec.PublishWill(ctx, id, w)
	}
	core, err := mqtthooks.NewCore(f.chain, opts)
	require.NoError(t, err)
	f.core = core
	t.Cleanup(func() { _ = core.Shutdown(context.Background()) })
	c.nodes[name] = f
	return f
}

// checkOrder fails t if the hooks of id across the cluster were not want,
// in order, or if two of them ever ran at once.
func (c *cluster) checkOrder(t *testing.T, id mqtthooks.SubscriberID, want ...string) {
	t.Helper()
	c.all.ExpectHooks(t, id, want...)
	assert.Empty(t, c.all.Overlaps(), "lifecycle hooks of one session overlapped across the nodes")
}

func withWillTo(req *mqtthooks.ConnectRequest, topic string) *mqtthooks.ConnectRequest {
	req.Will = &mqtthooks.Will{Message: mqtthooks.Message{Topic: topic, Payload: []byte("bye"), QoS: 1}}
	return req
}

// C1: a persistent session online on A, with a message pending and one in
// flight; the same client id connects to B. A's connection gets 0x8E; A's
// OnClientOffline{TakenOver} returns before B's OnClientWakeup; B answers
// SP 1 and delivers the message in flight first, DUP set, with its packet
// id, then the pending one.
func TestC1TakeoverAcrossNodes(t *testing.T) {
	c := newCluster(t, new(mqtthooks.MemoryStore), mqtthooks.Options{}, "A", "B", "C")
	a, b := c.nodes["A"], c.nodes["B"]
	id := sid("s")
	c1 := mqtthookstest.NewClient(a.core)
	c1.Connect(t.Context(), withWillTo(mqtthookstest.V5("s", "u", false, 3600), "will/s"))
	requireAccepted(t, c1)
	require.NoError(t, c1.Subscribe(t.Context(), "t"))
	a.publish(t, id, 1, 1)
	sent, err := c1.Pull()
	require.NoError(t, err)
	require.Len(t, sent, 1) // "1" in flight, not acknowledged
	a.publish(t, id, 1, 2)  // "1" and "2", pending
	require.Equal(t, "A", c.cl.Owner(id))

	c2 := b.v5("s", false, 3600)
	requireAccepted(t, c2)
	assert.True(t, c2.Connack().SessionPresent)
	<-c1.Conn.Disconnected()
	assert.Equal(t, []mqtthooks.ReasonCode{mqtthooks.CodeSessionTakenOver}, c1.Conn.Disconnects())
	assert.Equal(t, "B", c.cl.Owner(id))
	c.checkOrder(t, id, "OnClientWakeup", "OnRegisterM5",
		"OnClientOffline", "OnClientWakeup", "OnRegisterM5")
	off, ok := a.rec.Last(id, "OnClientOffline")
	require.True(t, ok, "A fires the old connection's end")
	assert.Equal(t, mqtthooks.ReasonTakenOver, off.Event.Reason)
	assert.Zero(t, b.rec.Count(id, "OnClientOffline"))
	assert.Equal(t, 1, b.rec.Count(id, "OnClientWakeup"))
	assert.Equal(t, []string{"A:will/s"}, c.wills.get(), "the old connection's Will goes out on A, as in a takeover on one node")

	got, err := c2.PullAll()
	require.NoError(t, err)
	require.Len(t, got, 3)
	assert.True(t, got[0].Dup, "the delivery in flight on A is sent again first, DUP set")
	assert.Equal(t, sent[0].PacketID, got[0].PacketID, "with its packet identifier")
	assert.Equal(t, []string{"1", "1", "2"}, payloads(got))
	for _, d := range got {
		require.NoError(t, c2.Settle(d))
	}
	_, ok = a.core.Lookup(id)
	assert.False(t, ok, "A no longer holds the session")
	info, ok := b.core.Lookup(id)
	require.True(t, ok)
	assert.Equal(t, 1, info.Connections)
	assert.Len(t, info.Subscriptions, 1)
	assert.Zero(t, info.Pending)

	// The subscription moved with the session: A's router forgot it, B's has it.
	assert.Equal(t, 1, a.rec.Count(id, "Moved"), "A tells its Router the session moved")
	assert.Zero(t, a.rec.Count(id, "RemoveAll"))
	assert.Equal(t, 1, b.rec.Count(id, "Add"))
	checkNoLoss(t, a.core)
	checkNoLoss(t, b.core)
	assert.Equal(t, uint64(3), a.core.Stats().HandedOver, "the message in flight and the two pending left with the session")
	assert.Equal(t, uint64(1), a.core.Stats().SessionsYielded)
	assert.Equal(t, uint64(1), b.core.Stats().SessionsClaimed)
}

// C1 for MQTT 3.1.1: the old connection is closed (no DISCONNECT exists).
func TestC1TakeoverAcrossNodesV3(t *testing.T) {
	c := newCluster(t, new(mqtthooks.MemoryStore), mqtthooks.Options{}, "A", "B")
	id := sid("s")
	c1 := c.nodes["A"].v3("s", false)
	requireAccepted(t, c1)
	c2 := c.nodes["B"].v3("s", false)
	requireAccepted(t, c2)
	assert.True(t, c2.Connack().SessionPresent)
	_, err := c1.Pull()
	var ended *mqtthooks.EndedError
	require.ErrorAs(t, err, &ended)
	assert.Equal(t, mqtthooks.ReasonTakenOver, ended.Reason)
	c.checkOrder(t, id, "OnClientWakeup", "OnRegister",
		"OnClientOffline", "OnClientWakeup", "OnRegister")
}

// C2: a clean start on B over a session online on A: A's connection gets
// 0x8E and A's OnClientGone{CleanStart} runs before B's OnClientWakeup, for a
// new life; SP 0; the old queue and subscriptions are gone.
func TestC2CleanStartAcrossNodes(t *testing.T) {
	c := newCluster(t, new(mqtthooks.MemoryStore), mqtthooks.Options{}, "A", "B")
	a, b := c.nodes["A"], c.nodes["B"]
	id := sid("s")
	c1 := mqtthookstest.NewClient(a.core)
	c1.Connect(t.Context(), withWillTo(mqtthookstest.V5("s", "u", false, 3600), "will/s"))
	requireAccepted(t, c1)
	require.NoError(t, c1.Subscribe(t.Context(), "t"))
	a.publish(t, id, 1, 2)
	old, _ := a.core.Lookup(id)

	c2 := b.v5("s", true, 3600)
	requireAccepted(t, c2)
	assert.False(t, c2.Connack().SessionPresent)
	<-c1.Conn.Disconnected()
	assert.Equal(t, []mqtthooks.ReasonCode{mqtthooks.CodeSessionTakenOver}, c1.Conn.Disconnects())
	c.checkOrder(t, id, "OnClientWakeup", "OnRegisterM5",
		"OnClientGone", "OnClientWakeup", "OnRegisterM5")
	gone, ok := a.rec.Last(id, "OnClientGone")
	require.True(t, ok)
	assert.Equal(t, mqtthooks.ReasonCleanStart, gone.Event.Reason)
	assert.Equal(t, []string{"A:will/s"}, c.wills.get(), "the session ends: its Will goes out, on A")
	info, ok := b.core.Lookup(id)
	require.True(t, ok)
	assert.NotEqual(t, old.Generation, info.Generation)
	assert.Empty(t, info.Subscriptions)
	assert.Zero(t, info.Pending)
	got, err := c2.PullAll()
	require.NoError(t, err)
	assert.Empty(t, got)
}

// C3: two CONNECTs with one client id at once on A and B, many times. One
// session wins each round: at the end exactly one connection is live, the
// other was taken over (or refused), the hooks never overlap and every life
// ends with one terminal hook before the next begins.
func TestC3RacingConnects(t *testing.T) {
	c := newCluster(t, new(mqtthooks.MemoryStore), mqtthooks.Options{}, "A", "B")
	for round := range 30 {
		name := fmt.Sprintf("r%d", round)
		id := sid(name)
		clients := make([]*mqtthookstest.Client, 2)
		var wg sync.WaitGroup
		for i, node := range []string{"A", "B"} {
			wg.Go(func() {
				clients[i] = mqtthookstest.ConnectV5(context.Background(), c.nodes[node].core, name, "u", round%2 == 0, 60)
			})
		}
		wg.Wait()
		live := 0
		for _, cl := range clients {
			if !cl.Accepted() {
				continue
			}
			if _, err := cl.Pull(); err == nil {
				live++
			}
		}
		if !assert.Equal(t, 1, live, "round %d: live connections", round) {
			for i, cl := range clients {
				t.Logf("client %d: accepted %v, step err %v, disconnects %v", i, cl.Accepted(), cl.Step.Err, cl.Conn.Disconnects())
			}
			t.Logf("hooks: %v\nA: %v\nB: %v", c.all.Hooks(id), c.nodes["A"].rec.Hooks(id), c.nodes["B"].rec.Hooks(id))
			t.Logf("logs A: %s\nlogs B: %s", c.nodes["A"].logs, c.nodes["B"].logs)
		}
		owner := c.cl.Owner(id)
		require.NotEmpty(t, owner)
		info, ok := c.nodes[owner].core.Lookup(id)
		require.True(t, ok, "round %d: the owner %s holds the session", round, owner)
		assert.Equal(t, 1, info.Connections)
		c.all.CheckLifecycle(t, id)
	}
	assert.Empty(t, c.all.Overlaps())
}

// C6: the expiry of an offline session runs on exactly one node, the one
// that held it last: OnSessionExpired fires once, cluster-wide, and the node
// it left has no timer for it.
func TestC6ExpiryOnOneNode(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := newCluster(t, new(mqtthooks.MemoryStore), mqtthooks.Options{}, "A", "B")
		id := sid("s")
		c1 := c.nodes["A"].v5("s", false, 10)
		requireAccepted(t, c1)
		require.NoError(t, c1.Disconnect(t.Context(), mqtthooks.CodeSuccess)) // offline on A, expiring in 10 s
		time.Sleep(5 * time.Second)
		c2 := c.nodes["B"].v5("s", false, 10)
		requireAccepted(t, c2)
		assert.True(t, c2.Connack().SessionPresent)
		require.NoError(t, c2.Disconnect(t.Context(), mqtthooks.CodeSuccess)) // offline on B, expiring in 10 s
		time.Sleep(9 * time.Second)
		synctest.Wait()
		assert.Zero(t, c.all.Count(id, "OnSessionExpired"), "A's timer was dropped with the session")
		time.Sleep(2 * time.Second)
		synctest.Wait()
		assert.Equal(t, 1, c.all.Count(id, "OnSessionExpired"))
		assert.Equal(t, 1, c.nodes["B"].rec.Count(id, "OnSessionExpired"))
		assert.Empty(t, c.cl.Owner(id), "an expired session has no owner")
		for _, n := range c.nodes {
			require.NoError(t, n.core.Shutdown(t.Context()))
		}
	})
}

// C7, with C4 as the core sees it: node A is cut off with a session online.
// B claims it without A: the connection A held ends on B, once, with
// OnClientOffline{NodeDown} and its Will; B resumes it with every message;
// then a write of A's, for the life before, is refused by the store and
// changes nothing.
func TestC7StaleNodeFenced(t *testing.T) {
	store := new(mqtthooks.MemoryStore)
	c := newCluster(t, store, mqtthooks.Options{}, "A", "B")
	a, b := c.nodes["A"], c.nodes["B"]
	id := sid("s")
	c1 := mqtthookstest.NewClient(a.core)
	c1.Connect(t.Context(), withWillTo(mqtthookstest.V5("s", "u", false, 3600), "will/s"))
	requireAccepted(t, c1)
	require.NoError(t, c1.Subscribe(t.Context(), "t"))
	a.publish(t, id, 1, 2)

	c.cl.Kill("A")
	c2 := b.v5("s", false, 3600)
	requireAccepted(t, c2)
	assert.True(t, c2.Connack().SessionPresent)
	off, ok := b.rec.Last(id, "OnClientOffline")
	require.True(t, ok, "B ends the connection A held")
	assert.Equal(t, mqtthooks.ReasonNodeDown, off.Event.Reason)
	assert.Equal(t, []string{"B:will/s"}, c.wills.get())
	c.checkOrder(t, id, "OnClientWakeup", "OnRegisterM5",
		"OnClientOffline", "OnClientWakeup", "OnRegisterM5")

	// A still holds its copy of the session and writes to it: refused.
	before, err := store.LoadSession(t.Context(), id)
	require.NoError(t, err)
	// Deliver on A returns and its write fails; or A found out already, from
	// an earlier write of its own refused, and holds the session no more.
	err = a.core.Deliver(id, &mqtthooks.Message{Topic: "t", Payload: []byte("3"), QoS: 1}, mqtthooks.DeliverOptions{QoS: 1})
	if err != nil {
		assert.True(t, errors.Is(err, mqtthooks.ErrNotOwner) || errors.Is(err, mqtthooks.ErrSessionNotFound), "%v", err)
	}
	assert.Contains(t, a.logs.String(), mqtthooks.ErrStaleGeneration.Error())
	after, err := store.LoadSession(t.Context(), id)
	require.NoError(t, err)
	assert.Equal(t, before, after, "a write from the node that was cut off changed the session")

	got, err := c2.Receive()
	require.NoError(t, err)
	assert.Equal(t, []string{"1", "2"}, payloads(got))
}

// C8: SameUsername holds across nodes: a CONNECT on B with another user is
// refused (0x87), and the session on A is untouched: no hook fires.
func TestC8ResumePolicyAcrossNodes(t *testing.T) {
	c := newCluster(t, new(mqtthooks.MemoryStore), mqtthooks.Options{}, "A", "B")
	id := sid("s")
	c1 := c.nodes["A"].v5("s", false, 3600)
	requireAccepted(t, c1)
	for _, clean := range []bool{false, true} {
		c2 := mqtthookstest.ConnectV5(t.Context(), c.nodes["B"].core, "s", "mallory", clean, 0)
		require.False(t, c2.Accepted())
		assert.Equal(t, mqtthooks.CodeNotAuthorized, c2.Connack().ReasonCode)
	}
	c3 := mqtthookstest.ConnectV3(t.Context(), c.nodes["B"].core, "s", "mallory", false)
	require.False(t, c3.Accepted())
	assert.Equal(t, mqtthooks.RefusedNotAuthorized, c3.Connack().ReturnCode)
	assert.Empty(t, c1.Conn.Disconnects())
	_, err := c1.Pull()
	assert.NoError(t, err, "the session on A goes on")
	assert.Equal(t, "A", c.cl.Owner(id))
	c.checkOrder(t, id, "OnClientWakeup", "OnRegisterM5")
	_, ok := c.nodes["B"].core.Lookup(id)
	assert.False(t, ok)
}

// A Core with a Cluster needs a store every node can read a session from.
func TestClusterNeedsLoader(t *testing.T) {
	_, err := mqtthooks.NewCore(mqtthooks.NewChain(mqtthooks.ChainOptions{}),
		mqtthooks.Options{Cluster: mqtthookstest.NewCluster().Node("A")})
	assert.ErrorIs(t, err, mqtthooks.ErrInvalidArgument)
}

// C4: node A dies with sessions on it: a persistent one online, a clean one
// online, a persistent one offline. At once (its lease ran out), one
// surviving node takes each over: OnClientOffline{NodeDown} for the first,
// OnClientGone{NodeDown} for the second, each once, with their Wills; the
// offline one fires nothing and expires on its new node. A client that
// reconnects resumes with every message.
func TestC4NodeDown(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := newCluster(t, new(mqtthooks.MemoryStore), mqtthooks.Options{}, "A", "B", "C")
		a := c.nodes["A"]
		p1 := mqtthookstest.NewClient(a.core)
		p1.Connect(t.Context(), withWillTo(mqtthookstest.V5("p", "u", false, 3600), "will/p"))
		requireAccepted(t, p1)
		require.NoError(t, p1.Subscribe(t.Context(), "t"))
		a.publish(t, sid("p"), 1, 2)
		k1 := mqtthookstest.NewClient(a.core)
		k1.Connect(t.Context(), withWillTo(mqtthookstest.V3("k", "u", true), "will/k"))
		requireAccepted(t, k1)
		o1 := a.v5("o", false, 60)
		requireAccepted(t, o1)
		require.NoError(t, o1.Disconnect(t.Context(), mqtthooks.CodeSuccess))

		c.cl.Kill("A")
		for _, name := range []string{"p", "o"} {
			assert.Equal(t, "B", c.cl.Owner(sid(name)), name)
		}
		b := c.nodes["B"]
		off, ok := b.rec.Last(sid("p"), "OnClientOffline")
		require.True(t, ok)
		assert.Equal(t, mqtthooks.ReasonNodeDown, off.Event.Reason)
		gone, ok := b.rec.Last(sid("k"), "OnClientGone")
		require.True(t, ok)
		assert.Equal(t, mqtthooks.ReasonNodeDown, gone.Event.Reason)
		assert.ElementsMatch(t, []string{"B:will/p", "B:will/k"}, c.wills.get())
		c.checkOrder(t, sid("p"), "OnClientWakeup", "OnRegisterM5", "OnClientOffline")
		c.checkOrder(t, sid("k"), "OnClientWakeup", "OnRegister", "OnClientGone")
		c.checkOrder(t, sid("o"), "OnClientWakeup", "OnRegisterM5", "OnClientOffline")
		_, ok = b.core.Lookup(sid("k"))
		assert.False(t, ok, "the clean session ended")
		assert.Empty(t, c.cl.Owner(sid("k")), "an ended session has no owner")

		time.Sleep(61 * time.Second)
		synctest.Wait()
		assert.Equal(t, 1, b.rec.Count(sid("o"), "OnSessionExpired"), "the offline session expires on its new node")
		assert.Equal(t, 1, c.all.Count(sid("o"), "OnSessionExpired"))

		p2 := c.nodes["C"].v5("p", false, 3600)
		requireAccepted(t, p2)
		assert.True(t, p2.Connack().SessionPresent)
		got, err := p2.Receive()
		require.NoError(t, err)
		assert.Equal(t, []string{"1", "2"}, payloads(got))
		assert.Equal(t, 1, c.all.Count(sid("p"), "OnClientOffline"), "the connection A held ended once: %v", c.all.Hooks(sid("p")))
		assert.Equal(t, uint64(3), b.core.Stats().SessionsAdopted)
		checkNoLoss(t, b.core)
		checkNoLoss(t, c.nodes["C"].core)
		for _, n := range []string{"B", "C"} {
			require.NoError(t, c.nodes[n].core.Shutdown(t.Context()))
		}
	})
}

// A node that shuts down hands its offline sessions to another, where they
// expire.
func TestClusterLeaveHandsOver(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := newCluster(t, new(mqtthooks.MemoryStore), mqtthooks.Options{}, "A", "B")
		o := c.nodes["A"].v5("o", false, 30)
		requireAccepted(t, o)
		require.NoError(t, c.nodes["A"].core.Shutdown(t.Context()))
		assert.Equal(t, "B", c.cl.Owner(sid("o")))
		time.Sleep(31 * time.Second)
		synctest.Wait()
		assert.Equal(t, 1, c.nodes["B"].rec.Count(sid("o"), "OnSessionExpired"))
		require.NoError(t, c.nodes["B"].core.Shutdown(t.Context()))
	})
}
