package mqtthooks

import (
	"context"
	"fmt"
	"log/slog"
	"runtime/debug"
	"sync/atomic"
)

// Snapshot is an immutable view of a Chain's plugins, and the dispatcher of
// their hooks. Its methods take no lock and allocate nothing (except when a
// plugin panics), and are safe for concurrent use.
//
// Conditional hooks (AuthOnRegister, AuthOnRegisterM5, OnAuthM5) ask the
// plugins that implement them in order: the first accept or reject decides and
// later plugins are not called; Next asks the next plugin. The chain fails
// closed: every plugin answering Next (ErrChainExhausted), no plugin
// implementing the hook (ErrNoPlugin), a zero result (ErrInvalidResult) and a
// panic (ErrPluginPanic) all reject. The chain creates no context and does not
// interrupt a plugin; when it returns and ctx is done, it rejects with
// ErrHookTimeout (deadline) or ctx.Err() (canceled), whatever the plugins said.
//
// Notification hooks call every plugin that implements them, in order. A panic
// is recovered and logged, and the later plugins still run.
type Snapshot struct {
	logger  *slog.Logger
	plugins []*plugin
	byName  map[string]*plugin // the plugins the conditional hooks may ask
	hooks   [numHooks][]*plugin
	base    *Snapshot                // the unrestricted snapshot; s itself when not restricted
	panics  *[numHooks]atomic.Uint64 // the chain's count of panics
}

// Plugins returns the names of all the plugins in the order they run, for a
// restricted snapshot too (its notifications reach them all).
func (s *Snapshot) Plugins() []string {
	names := make([]string, len(s.plugins))
	for i, p := range s.plugins {
		names[i] = p.name
	}
	return names
}

// Restrict returns the snapshot whose conditional hooks (AuthOnRegister,
// AuthOnRegisterM5, OnAuthM5, OnAuthM5Plugin) ask only the plugins of sub, in
// sub's order; its notification hooks are s's. Names of sub not in s are
// skipped. Restricting a restricted snapshot replaces its subset. A nil sub
// returns s. The result is cached in sub, so restricting allocates only when
// the chain changed.
func (s *Snapshot) Restrict(sub *Subset) *Snapshot {
	base := s.base
	if sub == nil {
		return base
	}
	if r := sub.view.Load(); r != nil && r.base == base {
		return r.view
	}
	v := &Snapshot{logger: base.logger, plugins: base.plugins, byName: make(map[string]*plugin, len(sub.names)),
		hooks: base.hooks, base: base, panics: base.panics}
	for h := range numHooks {
		if h.conditional() {
			v.hooks[h] = nil
		}
	}
	for _, name := range sub.names {
		p := base.byName[name]
		if p == nil {
			continue
		}
		v.byName[name] = p
		for h := range numHooks {
			if h.conditional() && p.implements(h) {
				v.hooks[h] = append(v.hooks[h], p)
			}
		}
	}
	sub.view.Store(&restriction{base: base, view: v})
	return v
}

// AuthOnRegister runs the AuthOnRegister chain for a v3 CONNECT.
func (s *Snapshot) AuthOnRegister(ctx context.Context, req *RegisterRequest) Decision[RegisterResult] {
	return s.decideRegister(ctx, hookAuthOnRegister, req)
}

// AuthOnRegisterM5 runs the AuthOnRegisterM5 chain for a v5 CONNECT.
func (s *Snapshot) AuthOnRegisterM5(ctx context.Context, req *RegisterRequest) Decision[RegisterResult] {
	return s.decideRegister(ctx, hookAuthOnRegisterM5, req)
}

// OnAuthM5 runs the OnAuthM5 chain for the first step of an exchange. The
// plugin that answers AuthContinue owns the exchange; send it the later steps
// with OnAuthM5Plugin.
func (s *Snapshot) OnAuthM5(ctx context.Context, req *AuthRequest) Decision[AuthResult] {
	return s.decideAuth(ctx, s.hooks[hookOnAuthM5], req)
}

// OnAuthM5Plugin asks only the named plugin, which owns a running exchange. Its
// Next counts as a rejection: ErrChainExhausted. A name that is not in s, or
// whose plugin does not implement OnAuthM5, gives ErrNoPlugin.
func (s *Snapshot) OnAuthM5Plugin(ctx context.Context, name string, req *AuthRequest) Decision[AuthResult] {
	var one [1]*plugin
	list := one[:0]
	if p := s.byName[name]; p != nil && p.onAuthM5 != nil {
		list = append(list, p)
	}
	return s.decideAuth(ctx, list, req)
}

// decideRegister runs AuthOnRegister or AuthOnRegisterM5 (see Snapshot). It is
// the hot path of every CONNECT: one deferred recover covers the whole loop,
// since a panic ends the chain anyway.
func (s *Snapshot) decideRegister(ctx context.Context, h hookID, req *RegisterRequest) (d Decision[RegisterResult]) {
	if ctx == nil {
		return Decision[RegisterResult]{Err: errNilContext}
	}
	list := s.hooks[h]
	var running *plugin
	defer func() {
		if running != nil {
			d = Decision[RegisterResult]{Plugin: running.name, Err: s.recovered(ctx, running, h, recover())}
			d.Err = expired(ctx, d.Err)
		}
	}()
	d.Err = emptyChainErr(list)
	for _, p := range list {
		running = p
		var r RegisterResult
		if h == hookAuthOnRegisterM5 {
			r = p.authOnRegisterM5.AuthOnRegisterM5(ctx, req)
		} else {
			r = p.authOnRegister.AuthOnRegister(ctx, req)
		}
		switch r.verdict {
		case VerdictNext:
			d.passed++
			continue
		case VerdictAccept, VerdictReject:
			d.Result, d.Err = r, r.err
		default:
			d.Err = ErrInvalidResult
		}
		d.Plugin = p.name
		break
	}
	running = nil
	if err := expired(ctx, nil); err != nil {
		d = Decision[RegisterResult]{Plugin: d.Plugin, Err: err, passed: d.passed}
	}
	return d
}

// decideAuth runs OnAuthM5 over list, like decideRegister.
func (s *Snapshot) decideAuth(ctx context.Context, list []*plugin, req *AuthRequest) (d Decision[AuthResult]) {
	if ctx == nil {
		return Decision[AuthResult]{Err: errNilContext}
	}
	var running *plugin
	defer func() {
		if running != nil {
			d = Decision[AuthResult]{Plugin: running.name, Err: s.recovered(ctx, running, hookOnAuthM5, recover())}
			d.Err = expired(ctx, d.Err)
		}
	}()
	d.Err = emptyChainErr(list)
	for _, p := range list {
		running = p
		r := p.onAuthM5.OnAuthM5(ctx, req)
		switch r.verdict {
		case AuthVerdictNext:
			d.passed++
			continue
		case AuthVerdictSuccess, AuthVerdictContinue, AuthVerdictReject:
			d.Result, d.Err = r, r.err
		default:
			d.Err = ErrInvalidResult
		}
		d.Plugin = p.name
		break
	}
	running = nil
	if err := expired(ctx, nil); err != nil {
		d = Decision[AuthResult]{Plugin: d.Plugin, Err: err, passed: d.passed}
	}
	return d
}

// emptyChainErr is the error of a chain that nobody decides: ErrNoPlugin when
// no plugin implements the hook, ErrChainExhausted when all answer Next.
func emptyChainErr(list []*plugin) error {
	if len(list) == 0 {
		return ErrNoPlugin
	}
	return ErrChainExhausted
}

// expired returns the error of a chain that returns now: ErrHookTimeout when
// ctx reports its deadline exceeded, ctx.Err() when ctx was canceled, and
// otherwise err.
//
// The context decides when its deadline has passed, as it does for every
// other Go API: a plugin that returns in the instant between the deadline and
// the firing of the context's timer is in time. Reading the clock as well
// would close that window at a cost (25 ns on the reference machine) larger
// than a whole dispatch.
func expired(ctx context.Context, err error) error {
	if cerr := ctx.Err(); cerr != nil {
		if cerr == context.DeadlineExceeded {
			return ErrHookTimeout
		}
		return cerr
	}
	return err
}

var errNilContext = fmt.Errorf("%w: nil context", ErrInvalidArgument)

// recovered logs what a deferred recover returned after a plugin did not
// return normally: a panic value, or nil for runtime.Goexit, which cannot be
// stopped and goes on unwinding the caller's goroutine.
func (s *Snapshot) recovered(ctx context.Context, p *plugin, h hookID, v any) error {
	if s.panics != nil {
		s.panics[h].Add(1)
	}
	if v == nil {
		s.logger.WarnContext(ctx, "mqtthooks: plugin called runtime.Goexit", "plugin", p.name, "hook", h.String())
		return ErrPluginPanic
	}
	e := &PanicError{Plugin: p.name, Hook: h.String(), Value: v, Stack: debug.Stack()}
	s.logger.ErrorContext(ctx, "mqtthooks: plugin panicked", "plugin", p.name, "hook", h.String(),
		"panic", v, "stack", string(e.Stack))
	return e
}

// notify calls notification hook h with ev on the plugins of the hook from
// index from on. A panicking plugin is logged and skipped: the deferred
// function carries on with the next one. After runtime.Goexit it carries on
// too, so every plugin hears of the event while the goroutine unwinds.
func (s *Snapshot) notify(ctx context.Context, h hookID, ev any, from int) {
	if ctx == nil {
		ctx = context.Background() // a notification cannot fail; the plugins still hear of it
	}
	list := s.hooks[h]
	i := from
	defer func() {
		if i < len(list) {
			s.recovered(ctx, list[i], h, recover())
			s.notify(ctx, h, ev, i+1)
		}
	}()
	for ; i < len(list); i++ {
		p := list[i]
		switch h {
		case hookOnRegister:
			p.onRegister.OnRegister(ctx, ev.(*RegisterEvent))
		case hookOnRegisterM5:
			p.onRegisterM5.OnRegisterM5(ctx, ev.(*RegisterEvent))
		case hookOnClientWakeup:
			p.onClientWakeup.OnClientWakeup(ctx, ev.(*SessionEvent))
		case hookOnClientOffline:
			p.onClientOffline.OnClientOffline(ctx, ev.(*SessionEvent))
		case hookOnClientGone:
			p.onClientGone.OnClientGone(ctx, ev.(*SessionEvent))
		case hookOnSessionExpired:
			p.onSessionExpired.OnSessionExpired(ctx, ev.(*SessionEvent))
		case hookOnMessageDrop:
			p.onMessageDrop.OnMessageDrop(ctx, ev.(*DropEvent))
		}
	}
}

// OnRegister tells every OnRegister plugin that a v3 client registered.
func (s *Snapshot) OnRegister(ctx context.Context, ev *RegisterEvent) {
	s.notify(ctx, hookOnRegister, ev, 0)
}

// OnRegisterM5 tells every OnRegisterM5 plugin that a v5 client registered.
func (s *Snapshot) OnRegisterM5(ctx context.Context, ev *RegisterEvent) {
	s.notify(ctx, hookOnRegisterM5, ev, 0)
}

// OnClientWakeup tells every OnClientWakeup plugin that a connection attached.
func (s *Snapshot) OnClientWakeup(ctx context.Context, ev *SessionEvent) {
	s.notify(ctx, hookOnClientWakeup, ev, 0)
}

// OnClientOffline tells every OnClientOffline plugin that a persistent session
// went offline.
func (s *Snapshot) OnClientOffline(ctx context.Context, ev *SessionEvent) {
	s.notify(ctx, hookOnClientOffline, ev, 0)
}

// OnClientGone tells every OnClientGone plugin that a session ended.
func (s *Snapshot) OnClientGone(ctx context.Context, ev *SessionEvent) {
	s.notify(ctx, hookOnClientGone, ev, 0)
}

// OnSessionExpired tells every OnSessionExpired plugin that a session expired.
func (s *Snapshot) OnSessionExpired(ctx context.Context, ev *SessionEvent) {
	s.notify(ctx, hookOnSessionExpired, ev, 0)
}

// OnMessageDrop tells every OnMessageDrop plugin that a message was dropped.
func (s *Snapshot) OnMessageDrop(ctx context.Context, ev *DropEvent) {
	s.notify(ctx, hookOnMessageDrop, ev, 0)
}
