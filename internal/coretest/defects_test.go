package mqtthooks_test

// Regression tests for defects a review proved against the public API. Each
// test names the defect it pins down; each failed before its fix.

import (
	"context"
	"errors"
	"iter"
	"maps"
	"runtime"
	"strconv"
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

// faultStore is an mqtthookstest.Store whose CreateSession can fail or panic
// on demand, when its batch is committed.
type faultStore struct {
	store  *mqtthookstest.Store                  // nil: a new one
	create func(id mqtthooks.SubscriberID) error // nil: the store's answer
	once   sync.Once
}

func (s *faultStore) inner() *mqtthookstest.Store {
	s.once.Do(func() {
		if s.store == nil {
			s.store = new(mqtthookstest.Store)
		}
	})
	return s.store
}

func (s *faultStore) Load(ctx context.Context) iter.Seq2[*mqtthooks.StoredSession, error] {
	return s.inner().Load(ctx)
}

func (s *faultStore) NextGeneration() uint64 { return s.inner().NextGeneration() }

func (s *faultStore) Batch() mqtthooks.StoreBatch {
	return &faultBatch{StoreBatch: s.inner().Batch(), s: s}
}

type faultBatch struct {
	mqtthooks.StoreBatch
	s       *faultStore
	creates []mqtthooks.SubscriberID
}

func (b *faultBatch) CreateSession(rec *mqtthooks.SessionRecord) {
	b.creates = append(b.creates, rec.ID)
	b.StoreBatch.CreateSession(rec)
}

func (b *faultBatch) Commit(done func(error)) {
	if b.s.create != nil {
		for _, id := range b.creates {
			if err := b.s.create(id); err != nil {
				done(err)
				return
			}
		}
	}
	b.StoreBatch.Commit(done)
}

// storeSession stores a persistent session of id in store, as a Core that
// ran before would have.
func storeSession(t *testing.T, store mqtthooks.SessionStore, rec mqtthooks.SessionRecord) {
	t.Helper()
	rec.Generation = store.NextGeneration()
	b := store.Batch()
	b.CreateSession(&rec)
	errc := make(chan error, 1)
	b.Commit(func(err error) { errc <- err })
	require.NoError(t, <-errc)
}

// receiveMax returns a v5 CONNECT with a Receive Maximum.
func receiveMax(req *mqtthooks.ConnectRequest, rm uint16) *mqtthooks.ConnectRequest {
	req.Properties.ReceiveMaximum = rm
	return req
}

// Defect 1: a resumed session's resends ignored the new connection's Receive
// Maximum: 10 unacknowledged QoS 1 deliveries came back all at once to a
// client that allows 2 [MQTT-3.3.4-9].
func TestResendHonoursNewReceiveMaximum(t *testing.T) {
	f := newFixture(t, mqtthooks.Options{})
	c := f.connect(mqtthookstest.V5("r", "u", false, 300))
	requireAccepted(t, c)
	f.publish(t, sid("r"), 1, 10)
	first, err := c.PullAll()
	require.NoError(t, err)
	require.Len(t, first, 10)
	c.Drop(t.Context(), nil)

	c = f.connect(receiveMax(mqtthookstest.V5("r", "u", false, 300), 2))
	requireAccepted(t, c)
	var got []string
	for range 10 {
		ds, err := c.PullAll()
		require.NoError(t, err)
		if len(ds) == 0 {
			break
		}
		assert.LessOrEqual(t, len(ds), 2, "more unacknowledged deliveries than the Receive Maximum")
		for _, d := range ds {
			assert.True(t, d.Dup, "a resend carries DUP")
			assert.Equal(t, first[len(got)].PacketID, d.PacketID, "a resend keeps its packet identifier")
			got = append(got, string(d.Message.Payload))
			require.NoError(t, c.Settle(d))
		}
	}
	assert.Equal(t, []string{"1", "2", "3", "4", "5", "6", "7", "8", "9", "10"}, got)
	checkNoLoss(t, f.core)
}

// Defect 1, with pending messages behind the resends: none overtakes a resend,
// and the window counts both.
func TestResendWindowBeforePending(t *testing.T) {
	f := newFixture(t, mqtthooks.Options{})
	c := f.connect(mqtthookstest.V5("r", "u", false, 300))
	requireAccepted(t, c)
	f.publish(t, sid("r"), 1, 3)
	_, err := c.PullAll()
	require.NoError(t, err)
	c.Drop(t.Context(), nil)
	f.publish(t, sid("r"), 1, 2) // "1", "2" again, as pending messages

	c = f.connect(receiveMax(mqtthookstest.V5("r", "u", false, 300), 2))
	requireAccepted(t, c)
	ds, err := c.PullAll()
	require.NoError(t, err)
	require.Len(t, ds, 2)
	assert.True(t, ds[0].Dup && ds[1].Dup)
	require.NoError(t, c.Settle(ds[0]))
	ds2, err := c.PullAll()
	require.NoError(t, err)
	require.Len(t, ds2, 1, "one slot freed: the third resend, not a pending message")
	assert.True(t, ds2[0].Dup)
	assert.Equal(t, "3", string(ds2[0].Message.Payload))
}

// Defect 2: runtime.Goexit in a lifecycle hook (a test plugin calling
// t.FailNow is enough) left the per-id executor marked running: every later
// CONNECT for the id hung, and so did Shutdown.
func TestGoexitInLifecycleHookReleasesID(t *testing.T) {
	for _, hook := range []string{"OnClientWakeup", "OnRegister", "OnClientOffline"} {
		t.Run(hook, func(t *testing.T) {
			f := newFixture(t, mqtthooks.Options{})
			var fired atomic.Bool
			f.rec.Lifecycle = func(_ context.Context, c mqtthookstest.Call) {
				if c.Hook == hook && fired.CompareAndSwap(false, true) {
					runtime.Goexit()
				}
			}
			done := make(chan struct{})
			go func() {
				defer close(done)
				c := f.v3("g", false)
				if c.Accepted() {
					c.Drop(context.Background(), nil)
				}
			}()
			within(t, done, "the goroutine that called Goexit")
			require.True(t, fired.Load())

			ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
			defer cancel()
			c := mqtthookstest.ConnectV3(ctx, f.core, "g", "u", false)
			requireAccepted(t, c)
			c.Drop(ctx, nil)
			require.NoError(t, f.core.Shutdown(ctx), "Shutdown returns")
			assert.Contains(t, f.logs.String(), "Goexit")
		})
	}
}

// Defect 3: a clean-start CONNECT whose registration then failed (the store
// refused the new session) had already ended the existing session: CONNACK 3,
// but the old session got OnClientGone and lost its queue. A rejected CONNECT
// touches nothing.
func TestRejectedCleanStartKeepsSession(t *testing.T) {
	for _, online := range []bool{false, true} {
		t.Run("online="+strconv.FormatBool(online), func(t *testing.T) {
			store := &faultStore{}
			var fail atomic.Bool
			store.create = func(mqtthooks.SubscriberID) error {
				if fail.Load() {
					return errors.New("disk full")
				}
				return nil
			}
			f := newFixture(t, mqtthooks.Options{Store: store})
			old := f.v3("s", false)
			requireAccepted(t, old)
			require.NoError(t, old.Subscribe(t.Context(), "t"))
			if !online {
				old.Drop(t.Context(), nil)
			}
			f.publish(t, sid("s"), 1, 3)
			f.rec.Reset()

			fail.Store(true)
			c := f.v5("s", true, 300) // a persistent new life: the store must take it first
			expectRefused(t, f, c, sid("s"), mqtthooks.RefusedServerUnavailable, mqtthooks.CodeServerUnavailable)
			info, ok := f.core.Lookup(sid("s"))
			require.True(t, ok, "the session still exists")
			assert.Equal(t, 3, info.Pending+info.Inflight)
			assert.Len(t, info.Subscriptions, 1)
			if online {
				assert.Empty(t, old.Conn.Disconnects(), "the old connection was not ended")
				got, err := old.Receive()
				require.NoError(t, err)
				assert.Equal(t, []string{"1", "2", "3"}, payloads(got))
			} else {
				fail.Store(false)
				c := f.v3("s", false)
				requireAccepted(t, c)
				assert.True(t, c.Connack().SessionPresent)
				got, err := c.Receive()
				require.NoError(t, err)
				assert.Equal(t, []string{"1", "2", "3"}, payloads(got))
			}
			checkNoLoss(t, f.core)
		})
	}
}

// Defect 4: a panic in ResumePolicy or in the store's Create returned an empty
// Step (Kind 0, no error), which a broker can neither answer nor close, and
// kept the MaxSessions slot it had reserved.
func TestPanicInResumePolicyOrCreateRejects(t *testing.T) {
	t.Run("ResumePolicy", func(t *testing.T) {
		f := newFixture(t, mqtthooks.Options{ResumePolicy: func(context.Context, *mqtthooks.ResumeRequest) bool {
			panic("policy")
		}})
		f.offline(t, "s")
		f.rec.Reset()
		for _, v5 := range []bool{false, true} {
			var c *mqtthookstest.Client
			if v5 {
				c = f.v5("s", false, 300)
			} else {
				c = f.v3("s", false)
			}
			require.Equal(t, mqtthooks.SendConnack, c.Step.Kind)
			expectRefused(t, f, c, sid("s"), mqtthooks.RefusedServerUnavailable, mqtthooks.CodeServerUnavailable)
			assert.ErrorIs(t, c.Step.Err, mqtthooks.ErrRegistration)
		}
		_, ok := f.core.Lookup(sid("s"))
		assert.True(t, ok, "the session is untouched")
		assert.Contains(t, f.logs.String(), "policy")
	})
	t.Run("Create", func(t *testing.T) {
		store := &faultStore{}
		var panics atomic.Int32
		store.create = func(mqtthooks.SubscriberID) error {
			if panics.Add(1) <= 2 {
				panic("create")
			}
			return nil
		}
		f := newFixture(t, mqtthooks.Options{Store: store, MaxSessions: 1})
		c := f.v3("a", false)
		require.Equal(t, mqtthooks.SendConnack, c.Step.Kind)
		expectRejected(t, f, c, sid("a"), mqtthooks.RefusedServerUnavailable, mqtthooks.CodeServerUnavailable)
		c = f.v5("b", true, 300)
		expectRejected(t, f, c, sid("b"), mqtthooks.RefusedServerUnavailable, mqtthooks.CodeServerUnavailable)
		assert.Zero(t, f.core.Stats().Sessions)
		requireAccepted(t, f.v3("c", false)) // the slot was given back
	})
}

// panicRouter panics in RemoveAll, once per id it is armed for.
type panicRouter struct {
	mqtthooks.Router
	armed sync.Map
}

func (r *panicRouter) RemoveAll(id mqtthooks.SubscriberID, gen uint64) {
	if _, ok := r.armed.LoadAndDelete(id); ok {
		panic("router")
	}
	r.Router.RemoveAll(id, gen)
}

// Defect 5: a panic in Router.RemoveAll left a half-dead session: no
// OnClientGone, Session Present 1 on the next CONNECT for a session that had
// ended, and Deliver failing for the rest of the new life.
func TestPanicInRouterFinishesTransition(t *testing.T) {
	rec := &mqtthookstest.Recorder{Accept: true}
	router := &panicRouter{Router: rec.Router()}
	f := newFixture(t, mqtthooks.Options{Router: router})
	require.NoError(t, f.chain.Unregister("P"))
	require.NoError(t, f.chain.Register("P", rec))
	f.rec = rec

	c := f.v3("s", true)
	requireAccepted(t, c)
	require.NoError(t, c.Subscribe(t.Context(), "t"))
	router.armed.Store(sid("s"), true)
	require.NoError(t, c.Disconnect(t.Context(), mqtthooks.CodeNormalDisconnection))
	assert.Equal(t, 1, rec.Count(sid("s"), "OnClientGone"))
	_, ok := f.core.Lookup(sid("s"))
	assert.False(t, ok)
	assert.Contains(t, f.logs.String(), "router")

	c = f.v3("s", false)
	requireAccepted(t, c)
	assert.False(t, c.Connack().SessionPresent)
	f.publish(t, sid("s"), 1, 1)
	got, err := c.Receive()
	require.NoError(t, err)
	assert.Equal(t, []string{"1"}, payloads(got))
	assert.Equal(t, int64(1), f.core.Stats().Sessions)
}

// multi accepts every CONNECT into a multiple session with mode.
func multi(mode mqtthooks.DeliverMode) func(context.Context, *mqtthooks.RegisterRequest) mqtthooks.RegisterResult {
	return answer(mqtthooks.AcceptWith(&mqtthooks.Modifiers{
		AllowMultipleSessions: mqtthooks.Some(true), QueueDeliverMode: mqtthooks.Some(mode)}))
}

// Defect 6: a data race (found by the race detector) on a connection's queue
// pointer: one connection of a multiple session leaves while another
// acknowledges.
func TestMultipleSessionsLeaveWhileAcking(t *testing.T) {
	for _, mode := range []mqtthooks.DeliverMode{mqtthooks.DeliverBalance, mqtthooks.DeliverFanout} {
		f := newFixture(t, mqtthooks.Options{})
		f.rec.AuthOnRegisterFunc = multi(mode)
		for i := range 20 {
			var stay, leave *mqtthookstest.Client
			if i%2 == 0 { // the leaver holds the session's own queue
				leave, stay = f.v3("s", false), f.v3("s", false)
			} else {
				stay, leave = f.v3("s", false), f.v3("s", false)
			}
			requireAccepted(t, stay)
			requireAccepted(t, leave)
			f.publish(t, sid("s"), 2, 8)
			ds, err := stay.PullAll()
			require.NoError(t, err)
			var wg sync.WaitGroup
			wg.Go(func() { leave.Drop(context.Background(), nil) })
			wg.Go(func() {
				for _, d := range ds {
					_ = stay.Session.Pubrec(d.PacketID, nil)
					_ = stay.Session.Pubcomp(d.PacketID)
					_, _ = stay.Session.InboundPublish(d.PacketID, nil)
					_, _ = stay.Session.InboundPubrel(d.PacketID, nil)
					_ = stay.Session.Puback(d.PacketID)
				}
			})
			wg.Wait()
			_, err = stay.Receive()
			require.NoError(t, err)
			stay.Drop(t.Context(), nil)
		}
		checkNoLoss(t, f.core)
	}
}

// Defect 7: with fanout, the connection that stayed took over the leaver's
// queue and threw its own away, so messages it had already acknowledged came
// again.
func TestFanoutLeaverDoesNotRedeliver(t *testing.T) {
	f := newFixture(t, mqtthooks.Options{})
	f.rec.AuthOnRegisterFunc = multi(mqtthooks.DeliverFanout)
	first, second := f.v3("s", false), f.v3("s", false)
	f.publish(t, sid("s"), 1, 2)
	got, err := second.Receive()
	require.NoError(t, err)
	require.Equal(t, []string{"1", "2"}, payloads(got))
	_, err = first.PullAll() // handed out, never acknowledged
	require.NoError(t, err)

	first.Drop(t.Context(), nil) // the first connection held the session's queue
	again, err := second.Receive()
	require.NoError(t, err)
	assert.Empty(t, payloads(again), "acknowledged messages came again")
	f.publish(t, sid("s"), 1, 1)
	got, err = second.Receive()
	require.NoError(t, err)
	assert.Equal(t, []string{"1"}, payloads(got))
	checkNoLoss(t, f.core)

	second.Drop(t.Context(), nil)
	f.publish(t, sid("s"), 1, 1)
	c := f.v3("s", false)
	got, err = c.Receive()
	require.NoError(t, err)
	assert.Equal(t, []string{"1"}, payloads(got), "the session's queue lives on offline")
	checkNoLoss(t, f.core)
}

// Defect 8: with balance, a connection that left with a QoS 2 delivery past
// PUBREC lost its PUBREL: never sent, and the message counted nowhere.
func TestBalanceLeaverWithOwedPubrel(t *testing.T) {
	for _, leaverFirst := range []bool{true, false} {
		f := newFixture(t, mqtthooks.Options{})
		f.rec.AuthOnRegisterFunc = multi(mqtthooks.DeliverBalance)
		c1, c2 := f.v3("s", false), f.v3("s", false)
		f.publish(t, sid("s"), 2, 4)
		leaver, stayer := c2, c1
		if leaverFirst {
			leaver, stayer = c1, c2
		}
		ds, err := leaver.PullAll()
		require.NoError(t, err)
		require.NotEmpty(t, ds)
		for _, d := range ds {
			require.NoError(t, leaver.Session.Pubrec(d.PacketID, nil)) // PUBREC; PUBCOMP never comes
		}
		leaver.Drop(t.Context(), nil)
		_, err = stayer.Receive()
		require.NoError(t, err)
		checkNoLoss(t, f.core)
		info, _ := f.core.Lookup(sid("s"))
		assert.Zero(t, info.Inflight+info.Pending)
	}
}

// Defect 9: Shutdown ran one goroutine per session, so with Workers 2 sixteen
// terminal hooks ran at once; a million sessions would be a million
// goroutines. Terminal hooks at Shutdown run on the bounded pool.
func TestShutdownUsesBoundedPool(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFixture(t, mqtthooks.Options{Workers: 2})
		for i := range 16 {
			requireAccepted(t, f.v3("s"+strconv.Itoa(i), i%2 == 0))
		}
		var running, most atomic.Int32
		release := make(chan struct{})
		f.rec.Lifecycle = func(_ context.Context, c mqtthookstest.Call) {
			if c.Hook != "OnClientOffline" && c.Hook != "OnClientGone" {
				return
			}
			n := running.Add(1)
			for m := most.Load(); n > m && !most.CompareAndSwap(m, n); m = most.Load() {
			}
			<-release
			running.Add(-1)
		}
		done := make(chan error)
		go func() { done <- f.core.Shutdown(context.Background()) }()
		synctest.Wait()
		assert.Equal(t, int32(2), running.Load(), "terminal hooks running at once")
		close(release)
		require.NoError(t, <-done)
		assert.Equal(t, int32(2), most.Load())
		for i := range 16 {
			hook := "OnClientOffline"
			if i%2 == 0 {
				hook = "OnClientGone"
			}
			assert.Equal(t, 1, f.rec.Count(sid("s"+strconv.Itoa(i)), hook))
		}
	})
}

// Defect 10: Reauth on an MQTT 3 connection ended it with a v5 code in the
// event (0x82). Re-authentication is MQTT 5 only: the caller gets an error
// and the connection goes on.
func TestReauthOnV3IsAnError(t *testing.T) {
	f := newFixture(t, mqtthooks.Options{})
	c := f.v3("s", false)
	requireAccepted(t, c)
	reply, err := c.Session.Reauth(t.Context(), &mqtthooks.AuthPacket{ReasonCode: mqtthooks.CodeReAuthenticate, Method: "M"})
	assert.Nil(t, reply)
	require.ErrorIs(t, err, mqtthooks.ErrInvalidArgument)
	var ended *mqtthooks.EndedError
	assert.False(t, errors.As(err, &ended), "no DISCONNECT code for an MQTT 3 connection")
	f.publish(t, sid("s"), 1, 1)
	got, err := c.Receive()
	require.NoError(t, err, "the connection goes on")
	assert.Len(t, got, 1)
	c.Drop(t.Context(), nil)
	for _, call := range f.rec.CallsFor(sid("s")) {
		assert.False(t, call.Event.HasCode, "%s carries a v5 code for an MQTT 3 connection", call.Hook)
	}
}

// Defect 11: Subscribe and Unsubscribe searched the session's subscriptions
// linearly per filter. BenchmarkSubscribe shows the cost per filter; this
// checks that the indexed form keeps the semantics at scale.
func TestManySubscriptions(t *testing.T) {
	f := newFixture(t, mqtthooks.Options{Router: nopRouter{}})
	c := f.v3("s", false)
	requireAccepted(t, c)
	const n = 5000
	for i := range n {
		require.NoError(t, c.Session.Subscribe(t.Context(), mqtthooks.Subscription{Filter: "t/" + strconv.Itoa(i), QoS: 1}))
	}
	require.NoError(t, c.Session.Subscribe(t.Context(), mqtthooks.Subscription{Filter: "t/7", QoS: 2})) // replaces
	info, _ := f.core.Lookup(sid("s"))
	require.Len(t, info.Subscriptions, n)
	for i := 0; i < n; i += 2 {
		existed, err := c.Session.Unsubscribe(t.Context(), "t/"+strconv.Itoa(i), "nope")
		require.NoError(t, err)
		require.Equal(t, []bool{true, false}, existed)
	}
	info, _ = f.core.Lookup(sid("s"))
	require.Len(t, info.Subscriptions, n/2)
	seen := map[string]byte{}
	for _, s := range info.Subscriptions {
		seen[s.Filter] = s.QoS
	}
	assert.Len(t, seen, n/2)
	assert.Equal(t, byte(2), seen["t/7"])
	_, has := seen["t/8"]
	assert.False(t, has)
}

type nopRouter struct{}

func (nopRouter) Add(mqtthooks.SubscriberID, uint64, mqtthooks.Subscription) {}
func (nopRouter) Remove(mqtthooks.SubscriberID, uint64, string)              {}
func (nopRouter) RemoveAll(mqtthooks.SubscriberID, uint64)                   {}

// Suspected 12, confirmed: Deliver found the session by id only, so a message
// the router matched against one life's subscription landed in the next life,
// which never subscribed (with ResumePolicy AnyUser, another user's). The
// Router is told each subscription's life, and Deliver with that Generation
// refuses a later life.
func TestDeliverFencedByGeneration(t *testing.T) {
	f := newFixture(t, mqtthooks.Options{ResumePolicy: mqtthooks.AnyUser})
	alice := mqtthookstest.ConnectV3(t.Context(), f.core, "s", "alice", false)
	requireAccepted(t, alice)
	require.NoError(t, alice.Subscribe(t.Context(), "t"))
	add, ok := f.rec.Last(sid("s"), "Add")
	require.True(t, ok)
	require.Equal(t, alice.Session.Generation(), add.Generation)

	// The router matched alice's subscription; before Deliver, bob starts clean.
	bob := mqtthookstest.ConnectV3(t.Context(), f.core, "s", "bob", true)
	requireAccepted(t, bob)
	msg := &mqtthooks.Message{Topic: "t", Payload: []byte("for alice"), QoS: 1}
	err := f.core.Deliver(sid("s"), msg, mqtthooks.DeliverOptions{QoS: 1, Generation: add.Generation})
	assert.ErrorIs(t, err, mqtthooks.ErrSessionNotFound)
	got, err := bob.Receive()
	require.NoError(t, err)
	assert.Empty(t, got, "bob's life never subscribed")

	require.NoError(t, f.core.Deliver(sid("s"), msg, mqtthooks.DeliverOptions{QoS: 1, Generation: bob.Session.Generation()}))
	got, err = bob.Receive()
	require.NoError(t, err)
	assert.Len(t, got, 1)
	checkNoLoss(t, f.core)
}

// Defect 13: with a multiple session, a delayed Will still pending when a
// second connection's delayed Will came due was published at once, before its
// own delay.
func TestTwoDelayedWillsKeepTheirDelays(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var mu sync.Mutex
		published := map[string]time.Duration{}
		start := time.Now()
		f := newFixture(t, mqtthooks.Options{PublishWill: func(_ context.Context, _ mqtthooks.SubscriberID, w *mqtthooks.Will) {
			mu.Lock()
			defer mu.Unlock()
			published[w.Topic] = time.Since(start)
		}})
		wills := func() map[string]time.Duration {
			mu.Lock()
			defer mu.Unlock()
			return maps.Clone(published)
		}
		f.rec.AuthOnRegisterM5Func = multi(mqtthooks.DeliverFanout)
		long := withDelayedWill(mqtthookstest.V5("s", "u", false, 3600), 100)
		long.Will.Topic = "long"
		short := withDelayedWill(mqtthookstest.V5("s", "u", false, 3600), 10)
		short.Will.Topic = "short"
		c1, c2 := f.connect(long), f.connect(short)
		requireAccepted(t, c1)
		requireAccepted(t, c2)
		c1.Drop(t.Context(), nil) // long: due at 100 s
		time.Sleep(5 * time.Second)
		c2.Drop(t.Context(), nil) // short: due at 15 s
		synctest.Wait()
		assert.Empty(t, wills(), "nothing is due yet")
		time.Sleep(11 * time.Second)
		synctest.Wait()
		assert.Equal(t, map[string]time.Duration{"short": 15 * time.Second}, wills())
		time.Sleep(90 * time.Second)
		synctest.Wait()
		assert.Equal(t, map[string]time.Duration{"short": 15 * time.Second, "long": 100 * time.Second}, wills())
	})
}

// Defect 14a: a re-authentication that succeeded after the exchange deadline
// had already ended the connection still answered AUTH 0x00.
func TestReauthSuccessAfterDeadlineEndsConnection(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFixture(t, mqtthooks.Options{AuthExchangeTimeout: 30 * time.Second, HookTimeout: time.Hour})
		release := make(chan struct{})
		f.rec.OnAuthM5Func = func(_ context.Context, req *mqtthooks.AuthRequest) mqtthooks.AuthResult {
			if req.Step == mqtthooks.AuthStepReauth {
				<-release
			}
			return mqtthooks.AuthSuccess(nil, nil)
		}
		c := f.connect(withMethod(mqtthookstest.V5("s", "u", false, 300), ""))
		requireAccepted(t, c)
		type result struct {
			reply *mqtthooks.AuthPacket
			err   error
		}
		done := make(chan result)
		go func() {
			reply, err := c.Session.Reauth(context.Background(), &mqtthooks.AuthPacket{ReasonCode: mqtthooks.CodeReAuthenticate, Method: "M"})
			done <- result{reply, err}
		}()
		time.Sleep(31 * time.Second)
		synctest.Wait()
		close(release)
		r := <-done
		assert.Nil(t, r.reply, "no AUTH 0x00 for a connection that has ended")
		var ended *mqtthooks.EndedError
		require.ErrorAs(t, r.err, &ended)
		assert.Equal(t, mqtthooks.CodeNotAuthorized, ended.Code)
	})
}

// Defect 14b: a re-authentication rejected after a takeover answered 0x87
// where the takeover's 0x8E is due.
func TestReauthRejectedAfterTakeover(t *testing.T) {
	f := newFixture(t, mqtthooks.Options{})
	entered, release := make(chan struct{}), make(chan struct{})
	f.rec.OnAuthM5Func = func(_ context.Context, req *mqtthooks.AuthRequest) mqtthooks.AuthResult {
		if req.Step == mqtthooks.AuthStepReauth {
			close(entered)
			<-release
			return mqtthooks.AuthReject(mqtthooks.CodeNotAuthorized, "no")
		}
		return mqtthooks.AuthSuccess(nil, nil)
	}
	c := f.connect(withMethod(mqtthookstest.V5("s", "u", false, 300), ""))
	requireAccepted(t, c)
	errc := make(chan error)
	go func() {
		_, err := c.Session.Reauth(context.Background(), &mqtthooks.AuthPacket{ReasonCode: mqtthooks.CodeReAuthenticate, Method: "M"})
		errc <- err
	}()
	within(t, entered, "the re-authentication")
	f.rec.OnAuthM5Func = func(context.Context, *mqtthooks.AuthRequest) mqtthooks.AuthResult {
		return mqtthooks.AuthSuccess(nil, nil)
	}
	requireAccepted(t, f.connect(withMethod(mqtthookstest.V5("s", "u", false, 300), "")))
	close(release)
	var ended *mqtthooks.EndedError
	require.ErrorAs(t, within(t, errc, "Reauth"), &ended)
	assert.Equal(t, mqtthooks.CodeSessionTakenOver, ended.Code)
}

// Suspected 15: sessions restored from a store take MaxSessions slots.
func TestRestoredSessionsTakeSlots(t *testing.T) {
	store := &faultStore{}
	for _, id := range []string{"a", "b"} {
		storeSession(t, store, mqtthooks.SessionRecord{ID: sid(id), Username: "u", HasUsername: true})
	}
	f := newFixture(t, mqtthooks.Options{Store: store, MaxSessions: 2})
	assert.Equal(t, int64(2), f.core.Stats().Sessions)
	expectRejected(t, f, f.v3("c", true), sid("c"), mqtthooks.RefusedServerUnavailable, mqtthooks.CodeQuotaExceeded)
	c := f.v5("c5", true, 0)
	expectRejected(t, f, c, sid("c5"), mqtthooks.RefusedServerUnavailable, mqtthooks.CodeQuotaExceeded)
	c = f.v3("a", false)
	requireAccepted(t, c)
	assert.True(t, c.Connack().SessionPresent)
}

// Trap 17: Reject with one of the package's CONNECT sentinels answers that
// sentinel's code, as its documentation says, not 0x87.
func TestRejectWithConnectSentinels(t *testing.T) {
	cases := []struct {
		err error
		v3  mqtthooks.ReturnCode
		v5  mqtthooks.ReasonCode
	}{
		{mqtthooks.ErrClientIDRejected, mqtthooks.RefusedIdentifierRejected, mqtthooks.CodeClientIdentifierNotValid},
		{mqtthooks.ErrInvalidCredentials, mqtthooks.RefusedBadUsernameOrPassword, mqtthooks.CodeBadUserNameOrPassword},
		{mqtthooks.ErrProtocolVersion, mqtthooks.RefusedProtocolVersion, mqtthooks.CodeUnsupportedProtocolVersion},
		{mqtthooks.ErrSessionLimit, mqtthooks.RefusedServerUnavailable, mqtthooks.CodeQuotaExceeded},
		{mqtthooks.ErrWillQoS, mqtthooks.RefusedNotAuthorized, mqtthooks.CodeQoSNotSupported},
		{mqtthooks.ErrWillRetain, mqtthooks.RefusedNotAuthorized, mqtthooks.CodeRetainNotSupported},
		// Failures of the core are not a plugin's to claim: not authorized.
		{mqtthooks.ErrRegistration, mqtthooks.RefusedNotAuthorized, mqtthooks.CodeNotAuthorized},
		{mqtthooks.ErrPluginPanic, mqtthooks.RefusedNotAuthorized, mqtthooks.CodeNotAuthorized},
		{mqtthooks.ErrShutdown, mqtthooks.RefusedNotAuthorized, mqtthooks.CodeNotAuthorized},
	}
	for _, tc := range cases {
		t.Run(tc.err.Error(), func(t *testing.T) {
			f := newFixture(t, mqtthooks.Options{})
			f.rec.AuthOnRegisterFunc = answer(mqtthooks.Reject(fmtWrap(tc.err)))
			f.rec.AuthOnRegisterM5Func = f.rec.AuthOnRegisterFunc
			expectRejected(t, f, f.v3("a", true), sid("a"), tc.v3, tc.v5)
			expectRejected(t, f, f.v5("b", true, 0), sid("b"), tc.v3, tc.v5)
		})
	}
}

// fmtWrap wraps err as a plugin would, with its own words.
func fmtWrap(err error) error { return &wrapped{err} }

type wrapped struct{ err error }

func (w *wrapped) Error() string { return "plugin says: " + w.err.Error() }
func (w *wrapped) Unwrap() error { return w.err }

// ACCEPTANCE 48: ErrChainExhausted or ErrNoPlugin → CONNACK 5 / 0x87, for v3
// and v5 alike.
func TestAcceptance48NextOnlyOrNoImplementer(t *testing.T) {
	for _, next := range []bool{true, false} {
		f := newFixture(t, mqtthooks.Options{})
		if next { // the Recorder answers Next
			f.rec.Accept = false
		} else { // nobody implements the hooks
			require.NoError(t, f.chain.Unregister("P"))
			require.NoError(t, f.chain.Register("P", mqtthooks.OnClientGoneFunc(func(context.Context, *mqtthooks.SessionEvent) {})))
		}
		c := f.v5("c5", true, 0)
		expectRejected(t, f, c, sid("c5"), mqtthooks.RefusedNotAuthorized, mqtthooks.CodeNotAuthorized)
		want := mqtthooks.ErrNoPlugin
		if next {
			want = mqtthooks.ErrChainExhausted
		}
		assert.ErrorIs(t, c.Step.Err, want)
		expectRejected(t, f, f.v3("c3", true), sid("c3"), mqtthooks.RefusedNotAuthorized, mqtthooks.CodeNotAuthorized)
	}
}

// ACCEPTANCE 80 (core analogue): an OnRegister that takes 4 s delays the
// CONNACK decision by 4 s, within ConnectTimeout.
func TestAcceptance80SlowOnRegisterDelaysConnack(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFixture(t, mqtthooks.Options{ConnectTimeout: 5 * time.Second})
		f.rec.Lifecycle = func(_ context.Context, c mqtthookstest.Call) {
			if c.Hook == "OnRegister" {
				time.Sleep(4 * time.Second)
			}
		}
		start := time.Now()
		c := f.v3("s", true)
		requireAccepted(t, c)
		assert.Equal(t, 4*time.Second, time.Since(start))
		assert.Equal(t, mqtthooks.ConnectionAccepted, c.Connack().ReturnCode)
	})
}

// ACCEPTANCE 81: a persistent CONNECT takes over a clean v3 session: the old
// connection is closed, its Will published and subscriptions removed, Gone
// ends the old life, and a new life starts with SP 0 and no subscription.
func TestAcceptance81PersistentTakesOverClean(t *testing.T) {
	f := newFixture(t, mqtthooks.Options{})
	will := mqtthookstest.V3("s", "u", true)
	will.Will = &mqtthooks.Will{Message: mqtthooks.Message{Topic: "w", Payload: []byte("bye")}}
	c1 := f.connect(will)
	requireAccepted(t, c1)
	require.NoError(t, c1.Subscribe(t.Context(), "t"))
	gen := c1.Session.Generation()
	f.rec.Reset()

	c2 := f.v3("s", false)
	requireAccepted(t, c2)
	assert.False(t, c2.Connack().SessionPresent)
	within(t, c1.Conn.Disconnected(), "the old connection's close")
	f.rec.ExpectHooks(t, sid("s"), "AuthOnRegister", "PublishWill", "RemoveAll", "OnClientGone", "OnClientWakeup", "OnRegister")
	gone, _ := f.rec.Last(sid("s"), "OnClientGone")
	assert.Equal(t, mqtthooks.ReasonTakenOver, gone.Event.Reason)
	assert.Equal(t, gen, gone.Event.Generation)
	wake, _ := f.rec.Last(sid("s"), "OnClientWakeup")
	assert.NotEqual(t, gen, wake.Event.Generation, "a new life")
	info, _ := f.core.Lookup(sid("s"))
	assert.Empty(t, info.Subscriptions)
}

// Trap 16: a plugin that implements only AuthOnRegister silently did not see
// MQTT 5 clients, and with AllowAnonymous every anonymous v5 client was then
// accepted. Register warns; AuthOnRegisterBothFunc decides once for both.
func TestHalfPairPluginWarnsAndBothFuncCoversBoth(t *testing.T) {
	chain, logs := newLoggedChain()
	v3only := mqtthooks.AuthOnRegisterFunc(func(context.Context, *mqtthooks.RegisterRequest) mqtthooks.RegisterResult {
		return mqtthooks.Reject(mqtthooks.ErrInvalidCredentials)
	})
	require.NoError(t, chain.Register("v3only", v3only))
	assert.Contains(t, logs.String(), "plugin=v3only")
	assert.Contains(t, logs.String(), "MQTT 5 clients never reach it")

	both := mqtthooks.AuthOnRegisterBothFunc(func(_ context.Context, req *mqtthooks.RegisterRequest) mqtthooks.RegisterResult {
		if req.Connect.HasUsername {
			return mqtthooks.Accept()
		}
		return mqtthooks.Reject(mqtthooks.ErrInvalidCredentials)
	})
	before := logs.String()
	require.NoError(t, chain.Unregister("v3only"))
	require.NoError(t, chain.Register("both", both))
	assert.Equal(t, before, logs.String(), "no warning for a plugin with both hooks")

	core, err := mqtthooks.NewCore(chain, mqtthooks.Options{
		Listeners: map[string]mqtthooks.ListenerOptions{"default": {AllowAnonymous: true}}})
	require.NoError(t, err)
	t.Cleanup(func() { _ = core.Shutdown(context.Background()) })
	for _, v5 := range []bool{false, true} {
		req := mqtthookstest.V3("anon", "", true)
		if v5 {
			req = mqtthookstest.V5("anon", "", true, 0)
		}
		c := mqtthookstest.NewClient(core)
		c.Connect(t.Context(), req)
		require.False(t, c.Accepted(), "v5 %v: the plugin decides, AllowAnonymous does not apply", v5)
		assert.Equal(t, mqtthooks.RefusedBadUsernameOrPassword, c.Connack().ReturnCode)
		assert.Equal(t, mqtthooks.CodeBadUserNameOrPassword, c.Connack().ReasonCode)
	}

	// Enhanced authentication is MQTT 5 by nature: no warning.
	require.NoError(t, chain.Register("enhanced", struct {
		mqtthooks.OnAuthM5Func
		mqtthooks.AuthOnRegisterM5Func
	}{}))
	assert.NotContains(t, logs.String(), "plugin=enhanced")
}
