package mqtthooks_test

// Durable sessions across restarts and crashes, with mqtthookstest.Store: the
// ACCEPTANCE rows D1–D7 and the three defects a review proved in the first
// store seam.

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mqtthooks/mqtthooks"
	"github.com/mqtthooks/mqtthooks/mqtthookstest"
)

// restart shuts f's Core down and returns a fixture on the same store.
func (f *fixture) restart(t *testing.T, store mqtthooks.SessionStore, opts mqtthooks.Options) *fixture {
	t.Helper()
	require.NoError(t, f.core.Shutdown(t.Context()))
	opts.Store = store
	return newFixture(t, opts)
}

// crash abandons f's Core as a killed process would: what the store made
// durable stays; then the old Core is shut down, its writes refused.
func (f *fixture) crash(t *testing.T, store *mqtthookstest.Store) *mqtthookstest.Store {
	t.Helper()
	after := store.Crash(t)
	require.NoError(t, f.core.Shutdown(t.Context()))
	return after
}

// D1, and two defects of the first seam: a session restored from a store
// dropped every message (its queue had no limits), and messages that arrived
// while it was offline were never written. An offline session receives 3 QoS
// 1 messages; after a restart it has them, in order, and its limits: a 4th is
// queued, not dropped.
func TestD1RestartKeepsOfflineQueue(t *testing.T) {
	store := new(mqtthookstest.Store)
	f := newFixture(t, mqtthooks.Options{Store: store})
	f.offline(t, "s")
	f.publish(t, sid("s"), 1, 3)

	g := f.restart(t, store, mqtthooks.Options{})
	info, ok := g.core.Lookup(sid("s"))
	require.True(t, ok)
	assert.Zero(t, info.Connections)
	assert.Equal(t, 3, info.Pending)
	assert.Len(t, info.Subscriptions, 1)
	g.publish(t, sid("s"), 1, 1) // "1" again, the 4th
	assert.Zero(t, g.rec.Count(sid("s"), "OnMessageDrop"), "the restored queue has its limits")
	c := g.v3("s", false)
	requireAccepted(t, c)
	assert.True(t, c.Connack().SessionPresent)
	got, err := c.Receive()
	require.NoError(t, err)
	assert.Equal(t, []string{"1", "2", "3", "1"}, payloads(got))
	checkNoLoss(t, g.core)
}

// D2: killed, not shut down. Every message whose Deliver returned with its
// write durable survives; a write still held (not yet synced, as inside an
// Interval store's window) is lost, and nothing else.
func TestD2CrashKeepsDurableMessages(t *testing.T) {
	store := new(mqtthookstest.Store)
	f := newFixture(t, mqtthooks.Options{Store: store})
	f.offline(t, "s")
	f.publish(t, sid("s"), 1, 3)
	store.Hold()
	f.publish(t, sid("s"), 1, 2) // "1", "2" again: not durable yet
	after := f.crash(t, store)

	g := newFixture(t, mqtthooks.Options{Store: after})
	got, err := g.v3("s", false).Receive()
	require.NoError(t, err)
	assert.Equal(t, []string{"1", "2", "3"}, payloads(got))
}

// D3, and the third defect of the first seam: the stored copy was never
// cleared on resume, so a later save wrote delivered messages back and a QoS
// 2 message came twice after a crash. A QoS 2 delivery completes while
// online, a SUBSCRIBE follows, the process dies: the message is not offered
// again.
func TestD3CompletedQoS2NotRedelivered(t *testing.T) {
	store := new(mqtthookstest.Store)
	f := newFixture(t, mqtthooks.Options{Store: store})
	f.offline(t, "s")
	f.publish(t, sid("s"), 2, 1)
	c := f.v3("s", false)
	got, err := c.Receive() // PUBLISH, PUBREC, PUBREL, PUBCOMP
	require.NoError(t, err)
	require.Len(t, got, 1)
	require.NoError(t, c.Subscribe(t.Context(), "more"))
	after := f.crash(t, store)

	g := newFixture(t, mqtthooks.Options{Store: after})
	again, err := g.v3("s", false).Receive()
	require.NoError(t, err)
	assert.Empty(t, again)
	info, _ := g.core.Lookup(sid("s"))
	assert.Len(t, info.Subscriptions, 2)
}

// D4: what was in flight at the crash. A QoS 1 delivery sent and not
// acknowledged comes first after the restart, DUP set, same packet
// identifier; a QoS 2 delivery past PUBREC gets its PUBREL first; an inbound
// QoS 2 identifier not yet released makes the client's repeat a duplicate.
func TestD4InflightAcrossCrash(t *testing.T) {
	store := new(mqtthookstest.Store)
	f := newFixture(t, mqtthooks.Options{Store: store})
	f.offline(t, "s")
	f.publish(t, sid("s"), 1, 1)
	f.publish(t, sid("s"), 2, 1)
	c := f.v3("s", false)
	ds, err := c.PullAll()
	require.NoError(t, err)
	require.Len(t, ds, 2)
	require.NoError(t, c.Session.Pubrec(ds[1].PacketID, nil))
	first, err := c.Session.InboundPublish(42, nil)
	require.NoError(t, err)
	require.True(t, first)
	after := f.crash(t, store)

	g := newFixture(t, mqtthooks.Options{Store: after})
	c2 := g.v3("s", false)
	got, err := c2.PullAll()
	require.NoError(t, err)
	require.Len(t, got, 2)
	assert.Equal(t, mqtthooks.Delivery{PacketID: ds[0].PacketID, QoS: 1, Dup: true, Message: got[0].Message}, got[0])
	assert.Equal(t, "1", string(got[0].Message.Payload))
	assert.Equal(t, mqtthooks.Delivery{PacketID: ds[1].PacketID, QoS: 2, Pubrel: true}, got[1])
	again, err := c2.Session.InboundPublish(42, nil)
	require.NoError(t, err)
	assert.False(t, again, "the repeat is not routed again")
	known, _ := c2.Session.InboundPubrel(42, nil)
	assert.True(t, known)
}

// D5: a write by generation g after the session moved to g+1 (a takeover
// raced it) is refused and changes nothing: a clean start makes a new life,
// and a batch the old life's writer commits late is refused. Every store
// checks the same in mqtthookstest.TestSessionStore ("Fencing").
func TestD5StaleGenerationRefused(t *testing.T) {
	store := new(mqtthookstest.Store)
	f := newFixture(t, mqtthooks.Options{Store: store})
	f.offline(t, "s")
	f.publish(t, sid("s"), 1, 2)
	old, _ := f.core.Lookup(sid("s"))
	fresh := f.v5("s", true, 300) // Clean Start: a new life
	requireAccepted(t, fresh)
	cur, _ := f.core.Lookup(sid("s"))
	require.Greater(t, cur.Generation, old.Generation)

	late := store.Batch() // the old life's writer, late
	late.PutSubscription(sid("s"), old.Generation, mqtthooks.Subscription{Filter: "late", QoS: 1})
	late.DeleteSession(sid("s"), old.Generation)
	done := make(chan error, 1)
	late.Commit(func(err error) { done <- err })
	require.ErrorIs(t, <-done, mqtthooks.ErrStaleGeneration)

	g := f.crash(t, store)
	h := newFixture(t, mqtthooks.Options{Store: g})
	info, ok := h.core.Lookup(sid("s"))
	require.True(t, ok, "the new life is still there")
	assert.Equal(t, cur.Generation, info.Generation)
	assert.Empty(t, info.Subscriptions)
	assert.Zero(t, info.Pending, "the old life's queue went with it")
}

// D6: downtime counts toward expiry. SEI 10 s, down 20 s: the session expires
// at start, its pending Will first, then OnSessionExpired, never
// OnClientGone. SEI 60 s, down 20 s: it expires 40 s after start.
func TestD6ExpiryAcrossDowntime(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		store := new(mqtthookstest.Store)
		f := newFixture(t, mqtthooks.Options{Store: store})
		f.connect(withDelayedWill(mqtthookstest.V5("short", "u", false, 10), 30)).Drop(t.Context(), nil)
		f.v5("long", false, 60).Drop(t.Context(), nil)
		after := f.crash(t, store)
		time.Sleep(20 * time.Second)

		start := time.Now()
		g := newFixture(t, mqtthooks.Options{Store: after})
		synctest.Wait()
		g.rec.ExpectHooks(t, sid("short"), "PublishWill", "OnSessionExpired")
		_, ok := g.core.Lookup(sid("long"))
		assert.True(t, ok)
		time.Sleep(39 * time.Second)
		synctest.Wait()
		assert.Zero(t, g.rec.Count(sid("long"), "OnSessionExpired"))
		time.Sleep(time.Second)
		synctest.Wait()
		assert.Equal(t, 1, g.rec.Count(sid("long"), "OnSessionExpired"))
		assert.Equal(t, 40*time.Second, time.Since(start))
		assert.Zero(t, g.rec.Count(sid("long"), "OnClientGone"))
	})
}

// D7: a delayed Will pending at the crash. Down 10 s with a delay of 30 s: it
// is published 20 s after start, unless the client resumes first; down 40 s:
// at start.
func TestD7DelayedWillAcrossDowntime(t *testing.T) {
	for _, tc := range []struct {
		down, wantAt time.Duration
		resume       bool
	}{{10 * time.Second, 20 * time.Second, false}, {10 * time.Second, 0, true}, {40 * time.Second, 0, false}} {
		synctest.Test(t, func(t *testing.T) {
			store := new(mqtthookstest.Store)
			var mu sync.Mutex
			var published []time.Duration
			var start time.Time
			opts := mqtthooks.Options{PublishWill: func(context.Context, mqtthooks.SubscriberID, *mqtthooks.Will) {
				mu.Lock()
				defer mu.Unlock()
				published = append(published, time.Since(start))
			}}
			opts.Store = store
			f := newFixture(t, opts)
			f.connect(withDelayedWill(mqtthookstest.V5("w", "u", false, 3600), 30)).Drop(t.Context(), nil)
			after := f.crash(t, store)
			time.Sleep(tc.down)

			start = time.Now()
			opts.Store = after
			g := newFixture(t, opts)
			if tc.resume {
				requireAccepted(t, g.v5("w", false, 3600))
			}
			time.Sleep(time.Minute)
			synctest.Wait()
			mu.Lock()
			defer mu.Unlock()
			if tc.resume {
				assert.Empty(t, published, "a resume drops the delayed Will")
				return
			}
			assert.Equal(t, []time.Duration{tc.wantAt}, published)
		})
	}
}

// A session resumed by a connection with cleanup on disconnect leaves the
// store: a crash while it is online does not bring it back.
func TestCleanupResumeLeavesStore(t *testing.T) {
	store := new(mqtthookstest.Store)
	f := newFixture(t, mqtthooks.Options{Store: store})
	f.v5("s", false, 300).Drop(t.Context(), nil)
	requireAccepted(t, f.v5("s", false, 0)) // SEI 0: the session ends with this connection
	after := f.crash(t, store)

	g := newFixture(t, mqtthooks.Options{Store: after})
	_, ok := g.core.Lookup(sid("s"))
	assert.False(t, ok)
}

// A session lost online by a crash is restored offline, and expires its
// interval after the restart.
func TestCrashWhileOnline(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		store := new(mqtthookstest.Store)
		f := newFixture(t, mqtthooks.Options{Store: store})
		requireAccepted(t, f.v5("s", false, 30))
		after := f.crash(t, store)
		time.Sleep(time.Hour)

		g := newFixture(t, mqtthooks.Options{Store: after})
		info, ok := g.core.Lookup(sid("s"))
		require.True(t, ok)
		assert.Equal(t, time.Now().Add(30*time.Second), info.ExpiresAt)
		g.rec.ExpectHooks(t, sid("s"), "OnClientOffline")
		off, _ := g.rec.Last(sid("s"), "OnClientOffline")
		assert.Equal(t, mqtthooks.ReasonRestart, off.Event.Reason)
		assert.Equal(t, info.Generation, off.Event.Generation)
	})
}

// Clean sessions and QoS 0 messages are never written.
func TestCleanSessionsAndQoS0NotStored(t *testing.T) {
	store := new(mqtthookstest.Store)
	f := newFixture(t, mqtthooks.Options{Store: store, StoreQoS0Offline: true})
	requireAccepted(t, f.v3("clean", true))
	f.offline(t, "s")
	f.publish(t, sid("s"), 0, 2)
	g := f.restart(t, store, mqtthooks.Options{})
	_, ok := g.core.Lookup(sid("clean"))
	assert.False(t, ok)
	info, _ := g.core.Lookup(sid("s"))
	assert.Zero(t, info.Pending)
}

// A message routed to many sessions with one Receipt is stored once; the
// Receipt reports when every copy is durable.
func TestReceiptStoresOnce(t *testing.T) {
	store := new(countingStore)
	f := newFixture(t, mqtthooks.Options{Store: store})
	for _, id := range []string{"a", "b", "c"} {
		f.offline(t, id)
	}
	store.Hold()
	var stored error
	done := make(chan struct{})
	r := mqtthooks.NewReceipt(func(err error) { stored = err; close(done) })
	msg := &mqtthooks.Message{Topic: "t", Payload: []byte("x"), QoS: 1}
	for _, id := range []string{"a", "b", "c"} {
		require.NoError(t, f.core.Deliver(sid(id), msg, mqtthooks.DeliverOptions{QoS: 1, Receipt: r}))
	}
	r.Close()
	select {
	case <-done:
		t.Fatal("the Receipt reported before the writes were durable")
	default:
	}
	store.Release()
	<-done
	assert.NoError(t, stored)
	assert.Equal(t, 1, store.messages(), "one message for three sessions")
}

// countingStore counts the messages written.
type countingStore struct {
	mqtthookstest.Store
	mu sync.Mutex
	n  int
}

func (s *countingStore) Batch() mqtthooks.StoreBatch {
	return &countingBatch{StoreBatch: s.Store.Batch(), s: s}
}

func (s *countingStore) messages() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.n
}

type countingBatch struct {
	mqtthooks.StoreBatch
	s *countingStore
}

func (b *countingBatch) PutMessage(id uint64, m *mqtthooks.Message) {
	b.s.mu.Lock()
	b.s.n++
	b.s.mu.Unlock()
	b.StoreBatch.PutMessage(id, m)
}

// A message routed with one Receipt stays stored while the Receipt is open,
// even when every copy written so far is acknowledged: the crash test found
// a copy for an offline session pointing at a message an online one had
// already acknowledged, and deleted, and the offline session lost it at the
// restart.
func TestReceiptHoldsMessageWhileRouting(t *testing.T) {
	store := new(mqtthookstest.Store)
	f := newFixture(t, mqtthooks.Options{Store: store})
	online := f.v3("online", false)
	requireAccepted(t, online)
	f.offline(t, "offline")

	r := mqtthooks.NewReceipt(nil)
	msg := &mqtthooks.Message{Topic: "t", Payload: []byte("x"), QoS: 1}
	require.NoError(t, f.core.Deliver(sid("online"), msg, mqtthooks.DeliverOptions{QoS: 1, Receipt: r}))
	got, err := online.Receive() // PUBLISH, PUBACK: the online copy is gone
	require.NoError(t, err)
	require.Equal(t, []string{"x"}, payloads(got))
	require.NoError(t, f.core.Deliver(sid("offline"), msg, mqtthooks.DeliverOptions{QoS: 1, Receipt: r}))
	r.Close()

	g := f.restart(t, store, mqtthooks.Options{})
	again, err := g.v3("offline", false).Receive()
	require.NoError(t, err)
	assert.Equal(t, []string{"x"}, payloads(again))
}

// Pubrec takes a Receipt, and it reports only once the PUBREC is durable: the
// crash test found a broker that sent PUBREL at once, a crash that lost the
// PUBREC, and the restarted broker offering the PUBLISH again to a client
// that had forgotten the packet identifier at PUBREL, which delivered it
// twice.
func TestPubrecReceiptWaitsForStore(t *testing.T) {
	store := new(mqtthookstest.Store)
	f := newFixture(t, mqtthooks.Options{Store: store})
	f.offline(t, "s")
	f.publish(t, sid("s"), 2, 1)
	c := f.v3("s", false)
	ds, err := c.PullAll()
	require.NoError(t, err)
	require.Len(t, ds, 1)

	store.Hold()
	durable := make(chan error, 1)
	r := mqtthooks.NewReceipt(func(err error) { durable <- err })
	require.NoError(t, c.Session.Pubrec(ds[0].PacketID, r))
	r.Close()
	select {
	case <-durable:
		t.Fatal("the Receipt reported before the PUBREC was durable")
	default:
	}
	after := f.crash(t, store) // the PUBREL was never sent: the PUBLISH comes again, as it must
	require.ErrorIs(t, <-durable, mqtthookstest.ErrCrashed)

	g := newFixture(t, mqtthooks.Options{Store: after})
	c2 := g.v3("s", false)
	got, err := c2.PullAll()
	require.NoError(t, err)
	require.Len(t, got, 1)
	assert.False(t, got[0].Pubrel)
	assert.True(t, got[0].Dup)
	assert.Equal(t, ds[0].PacketID, got[0].PacketID)

	// Once the Receipt reports, a crash leaves the PUBREL owed.
	r = mqtthooks.NewReceipt(func(err error) { durable <- err })
	require.NoError(t, c2.Session.Pubrec(got[0].PacketID, r))
	r.Close()
	require.NoError(t, <-durable)
	again := g.crash(t, after)
	h := newFixture(t, mqtthooks.Options{Store: again})
	owed, err := h.v3("s", false).PullAll()
	require.NoError(t, err)
	assert.Equal(t, []mqtthooks.Delivery{{PacketID: ds[0].PacketID, QoS: 2, Pubrel: true}}, owed)
}

// The Will of a connection the crash took is kept with the session and comes
// due at the restart as for any connection lost without a DISCONNECT: a v3
// Will at start, before OnClientOffline (ReasonRestart), and only once; after
// a DISCONNECT 0x00, which discards it, nothing is published.
func TestCrashPublishesWillOfLostConnection(t *testing.T) {
	store := new(mqtthookstest.Store)
	f := newFixture(t, mqtthooks.Options{Store: store})
	requireAccepted(t, f.connect(withWill(mqtthookstest.V3("lost", "u", false))))
	polite := f.connect(withWill(mqtthookstest.V3("polite", "u", false)))
	requireAccepted(t, polite)
	require.NoError(t, polite.Session.Disconnect(t.Context(), mqtthooks.CodeNormalDisconnection))
	after := f.crash(t, store) // the abandoned Core's Shutdown publishes it too; the store no longer listens

	g := newFixture(t, mqtthooks.Options{Store: after})
	g.rec.ExpectHooks(t, sid("lost"), "PublishWill", "OnClientOffline")
	w, _ := g.rec.Last(sid("lost"), "PublishWill")
	assert.Equal(t, "w/lost", w.Will.Topic)
	assert.Zero(t, g.rec.Count(sid("polite"), "PublishWill"))

	h := g.restart(t, after, mqtthooks.Options{}) // the Will is not owed any more
	assert.Zero(t, h.rec.Count(sid("lost"), "PublishWill"))
}

// A v5 Will with a delay, on a connection the crash took, is published its
// delay after the restart, unless the client resumes first; a Will published
// at start reaches a session restored after the one whose Will it is.
func TestCrashDelaysWillOfLostConnection(t *testing.T) {
	for _, resume := range []bool{false, true} {
		synctest.Test(t, func(t *testing.T) {
			store := new(mqtthookstest.Store)
			var mu sync.Mutex
			var published []time.Duration
			var start time.Time
			opts := mqtthooks.Options{Store: store, PublishWill: func(context.Context, mqtthooks.SubscriberID, *mqtthooks.Will) {
				mu.Lock()
				defer mu.Unlock()
				published = append(published, time.Since(start))
			}}
			f := newFixture(t, opts)
			requireAccepted(t, f.connect(withDelayedWill(mqtthookstest.V5("w", "u", false, 3600), 30)))
			after := f.crash(t, store)
			time.Sleep(time.Hour)

			start = time.Now()
			opts.Store = after
			g := newFixture(t, opts)
			if resume {
				requireAccepted(t, g.v5("w", false, 3600))
			}
			time.Sleep(time.Minute)
			synctest.Wait()
			mu.Lock()
			defer mu.Unlock()
			if resume {
				assert.Empty(t, published, "a resume drops the delayed Will")
				return
			}
			assert.Equal(t, []time.Duration{30 * time.Second}, published)
		})
	}
}

// Wills due at start are published once every session and subscription is
// back, so that they reach the sessions restored after theirs.
func TestWillAtStartReachesEverySession(t *testing.T) {
	store := new(mqtthookstest.Store)
	f := newFixture(t, mqtthooks.Options{Store: store})
	const n = 20
	for i := range n {
		c := f.connect(withWill(mqtthookstest.V3(fmt.Sprintf("s%02d", i), "u", false)))
		requireAccepted(t, c)
		require.NoError(t, c.Subscribe(t.Context(), "w/#"))
	}
	after := f.crash(t, store)

	router := &countingRouter{subs: map[mqtthooks.SubscriberID]bool{}}
	reached := map[string]int{}
	newFixture(t, mqtthooks.Options{Store: after, Router: router,
		PublishWill: func(_ context.Context, from mqtthooks.SubscriberID, _ *mqtthooks.Will) {
			router.mu.Lock()
			defer router.mu.Unlock()
			reached[from.ClientID] = len(router.subs) // the sessions a broker would route it to
		}})
	require.Len(t, reached, n)
	for id, k := range reached {
		assert.Equal(t, n, k, "the Will of %s reached every session", id)
	}
}

// countingRouter knows which sessions have a subscription.
type countingRouter struct {
	mu   sync.Mutex
	subs map[mqtthooks.SubscriberID]bool
}

func (r *countingRouter) Add(id mqtthooks.SubscriberID, _ uint64, _ mqtthooks.Subscription) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.subs[id] = true
}

func (r *countingRouter) Remove(mqtthooks.SubscriberID, uint64, string) {}

func (r *countingRouter) RemoveAll(id mqtthooks.SubscriberID, _ uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.subs, id)
}

// A QoS 2 PUBLISH that was not taken (its Receipt failed: here the broker's
// Fail, as when another node of a cluster did not store its copies) leaves
// no identifier behind: the client's resend is routed as a first arrival,
// on the same connection, after a takeover, and after a crash (the store
// forgot it too). A PUBLISH that was taken stays a duplicate.
func TestInboundRefusedPublishForgotten(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		store := new(mqtthookstest.Store)
		f := newFixture(t, mqtthooks.Options{Store: store})
		c := f.v3("s", false)

		refuse := func(s *mqtthooks.Session, id uint16) error {
			var got error
			r := mqtthooks.NewReceipt(func(err error) { got = err })
			first, err := s.InboundPublish(id, r)
			require.NoError(t, err)
			require.True(t, first)
			r.Fail(errors.New("injected: another node did not store it"))
			r.Close()
			synctest.Wait()
			return got
		}
		assert.Error(t, refuse(c.Session, 7), "the Receipt reports the failure")
		resent := mqtthooks.NewReceipt(nil)
		again, err := c.Session.InboundPublish(7, resent)
		require.NoError(t, err)
		assert.True(t, again, "the resend on the same connection is routed")
		assert.True(t, resent.Resent(), "as the resend of a refused PUBLISH, after the identifier was forgotten too")
		resent.Close()
		synctest.Wait()
		known, err := c.Session.InboundPubrel(7, nil)
		require.NoError(t, err)
		require.True(t, known)
		fresh := mqtthooks.NewReceipt(nil)
		again, err = c.Session.InboundPublish(7, fresh)
		require.NoError(t, err)
		assert.True(t, again)
		assert.False(t, fresh.Resent(), "a new PUBLISH under a released identifier is not a resend")
		fresh.Close()

		// The resend before the Core got round to forgetting the identifier.
		r := mqtthooks.NewReceipt(nil)
		first, err := c.Session.InboundPublish(6, r)
		require.NoError(t, err)
		require.True(t, first)
		assert.False(t, r.Resent())
		r.Fail(nil)
		r.Close() // forgetting it is left to a goroutine, which has not run yet
		resend := mqtthooks.NewReceipt(nil)
		again, err = c.Session.InboundPublish(6, resend)
		require.NoError(t, err)
		assert.True(t, again, "a resend that comes before the identifier is forgotten is routed")
		assert.True(t, resend.Resent(), "and known for the resend of a refused PUBLISH")
		resend.Close()
		synctest.Wait()
		dup, err := c.Session.InboundPublish(6, nil)
		require.NoError(t, err)
		assert.False(t, dup, "the resend took the identifier: the late forgetting leaves it")

		assert.Error(t, refuse(c.Session, 8))
		taken := mqtthooks.NewReceipt(nil)
		first, err = c.Session.InboundPublish(9, taken)
		require.NoError(t, err)
		require.True(t, first)
		taken.Close()
		synctest.Wait()

		c2 := f.v3("s", false) // takes over
		again, err = c2.Session.InboundPublish(8, nil)
		require.NoError(t, err)
		assert.True(t, again, "the resend after a takeover is routed")
		dup, err = c2.Session.InboundPublish(9, nil)
		require.NoError(t, err)
		assert.False(t, dup, "a PUBLISH that was taken stays a duplicate")

		assert.Error(t, refuse(c2.Session, 10))
		after := f.crash(t, store)
		g := newFixture(t, mqtthooks.Options{Store: after})
		c3 := g.v3("s", false)
		again, err = c3.Session.InboundPublish(10, nil)
		require.NoError(t, err)
		assert.True(t, again, "the store forgot the identifier of the refused PUBLISH")
		dup, err = c3.Session.InboundPublish(9, nil)
		require.NoError(t, err)
		assert.False(t, dup)
	})
}

// A stored QoS 2 copy goes to its client only once the store has it: were
// the node to die before, the client would have the message, the store
// not, and the publisher (unacknowledged) would send it again, to arrive a
// second time under another packet identifier. The connection is notified
// when it may go. QoS 1 (at least once) does not wait.
func TestQoS2CopyHandedOutWhenDurable(t *testing.T) {
	store := new(mqtthookstest.Store)
	f := newFixture(t, mqtthooks.Options{Store: store})
	c := f.v5("s", false, 3600)
	requireAccepted(t, c)
	require.NoError(t, c.Subscribe(t.Context(), "t"))
	got, err := c.PullAll()
	require.NoError(t, err)
	require.Empty(t, got)

	store.Hold()
	f.publish(t, sid("s"), 1, 1)
	got, err = c.Pull()
	require.NoError(t, err)
	assert.Equal(t, []string{"1"}, payloads(got), "QoS 1 goes at once")
	f.publish(t, sid("s"), 2, 1)
	got, err = c.Pull()
	require.NoError(t, err)
	assert.Empty(t, got, "the QoS 2 copy waits for the store")

	notified := c.Conn.NotifyCount()
	store.Release()
	assert.Greater(t, c.Conn.NotifyCount(), notified, "the connection is told when the copy is durable")
	got, err = c.Pull()
	require.NoError(t, err)
	require.Len(t, got, 1)
	assert.Equal(t, byte(2), got[0].QoS)
	assert.Equal(t, "1", string(got[0].Message.Payload))
}

// A repeat of a QoS 2 PUBLISH whose first arrival is still being routed is
// not routed, and its Receipt settles with the first one's: a broker that
// sends PUBREC on the repeat's Receipt never acknowledges a PUBLISH whose
// routing then fails (the client would not send it again).
func TestInboundRepeatWaitsForFirstArrival(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		store := new(mqtthookstest.Store)
		f := newFixture(t, mqtthooks.Options{Store: store})
		c := f.v3("s", false)
		for _, fail := range []bool{false, true} {
			id := uint16(10)
			if fail {
				id = 11
			}
			orig := mqtthooks.NewReceipt(nil)
			first, err := c.Session.InboundPublish(id, orig)
			require.NoError(t, err)
			require.True(t, first)

			var repeatErr error
			settled := false
			repeat := mqtthooks.NewReceipt(func(err error) { repeatErr, settled = err, true })
			again, err := c.Session.InboundPublish(id, repeat)
			require.NoError(t, err)
			assert.False(t, again, "a repeat is not routed")
			repeat.Close()
			synctest.Wait()
			assert.False(t, settled, "the repeat waits for the first arrival's outcome")

			if fail {
				orig.Fail(nil)
			}
			orig.Close()
			synctest.Wait()
			require.True(t, settled)
			if fail {
				assert.ErrorIs(t, repeatErr, mqtthooks.ErrNotTaken, "the repeat is not acknowledged either")
				resend, err := c.Session.InboundPublish(id, nil)
				require.NoError(t, err)
				assert.True(t, resend, "and the next resend is routed")
			} else {
				assert.NoError(t, repeatErr)
			}
		}
	})
}

// With several connections (DeliverBalance), every connection whose Pull
// stopped at a QoS 2 copy not yet durable is notified when it is.
func TestQoS2DurableNotifiesEveryConnection(t *testing.T) {
	store := new(mqtthookstest.Store)
	f := newFixture(t, mqtthooks.Options{Store: store})
	f.rec.AuthOnRegisterFunc = multi(mqtthooks.DeliverBalance)
	c1, c2 := f.v3("s", false), f.v3("s", false)
	require.NoError(t, c1.Subscribe(t.Context(), "t"))
	store.Hold()
	f.publish(t, sid("s"), 2, 2) // one for each connection
	for _, c := range []*mqtthookstest.Client{c1, c2} {
		got, err := c.Pull()
		require.NoError(t, err)
		assert.Empty(t, got)
	}
	n1, n2 := c1.Conn.NotifyCount(), c2.Conn.NotifyCount()
	store.Release()
	assert.Greater(t, c1.Conn.NotifyCount(), n1, "the first connection is told")
	assert.Greater(t, c2.Conn.NotifyCount(), n2, "and the second")
	var got []mqtthooks.Delivery
	for _, c := range []*mqtthookstest.Client{c1, c2} {
		ds, err := c.Pull()
		require.NoError(t, err)
		got = append(got, ds...)
	}
	assert.ElementsMatch(t, []string{"1", "2"}, payloads(got))
}

// entryGate is a MemoryStore that holds back the commits of batches that
// store a queue entry while gate is set, until open: a subscriber's store
// slower than its publisher's.
type entryGate struct {
	mqtthooks.MemoryStore
	mu   sync.Mutex
	gate bool
	held []func()
}

func (s *entryGate) Batch() mqtthooks.StoreBatch {
	return &entryGateBatch{StoreBatch: s.MemoryStore.Batch(), s: s}
}

// open lets the held commits through, in order, and holds no more.
func (s *entryGate) open() {
	s.mu.Lock()
	held := s.held
	s.held, s.gate = nil, false
	s.mu.Unlock()
	for _, commit := range held {
		commit()
	}
}

type entryGateBatch struct {
	mqtthooks.StoreBatch
	s     *entryGate
	entry bool
}

func (b *entryGateBatch) PutEntry(id mqtthooks.SubscriberID, gen uint64, e *mqtthooks.StoredEntry) {
	b.entry = true
	b.StoreBatch.PutEntry(id, gen, e)
}

func (b *entryGateBatch) Commit(done func(error)) {
	b.s.mu.Lock()
	if b.s.gate && b.entry {
		b.s.held = append(b.s.held, func() { b.StoreBatch.Commit(done) })
		b.s.mu.Unlock()
		return
	}
	b.s.mu.Unlock()
	b.StoreBatch.Commit(done)
}

// The identifier of a client's QoS 2 PUBLISH reaches the store only after
// the copies it was routed to: a broker that dies in between leaves no
// identifier, so the client's resend (no PUBREC came) is routed again,
// rather than taken for a repeat whose copies were never stored.
func TestInboundWrittenAfterCopies(t *testing.T) {
	store := new(entryGate)
	f := newFixture(t, mqtthooks.Options{Store: store})
	f.offline(t, "sub")
	pub := f.v3("pub", false)

	inbound := func() []uint16 {
		ss, err := store.LoadSession(t.Context(), sid("pub"))
		require.NoError(t, err)
		require.NotNil(t, ss)
		return ss.Inbound
	}
	store.mu.Lock()
	store.gate = true
	store.mu.Unlock()
	var settled error
	done := make(chan struct{})
	r := mqtthooks.NewReceipt(func(err error) { settled = err; close(done) })
	first, err := pub.Session.InboundPublish(9, r)
	require.NoError(t, err)
	require.True(t, first)
	require.NoError(t, f.core.Deliver(sid("sub"), &mqtthooks.Message{Topic: "t", Payload: []byte("x"), QoS: 2},
		mqtthooks.DeliverOptions{QoS: 2, Receipt: r}))
	r.Close()
	assert.Empty(t, inbound(), "the identifier waits for the copy")
	store.open()
	<-done
	require.NoError(t, settled)
	assert.Equal(t, []uint16{9}, inbound(), "and is durable before the PUBREC")
}
