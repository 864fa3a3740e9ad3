package mqtthooks_test

import (
	"context"
	"log/slog"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mqtthooks/mqtthooks"
	"github.com/mqtthooks/mqtthooks/mqtthookstest"
)

// hookStats returns the counters of hook.
func hookStats(t *testing.T, stats []mqtthooks.HookStats, hook string) mqtthooks.HookStats {
	t.Helper()
	for _, s := range stats {
		if s.Hook == hook {
			return s
		}
	}
	t.Fatalf("no stats for %s", hook)
	return mqtthooks.HookStats{}
}

// The Core counts each hook it calls: the verdicts of AuthOnRegister
// (accept, reject, the plugins that passed, exhausted), a plugin that
// panics, one that answers past the deadline, and notifications with their
// panics; one call in LatencySampling, at random, is timed into the
// histogram. Time is synctest's.
func TestHookStats(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		chain := mqtthooks.NewChain(mqtthooks.ChainOptions{Logger: slog.New(slog.DiscardHandler)})
		var answer func() mqtthooks.RegisterResult
		require.NoError(t, chain.Register("pass", mqtthooks.AuthOnRegisterFunc(
			func(context.Context, *mqtthooks.RegisterRequest) mqtthooks.RegisterResult { return mqtthooks.Next() })))
		require.NoError(t, chain.Register("decide", mqtthooks.AuthOnRegisterFunc(
			func(context.Context, *mqtthooks.RegisterRequest) mqtthooks.RegisterResult { return answer() })))
		require.NoError(t, chain.Register("gone", mqtthooks.OnClientGoneFunc(func(_ context.Context, ev *mqtthooks.SessionEvent) {
			if ev.SubscriberID.ClientID == "panic" {
				panic("a plugin's bug")
			}
		})))
		core, err := mqtthooks.NewCore(chain, mqtthooks.Options{Logger: slog.New(slog.DiscardHandler)})
		require.NoError(t, err)
		defer func() { _ = core.Shutdown(context.Background()) }()
		connect := func(id string, r func() mqtthooks.RegisterResult) *mqtthookstest.Client {
			answer = r
			c := mqtthookstest.NewClient(core)
			c.Connect(t.Context(), mqtthookstest.V3(id, "u", true))
			return c
		}
		for range 20 {
			c := connect("ok", mqtthooks.Accept)
			require.True(t, c.Accepted())
			require.NoError(t, c.Disconnect(t.Context(), mqtthooks.CodeNormalDisconnection))
		}
		for range 3 {
			connect("bad", func() mqtthooks.RegisterResult { return mqtthooks.Reject(mqtthooks.ErrInvalidCredentials) })
		}
		connect("nobody", mqtthooks.Next)
		connect("bug", func() mqtthooks.RegisterResult { panic("a plugin's bug") })
		connect("slow", func() mqtthooks.RegisterResult { time.Sleep(6 * time.Second); return mqtthooks.Accept() })
		c := connect("panic", mqtthooks.Accept)
		require.NoError(t, c.Disconnect(t.Context(), mqtthooks.CodeNormalDisconnection))

		stats := core.Stats().Hooks
		auth := hookStats(t, stats, "AuthOnRegister")
		assert.Equal(t, uint64(27), auth.Calls)
		assert.Equal(t, uint64(21), auth.Accepted)
		assert.Equal(t, uint64(3), auth.Rejected)
		assert.Equal(t, uint64(1), auth.Exhausted)
		assert.Equal(t, uint64(1), auth.Panics)
		assert.Equal(t, uint64(1), auth.Timeouts, "ConnectTimeout is 5 s")
		assert.Equal(t, uint64(26+1), auth.Next, "pass answered Next every time (the panicking call aside), decide once")
		var sum uint64
		for _, n := range auth.Latency.Counts {
			sum += n
		}
		assert.Equal(t, len(auth.Latency.Bounds)+1, len(auth.Latency.Counts))
		assert.Equal(t, auth.Latency.Count, sum)
		assert.LessOrEqual(t, auth.Latency.Count, auth.Calls)

		gone := hookStats(t, stats, "OnClientGone")
		assert.Equal(t, uint64(21), gone.Calls)
		assert.Equal(t, uint64(21), core.Stats().SessionsGone)
		assert.Equal(t, uint64(1), gone.Panics)
		assert.Zero(t, gone.Accepted+gone.Rejected+gone.Exhausted, "a notification has no verdict")
		assert.Equal(t, uint64(21), hookStats(t, stats, "OnRegister").Calls)
		assert.Equal(t, uint64(21), hookStats(t, stats, "OnClientWakeup").Calls)
		assert.Zero(t, hookStats(t, stats, "OnAuthM5").Calls)

		// One call in LatencySampling is timed, at random: over 1,600 calls,
		// about 100 (the bounds are more than five standard deviations away).
		for range 1600 {
			connect("ok", mqtthooks.Accept).Drop(t.Context(), nil)
		}
		auth = hookStats(t, core.Stats().Hooks, "AuthOnRegister")
		assert.InDelta(t, 100, float64(auth.Latency.Count), 50)
	})
}

// CONNACKs are counted by protocol version and code (an accepted and a
// 0x86-rejected MQTT 5 CONNECT read 1 and 1), and the connections the Core
// ends by reason code.
func TestConnackAndDisconnectCounts(t *testing.T) {
	f := newFixture(t, mqtthooks.Options{})
	f.rec.AuthOnRegisterM5Func = func(_ context.Context, r *mqtthooks.RegisterRequest) mqtthooks.RegisterResult {
		if r.Connect.Username == "wrong" {
			return mqtthooks.Reject(mqtthooks.ErrInvalidCredentials)
		}
		return mqtthooks.Accept()
	}
	f.rec.AuthOnRegisterFunc = func(context.Context, *mqtthooks.RegisterRequest) mqtthooks.RegisterResult {
		return mqtthooks.Reject(mqtthooks.ErrInvalidCredentials)
	}
	requireAccepted(t, f.connect(mqtthookstest.V5("ok", "u", true, 0)))
	bad := mqtthookstest.NewClient(f.core)
	step := bad.Connect(t.Context(), mqtthookstest.V5("bad", "wrong", true, 0))
	assert.False(t, bad.Accepted())
	assert.Equal(t, "P", step.Plugin, "the step names the plugin that refused")
	assert.False(t, f.connect(mqtthookstest.V3("v3", "u", true)).Accepted())
	taken := f.connect(mqtthookstest.V5("ok", "u", false, 0)) // takes "ok" over: 0x8E
	requireAccepted(t, taken)
	require.NoError(t, f.core.DisconnectWith(t.Context(), sid("ok"), mqtthooks.DisconnectOptions{Code: mqtthooks.CodeNotAuthorized}))

	st := f.core.Stats()
	assert.ElementsMatch(t, []mqtthooks.ConnackCount{
		{Version: mqtthooks.MQTT5, Code: byte(mqtthooks.CodeSuccess), Count: 2},
		{Version: mqtthooks.MQTT5, Code: byte(mqtthooks.CodeBadUserNameOrPassword), Count: 1},
		{Version: mqtthooks.MQTT311, Code: byte(mqtthooks.RefusedBadUsernameOrPassword), Count: 1},
	}, st.Connacks)
	assert.ElementsMatch(t, []mqtthooks.DisconnectCount{
		{Code: mqtthooks.CodeSessionTakenOver, Count: 1},
		{Code: mqtthooks.CodeNotAuthorized, Count: 1},
	}, st.Disconnects)
}

// A conditional hook that ends past its deadline is logged, with the hook,
// the plugin and the client, at Warn. Time is synctest's.
func TestHookTimeoutLogged(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFixture(t, mqtthooks.Options{})
		f.rec.AuthOnRegisterFunc = func(context.Context, *mqtthooks.RegisterRequest) mqtthooks.RegisterResult {
			time.Sleep(6 * time.Second) // ConnectTimeout is 5 s
			return mqtthooks.Accept()
		}
		assert.False(t, f.v3("slow", true).Accepted())
		logs := f.logs.String()
		assert.Contains(t, logs, "level=WARN msg=\"mqtthooks: hook deadline exceeded\" hook=AuthOnRegister plugin=P client=slow")
		assert.Equal(t, uint64(1), hookStats(t, f.core.Stats().Hooks, "AuthOnRegister").Timeouts)
	})
}

// Drops are counted by reason, adding up to Dropped; the store's commits
// are counted, timed one in LatencySampling, and its failures counted.
func TestDropAndStoreStats(t *testing.T) {
	store := new(mqtthookstest.Store)
	f := newFixture(t, mqtthooks.Options{Store: store, MaxOfflineMessages: mqtthooks.Some(1)})
	f.offline(t, "s")
	f.publish(t, sid("s"), 1, 3) // one queued, two dropped: the queue is full

	st := f.core.Stats()
	assert.Equal(t, []mqtthooks.DropCount{{Reason: mqtthooks.DropQueueFull, Count: 2},
		{Reason: mqtthooks.DropExpired}, {Reason: mqtthooks.DropTooLarge}}, st.Drops)
	assert.Equal(t, uint64(2), st.Dropped)
	require.NotZero(t, st.Store.Commits)
	assert.Zero(t, st.Store.Failed)
	assert.LessOrEqual(t, st.Store.Latency.Count, st.Store.Commits)

	store.Crash(t) // from now on every write fails
	c := f.v3("s", false)
	ds, err := c.Receive() // its Puback is a write
	require.NoError(t, err)
	require.Len(t, ds, 1)
	st = f.core.Stats()
	assert.NotZero(t, st.Store.Failed)

	g := newFixture(t, mqtthooks.Options{})
	assert.Zero(t, g.core.Stats().Store.Commits, "no store, no writes")
}
