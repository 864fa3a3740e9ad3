package mqtthooks_test

import (
	"context"
	"fmt"
	"runtime"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mqtthooks/mqtthooks"
	"github.com/mqtthooks/mqtthooks/mqtthookstest"
)

// N1: while the old session's Offline runs, the new connection waits, and
// other SubscriberIDs are not held up; then Wakeup → OnRegister, SP 1.
func TestTakeoverStrictOrder(t *testing.T) {
	f := newFixture(t, mqtthooks.Options{})
	running, release := make(chan struct{}), make(chan struct{})
	f.rec.Lifecycle = func(_ context.Context, c mqtthookstest.Call) {
		if c.Hook == "OnClientOffline" && c.ID == sid("s") {
			close(running)
			<-release
		}
	}
	c1 := f.v3("s", false)
	requireAccepted(t, c1)

	done := make(chan *mqtthookstest.Client)
	go func() { done <- f.v3("s", false) }()
	within(t, running, "the hook")

	other := f.v3("t", true)
	requireAccepted(t, other)
	require.NoError(t, other.Disconnect(t.Context(), mqtthooks.CodeNormalDisconnection))
	select {
	case <-done:
		t.Fatal("the new connection completed while Offline of the old one ran")
	default:
	}
	assert.Equal(t, 1, f.rec.Count(sid("s"), "OnClientWakeup"), "no Wakeup for C2 yet")

	close(release)
	c2 := <-done
	requireAccepted(t, c2)
	assert.True(t, c2.Connack().SessionPresent)
	f.rec.ExpectHooks(t, sid("s"), "AuthOnRegister", "OnClientWakeup", "OnRegister",
		"AuthOnRegister", "OnClientOffline", "OnClientWakeup", "OnRegister")
	assert.Empty(t, f.rec.Overlaps())
}

// withDelayedWill returns a v5 CONNECT with a Will delayed by delay seconds.
func withDelayedWill(req *mqtthooks.ConnectRequest, delay uint32) *mqtthooks.ConnectRequest {
	withWill(req)
	req.Will.DelayInterval = delay
	return req
}

// N2: a Clean Start discards an offline session with a pending delayed Will:
// the Will is published then, and never again.
func TestCleanStartPublishesPendingWill(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFixture(t, mqtthooks.Options{})
		c := f.connect(withDelayedWill(mqtthookstest.V5("s", "u", false, 300), 60))
		require.NoError(t, c.Subscribe(t.Context(), "t"))
		g := c.Session.Generation()
		c.Drop(t.Context(), nil)
		off, _ := f.rec.Last(sid("s"), "OnClientOffline")
		assert.Equal(t, mqtthooks.ReasonNetworkError, off.Event.Reason)
		assert.Zero(t, f.rec.Count(sid("s"), "PublishWill"))
		time.Sleep(10 * time.Second)
		f.rec.Reset()

		again := f.v5("s", true, 0)
		requireAccepted(t, again)
		assert.False(t, again.Connack().SessionPresent)
		f.rec.ExpectHooks(t, sid("s"), "AuthOnRegisterM5", "PublishWill", "RemoveAll", "OnClientGone", "OnClientWakeup", "OnRegisterM5")
		gone, _ := f.rec.Last(sid("s"), "OnClientGone")
		assert.Equal(t, g, gone.Event.Generation)
		assert.Equal(t, mqtthooks.ReasonCleanStart, gone.Event.Reason)
		wake, _ := f.rec.Last(sid("s"), "OnClientWakeup")
		assert.NotEqual(t, g, wake.Event.Generation)

		time.Sleep(400 * time.Second)
		synctest.Wait()
		assert.Equal(t, 1, f.rec.Count(sid("s"), "PublishWill"))
		assert.Zero(t, f.rec.Count(sid("s"), "OnSessionExpired"))
	})
}

// N3: a session is not handed to another user; AnyUser allows it.
func TestResumeRefusedToAnotherUser(t *testing.T) {
	for _, online := range []bool{true, false} {
		f := newFixture(t, mqtthooks.Options{})
		alice := mqtthookstest.ConnectV3(t.Context(), f.core, "s", "alice", false)
		require.NoError(t, alice.Subscribe(t.Context(), "t"))
		if !online {
			alice.Drop(t.Context(), nil)
		}
		f.rec.Reset()

		bob := mqtthookstest.ConnectV3(t.Context(), f.core, "s", "bob", false)

		expectRejectedKeepsSession(t, f, bob)
		assert.ErrorIs(t, bob.Step.Err, mqtthooks.ErrResumeRefused)
		assert.Empty(t, alice.Conn.Disconnects(), "alice is not disconnected")
		info, ok := f.core.Lookup(sid("s"))
		require.True(t, ok)
		assert.Equal(t, "alice", info.Username)
		assert.Len(t, info.Subscriptions, 1)
		if online {
			assert.Equal(t, 1, info.Connections)
		}
	}

	f := newFixture(t, mqtthooks.Options{ResumePolicy: mqtthooks.AnyUser})
	alice := mqtthookstest.ConnectV3(t.Context(), f.core, "s", "alice", false)
	alice.Drop(t.Context(), nil)
	bob := mqtthookstest.ConnectV3(t.Context(), f.core, "s", "bob", false)
	requireAccepted(t, bob)
	assert.True(t, bob.Connack().SessionPresent)
}

// expectRejectedKeepsSession checks a 5 / 0x87 rejection that left s alone.
func expectRejectedKeepsSession(t *testing.T, f *fixture, c *mqtthookstest.Client) {
	t.Helper()
	require.False(t, c.Accepted())
	assert.Equal(t, mqtthooks.RefusedNotAuthorized, c.Connack().ReturnCode)
	assert.False(t, c.Connack().SessionPresent)
	f.rec.ExpectHooks(t, sid("s"), "AuthOnRegister")
}

// N4: a v5 CONNECT without SEI resumes an offline session, and its own
// effective SEI of 0 makes the session end at DISCONNECT.
func TestResumeWithSEIZero(t *testing.T) {
	f := newFixture(t, mqtthooks.Options{})
	c := f.v5("s", false, 300)
	require.NoError(t, c.Subscribe(t.Context(), "t"))
	c.Drop(t.Context(), nil)
	f.rec.Reset()

	again := f.v5("s", false, 0)
	requireAccepted(t, again)
	assert.True(t, again.Connack().SessionPresent)
	require.NoError(t, again.Disconnect(t.Context(), mqtthooks.CodeNormalDisconnection))

	f.rec.ExpectHooks(t, sid("s"), "AuthOnRegisterM5", "OnClientWakeup", "OnRegisterM5", "RemoveAll", "OnClientGone")
}

// N5: panics in lifecycle hooks are logged, the other plugins run, and the
// lifecycle goes on.
func TestPanicsInLifecycleHooks(t *testing.T) {
	f := newFixture(t, mqtthooks.Options{})
	panicky := struct {
		mqtthooks.OnClientWakeupFunc
		mqtthooks.OnClientGoneFunc
	}{
		func(context.Context, *mqtthooks.SessionEvent) { panic("wakeup") },
		func(context.Context, *mqtthooks.SessionEvent) { panic("gone") },
	}
	require.NoError(t, f.chain.Register("P1", panicky, mqtthooks.Priority(0)))

	c := f.v3("s", true)
	requireAccepted(t, c)
	require.NoError(t, c.Disconnect(t.Context(), mqtthooks.CodeNormalDisconnection))

	f.rec.ExpectHooks(t, sid("s"), "AuthOnRegister", "OnClientWakeup", "OnRegister", "OnClientGone")
	_, ok := f.core.Lookup(sid("s"))
	assert.False(t, ok, "the state is deleted")
	assert.Contains(t, f.logs.String(), "plugin=P1 hook=OnClientWakeup")
	assert.Contains(t, f.logs.String(), "plugin=P1 hook=OnClientGone")
}

// N6 (a, b): a plugin past the CONNECT deadline rejects with 3 / 0x88; a
// canceled CONNECT is abandoned without a reply and leaves nothing.
func TestConnectDeadlineAndCancel(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFixture(t, mqtthooks.Options{})
		f.rec.AuthOnRegisterFunc = func(context.Context, *mqtthooks.RegisterRequest) mqtthooks.RegisterResult {
			time.Sleep(6 * time.Second) // ignores ctx
			return mqtthooks.Accept()
		}
		c := f.v3("a", true)
		expectRejected(t, f, c, sid("a"), 3, 0x88)
		assert.ErrorIs(t, c.Step.Err, mqtthooks.ErrHookTimeout)
	})

	f := newFixture(t, mqtthooks.Options{})
	ctx, cancel := context.WithCancel(t.Context())
	f.rec.AuthOnRegisterFunc = func(context.Context, *mqtthooks.RegisterRequest) mqtthooks.RegisterResult {
		cancel() // the client went away
		return mqtthooks.Accept()
	}
	c := mqtthookstest.NewClient(f.core)
	step := c.Connect(ctx, mqtthookstest.V3("b", "u", true))
	assert.Equal(t, mqtthooks.CloseConnection, step.Kind)
	assert.Nil(t, c.Connack(), "no CONNACK for an abandoned CONNECT")
	f.rec.ExpectHooks(t, sid("b"), "AuthOnRegister")
	_, ok := f.core.Lookup(sid("b"))
	assert.False(t, ok)
	assert.Equal(t, uint64(1), f.core.Stats().ConnectsAbandoned)
}

// OQ8: when the client goes away after registration, the connection is lost:
// Offline or Gone fires, and no CONNACK is sent.
func TestConnectCanceledAfterWakeup(t *testing.T) {
	f := newFixture(t, mqtthooks.Options{})
	ctx, cancel := context.WithCancel(t.Context())
	f.rec.Lifecycle = func(_ context.Context, c mqtthookstest.Call) {
		if c.Hook == "OnClientWakeup" {
			cancel()
		}
	}
	c := mqtthookstest.NewClient(f.core)
	step := c.Connect(ctx, withWill(mqtthookstest.V3("s", "u", false)))

	assert.Equal(t, mqtthooks.CloseConnection, step.Kind)
	assert.Nil(t, c.Connack())
	f.rec.ExpectHooks(t, sid("s"), "AuthOnRegister", "OnClientWakeup", "OnRegister", "PublishWill", "OnClientOffline")
	off, _ := f.rec.Last(sid("s"), "OnClientOffline")
	assert.Equal(t, mqtthooks.ReasonNetworkError, off.Event.Reason)
}

// N10: a delayed Will waits, is dropped by a resume, is published at its
// delay, or when the session expires if that is sooner.
func TestWillDelay(t *testing.T) {
	start := func(t *testing.T, delay uint32) *fixture {
		f := newFixture(t, mqtthooks.Options{})
		c := f.connect(withDelayedWill(mqtthookstest.V5("s", "u", false, 300), delay))
		require.NoError(t, c.Subscribe(t.Context(), "t"))
		c.Drop(t.Context(), nil)
		return f
	}
	t.Run("resumed before the delay", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			f := start(t, 60)
			time.Sleep(20 * time.Second)
			again := f.v5("s", false, 300)
			assert.True(t, again.Connack().SessionPresent)
			time.Sleep(100 * time.Second)
			synctest.Wait()
			assert.Zero(t, f.rec.Count(sid("s"), "PublishWill"))
		})
	})
	t.Run("published at the delay, expired later", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			f := start(t, 60)
			time.Sleep(59 * time.Second)
			synctest.Wait()
			assert.Zero(t, f.rec.Count(sid("s"), "PublishWill"))
			time.Sleep(time.Second)
			synctest.Wait()
			assert.Equal(t, 1, f.rec.Count(sid("s"), "PublishWill"))
			time.Sleep(240 * time.Second)
			synctest.Wait()
			f.rec.ExpectHooks(t, sid("s"), "AuthOnRegisterM5", "OnClientWakeup", "OnRegisterM5", "Add", "OnClientOffline",
				"PublishWill", "RemoveAll", "OnSessionExpired")
		})
	})
	t.Run("the session expires first", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			f := start(t, 600)
			time.Sleep(300 * time.Second)
			synctest.Wait()
			f.rec.ExpectHooks(t, sid("s"), "AuthOnRegisterM5", "OnClientWakeup", "OnRegisterM5", "Add", "OnClientOffline",
				"PublishWill", "RemoveAll", "OnSessionExpired")
			time.Sleep(time.Hour)
			synctest.Wait()
			assert.Equal(t, 1, f.rec.Count(sid("s"), "PublishWill"))
		})
	})
}

// N11, OQ4: a generated id that names an existing session is replaced; after
// 8 collisions the CONNECT gets 3 / 0x88.
func TestGeneratedIDCollision(t *testing.T) {
	ids := []string{"auto-X", "auto-Y"}
	var mu sync.Mutex
	calls := 0
	gen := func() string {
		mu.Lock()
		defer mu.Unlock()
		calls++
		if len(ids) == 0 {
			return "auto-X"
		}
		id := ids[0]
		ids = ids[1:]
		return id
	}
	f := newFixture(t, mqtthooks.Options{ClientIDGenerator: gen})
	ids = nil
	x := f.v5("auto-X", false, 300)
	x.Drop(t.Context(), nil)
	ids, calls = []string{"auto-X", "auto-Y"}, 0
	f.rec.Reset()

	c := f.v5("", false, 0)

	requireAccepted(t, c)
	assert.Equal(t, 2, calls)
	assert.Equal(t, "auto-Y", c.Connack().Properties.AssignedClientIdentifier)
	assert.False(t, c.Connack().SessionPresent)
	assert.Empty(t, f.rec.Hooks(sid("auto-X")), "auto-X is untouched")

	ids, calls = []string{"auto-X", "auto-Z"}, 0
	v3 := f.v3("", true)
	requireAccepted(t, v3)
	assert.Equal(t, sid("auto-Z"), v3.Session.ID())

	ids, calls = nil, 0 // always auto-X
	stuck := f.v5("", false, 0)
	assert.Equal(t, mqtthooks.CodeServerUnavailable, stuck.Connack().ReasonCode)
	assert.Equal(t, 9, calls)
	assert.ErrorIs(t, stuck.Step.Err, mqtthooks.ErrRegistration)
}

// N12: every event of one life carries its Generation; lives differ.
func TestGenerationPerLife(t *testing.T) {
	f := newFixture(t, mqtthooks.Options{})
	f.v3("s", false).Drop(t.Context(), nil)
	f.v3("s", false)
	c := f.v3("s", true) // clean: a new life
	require.NoError(t, c.Disconnect(t.Context(), mqtthooks.CodeNormalDisconnection))
	f.v3("s", false)

	var gens []uint64
	for _, call := range f.rec.CallsFor(sid("s")) {
		if call.Hook != "AuthOnRegister" {
			gens = append(gens, call.Event.Generation)
		}
	}
	// Wakeup OnRegister Offline Wakeup OnRegister Gone | Wakeup OnRegister Gone | Wakeup OnRegister
	require.Len(t, gens, 11)
	g1, g2, g3 := gens[0], gens[6], gens[9]
	for _, g := range gens[:6] {
		assert.Equal(t, g1, g, "first life")
	}
	assert.Equal(t, []uint64{g2, g2, g2}, gens[6:9])
	assert.Equal(t, []uint64{g3, g3}, gens[9:])
	assert.Less(t, g1, g2)
	assert.Less(t, g2, g3)
}

// N14: the Assigned Client Identifier follows a client id modifier, and only
// when the client id changed.
func TestAssignedClientIDAfterModifier(t *testing.T) {
	f := newFixture(t, mqtthooks.Options{})
	f.rec.AuthOnRegisterM5Func = answer(mqtthooks.AcceptWith(&mqtthooks.Modifiers{
		SubscriberID: mqtthooks.Some(mqtthooks.SubscriberID{ClientID: "t1-c5"})}))
	c := f.v5("c5", true, 0)
	assert.Equal(t, "t1-c5", c.Connack().Properties.AssignedClientIdentifier)
	reg, _ := f.rec.Last(sid("t1-c5"), "OnRegisterM5")
	assert.Equal(t, "t1-c5", reg.Connack.AssignedClientIdentifier)

	f.rec.AuthOnRegisterM5Func = answer(mqtthooks.AcceptWith(&mqtthooks.Modifiers{
		SubscriberID: mqtthooks.Some(mqtthooks.SubscriberID{Mountpoint: "m2", ClientID: "c5"})}))
	c = f.v5("c5", true, 0)
	requireAccepted(t, c)
	assert.Empty(t, c.Connack().Properties.AssignedClientIdentifier)
}

// N15 (start part), N16, OQ13: nothing flows before Start; a connection taken
// over before Start still sends its CONNACK, then learns of the takeover.
func TestTakenOverBeforeStart(t *testing.T) {
	f := newFixture(t, mqtthooks.Options{})
	c1 := mqtthookstest.NewClient(f.core)
	c1.ManualStart = true
	c1.Connect(t.Context(), mqtthookstest.V5("s", "u", false, 300))
	requireAccepted(t, c1)
	_, err := c1.Pull()
	assert.ErrorIs(t, err, mqtthooks.ErrNotStarted)

	c2 := f.v5("s", false, 300)
	requireAccepted(t, c2)
	assert.True(t, c2.Connack().SessionPresent)
	assert.Equal(t, mqtthooks.CodeSuccess, c1.Connack().ReasonCode, "C1's CONNACK is still a success")
	assert.Empty(t, c1.Conn.Disconnects(), "no DISCONNECT before the CONNACK is out")
	assert.Zero(t, c1.Conn.NotifyCount(), "no Notify before Start")

	require.NoError(t, c1.Session.Start())
	within(t, c1.Conn.Notified(), "a Notify")
	_, err = c1.Pull()
	assert.ErrorIs(t, err, mqtthooks.ErrTakenOver)
	assert.Equal(t, mqtthookstest.Sent{Packet: "DISCONNECT", Code: mqtthooks.CodeSessionTakenOver}, c1.Sent[len(c1.Sent)-1])
	assert.ErrorIs(t, c1.Session.Start(), mqtthooks.ErrAlreadyStarted)
	f.rec.ExpectHooks(t, sid("s"), "AuthOnRegisterM5", "OnClientWakeup", "OnRegisterM5",
		"AuthOnRegisterM5", "OnClientOffline", "OnClientWakeup", "OnRegisterM5")
}

// N17: the Will's QoS and Retain are checked against what the session allows.
func TestWillQoSAndRetainChecks(t *testing.T) {
	f := newFixture(t, mqtthooks.Options{})
	f.rec.AuthOnRegisterM5Func = answer(mqtthooks.AcceptWith(&mqtthooks.Modifiers{MaximumQoS: mqtthooks.Some[byte](1)}))
	req := withWill(mqtthookstest.V5("a", "u", true, 0))
	req.Will.QoS = 2
	c := f.connect(req)
	expectRejected(t, f, c, sid("a"), 5, 0x9B)
	f.rec.ExpectHooks(t, sid("a"), "AuthOnRegisterM5")

	noRetain := mqtthooks.DefaultCapabilities()
	noRetain.RetainAvailable = false
	f = newFixture(t, mqtthooks.Options{Capabilities: &noRetain})
	req = withWill(mqtthookstest.V5("b", "u", true, 0))
	req.Will.Retain = true
	expectRejected(t, f, f.connect(req), sid("b"), 5, 0x9A)
	v3 := withWill(mqtthookstest.V3("c", "u", true))
	v3.Will.Retain = true
	expectRejected(t, f, f.connect(v3), sid("c"), 5, 0x9A)

	qos1 := mqtthooks.DefaultCapabilities()
	qos1.MaximumQoS = 1
	f = newFixture(t, mqtthooks.Options{Capabilities: &qos1})
	v3 = withWill(mqtthookstest.V3("d", "u", true))
	v3.Will.QoS = 2
	expectRejected(t, f, f.connect(v3), sid("d"), 5, 0x9B)
	assert.Empty(t, f.rec.Hooks(sid("d"))[1:], "no Wakeup, no PublishWill")
}

// N18: Shutdown ends connections and fires Offline or Gone for them; offline
// sessions fire nothing; no goroutine is left.
func TestShutdown(t *testing.T) {
	f := newFixture(t, mqtthooks.Options{})
	a := f.connect(withWill(mqtthookstest.V5("a", "u", false, 300)))
	b := f.connect(withWill(mqtthookstest.V3("b", "u", true)))
	require.NoError(t, b.Subscribe(t.Context(), "t"))
	c := f.v3("c", false)
	c.Drop(t.Context(), nil)
	f.rec.Reset()

	require.NoError(t, f.core.Shutdown(t.Context()))

	assert.Equal(t, []mqtthooks.ReasonCode{mqtthooks.CodeServerShuttingDown}, a.Conn.Disconnects())
	assert.Equal(t, []mqtthooks.ReasonCode{mqtthooks.CodeServerShuttingDown}, b.Conn.Disconnects(),
		"the broker closes a v3 connection on it")
	f.rec.ExpectHooks(t, sid("a"), "PublishWill", "OnClientOffline")
	off, _ := f.rec.Last(sid("a"), "OnClientOffline")
	assert.Equal(t, mqtthooks.ReasonShutdown, off.Event.Reason)
	f.rec.ExpectHooks(t, sid("b"), "PublishWill", "RemoveAll", "OnClientGone")
	f.rec.ExpectHooks(t, sid("c"))
	assert.ErrorIs(t, f.core.Shutdown(t.Context()), mqtthooks.ErrShutdown)
	after := mqtthookstest.ConnectV3(t.Context(), f.core, "d", "u", true)
	assert.Equal(t, mqtthooks.RefusedServerUnavailable, after.Connack().ReturnCode)
}

// OQ14: at Shutdown with the in-memory store, delayed Wills are published,
// also those of offline sessions.
func TestShutdownPublishesDelayedWills(t *testing.T) {
	f := newFixture(t, mqtthooks.Options{})
	off := f.connect(withDelayedWill(mqtthookstest.V5("off", "u", false, 300), 60))
	off.Drop(t.Context(), nil)
	on := f.connect(withDelayedWill(mqtthookstest.V5("on", "u", false, 300), 60))
	requireAccepted(t, on)
	require.Zero(t, f.rec.Count(sid("off"), "PublishWill"))

	require.NoError(t, f.core.Shutdown(t.Context()))

	assert.Equal(t, 1, f.rec.Count(sid("off"), "PublishWill"))
	assert.Equal(t, 1, f.rec.Count(sid("on"), "PublishWill"))
}

// N20, OQ15: MaxSessions counts stored sessions; resuming or replacing one is
// not a new session.
func TestSessionLimit(t *testing.T) {
	f := newFixture(t, mqtthooks.Options{MaxSessions: 1})
	a := f.v3("a", false)
	a.Drop(t.Context(), nil)

	b := f.v3("b", false)
	expectRejected(t, f, b, sid("b"), 3, 0x97)
	f.rec.ExpectHooks(t, sid("b"), "AuthOnRegister")

	resumed := f.v3("a", false)
	requireAccepted(t, resumed)
	assert.True(t, resumed.Connack().SessionPresent)
	replaced := f.v3("a", true)
	requireAccepted(t, replaced)
	assert.Equal(t, int64(1), f.core.Stats().Sessions)
}

// Concurrent CONNECTs for different ids never exceed MaxSessions.
func TestSessionLimitUnderConcurrency(t *testing.T) {
	f := newFixture(t, mqtthooks.Options{MaxSessions: 10})
	var wg sync.WaitGroup
	accepted := make(chan bool, 100)
	for i := range 100 {
		wg.Go(func() { accepted <- f.v3(fmt.Sprint("c", i), false).Accepted() })
	}
	wg.Wait()
	close(accepted)
	n := 0
	for ok := range accepted {
		if ok {
			n++
		}
	}
	assert.Equal(t, 10, n)
	assert.Equal(t, int64(10), f.core.Stats().Sessions)
}

// A blocked OnClientWakeup of one id does not hold up another id's CONNECT
// and DISCONNECT: there is no global lock.
func TestBlockedHookDoesNotBlockOtherIDs(t *testing.T) {
	f := newFixture(t, mqtthooks.Options{})
	running, release := make(chan struct{}), make(chan struct{})
	f.rec.Lifecycle = func(_ context.Context, c mqtthookstest.Call) {
		if c.Hook == "OnClientWakeup" && c.ID == sid("a") {
			close(running)
			<-release
		}
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		f.v3("a", true)
	}()
	within(t, running, "the hook")

	b := f.v3("b", true)
	requireAccepted(t, b)
	require.NoError(t, b.Disconnect(t.Context(), mqtthooks.CodeNormalDisconnection))
	assert.Equal(t, 1, f.rec.Count(sid("b"), "OnClientGone"))
	close(release)
	<-done
}

// A takeover completes while the old connection's Conn never returns.
func TestTakeoverWithStuckConn(t *testing.T) {
	f := newFixture(t, mqtthooks.Options{})
	c1 := f.v3("s", false)
	release := c1.Conn.Block()
	defer release()

	c2 := f.v3("s", false)

	requireAccepted(t, c2)
	within(t, c1.Conn.Disconnected(), "a DISCONNECT") // called, and still stuck
	assert.True(t, c2.Connack().SessionPresent)
}

// A hook that calls Disconnect on its own id does not deadlock: the call is
// queued behind the hook and runs after it.
func TestHookCallsBackIntoCore(t *testing.T) {
	f := newFixture(t, mqtthooks.Options{})
	var err error
	f.rec.Lifecycle = func(ctx context.Context, c mqtthookstest.Call) {
		if c.Hook == "OnRegister" {
			err = f.core.Disconnect(ctx, c.ID, true)
		}
	}
	c := f.v3("s", false)
	require.NoError(t, err)
	requireAccepted(t, c)
	f.rec.ExpectHooks(t, sid("s"), "AuthOnRegister", "OnClientWakeup", "OnRegister", "OnClientGone")
	gone, _ := f.rec.Last(sid("s"), "OnClientGone")
	assert.Equal(t, mqtthooks.ReasonAdmin, gone.Event.Reason)

	// OQ16: the connection was ended before Start: it learns it from Pull.
	_, perr := c.Pull()
	assert.ErrorIs(t, perr, mqtthooks.ErrAdminDisconnect)
}

// After Shutdown of a Core with 10k sessions and armed expiry timers, the
// goroutine count returns to its baseline.
func TestShutdownLeavesNoGoroutine(t *testing.T) {
	baseline := runtime.NumGoroutine()
	chain := mqtthooks.NewChain(mqtthooks.ChainOptions{})
	require.NoError(t, chain.Register("P", &mqtthookstest.Recorder{Accept: true}))
	core, err := mqtthooks.NewCore(chain, mqtthooks.Options{})
	require.NoError(t, err)
	for i := range 10_000 {
		c := mqtthookstest.ConnectV5(t.Context(), core, fmt.Sprint("c", i), "u", false, uint32(60+i%600))
		if i%2 == 0 {
			c.Drop(t.Context(), nil)
		}
	}
	assert.Equal(t, int64(10_000), core.Stats().Sessions)
	assert.Less(t, runtime.NumGoroutine(), baseline+10, "no goroutine per session")

	require.NoError(t, core.Shutdown(t.Context()))

	// Goroutines that just finished may take a moment to be counted out.
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > baseline && time.Now().Before(deadline) {
		runtime.Gosched()
	}
	if !assert.LessOrEqual(t, runtime.NumGoroutine(), baseline) {
		buf := make([]byte, 1<<20)
		t.Logf("baseline %d, now %d:\n%s", baseline, runtime.NumGoroutine(), buf[:runtime.Stack(buf, true)])
	}
}

// An expiry that waited for a busy worker while its session resumed and went
// offline again must not end the session early (found by the model test).
func TestStaleExpiryAfterResume(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFixture(t, mqtthooks.Options{Workers: 1})
		release := make(chan struct{})
		f.rec.Lifecycle = func(_ context.Context, c mqtthookstest.Call) {
			if c.Hook == "OnSessionExpired" && c.ID == sid("a") {
				<-release
			}
		}
		f.v5("a", false, 10).Drop(t.Context(), nil)
		f.v5("b", false, 20).Drop(t.Context(), nil)
		time.Sleep(25 * time.Second) // a's expiry holds the only worker; b's waits
		synctest.Wait()
		b := f.v5("b", false, 300)
		require.True(t, b.Connack().SessionPresent)
		b.Drop(t.Context(), nil)
		close(release)
		synctest.Wait()

		info, ok := f.core.Lookup(sid("b"))
		require.True(t, ok, "b expired early")
		assert.Equal(t, time.Now().Add(300*time.Second), info.ExpiresAt)
		time.Sleep(300 * time.Second)
		synctest.Wait()
		assert.Equal(t, 1, f.rec.Count(sid("b"), "OnSessionExpired"))
	})
}
