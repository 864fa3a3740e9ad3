package mqtthooks_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mqtthooks/mqtthooks"
)

var errFoo = errors.New("foo")

// ACCEPTANCE 1: the first decision wins; later plugins are never called.
func TestChainNextThenAcceptStopsAtFirstDecision(t *testing.T) {
	c := mqtthooks.NewChain(mqtthooks.ChainOptions{})
	var log callLog
	registerAuth(t, c, "P1", &log, mqtthooks.Next())
	registerAuth(t, c, "P2", &log, mqtthooks.Accept())
	registerAuth(t, c, "P3", &log, mqtthooks.Accept())

	d := c.Snapshot().AuthOnRegister(t.Context(), v3Request("c1"))

	assert.NoError(t, d.Err)
	assert.Equal(t, mqtthooks.VerdictAccept, d.Result.Verdict())
	assert.Equal(t, "P2", d.Plugin)
	assert.Equal(t, []string{"P1", "P2"}, log.get())
}

// ACCEPTANCE 2: a Reject stops the chain and carries the plugin's error.
func TestChainRejectStopsChain(t *testing.T) {
	c := mqtthooks.NewChain(mqtthooks.ChainOptions{})
	var log callLog
	registerAuth(t, c, "P1", &log, mqtthooks.Reject(errFoo))
	registerAuth(t, c, "P2", &log, mqtthooks.Accept())

	d := c.Snapshot().AuthOnRegister(t.Context(), v3Request("c1"))

	assert.ErrorIs(t, d.Err, errFoo)
	assert.Equal(t, mqtthooks.VerdictReject, d.Result.Verdict())
	assert.Equal(t, "P1", d.Plugin)
	assert.Equal(t, []string{"P1"}, log.get())
	assert.Equal(t, mqtthooks.RefusedNotAuthorized, mqtthooks.ConnackReturnCode(d.Err))
	code, replaced := mqtthooks.ConnackReasonCode(d.Err)
	assert.Equal(t, mqtthooks.CodeNotAuthorized, code)
	assert.False(t, replaced)
}

// ACCEPTANCE 3: everybody Next rejects with ErrChainExhausted.
func TestChainAllNextIsExhausted(t *testing.T) {
	c := mqtthooks.NewChain(mqtthooks.ChainOptions{})
	var log callLog
	registerAuth(t, c, "P1", &log, mqtthooks.Next())
	registerAuth(t, c, "P2", &log, mqtthooks.Next())

	d := c.Snapshot().AuthOnRegister(t.Context(), v3Request("c1"))

	assert.ErrorIs(t, d.Err, mqtthooks.ErrChainExhausted)
	assert.Empty(t, d.Plugin)
	assert.Equal(t, mqtthooks.VerdictInvalid, d.Result.Verdict(), "no result for an undecided chain")
	assert.Equal(t, []string{"P1", "P2"}, log.get())
	assert.Equal(t, mqtthooks.RefusedNotAuthorized, mqtthooks.ConnackReturnCode(d.Err))
	code, _ := mqtthooks.ConnackReasonCode(d.Err)
	assert.Equal(t, mqtthooks.CodeNotAuthorized, code)
}

// ACCEPTANCE 4: nobody implements the hook: ErrNoPlugin, distinct from
// ErrChainExhausted, and a reject.
func TestChainNoImplementer(t *testing.T) {
	c := mqtthooks.NewChain(mqtthooks.ChainOptions{})
	require.NoError(t, c.Register("P", mqtthooks.OnClientGoneFunc(func(context.Context, *mqtthooks.SessionEvent) {})))

	for name, d := range map[string]mqtthooks.Decision[mqtthooks.RegisterResult]{
		"v3": c.Snapshot().AuthOnRegister(t.Context(), v3Request("c1")),
		"v5": c.Snapshot().AuthOnRegisterM5(t.Context(), v3Request("c1")),
	} {
		assert.ErrorIs(t, d.Err, mqtthooks.ErrNoPlugin, name)
		assert.NotErrorIs(t, d.Err, mqtthooks.ErrChainExhausted, name)
		assert.Equal(t, mqtthooks.RefusedNotAuthorized, mqtthooks.ConnackReturnCode(d.Err), name)
	}
	a := c.Snapshot().OnAuthM5(t.Context(), &mqtthooks.AuthRequest{Step: mqtthooks.AuthStepStart})
	assert.ErrorIs(t, a.Err, mqtthooks.ErrNoPlugin)

	empty := mqtthooks.NewChain(mqtthooks.ChainOptions{})
	assert.ErrorIs(t, empty.Snapshot().AuthOnRegister(t.Context(), v3Request("c1")).Err, mqtthooks.ErrNoPlugin)
}

// ACCEPTANCE 5: the zero result decides nothing: ErrInvalidResult, the chain
// stops, and the CONNECT gets 3 / 0x88.
func TestChainZeroResultIsInvalid(t *testing.T) {
	t.Run("RegisterResult", func(t *testing.T) {
		c := mqtthooks.NewChain(mqtthooks.ChainOptions{})
		var log callLog
		registerAuth(t, c, "P1", &log, mqtthooks.RegisterResult{})
		registerAuth(t, c, "P2", &log, mqtthooks.Accept())

		d := c.Snapshot().AuthOnRegister(t.Context(), v3Request("c1"))

		assert.ErrorIs(t, d.Err, mqtthooks.ErrInvalidResult)
		assert.Equal(t, "P1", d.Plugin)
		assert.Equal(t, []string{"P1"}, log.get())
		assert.Equal(t, mqtthooks.RefusedServerUnavailable, mqtthooks.ConnackReturnCode(d.Err))
		code, _ := mqtthooks.ConnackReasonCode(d.Err)
		assert.Equal(t, mqtthooks.CodeServerUnavailable, code)
	})
	t.Run("AuthResult", func(t *testing.T) {
		c := mqtthooks.NewChain(mqtthooks.ChainOptions{})
		var log callLog
		for _, p := range []struct {
			name string
			r    mqtthooks.AuthResult
		}{{"P1", mqtthooks.AuthResult{}}, {"P2", mqtthooks.AuthSuccess(nil, "id")}} {
			require.NoError(t, c.Register(p.name, mqtthooks.OnAuthM5Func(
				func(context.Context, *mqtthooks.AuthRequest) mqtthooks.AuthResult {
					log.add(p.name)
					return p.r
				})))
		}

		d := c.Snapshot().OnAuthM5(t.Context(), &mqtthooks.AuthRequest{Step: mqtthooks.AuthStepStart, Method: "M"})

		assert.ErrorIs(t, d.Err, mqtthooks.ErrInvalidResult)
		assert.Equal(t, "P1", d.Plugin)
		assert.Equal(t, []string{"P1"}, log.get())
	})
}

// ACCEPTANCE 6: a notification goes to every plugin, in order, with the same
// event; with no implementer nothing happens.
func TestChainNotificationReachesEveryPlugin(t *testing.T) {
	c := mqtthooks.NewChain(mqtthooks.ChainOptions{})
	var log callLog
	seen := map[string]*mqtthooks.SessionEvent{}
	for _, name := range []string{"P1", "P2", "P3"} {
		require.NoError(t, c.Register(name, mqtthooks.OnClientGoneFunc(func(_ context.Context, ev *mqtthooks.SessionEvent) {
			log.add(name)
			seen[name] = ev
		})))
	}
	ev := &mqtthooks.SessionEvent{SubscriberID: mqtthooks.SubscriberID{ClientID: "c1"}, Reason: mqtthooks.ReasonClientDisconnect}

	c.Snapshot().OnClientGone(t.Context(), ev)
	c.Snapshot().OnClientOffline(t.Context(), ev) // nobody implements it

	assert.Equal(t, []string{"P1", "P2", "P3"}, log.get())
	for name, got := range seen {
		assert.Same(t, ev, got, name)
	}
}

// Every notification hook reaches its implementers, and only them.
func TestChainEveryNotificationHook(t *testing.T) {
	c := mqtthooks.NewChain(mqtthooks.ChainOptions{})
	var log callLog
	require.NoError(t, c.Register("all", allHooks{&log}))
	require.NoError(t, c.Register("gone-only", mqtthooks.OnClientGoneFunc(func(context.Context, *mqtthooks.SessionEvent) {
		log.add("gone-only")
	})))
	s := c.Snapshot()
	ctx := t.Context()
	ev := &mqtthooks.SessionEvent{}
	s.OnRegister(ctx, &mqtthooks.RegisterEvent{})
	s.OnRegisterM5(ctx, &mqtthooks.RegisterEvent{})
	s.OnClientWakeup(ctx, ev)
	s.OnClientOffline(ctx, ev)
	s.OnClientGone(ctx, ev)
	s.OnSessionExpired(ctx, ev)
	s.OnMessageDrop(ctx, &mqtthooks.DropEvent{})

	assert.Equal(t, []string{"OnRegister", "OnRegisterM5", "OnClientWakeup", "OnClientOffline",
		"OnClientGone", "gone-only", "OnSessionExpired", "OnMessageDrop"}, log.get())
}

// allHooks implements every hook and records which one ran.
type allHooks struct{ log *callLog }

func (a allHooks) AuthOnRegister(context.Context, *mqtthooks.RegisterRequest) mqtthooks.RegisterResult {
	a.log.add("AuthOnRegister")
	return mqtthooks.Accept()
}

func (a allHooks) AuthOnRegisterM5(context.Context, *mqtthooks.RegisterRequest) mqtthooks.RegisterResult {
	a.log.add("AuthOnRegisterM5")
	return mqtthooks.Accept()
}

func (a allHooks) OnAuthM5(context.Context, *mqtthooks.AuthRequest) mqtthooks.AuthResult {
	a.log.add("OnAuthM5")
	return mqtthooks.AuthSuccess(nil, nil)
}

func (a allHooks) OnRegister(context.Context, *mqtthooks.RegisterEvent) { a.log.add("OnRegister") }
func (a allHooks) OnRegisterM5(context.Context, *mqtthooks.RegisterEvent) {
	a.log.add("OnRegisterM5")
}
func (a allHooks) OnClientWakeup(context.Context, *mqtthooks.SessionEvent) {
	a.log.add("OnClientWakeup")
}
func (a allHooks) OnClientOffline(context.Context, *mqtthooks.SessionEvent) {
	a.log.add("OnClientOffline")
}
func (a allHooks) OnClientGone(context.Context, *mqtthooks.SessionEvent) { a.log.add("OnClientGone") }
func (a allHooks) OnSessionExpired(context.Context, *mqtthooks.SessionEvent) {
	a.log.add("OnSessionExpired")
}
func (a allHooks) OnMessageDrop(context.Context, *mqtthooks.DropEvent) { a.log.add("OnMessageDrop") }

// ACCEPTANCE 7: prioritised plugins first, ascending; the others in
// registration order, not name order (OQ17).
func TestChainPriorityOrder(t *testing.T) {
	for _, tc := range []struct {
		registered []string
		want       []string
	}{
		{[]string{"b", "a", "c", "d"}, []string{"a", "b", "c", "d"}},
		{[]string{"b", "a", "d", "c"}, []string{"a", "b", "d", "c"}},
	} {
		c := mqtthooks.NewChain(mqtthooks.ChainOptions{})
		var log callLog
		prio := map[string][]mqtthooks.PluginOption{"b": {mqtthooks.Priority(2)}, "a": {mqtthooks.Priority(1)}}
		for _, name := range tc.registered {
			registerAuth(t, c, name, &log, mqtthooks.Next(), prio[name]...)
		}

		d := c.Snapshot().AuthOnRegister(t.Context(), v3Request("c1"))

		assert.ErrorIs(t, d.Err, mqtthooks.ErrChainExhausted)
		assert.Equal(t, tc.want, log.get())
		assert.Equal(t, tc.want, c.Snapshot().Plugins())
	}
}

// Equal priorities keep registration order; negative priorities run first.
func TestChainPriorityTies(t *testing.T) {
	c := mqtthooks.NewChain(mqtthooks.ChainOptions{})
	var log callLog
	registerAuth(t, c, "x", &log, mqtthooks.Next(), mqtthooks.Priority(5))
	registerAuth(t, c, "plain", &log, mqtthooks.Next())
	registerAuth(t, c, "y", &log, mqtthooks.Next(), mqtthooks.Priority(5))
	registerAuth(t, c, "first", &log, mqtthooks.Next(), mqtthooks.Priority(-3))

	assert.Equal(t, []string{"first", "x", "y", "plain"}, c.Snapshot().Plugins())
}

// ACCEPTANCE 8: a listener's subset runs only its plugins, in its order, for
// the conditional hooks; notifications still reach every plugin (OQ2).
func TestChainSubset(t *testing.T) {
	c := mqtthooks.NewChain(mqtthooks.ChainOptions{})
	var log callLog
	registerAuth(t, c, "a", &log, mqtthooks.Next())
	registerAuth(t, c, "b", &log, mqtthooks.Next())
	registerAuth(t, c, "c", &log, mqtthooks.Next())
	require.NoError(t, c.Register("g", mqtthooks.OnClientGoneFunc(func(context.Context, *mqtthooks.SessionEvent) {
		log.add("g")
	})))
	sub, err := c.Subset("b", "a")
	require.NoError(t, err)
	assert.Equal(t, []string{"b", "a"}, sub.Names())

	view := c.Snapshot().Restrict(sub)
	d := view.AuthOnRegister(t.Context(), v3Request("c1"))

	assert.ErrorIs(t, d.Err, mqtthooks.ErrChainExhausted)
	assert.Equal(t, mqtthooks.RefusedNotAuthorized, mqtthooks.ConnackReturnCode(d.Err))
	view.OnClientGone(t.Context(), &mqtthooks.SessionEvent{})
	assert.Equal(t, []string{"b", "a", "g"}, log.get())

	assert.Same(t, view, c.Snapshot().Restrict(sub), "the restriction is cached per snapshot")
	assert.Same(t, c.Snapshot(), c.Snapshot().Restrict(nil))

	onlyGone, err := c.Subset("g")
	require.NoError(t, err)
	assert.ErrorIs(t, c.Snapshot().Restrict(onlyGone).AuthOnRegister(t.Context(), v3Request("c1")).Err,
		mqtthooks.ErrNoPlugin, "a subset that leaves no implementer")
}

// A subset follows the chain: a plugin unregistered later is skipped, and a
// new snapshot gets a new restriction.
func TestChainSubsetAfterUnregister(t *testing.T) {
	c := mqtthooks.NewChain(mqtthooks.ChainOptions{})
	var log callLog
	registerAuth(t, c, "a", &log, mqtthooks.Next())
	registerAuth(t, c, "b", &log, mqtthooks.Accept())
	sub, err := c.Subset("a", "b")
	require.NoError(t, err)
	require.NoError(t, c.Snapshot().Restrict(sub).AuthOnRegister(t.Context(), v3Request("c1")).Err)

	require.NoError(t, c.Unregister("b"))
	d := c.Snapshot().Restrict(sub).AuthOnRegister(t.Context(), v3Request("c1"))

	assert.ErrorIs(t, d.Err, mqtthooks.ErrChainExhausted)
	assert.Equal(t, []string{"a", "b", "a"}, log.get())
}

func TestChainSubsetErrors(t *testing.T) {
	c := mqtthooks.NewChain(mqtthooks.ChainOptions{})
	var log callLog
	registerAuth(t, c, "a", &log, mqtthooks.Next())

	_, err := c.Subset()
	assert.ErrorIs(t, err, mqtthooks.ErrInvalidPluginName)
	_, err = c.Subset("a", "a")
	assert.ErrorIs(t, err, mqtthooks.ErrInvalidPluginName)
	assert.ErrorContains(t, err, `"a" appears twice`)
	_, err = c.Subset("a", "zz")
	assert.ErrorIs(t, err, mqtthooks.ErrUnknownPlugin)
	assert.ErrorContains(t, err, `"zz"`)
}

// ACCEPTANCE 10: a panic in a conditional hook is recovered, rejects with
// ErrPluginPanic (3 / 0x88), is logged, and stops the chain.
func TestChainPanicInAuthRejects(t *testing.T) {
	c, logs := newLoggedChain()
	var log callLog
	require.NoError(t, c.Register("P1", mqtthooks.AuthOnRegisterFunc(
		func(context.Context, *mqtthooks.RegisterRequest) mqtthooks.RegisterResult {
			log.add("P1")
			panic("boom")
		})))
	registerAuth(t, c, "P2", &log, mqtthooks.Accept())

	d := c.Snapshot().AuthOnRegister(t.Context(), v3Request("c1"))

	require.ErrorIs(t, d.Err, mqtthooks.ErrPluginPanic)
	var pe *mqtthooks.PanicError
	require.ErrorAs(t, d.Err, &pe)
	assert.Equal(t, "P1", pe.Plugin)
	assert.Equal(t, "AuthOnRegister", pe.Hook)
	assert.Equal(t, "boom", pe.Value)
	assert.Contains(t, string(pe.Stack), "chain_test.go")
	assert.Equal(t, "P1", d.Plugin)
	assert.Equal(t, []string{"P1"}, log.get())
	assert.Equal(t, mqtthooks.RefusedServerUnavailable, mqtthooks.ConnackReturnCode(d.Err))
	code, _ := mqtthooks.ConnackReasonCode(d.Err)
	assert.Equal(t, mqtthooks.CodeServerUnavailable, code)
	assert.Contains(t, logs.String(), "plugin panicked")
	assert.Contains(t, logs.String(), "plugin=P1")
}

// A plugin that panics with ErrInvalidCredentials is still a plugin fault
// (0x88), never a bad-password answer.
func TestChainPanicWithErrorValueIsAFault(t *testing.T) {
	c, _ := newLoggedChain()
	require.NoError(t, c.Register("P1", mqtthooks.AuthOnRegisterM5Func(
		func(context.Context, *mqtthooks.RegisterRequest) mqtthooks.RegisterResult {
			panic(mqtthooks.ErrInvalidCredentials)
		})))

	d := c.Snapshot().AuthOnRegisterM5(t.Context(), v3Request("c1"))

	assert.ErrorIs(t, d.Err, mqtthooks.ErrPluginPanic)
	assert.NotErrorIs(t, d.Err, mqtthooks.ErrInvalidCredentials)
	code, _ := mqtthooks.ConnackReasonCode(d.Err)
	assert.Equal(t, mqtthooks.CodeServerUnavailable, code)
}

// N5 (chain part): a panic in a notification is logged, naming the plugin, and
// the later plugins still run.
func TestChainPanicInNotificationIsLoggedAndSkipped(t *testing.T) {
	c, logs := newLoggedChain()
	var log callLog
	require.NoError(t, c.Register("P1", mqtthooks.OnClientWakeupFunc(func(context.Context, *mqtthooks.SessionEvent) {
		log.add("P1")
		panic("wakeup boom")
	})))
	require.NoError(t, c.Register("P2", mqtthooks.OnClientWakeupFunc(func(context.Context, *mqtthooks.SessionEvent) {
		log.add("P2")
	})))
	require.NoError(t, c.Register("P3", mqtthooks.OnClientWakeupFunc(func(context.Context, *mqtthooks.SessionEvent) {
		log.add("P3")
		panic("again")
	})))
	require.NoError(t, c.Register("P4", mqtthooks.OnClientWakeupFunc(func(context.Context, *mqtthooks.SessionEvent) {
		log.add("P4")
	})))

	assert.NotPanics(t, func() { c.Snapshot().OnClientWakeup(t.Context(), &mqtthooks.SessionEvent{}) })

	assert.Equal(t, []string{"P1", "P2", "P3", "P4"}, log.get())
	out := logs.String()
	assert.Contains(t, out, "plugin=P1")
	assert.Contains(t, out, "wakeup boom")
	assert.Contains(t, out, "plugin=P3")
	assert.Contains(t, out, "hook=OnClientWakeup")
}

// runtime.Goexit is not recovered, but the chain logs it, a conditional
// dispatch never accepts, and a notification still reaches the later plugins.
func TestChainGoexit(t *testing.T) {
	c, logs := newLoggedChain()
	var log callLog
	require.NoError(t, c.Register("exit", goexitPlugin{&log}))
	require.NoError(t, c.Register("after", allHooks{&log}))

	var d mqtthooks.Decision[mqtthooks.RegisterResult]
	returned := false
	done := make(chan struct{})
	go func() {
		defer close(done)
		d = c.Snapshot().AuthOnRegister(context.Background(), v3Request("c1"))
		returned = true
	}()
	<-done
	assert.False(t, returned, "Goexit goes on unwinding the caller")
	_ = d

	done = make(chan struct{})
	go func() {
		defer close(done)
		c.Snapshot().OnClientGone(context.Background(), &mqtthooks.SessionEvent{})
	}()
	<-done

	assert.Equal(t, []string{"exit", "exit", "OnClientGone"}, log.get(), "AuthOnRegister of 'after' never ran")
	assert.Equal(t, 2, strings.Count(logs.String(), "runtime.Goexit"))
}

type goexitPlugin struct{ log *callLog }

func (g goexitPlugin) AuthOnRegister(context.Context, *mqtthooks.RegisterRequest) mqtthooks.RegisterResult {
	g.log.add("exit")
	runtime.Goexit()
	return mqtthooks.Accept()
}

func (g goexitPlugin) OnClientGone(context.Context, *mqtthooks.SessionEvent) {
	g.log.add("exit")
	runtime.Goexit()
}

// A plugin that ignores its context and accepts after the deadline: the chain
// rejects with ErrHookTimeout (3 / 0x88). Time is synctest's.
func TestChainAcceptAfterDeadlineIsTimeout(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := mqtthooks.NewChain(mqtthooks.ChainOptions{})
		var log callLog
		require.NoError(t, c.Register("slow", mqtthooks.AuthOnRegisterFunc(
			func(context.Context, *mqtthooks.RegisterRequest) mqtthooks.RegisterResult {
				log.add("slow")
				time.Sleep(6 * time.Second) // ignores ctx
				return mqtthooks.Accept()
			})))
		registerAuth(t, c, "never", &log, mqtthooks.Accept())
		ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
		defer cancel()
		start := time.Now()

		d := c.Snapshot().AuthOnRegister(ctx, v3Request("c1"))

		assert.Equal(t, 6*time.Second, time.Since(start), "the chain does not interrupt a plugin")
		assert.ErrorIs(t, d.Err, mqtthooks.ErrHookTimeout)
		assert.Equal(t, mqtthooks.VerdictInvalid, d.Result.Verdict(), "no accept survives the deadline")
		assert.Equal(t, "slow", d.Plugin)
		assert.Equal(t, mqtthooks.RefusedServerUnavailable, mqtthooks.ConnackReturnCode(d.Err))
		code, _ := mqtthooks.ConnackReasonCode(d.Err)
		assert.Equal(t, mqtthooks.CodeServerUnavailable, code)
		assert.Equal(t, []string{"slow"}, log.get())
	})
}

// A plugin answering Next after the deadline: the chain does not ask the next
// plugin and rejects with ErrHookTimeout; the same for OnAuthM5.
func TestChainNextAfterDeadline(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := mqtthooks.NewChain(mqtthooks.ChainOptions{})
		var log callLog
		require.NoError(t, c.Register("slow", mqtthooks.OnAuthM5Func(
			func(ctx context.Context, _ *mqtthooks.AuthRequest) mqtthooks.AuthResult {
				log.add("slow")
				<-ctx.Done() // honours ctx
				return mqtthooks.AuthNext()
			})))
		ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
		defer cancel()

		d := c.Snapshot().OnAuthM5(ctx, &mqtthooks.AuthRequest{Step: mqtthooks.AuthStepStart})

		assert.ErrorIs(t, d.Err, mqtthooks.ErrHookTimeout)
		assert.Equal(t, []string{"slow"}, log.get())
	})
}

// A plugin that decides within the deadline is not affected by it.
func TestChainAcceptBeforeDeadline(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := mqtthooks.NewChain(mqtthooks.ChainOptions{})
		require.NoError(t, c.Register("quick", mqtthooks.AuthOnRegisterFunc(
			func(context.Context, *mqtthooks.RegisterRequest) mqtthooks.RegisterResult {
				time.Sleep(4 * time.Second)
				return mqtthooks.Accept()
			})))
		ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
		defer cancel()

		assert.NoError(t, c.Snapshot().AuthOnRegister(ctx, v3Request("c1")).Err)
	})
}

// A context canceled for another reason than its deadline: the decision
// carries context.Canceled, so the caller abandons the CONNECT.
func TestChainCanceledContext(t *testing.T) {
	c := mqtthooks.NewChain(mqtthooks.ChainOptions{})
	ctx, cancel := context.WithCancel(t.Context())
	require.NoError(t, c.Register("P", mqtthooks.AuthOnRegisterFunc(
		func(context.Context, *mqtthooks.RegisterRequest) mqtthooks.RegisterResult {
			cancel() // the client went away while the plugin ran
			return mqtthooks.Accept()
		})))

	d := c.Snapshot().AuthOnRegister(ctx, v3Request("c1"))

	assert.ErrorIs(t, d.Err, context.Canceled)
	assert.NotErrorIs(t, d.Err, mqtthooks.ErrHookTimeout)
	assert.Equal(t, "P", d.Plugin)
}

// Reject(nil) is a rejection (ErrRejected, 5 / 0x87), never an accept (OQ1);
// RejectCode carries its code, reason and server reference.
func TestChainRejectVariants(t *testing.T) {
	c := mqtthooks.NewChain(mqtthooks.ChainOptions{})
	var log callLog
	registerAuth(t, c, "P", &log, mqtthooks.Reject(nil))
	d := c.Snapshot().AuthOnRegister(t.Context(), v3Request("c1"))
	assert.ErrorIs(t, d.Err, mqtthooks.ErrRejected)
	assert.Equal(t, mqtthooks.RefusedNotAuthorized, mqtthooks.ConnackReturnCode(d.Err))

	require.NoError(t, c.Unregister("P"))
	registerAuth(t, c, "P", &log, mqtthooks.RejectCode(mqtthooks.CodeUseAnotherServer, "go", "b:1883"))
	d = c.Snapshot().AuthOnRegisterM5(t.Context(), v3Request("c1"))
	assert.ErrorIs(t, d.Err, mqtthooks.ErrNoPlugin, "an AuthOnRegister plugin is not an AuthOnRegisterM5 plugin")
	d = c.Snapshot().AuthOnRegister(t.Context(), v3Request("c1"))
	var re *mqtthooks.RejectError
	require.ErrorAs(t, d.Err, &re)
	assert.Equal(t, mqtthooks.RejectError{Code: 0x9C, Reason: "go", ServerReference: "b:1883"}, *re)
}

// The OnAuthM5 chain and the owner of an exchange.
func TestChainOnAuthM5Owner(t *testing.T) {
	c := mqtthooks.NewChain(mqtthooks.ChainOptions{})
	var log callLog
	answers := map[string]mqtthooks.AuthResult{
		"skip":  mqtthooks.AuthNext(),
		"owner": mqtthooks.AuthContinue([]byte("s1"), "st"),
		"other": mqtthooks.AuthSuccess(nil, "x"),
	}
	for _, name := range []string{"skip", "owner", "other"} {
		require.NoError(t, c.Register(name, mqtthooks.OnAuthM5Func(
			func(_ context.Context, req *mqtthooks.AuthRequest) mqtthooks.AuthResult {
				log.add(name + ":" + req.Step.String())
				if name == "owner" && req.Step == mqtthooks.AuthStepContinue {
					if req.State == "st" {
						return mqtthooks.AuthSuccess([]byte("sf"), "id")
					}
					return mqtthooks.AuthNext()
				}
				return answers[name]
			})))
	}
	s := c.Snapshot()

	start := s.OnAuthM5(t.Context(), &mqtthooks.AuthRequest{Step: mqtthooks.AuthStepStart})
	require.NoError(t, start.Err)
	assert.Equal(t, "owner", start.Plugin)
	assert.Equal(t, mqtthooks.AuthVerdictContinue, start.Result.Verdict())
	assert.Equal(t, []byte("s1"), start.Result.Data())
	assert.Equal(t, "st", start.Result.State())

	next := s.OnAuthM5Plugin(t.Context(), start.Plugin,
		&mqtthooks.AuthRequest{Step: mqtthooks.AuthStepContinue, State: start.Result.State()})
	require.NoError(t, next.Err)
	assert.Equal(t, mqtthooks.AuthVerdictSuccess, next.Result.Verdict())
	assert.Equal(t, "id", next.Result.Identity())

	nextFromOwner := s.OnAuthM5Plugin(t.Context(), "owner", &mqtthooks.AuthRequest{Step: mqtthooks.AuthStepContinue})
	assert.ErrorIs(t, nextFromOwner.Err, mqtthooks.ErrChainExhausted, "Next from the owner is a rejection")

	assert.ErrorIs(t, s.OnAuthM5Plugin(t.Context(), "gone", &mqtthooks.AuthRequest{}).Err, mqtthooks.ErrNoPlugin)
	assert.Equal(t, []string{"skip:start", "owner:start", "owner:continue", "owner:continue"}, log.get(),
		"'other' is never asked once 'owner' owns the exchange")
}

func TestChainRegisterErrors(t *testing.T) {
	c := mqtthooks.NewChain(mqtthooks.ChainOptions{})
	var log callLog
	registerAuth(t, c, "a", &log, mqtthooks.Accept())

	err := c.Register("", allHooks{&log})
	assert.ErrorIs(t, err, mqtthooks.ErrInvalidPluginName)
	err = c.Register("a", allHooks{&log})
	assert.ErrorIs(t, err, mqtthooks.ErrDuplicatePlugin)
	assert.ErrorContains(t, err, `"a"`)
	err = c.Register("nohooks", struct{ Name string }{"x"})
	assert.ErrorIs(t, err, mqtthooks.ErrNoHooks)
	assert.ErrorContains(t, err, `"nohooks"`)
	assert.ErrorIs(t, c.Register("nil", nil), mqtthooks.ErrInvalidArgument)
	assert.ErrorIs(t, c.Register("nilfunc", mqtthooks.AuthOnRegisterFunc(nil)), mqtthooks.ErrInvalidArgument)
	assert.ErrorIs(t, c.Register("nilptr", (*acceptAll)(nil)), mqtthooks.ErrInvalidArgument)
	assert.ErrorIs(t, c.Unregister("zz"), mqtthooks.ErrUnknownPlugin)

	assert.Equal(t, []string{"a"}, c.Snapshot().Plugins(), "failed calls leave the chain unchanged")
}

// A snapshot is immutable: registering or removing plugins later does not
// change what a call on it runs.
func TestChainSnapshotIsImmutable(t *testing.T) {
	c := mqtthooks.NewChain(mqtthooks.ChainOptions{})
	var log callLog
	registerAuth(t, c, "a", &log, mqtthooks.Next())
	old := c.Snapshot()
	registerAuth(t, c, "b", &log, mqtthooks.Accept())
	require.NoError(t, c.Unregister("a"))

	assert.ErrorIs(t, old.AuthOnRegister(t.Context(), v3Request("c1")).Err, mqtthooks.ErrChainExhausted)
	assert.NoError(t, c.Snapshot().AuthOnRegister(t.Context(), v3Request("c1")).Err)
	assert.Equal(t, []string{"a", "b"}, log.get())
	assert.Equal(t, []string{"a"}, old.Plugins())
	assert.Equal(t, []string{"b"}, c.Snapshot().Plugins())
}

// The chain swapped while thousands of goroutines dispatch: every call runs
// exactly the plugins of the snapshot it took, in its order, and that snapshot
// is one the writer made; never a mix of two.
func TestChainSwapUnderConcurrentDispatch(t *testing.T) {
	const (
		readers = 2000
		calls   = 20
	)
	c := mqtthooks.NewChain(mqtthooks.ChainOptions{})
	type trail struct{ names []string }
	type trailKey struct{}
	plugin := func(name string, r mqtthooks.RegisterResult) mqtthooks.AuthOnRegisterFunc {
		return func(ctx context.Context, _ *mqtthooks.RegisterRequest) mqtthooks.RegisterResult {
			tr := ctx.Value(trailKey{}).(*trail)
			tr.names = append(tr.names, name)
			return r
		}
	}
	// "final" accepts and always runs last; the others answer Next.
	require.NoError(t, c.Register("final", plugin("final", mqtthooks.Accept()), mqtthooks.Priority(1000)))

	var (
		wg       sync.WaitGroup
		readersN sync.WaitGroup
		stop     = make(chan struct{})
		mu       sync.Mutex
		history  = map[*mqtthooks.Snapshot]string{c.Snapshot(): "final"}
		problems []string
	)
	wg.Go(func() {
		rng := rand.New(rand.NewPCG(1, 2))
		for {
			select {
			case <-stop:
				return
			default:
			}
			name := fmt.Sprintf("p%d", rng.IntN(8))
			if c.Unregister(name) != nil {
				if err := c.Register(name, plugin(name, mqtthooks.Next()), mqtthooks.Priority(rng.IntN(5))); err != nil {
					mu.Lock()
					problems = append(problems, err.Error())
					mu.Unlock()
				}
			}
			s := c.Snapshot()
			mu.Lock()
			history[s] = strings.Join(s.Plugins(), ",")
			mu.Unlock()
		}
	})
	type observation struct {
		snap  *mqtthooks.Snapshot
		trail string
	}
	seen := make([][]observation, readers)
	for i := range readers {
		readersN.Add(1)
		wg.Go(func() {
			defer readersN.Done()
			for range calls {
				tr := new(trail)
				ctx := context.WithValue(context.Background(), trailKey{}, tr)
				snap := c.Snapshot()
				d := snap.AuthOnRegister(ctx, v3Request("c1"))
				if d.Err != nil || d.Plugin != "final" {
					tr.names = append(tr.names, fmt.Sprintf("bad decision %v", d))
				}
				seen[i] = append(seen[i], observation{snap, strings.Join(tr.names, ",")})
			}
		})
	}
	readersN.Wait()
	close(stop)
	wg.Wait()

	require.Empty(t, problems)
	snapshots := map[*mqtthooks.Snapshot]bool{}
	for _, obs := range seen {
		for _, o := range obs {
			snapshots[o.snap] = true
			want, made := history[o.snap]
			if !assert.True(t, made, "a call used a snapshot the writer never made") {
				return
			}
			if !assert.Equal(t, want, o.trail, "a call ran other plugins than its snapshot's") {
				return
			}
		}
	}
	require.Greater(t, len(history), 50, "the writer produced many snapshots")
	t.Logf("%d snapshots made, calls used %d of them", len(history), len(snapshots))
}

// The zero Chain is usable and logs plugin panics to slog.Default.
func TestZeroChain(t *testing.T) {
	buf := new(logBuffer)
	defer slog.SetDefault(slog.Default())
	slog.SetDefault(slog.New(slog.NewTextHandler(buf, nil)))

	var c mqtthooks.Chain
	assert.ErrorIs(t, c.Snapshot().AuthOnRegister(t.Context(), v3Request("c1")).Err, mqtthooks.ErrNoPlugin)
	require.NoError(t, c.Register("P", mqtthooks.OnClientGoneFunc(func(context.Context, *mqtthooks.SessionEvent) {
		panic("logged to slog.Default")
	})))
	assert.NotPanics(t, func() { c.Snapshot().OnClientGone(t.Context(), &mqtthooks.SessionEvent{}) })
	assert.Contains(t, buf.String(), "logged to slog.Default")
}

// A nil context is a caller's error, not a crash; nil options are skipped.
func TestChainNilArguments(t *testing.T) {
	c := mqtthooks.NewChain(mqtthooks.ChainOptions{})
	var log callLog
	registerAuth(t, c, "P", &log, mqtthooks.Accept(), nil)
	require.NoError(t, c.Register("A", mqtthooks.OnAuthM5Func(func(context.Context, *mqtthooks.AuthRequest) mqtthooks.AuthResult {
		return mqtthooks.AuthSuccess(nil, nil)
	})))
	var nilCtx context.Context

	assert.ErrorIs(t, c.Snapshot().AuthOnRegister(nilCtx, v3Request("c1")).Err, mqtthooks.ErrInvalidArgument)
	assert.ErrorIs(t, c.Snapshot().OnAuthM5(nilCtx, &mqtthooks.AuthRequest{}).Err, mqtthooks.ErrInvalidArgument)
	assert.NotPanics(t, func() { c.Snapshot().OnClientGone(nilCtx, &mqtthooks.SessionEvent{}) })
	assert.Empty(t, log.get())
}

// A plugin's Reject with one of the CONNECT sentinels a plugin may use gets
// that sentinel's code; with one of the core's own failures it is "another
// Reject" (5 / 0x87).
func TestDecisionReplyError(t *testing.T) {
	for _, tc := range []struct {
		name string
		r    mqtthooks.RegisterResult
		v3   mqtthooks.ReturnCode
		v5   mqtthooks.ReasonCode
	}{
		{"accept", mqtthooks.Accept(), 0, 0x00},
		{"credentials", mqtthooks.Reject(fmt.Errorf("ldap: %w", mqtthooks.ErrInvalidCredentials)), 4, 0x86},
		{"session limit", mqtthooks.Reject(mqtthooks.ErrSessionLimit), 3, 0x97},
		{"hook timeout", mqtthooks.Reject(mqtthooks.ErrHookTimeout), 5, 0x87},
		{"protocol version", mqtthooks.Reject(mqtthooks.ErrProtocolVersion), 1, 0x84},
		{"registration", mqtthooks.Reject(mqtthooks.ErrRegistration), 5, 0x87},
		{"code", mqtthooks.RejectCode(mqtthooks.CodeServerBusy, "", ""), 3, 0x89},
		{"zero result", mqtthooks.RegisterResult{}, 3, 0x88},
	} {
		c := mqtthooks.NewChain(mqtthooks.ChainOptions{})
		var log callLog
		registerAuth(t, c, "P", &log, tc.r)
		d := c.Snapshot().AuthOnRegister(t.Context(), v3Request("c1"))
		assert.Equal(t, tc.v3, mqtthooks.ConnackReturnCode(d.ReplyError()), tc.name)
		code, _ := mqtthooks.ConnackReasonCode(d.ReplyError())
		assert.Equal(t, tc.v5, code, tc.name)
		if tc.r.Err() != nil {
			assert.ErrorIs(t, d.Err, tc.r.Err(), "%s: Err keeps the plugin's error for logs", tc.name)
		}
	}
}

// N6 (a, d): an accept after the deadline is a timeout for every conditional
// hook.
func TestChainLateAnswersEveryConditionalHook(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := mqtthooks.NewChain(mqtthooks.ChainOptions{})
		late := func() { time.Sleep(6 * time.Second) }
		require.NoError(t, c.Register("m5", mqtthooks.AuthOnRegisterM5Func(func(context.Context, *mqtthooks.RegisterRequest) mqtthooks.RegisterResult {
			late()
			return mqtthooks.Accept()
		})))
		require.NoError(t, c.Register("auth", mqtthooks.OnAuthM5Func(func(context.Context, *mqtthooks.AuthRequest) mqtthooks.AuthResult {
			late()
			return mqtthooks.AuthSuccess([]byte("sf"), "id")
		})))
		s := c.Snapshot()
		for name, run := range map[string]func(context.Context) error{
			"AuthOnRegisterM5": func(ctx context.Context) error { return s.AuthOnRegisterM5(ctx, v3Request("c1")).Err },
			"OnAuthM5":         func(ctx context.Context) error { return s.OnAuthM5(ctx, &mqtthooks.AuthRequest{}).Err },
			"OnAuthM5Plugin": func(ctx context.Context) error {
				return s.OnAuthM5Plugin(ctx, "auth", &mqtthooks.AuthRequest{}).Err
			},
		} {
			ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
			assert.ErrorIs(t, run(ctx), mqtthooks.ErrHookTimeout, name)
			cancel()
		}
	})
}

// A panic after the context was canceled: the CONNECT is abandoned (no
// CONNACK), not answered with 0x88.
func TestChainPanicAfterCancel(t *testing.T) {
	c, _ := newLoggedChain()
	ctx, cancel := context.WithCancel(t.Context())
	require.NoError(t, c.Register("P", mqtthooks.AuthOnRegisterFunc(func(context.Context, *mqtthooks.RegisterRequest) mqtthooks.RegisterResult {
		cancel()
		panic("after cancel")
	})))

	d := c.Snapshot().AuthOnRegister(ctx, v3Request("c1"))

	assert.ErrorIs(t, d.Err, context.Canceled)
	assert.Equal(t, "P", d.Plugin)
}

// OQ2: the subset filters AuthOnRegisterM5 and OnAuthM5 too, including the
// owner lookup of an exchange.
func TestChainSubsetFiltersEveryConditionalHook(t *testing.T) {
	c := mqtthooks.NewChain(mqtthooks.ChainOptions{})
	var log callLog
	require.NoError(t, c.Register("in", allHooks{&log}))
	require.NoError(t, c.Register("out", allHooks{&log}))
	sub, err := c.Subset("in")
	require.NoError(t, err)
	view := c.Snapshot().Restrict(sub)

	assert.Equal(t, "in", view.AuthOnRegisterM5(t.Context(), v3Request("c1")).Plugin)
	assert.Equal(t, "in", view.OnAuthM5(t.Context(), &mqtthooks.AuthRequest{}).Plugin)
	assert.ErrorIs(t, view.OnAuthM5Plugin(t.Context(), "out", &mqtthooks.AuthRequest{}).Err, mqtthooks.ErrNoPlugin)
	assert.Equal(t, []string{"in", "out"}, view.Plugins(), "notifications still reach every plugin")

	other, err := c.Subset("out")
	require.NoError(t, err)
	assert.Equal(t, "out", view.Restrict(other).OnAuthM5(t.Context(), &mqtthooks.AuthRequest{}).Plugin,
		"restricting a restricted snapshot replaces its subset")
	assert.Same(t, c.Snapshot(), view.Restrict(nil))
}

// Dispatch allocates nothing: the claim fails the suite, not only a benchmark.
func TestChainDispatchAllocatesNothing(t *testing.T) {
	c := mqtthooks.NewChain(mqtthooks.ChainOptions{})
	for _, r := range []mqtthooks.RegisterResult{mqtthooks.Next(), mqtthooks.Next(), mqtthooks.Accept()} {
		require.NoError(t, c.Register(fmt.Sprint(len(c.Snapshot().Plugins())), mqtthooks.AuthOnRegisterFunc(
			func(context.Context, *mqtthooks.RegisterRequest) mqtthooks.RegisterResult { return r })))
	}
	require.NoError(t, c.Register("gone", mqtthooks.OnClientGoneFunc(func(context.Context, *mqtthooks.SessionEvent) {})))
	sub, err := c.Subset("2", "0")
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(t.Context(), time.Hour)
	defer cancel()
	req := v3Request("c1")
	ev := &mqtthooks.SessionEvent{}
	c.Snapshot().Restrict(sub) // fill the subset's cache

	allocs := testing.AllocsPerRun(1000, func() {
		s := c.Snapshot()
		_ = s.AuthOnRegister(ctx, req)
		_ = s.Restrict(sub).AuthOnRegister(ctx, req)
		s.OnClientGone(ctx, ev)
	})
	assert.Zero(t, allocs)
}

func TestSnapshotPluginsIsACopy(t *testing.T) {
	c := mqtthooks.NewChain(mqtthooks.ChainOptions{})
	var log callLog
	registerAuth(t, c, "a", &log, mqtthooks.Next())
	registerAuth(t, c, "b", &log, mqtthooks.Next())
	names := c.Snapshot().Plugins()
	names[0] = "changed"
	assert.True(t, slices.Equal([]string{"a", "b"}, c.Snapshot().Plugins()))
}

func BenchmarkNotify(b *testing.B) {
	b.Run("3-plugins", func(b *testing.B) {
		c := mqtthooks.NewChain(mqtthooks.ChainOptions{})
		var n int
		for _, name := range []string{"a", "b", "c"} {
			if err := c.Register(name, mqtthooks.OnClientGoneFunc(func(context.Context, *mqtthooks.SessionEvent) { n++ })); err != nil {
				b.Fatal(err)
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Hour)
		defer cancel()
		ev := &mqtthooks.SessionEvent{SubscriberID: mqtthooks.SubscriberID{ClientID: "c1"}, Reason: mqtthooks.ReasonClientDisconnect}
		b.ReportAllocs()
		loops := 0
		for b.Loop() {
			c.Snapshot().OnClientGone(ctx, ev)
			loops++
		}
		if n != 3*loops {
			b.Fatalf("called %d times, want %d", n, 3*loops)
		}
	})
}

func benchChain(b *testing.B, results ...mqtthooks.RegisterResult) *mqtthooks.Chain {
	c := mqtthooks.NewChain(mqtthooks.ChainOptions{})
	for i, r := range results {
		r := r
		err := c.Register(string(rune('a'+i)), mqtthooks.AuthOnRegisterBothFunc(
			func(context.Context, *mqtthooks.RegisterRequest) mqtthooks.RegisterResult { return r }))
		if err != nil {
			b.Fatal(err)
		}
	}
	return c
}

func BenchmarkAuthOnRegisterChain(b *testing.B) {
	cases := []struct {
		name    string
		results []mqtthooks.RegisterResult
		wantErr bool
	}{
		{"ok", []mqtthooks.RegisterResult{mqtthooks.Accept()}, false},
		{"next-next-ok", []mqtthooks.RegisterResult{mqtthooks.Next(), mqtthooks.Next(), mqtthooks.Accept()}, false},
		{"exhausted", []mqtthooks.RegisterResult{mqtthooks.Next(), mqtthooks.Next(), mqtthooks.Next()}, true},
	}
	for _, tc := range cases {
		b.Run(tc.name, func(b *testing.B) {
			c := benchChain(b, tc.results...)
			ctx, cancel := context.WithTimeout(context.Background(), time.Hour)
			defer cancel()
			req := &mqtthooks.RegisterRequest{SubscriberID: mqtthooks.SubscriberID{ClientID: "c1"},
				Connect: &mqtthooks.ConnectRequest{ProtocolVersion: mqtthooks.MQTT311, ClientID: "c1"}}
			b.ReportAllocs()
			for b.Loop() {
				d := c.Snapshot().AuthOnRegister(ctx, req)
				if (d.Err != nil) != tc.wantErr {
					b.Fatal(d.Err)
				}
			}
		})
	}
}
