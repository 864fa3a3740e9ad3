package mqtthooks_test

// Sessions shared by a cluster when things go wrong: a node cut off that
// goes on serving, adoption racing a claim, a store that fails. Each test
// was first written against a defect a review proved.

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mqtthooks/mqtthooks"
	"github.com/mqtthooks/mqtthooks/mqtthookstest"
)

// C3, C7: node A is cut off (Kill) and B took its session over; a client
// that comes back to A must not resume A's stale copy: A finds the store
// refusing its write, forgets the copy and claims the session from B, which
// ends its own connection as taken over. One live connection, one life.
func TestC7StaleNodeDoesNotResume(t *testing.T) {
	store := new(mqtthooks.MemoryStore)
	c := newCluster(t, store, mqtthooks.Options{}, "A", "B")
	a, b := c.nodes["A"], c.nodes["B"]
	c1 := a.v5("s", false, 3600)
	requireAccepted(t, c1)
	c.cl.Kill("A")
	c2 := b.v5("s", false, 3600)
	requireAccepted(t, c2)

	c3 := a.v5("s", false, 3600) // the client comes back to A
	requireAccepted(t, c3)
	assert.True(t, c3.Connack().SessionPresent)
	_, err2 := c2.Pull()
	_, err3 := c3.Pull()
	live := 0
	for _, err := range []error{err2, err3} {
		if err == nil {
			live++
		}
	}
	assert.Equal(t, 1, live, "live connections for one session across the cluster")
	assert.ErrorIs(t, err2, mqtthooks.ErrTakenOver, "B's connection was taken over by A's")
	<-c1.Conn.Disconnected() // A's old connection ends as taken over
	assert.Equal(t, []mqtthooks.ReasonCode{mqtthooks.CodeSessionTakenOver}, c1.Conn.Disconnects())
	c.all.CheckLifecycle(t, sid("s"))
	assert.Empty(t, c.all.Overlaps())
}

// C2, C7: as above with a clean start on A: A must not replace B's life on
// its own; it claims the session from B, which ends it (OnClientGone
// {CleanStart}), and then starts the new life.
func TestC7StaleNodeCleanStartClaims(t *testing.T) {
	store := new(mqtthooks.MemoryStore)
	c := newCluster(t, store, mqtthooks.Options{}, "A", "B")
	a, b := c.nodes["A"], c.nodes["B"]
	id := sid("s")
	c1 := a.v5("s", false, 3600)
	requireAccepted(t, c1)
	c.cl.Kill("A")
	c2 := b.v5("s", false, 3600)
	requireAccepted(t, c2)
	bInfo, _ := b.core.Lookup(id)

	c3 := a.v5("s", true, 3600) // clean start on the node that was cut off
	requireAccepted(t, c3)
	gone, ok := b.rec.Last(id, "OnClientGone")
	require.True(t, ok, "B ends the life it holds")
	assert.Equal(t, mqtthooks.ReasonCleanStart, gone.Event.Reason)
	ss, err := store.LoadSession(t.Context(), id)
	require.NoError(t, err)
	require.NotNil(t, ss)
	aInfo, ok := a.core.Lookup(id)
	require.True(t, ok)
	assert.Equal(t, aInfo.Generation, ss.Record.Generation, "the store holds A's new life")
	assert.NotEqual(t, bInfo.Generation, aInfo.Generation)
	c.all.CheckLifecycle(t, id)
	assert.Zero(t, a.rec.Count(id, "OnClientGone"), "A fired nothing for the copy it forgot")
}

// C4, C7: after B took the session over, the connection A still holds ends:
// A fires nothing (B reported that connection's end, NodeDown, already).
func TestC7StaleNodeFiresNothing(t *testing.T) {
	c := newCluster(t, new(mqtthooks.MemoryStore), mqtthooks.Options{}, "A", "B")
	a, b := c.nodes["A"], c.nodes["B"]
	id := sid("s")
	c1 := a.v5("s", false, 3600)
	requireAccepted(t, c1)
	c.cl.Kill("A")
	c2 := b.v5("s", false, 3600)
	requireAccepted(t, c2)
	require.NoError(t, c2.Disconnect(t.Context(), mqtthooks.CodeSuccess))
	require.NoError(t, c1.Disconnect(t.Context(), mqtthooks.CodeSuccess)) // the connection A kept
	assert.Zero(t, a.rec.Count(id, "OnClientOffline"), "A fired a hook for a session B owns: %v", c.all.Hooks(id))
	c.all.CheckLifecycle(t, id)
}

// C4: adoption racing a claim. A dies with p1 and p2 online; the Cluster
// makes B the owner of both and B adopts them one by one. While B adopts the
// first (its hook blocks), a client reconnects to C for the second: C's
// claim waits until B has adopted it, then takes it from B. The connection A
// held ends once (NodeDown, on B), C's session is the only one, and C's
// writes are not fenced by a late adoption.
func TestC4AdoptionRacesClaim(t *testing.T) {
	c := newCluster(t, new(mqtthooks.MemoryStore), mqtthooks.Options{}, "A", "C")
	blocked := make(chan mqtthooks.SubscriberID, 1)
	release := make(chan struct{})
	var once atomic.Bool
	b := c.startWith(t, "B", mqtthooks.Options{}, mqtthooks.OnClientOfflineFunc(func(ctx context.Context, ev *mqtthooks.SessionEvent) {
		if ev.Reason == mqtthooks.ReasonNodeDown && once.CompareAndSwap(false, true) {
			blocked <- ev.SubscriberID
			<-release
		}
	}))
	a, cn := c.nodes["A"], c.nodes["C"]
	for _, n := range []string{"p1", "p2"} {
		cl := a.v5(n, false, 3600)
		requireAccepted(t, cl)
	}
	killed := make(chan struct{})
	go func() { c.cl.Kill("A"); close(killed) }()
	x := <-blocked
	y := sid("p1")
	if x == y {
		y = sid("p2")
	}
	require.Equal(t, "B", c.cl.Owner(y))
	connected := make(chan *mqtthookstest.Client)
	go func() { connected <- cn.v5(y.ClientID, false, 3600) }() // the client of y reconnects to C
	close(release)
	<-killed
	cy := <-connected
	requireAccepted(t, cy)
	assert.True(t, cy.Connack().SessionPresent)

	assert.Equal(t, "C", c.cl.Owner(y))
	_, onB := b.core.Lookup(y)
	assert.False(t, onB, "B installed a session that C owns and serves")
	assert.Equal(t, 1, c.all.Count(y, "OnClientOffline"), "the connection A held ended more than once: %v", c.all.Hooks(y))
	_, err := cy.Pull()
	assert.NoError(t, err)
	// C's writes for y are now refused by the store.
	cn.publish(t, y, 1, 1)
	assert.NotContains(t, cn.logs.String(), mqtthooks.ErrStaleGeneration.Error(), "C's session was fenced off by B's Adopt")
}

// failingLoader is a MemoryStore whose LoadSession fails while failLoad is
// set, and whose commits with a DeleteSession fail while failDelete is set.
type failingLoader struct {
	*mqtthooks.MemoryStore
	failLoad, failDelete atomic.Bool
}

func (s *failingLoader) LoadSession(ctx context.Context, id mqtthooks.SubscriberID) (*mqtthooks.StoredSession, error) {
	if s.failLoad.Load() {
		return nil, errors.New("injected: read failed")
	}
	return s.MemoryStore.LoadSession(ctx, id)
}

func (s *failingLoader) Batch() mqtthooks.StoreBatch {
	return &failingBatch{StoreBatch: s.MemoryStore.Batch(), s: s}
}

type failingBatch struct {
	mqtthooks.StoreBatch
	s       *failingLoader
	deletes bool
}

func (b *failingBatch) DeleteSession(id mqtthooks.SubscriberID, gen uint64) {
	b.deletes = true
	b.StoreBatch.DeleteSession(id, gen)
}

func (b *failingBatch) Commit(done func(error)) {
	if b.deletes && b.s.failDelete.Load() {
		if done != nil {
			done(errors.New("injected: write timed out"))
		}
		return
	}
	b.StoreBatch.Commit(done)
}

// A claim that succeeded but whose LoadSession fails must not disown the
// session, which would leave it in the store owned by no node and armed on
// none: the claiming node takes it over once the store answers again, so
// it expires and its delayed Will is published.
func TestClusterClaimLoadFails(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		store := &failingLoader{MemoryStore: new(mqtthooks.MemoryStore)}
		c := newCluster(t, store, mqtthooks.Options{}, "A", "B")
		id := sid("s")
		req := withWillTo(mqtthookstest.V5("s", "u", false, 10), "will/s")
		req.Will.DelayInterval = 5
		c1 := mqtthookstest.NewClient(c.nodes["A"].core)
		c1.Connect(t.Context(), req)
		requireAccepted(t, c1)

		store.failLoad.Store(true)
		c2 := c.nodes["B"].v5("s", false, 10) // A yields, B cannot read it
		require.False(t, c2.Accepted())
		store.failLoad.Store(false)
		t.Logf("owner after the failed claim: %q", c.cl.Owner(id))

		time.Sleep(30 * time.Second)
		synctest.Wait()
		assert.Equal(t, 1, c.all.Count(id, "OnSessionExpired"), "hooks: %v", c.all.Hooks(id))
		assert.Len(t, c.wills.get(), 1, "the delayed Will")
		ss, _ := store.LoadSession(t.Context(), id)
		assert.Nil(t, ss, "the session is still stored")
		for _, n := range c.nodes {
			require.NoError(t, n.core.Shutdown(t.Context()))
		}
	})
}

// A clean session's delete fails at its DISCONNECT: Gone fires, but the
// node keeps its claim until the store has the delete, so that the next
// CONNECT on another node does not take the record left behind for a lost
// connection (which would publish the Will of a client that sent DISCONNECT
// 0x00 and fire a second OnClientGone for the same life).
func TestClusterDeleteFails(t *testing.T) {
	store := &failingLoader{MemoryStore: new(mqtthooks.MemoryStore)}
	c := newCluster(t, store, mqtthooks.Options{}, "A", "B")
	id := sid("k")
	c1 := mqtthookstest.NewClient(c.nodes["A"].core)
	c1.Connect(t.Context(), withWillTo(mqtthookstest.V3("k", "u", true), "will/k"))
	requireAccepted(t, c1)
	store.failDelete.Store(true)
	require.NoError(t, c1.Disconnect(t.Context(), mqtthooks.CodeSuccess))
	store.failDelete.Store(false)
	require.Equal(t, 1, c.all.Count(id, "OnClientGone"))

	c2 := c.nodes["B"].v3("k", true)
	requireAccepted(t, c2)
	assert.Empty(t, c.wills.get(), "a Will for a normal DISCONNECT")
	assert.Equal(t, 1, c.all.Count(id, "OnClientGone"), "hooks: %v", c.all.Hooks(id))
}

// A CONNECT that claims a session from a dead node and is then refused
// (ResumePolicy) leaves the session installed here, offline, with its
// timers: it expires, and the lost connection's delayed Will is published.
func TestClusterRefusedClaimKeepsTimers(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := newCluster(t, new(mqtthooks.MemoryStore), mqtthooks.Options{}, "A")
		id := sid("s")
		req := withWillTo(mqtthookstest.V5("s", "u", false, 10), "will/s")
		req.Will.DelayInterval = 5
		c1 := mqtthookstest.NewClient(c.nodes["A"].core)
		c1.Connect(t.Context(), req)
		requireAccepted(t, c1)
		c.cl.Kill("A") // no other node yet: nobody adopts
		b := c.start(t, "B", mqtthooks.Options{})
		m := mqtthookstest.ConnectV5(t.Context(), b.core, "s", "mallory", false, 10)
		require.False(t, m.Accepted())
		_, held := b.core.Lookup(id)
		t.Logf("B holds it: %v, owner %q", held, c.cl.Owner(id))

		time.Sleep(30 * time.Second)
		synctest.Wait()
		assert.Equal(t, 1, b.rec.Count(id, "OnSessionExpired"), "hooks: %v", c.all.Hooks(id))
		assert.Equal(t, []string{"B:will/s"}, c.wills.get())
		for _, n := range c.nodes {
			_ = n.core.Shutdown(t.Context())
		}
	})
}

var _ = sync.Mutex{}

// C4: an Adopt whose LoadSession fails once is tried again, so the
// connection A held is reported ended (OnClientOffline{NodeDown}, its Will)
// and the session expires on its new owner.
func TestC4AdoptRetried(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		store := &failingLoader{MemoryStore: new(mqtthooks.MemoryStore)}
		c := newCluster(t, store, mqtthooks.Options{}, "A", "B")
		id := sid("s")
		c1 := mqtthookstest.NewClient(c.nodes["A"].core)
		c1.Connect(t.Context(), withWillTo(mqtthookstest.V5("s", "u", false, 10), "will/s"))
		requireAccepted(t, c1)
		store.failLoad.Store(true)
		c.cl.Kill("A")
		store.failLoad.Store(false)
		time.Sleep(30 * time.Second)
		synctest.Wait()
		_, held := c.nodes["B"].core.Lookup(id)
		t.Logf("owner %q, B holds it: %v", c.cl.Owner(id), held)
		assert.Equal(t, 1, c.nodes["B"].rec.Count(id, "OnClientOffline"), "hooks: %v", c.all.Hooks(id))
		assert.Equal(t, 1, c.nodes["B"].rec.Count(id, "OnSessionExpired"))
		assert.Equal(t, []string{"B:will/s"}, c.wills.get())
		for _, n := range c.nodes {
			_ = n.core.Shutdown(t.Context())
		}
	})
}

// gatedStore is a MemoryStore that holds back the commit of the first batch
// writing an offline record of a session (the record a node writes before
// handing the session over) once armed, until the test opens the gate.
type gatedStore struct {
	*mqtthooks.MemoryStore
	armed   atomic.Bool
	held    chan struct{} // closed when a commit is held
	release chan struct{} // closed by the test to let it through
}

func (s *gatedStore) Batch() mqtthooks.StoreBatch {
	return &gatedBatch{StoreBatch: s.MemoryStore.Batch(), s: s}
}

type gatedBatch struct {
	mqtthooks.StoreBatch
	s       *gatedStore
	offline bool
}

func (b *gatedBatch) UpdateSession(rec *mqtthooks.SessionRecord) {
	b.offline = b.offline || !rec.Connected
	b.StoreBatch.UpdateSession(rec)
}

func (b *gatedBatch) Commit(done func(error)) {
	if b.offline && b.s.armed.CompareAndSwap(true, false) {
		close(b.s.held)
		go func() {
			<-b.s.release
			b.StoreBatch.Commit(done)
		}()
		return
	}
	b.StoreBatch.Commit(done)
}

// A message routed to a session while its node hands it over to another
// one is stored nowhere: Deliver fails with ErrNotOwner and so does the
// PUBLISH's Receipt, so that the broker does not acknowledge it and the
// client sends it again (once the new owner routes it). Then the old node
// tells its Router the session moved (Moved, not RemoveAll), and the
// message sent again reaches the session on the new node.
func TestClusterDeliverDuringHandOver(t *testing.T) {
	store := &gatedStore{MemoryStore: new(mqtthooks.MemoryStore), held: make(chan struct{}), release: make(chan struct{})}
	c := newCluster(t, store, mqtthooks.Options{}, "A", "B")
	a, b := c.nodes["A"], c.nodes["B"]
	id := sid("s")
	c1 := a.v5("s", false, 3600)
	requireAccepted(t, c1)
	require.NoError(t, c1.Subscribe(t.Context(), "t"))

	store.armed.Store(true)
	c2 := mqtthookstest.NewClient(b.core)
	connected := make(chan struct{})
	go func() {
		defer close(connected)
		c2.Connect(context.Background(), mqtthookstest.V5("s", "u", false, 3600))
	}()
	<-store.held // A has ended the session and is writing it before the hand-over

	msg := &mqtthooks.Message{Topic: "t", Payload: []byte("during"), QoS: 1}
	var receiptErr error
	acked := make(chan struct{})
	r := mqtthooks.NewReceipt(func(err error) { receiptErr = err; close(acked) })
	err := a.core.Deliver(id, msg, mqtthooks.DeliverOptions{QoS: 1, Receipt: r})
	r.Close()
	<-acked
	require.ErrorIs(t, err, mqtthooks.ErrNotOwner, "a session on its way to another node takes no message here")
	assert.ErrorIs(t, receiptErr, mqtthooks.ErrNotOwner, "and the PUBLISH is not acknowledged")
	assert.Zero(t, a.rec.Count(id, "Moved"), "the subscriptions stay until the session has left")

	close(store.release)
	<-connected
	requireAccepted(t, c2)
	assert.True(t, c2.Connack().SessionPresent)
	assert.Equal(t, 1, a.rec.Count(id, "Moved"), "A's Router learns the session moved")
	assert.Zero(t, a.rec.Count(id, "RemoveAll"))
	_, held := a.core.Lookup(id)
	assert.False(t, held, "A no longer holds the session")

	b.publish(t, id, 1, 1) // the client's resend, routed by B now
	got, err2 := c2.PullAll()
	require.NoError(t, err2)
	assert.Equal(t, []string{"1"}, payloads(got), "only the resent copy: the refused one was stored nowhere")
}

// A session handed over while a QoS 2 PUBLISH of its client is still being
// routed (its Receipt waits for other nodes, say) leaves without that
// identifier: should the routing fail after the hand-over, the new node
// still routes the client's resend, which it would otherwise take for a
// repeat and acknowledge without routing.
func TestClusterHandOverDropsUnsettledInbound(t *testing.T) {
	c := newCluster(t, new(mqtthooks.MemoryStore), mqtthooks.Options{}, "A", "B")
	a, b := c.nodes["A"], c.nodes["B"]
	c1 := a.v5("s", false, 3600)
	requireAccepted(t, c1)
	settled := mqtthooks.NewReceipt(nil)
	first, err := c1.Session.InboundPublish(4, settled)
	require.NoError(t, err)
	require.True(t, first)
	settled.Close()
	pending := mqtthooks.NewReceipt(nil)
	first, err = c1.Session.InboundPublish(5, pending)
	require.NoError(t, err)
	require.True(t, first)

	c2 := b.v5("s", false, 3600) // takes the session over
	requireAccepted(t, c2)
	pending.Fail(nil)
	pending.Close()
	again, err := c2.Session.InboundPublish(5, nil)
	require.NoError(t, err)
	assert.True(t, again, "the resend of the PUBLISH in the balance is routed on B")
	dup, err := c2.Session.InboundPublish(4, nil)
	require.NoError(t, err)
	assert.False(t, dup, "an acknowledged one stays a repeat")
}
