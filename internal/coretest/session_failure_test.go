package mqtthooks_test

import (
	"context"
	"fmt"
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

// within fails t unless ch is closed or receives within 5 s: a test that
// would hang reports instead.
func within[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(5 * time.Second):
		t.Fatalf("timed out waiting for %s", what)
		var zero T
		return zero
	}
}

// Shutdown while an expiry waits for the only worker: no panic, and nothing of
// the Core runs after Shutdown returned.
func TestShutdownWhileExpiryWaitsForWorker(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFixture(t, mqtthooks.Options{Workers: 1})
		release := make(chan struct{})
		var after atomic.Bool
		var returned atomic.Bool
		f.rec.Lifecycle = func(_ context.Context, c mqtthookstest.Call) {
			if c.Hook == "OnSessionExpired" && c.ID == sid("a") {
				<-release
			}
			if returned.Load() {
				after.Store(true)
			}
		}
		f.v5("a", false, 10).Drop(t.Context(), nil)
		f.v5("b", false, 20).Drop(t.Context(), nil)
		time.Sleep(25 * time.Second) // a's expiry holds the worker; b's waits for it
		synctest.Wait()

		done := make(chan error)
		go func() { done <- f.core.Shutdown(context.Background()) }()
		synctest.Wait()
		close(release)
		require.NoError(t, <-done)
		returned.Store(true)
		synctest.Wait()
		assert.False(t, after.Load(), "a hook ran after Shutdown returned")
	})
}

// A CONNECT whose plugin is still deciding when Shutdown runs is refused.
func TestConnectRacingShutdown(t *testing.T) {
	f := newFixture(t, mqtthooks.Options{})
	deciding, release := make(chan struct{}), make(chan struct{})
	f.rec.AuthOnRegisterFunc = func(context.Context, *mqtthooks.RegisterRequest) mqtthooks.RegisterResult {
		close(deciding)
		<-release
		return mqtthooks.Accept()
	}
	done := make(chan *mqtthookstest.Client)
	go func() { done <- f.v3("s", false) }()
	within(t, deciding, "the plugin")
	require.NoError(t, f.core.Shutdown(t.Context()))
	close(release)
	c := within(t, done, "the CONNECT")

	assert.False(t, c.Accepted())
	assert.Equal(t, mqtthooks.RefusedServerUnavailable, c.Connack().ReturnCode)
	assert.Zero(t, f.core.Stats().Connections)
}

// blockingRouter blocks Add until released.
type blockingRouter struct {
	mqtthooks.Router
	entered, release chan struct{}
	once             sync.Once
}

func (b *blockingRouter) Add(id mqtthooks.SubscriberID, gen uint64, sub mqtthooks.Subscription) {
	b.once.Do(func() { close(b.entered) })
	<-b.release
	b.Router.Add(id, gen, sub)
}

// A Lost whose context ends while it waits its turn still ends the connection.
func TestLostWithCanceledContextStillEnds(t *testing.T) {
	rec := &mqtthookstest.Recorder{Accept: true}
	router := &blockingRouter{Router: rec.Router(), entered: make(chan struct{}), release: make(chan struct{})}
	f := newFixture(t, mqtthooks.Options{Router: router})
	f.rec = rec
	require.NoError(t, f.chain.Unregister("P"))
	require.NoError(t, f.chain.Register("P", rec))
	c := f.v3("s", false)
	go func() { _ = c.Subscribe(context.Background(), "t") }()
	within(t, router.entered, "the router")

	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	c.Session.Lost(ctx, nil) // returns: its context is done
	close(router.release)

	require.Eventually(t, func() bool { return rec.Count(sid("s"), "OnClientOffline") == 1 }, 5*time.Second, time.Millisecond)
	c.Session.Lost(t.Context(), nil) // a second report is the same end
	assert.Equal(t, 1, rec.Count(sid("s"), "OnClientOffline"))
	assert.Zero(t, f.core.Stats().Connections)
}

// A session replaced again and again never lets another id take its
// MaxSessions slot in between.
func TestSessionLimitThroughReplacements(t *testing.T) {
	f := newFixture(t, mqtthooks.Options{MaxSessions: 1})
	f.v3("a", false)
	var wg sync.WaitGroup
	var stolen atomic.Int32
	wg.Go(func() {
		for range 300 {
			f.v3("a", true) // a clean start replaces a
		}
	})
	wg.Go(func() {
		for range 300 {
			if c := f.v3("b", true); c.Accepted() {
				stolen.Add(1)
				_ = c.Disconnect(context.Background(), mqtthooks.CodeNormalDisconnection)
			}
		}
	})
	wg.Wait()
	assert.Zero(t, stolen.Load())
	assert.Equal(t, int64(1), f.core.Stats().Sessions)
}

// Shutdown returns when its context ends, even if a hook does not; the rest
// finishes once the hook returns.
func TestShutdownBoundedByContext(t *testing.T) {
	f := newFixture(t, mqtthooks.Options{})
	release := make(chan struct{})
	f.rec.Lifecycle = func(_ context.Context, c mqtthookstest.Call) {
		if c.Hook == "OnClientGone" {
			<-release
		}
	}
	f.v3("s", true)
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()

	err := f.core.Shutdown(ctx)

	assert.ErrorIs(t, err, context.DeadlineExceeded)
	close(release)
	require.Eventually(t, func() bool { return f.rec.Count(sid("s"), "OnClientGone") == 1 }, 5*time.Second, time.Millisecond)
}

// A hook may call Shutdown: it starts, and does not wait for that hook.
func TestShutdownFromHook(t *testing.T) {
	f := newFixture(t, mqtthooks.Options{})
	other := f.v3("other", false)
	var err error
	f.rec.Lifecycle = func(ctx context.Context, c mqtthookstest.Call) {
		if c.Hook == "OnRegister" && c.ID == sid("s") {
			err = f.core.Shutdown(ctx)
		}
	}
	c := f.v3("s", false)
	require.NoError(t, err)
	requireAccepted(t, c)
	within(t, other.Conn.Disconnected(), "the DISCONNECT of another connection")
	assert.Equal(t, []mqtthooks.ReasonCode{mqtthooks.CodeServerShuttingDown}, other.Conn.Disconnects())
	require.Eventually(t, func() bool { return f.rec.Count(sid("s"), "OnClientOffline") == 1 }, 5*time.Second, time.Millisecond)
}

// panickyRouter panics on Add.
type panickyRouter struct{ mqtthooks.Router }

func (panickyRouter) Add(mqtthooks.SubscriberID, uint64, mqtthooks.Subscription) { panic("router bug") }

// A panic in the broker's Router is logged and does not leave the client id
// stuck.
func TestPanicInRouterDoesNotWedge(t *testing.T) {
	rec := &mqtthookstest.Recorder{Accept: true}
	f := newFixture(t, mqtthooks.Options{Router: panickyRouter{rec.Router()}})
	c := f.v3("s", false)
	assert.NotPanics(t, func() { _ = c.Subscribe(t.Context(), "t") })
	assert.Contains(t, f.logs.String(), "router bug")

	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	require.NoError(t, f.core.Disconnect(ctx, sid("s"), true))
	assert.Equal(t, 1, f.rec.Count(sid("s"), "OnClientGone"))
}

// A plugin that rejects with context.Canceled is answered 5 / 0x87, like any
// other rejection; only the client's going away abandons a CONNECT.
func TestPluginRejectWithCanceledIsAnswered(t *testing.T) {
	f := newFixture(t, mqtthooks.Options{})
	f.rec.AuthOnRegisterFunc = answer(mqtthooks.Reject(fmt.Errorf("upstream: %w", context.Canceled)))
	c := f.v3("s", true)
	require.NotNil(t, c.Connack())
	assert.Equal(t, mqtthooks.RefusedNotAuthorized, c.Connack().ReturnCode)
}

// A client DISCONNECT with a code only a server may send is a protocol
// error: 0x81 back, the Will, Gone{ProtocolError}.
func TestClientDisconnectWithServerCode(t *testing.T) {
	f := newFixture(t, mqtthooks.Options{})
	c := f.connect(withWill(mqtthookstest.V5("s", "u", true, 0)))
	f.rec.Reset()

	err := c.Disconnect(t.Context(), mqtthooks.CodeSessionTakenOver)

	var pe *mqtthooks.ProtocolError
	require.ErrorAs(t, err, &pe)
	assert.Equal(t, mqtthooks.CodeMalformedPacket, pe.Code)
	f.rec.ExpectHooks(t, sid("s"), "PublishWill", "OnClientGone")
	gone, _ := f.rec.Last(sid("s"), "OnClientGone")
	assert.Equal(t, mqtthooks.ReasonProtocolError, gone.Event.Reason)
}
