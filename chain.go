package mqtthooks

import (
	"cmp"
	"errors"
	"fmt"
	"log/slog"
	"reflect"
	"slices"
	"sync"
	"sync/atomic"
)

// Errors of Chain.Register, Chain.Unregister and Chain.Subset.
var (
	// ErrNoHooks: the plugin implements none of the hook interfaces.
	ErrNoHooks = errors.New("mqtthooks: plugin implements no hook")
	// ErrDuplicatePlugin: a plugin with that name is already registered.
	ErrDuplicatePlugin = errors.New("mqtthooks: plugin name already registered")
	// ErrUnknownPlugin: no plugin with that name is registered.
	ErrUnknownPlugin = errors.New("mqtthooks: no plugin with that name")
	// ErrInvalidPluginName: the name is empty, or a subset names a plugin twice
	// or none at all.
	ErrInvalidPluginName = errors.New("mqtthooks: invalid plugin name")
)

// Chain is an ordered set of named plugins and the dispatcher of their hooks.
//
// Plugins registered with a Priority run first, lowest priority first; ties and
// plugins without a priority (which run after all prioritised ones) keep their
// registration order. Register and Unregister may be called at any time,
// including while hooks run: they build a new immutable Snapshot and swap it in
// atomically, so a call in flight finishes with the plugins it started with.
//
// The zero Chain is ready to use and logs to slog.Default(); NewChain sets
// options. Its methods are safe for concurrent use. A Chain must not be copied
// after first use.
type Chain struct {
	logger *slog.Logger

	mu      sync.Mutex // serialises writers; readers only load snap
	seq     uint64     // registration counter, the tie-breaker of the order
	plugins []*plugin  // in call order, owned by mu
	snap    atomic.Pointer[Snapshot]
	panics  [numHooks]atomic.Uint64 // plugins that panicked, by hook, over every snapshot
}

// ChainOptions configure a Chain. The zero value is ready to use.
type ChainOptions struct {
	// Logger receives the panics of plugins. Nil means slog.Default().
	Logger *slog.Logger
}

// NewChain returns a Chain without plugins. Its hooks reject with ErrNoPlugin
// until a plugin implementing them is registered.
func NewChain(opts ChainOptions) *Chain {
	c := &Chain{logger: opts.Logger}
	c.snap.Store(c.build(nil))
	return c
}

// PluginOption configures the registration of one plugin.
type PluginOption interface{ apply(*plugin) }

type priorityOption int

func (p priorityOption) apply(pl *plugin) { pl.priority, pl.hasPriority = int(p), true }

// Priority places a plugin among the prioritised ones, which run before the
// others, in ascending priority.
func Priority(p int) PluginOption { return priorityOption(p) }

// Register adds the plugin p under name. The hooks p implements are found now,
// by type assertion, and never again: a plugin cannot gain or lose hooks later.
// Register fails with ErrInvalidPluginName for an empty name,
// ErrDuplicatePlugin for a name in use and ErrNoHooks when p implements no hook;
// the chain is then unchanged.
//
// A plugin registered while sessions exist may see OnClientOffline or
// OnClientGone for sessions whose OnClientWakeup it never saw.
//
// Register logs a warning for a plugin that implements one hook of an MQTT
// 3 / MQTT 5 pair (AuthOnRegister and AuthOnRegisterM5, OnRegister and
// OnRegisterM5) but not the other, since clients of the other version never
// reach it: with AllowAnonymous, anonymous clients of that version are then
// accepted without it. AuthOnRegisterBothFunc and OnRegisterBothFunc write
// both at once. A plugin that runs enhanced authentication (OnAuthM5) is MQTT
// 5 only by nature and is not warned about.
func (c *Chain) Register(name string, p any, opts ...PluginOption) error {
	if name == "" {
		return fmt.Errorf("%w: the name is empty", ErrInvalidPluginName)
	}
	if isNil(p) {
		return fmt.Errorf("%w: plugin %q is a nil %T", ErrInvalidArgument, name, p)
	}
	pl := discover(name, p)
	if pl == nil {
		return fmt.Errorf("%w: %q (%T)", ErrNoHooks, name, p)
	}
	for _, o := range opts {
		if o != nil {
			o.apply(pl)
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if slices.ContainsFunc(c.plugins, func(q *plugin) bool { return q.name == name }) {
		return fmt.Errorf("%w: %q", ErrDuplicatePlugin, name)
	}
	if half := pl.halfPair(); half != "" {
		c.log().Warn("mqtthooks: plugin handles one protocol version only", "plugin", name, "problem", half)
	}
	c.seq++
	pl.seq = c.seq
	plugins := append(slices.Clip(c.plugins), pl)
	slices.SortStableFunc(plugins, comparePlugins)
	c.plugins = plugins
	c.snap.Store(c.build(plugins))
	return nil
}

// Unregister removes the plugin registered under name, or fails with
// ErrUnknownPlugin. Calls already running keep using it until they return.
func (c *Chain) Unregister(name string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	i := slices.IndexFunc(c.plugins, func(q *plugin) bool { return q.name == name })
	if i < 0 {
		return fmt.Errorf("%w: %q", ErrUnknownPlugin, name)
	}
	c.plugins = slices.Delete(slices.Clone(c.plugins), i, i+1)
	c.snap.Store(c.build(c.plugins))
	return nil
}

// log returns the chain's logger.
func (c *Chain) log() *slog.Logger {
	if c.logger == nil {
		return slog.Default()
	}
	return c.logger
}

// Snapshot returns the plugins registered now. It never returns nil. A caller
// that makes several calls that belong together, such as the auth steps of one
// CONNECT, takes one Snapshot and makes them all on it.
func (c *Chain) Snapshot() *Snapshot {
	if s := c.snap.Load(); s != nil {
		return s
	}
	c.snap.CompareAndSwap(nil, c.build(nil)) // a zero Chain's first use
	return c.snap.Load()
}

// Subset returns a selection of plugins, by name and in the given order, for
// the conditional hooks of a listener (see Snapshot.Restrict). Every name must
// be registered now, and none may repeat.
func (c *Chain) Subset(names ...string) (*Subset, error) {
	if len(names) == 0 {
		return nil, fmt.Errorf("%w: a subset needs at least one plugin", ErrInvalidPluginName)
	}
	snap := c.Snapshot()
	for i, n := range names {
		if slices.Contains(names[:i], n) {
			return nil, fmt.Errorf("%w: %q appears twice in the subset", ErrInvalidPluginName, n)
		}
		if _, ok := snap.byName[n]; !ok {
			return nil, fmt.Errorf("%w: %q", ErrUnknownPlugin, n)
		}
	}
	return &Subset{names: slices.Clone(names)}, nil
}

func comparePlugins(a, b *plugin) int {
	if a.hasPriority != b.hasPriority {
		if a.hasPriority {
			return -1
		}
		return 1
	}
	if a.hasPriority {
		if c := cmp.Compare(a.priority, b.priority); c != 0 {
			return c
		}
	}
	return cmp.Compare(a.seq, b.seq)
}

func (c *Chain) build(plugins []*plugin) *Snapshot {
	s := &Snapshot{logger: c.log(), plugins: plugins, byName: make(map[string]*plugin, len(plugins)), panics: &c.panics}
	s.base = s
	for _, p := range plugins {
		s.byName[p.name] = p
		for h := range numHooks {
			if p.implements(h) {
				s.hooks[h] = append(s.hooks[h], p)
			}
		}
	}
	return s
}

// Subset is an ordered selection of plugins for the conditional hooks of a
// listener. Create it with Chain.Subset; apply it with Snapshot.Restrict.
// A plugin of the subset that is later unregistered is skipped.
type Subset struct {
	names []string
	// view caches the restriction of the latest snapshot, so that restricting
	// allocates only when the chain changed.
	view atomic.Pointer[restriction]
}

type restriction struct{ base, view *Snapshot }

// Names returns the plugins of the subset in their order.
func (sub *Subset) Names() []string { return slices.Clone(sub.names) }

// isNil reports whether p is nil or a nil pointer, func, map, slice, channel
// or interface: a value whose hooks would panic on every call.
func isNil(p any) bool {
	if p == nil {
		return true
	}
	switch v := reflect.ValueOf(p); v.Kind() {
	case reflect.Pointer, reflect.Func, reflect.Map, reflect.Slice, reflect.Chan, reflect.Interface:
		return v.IsNil()
	}
	return false
}

// Decision is the outcome of a conditional hook. Err is nil exactly when the
// chain accepted (for OnAuthM5: answered success or continue), and then Result
// is the deciding plugin's answer. When a plugin rejected, Result is its answer
// and Err its error (for RejectCode and AuthReject a *RejectError). In every
// other case Result is the zero value and Err one of ErrChainExhausted,
// ErrNoPlugin, ErrInvalidResult, ErrHookTimeout, a *PanicError (ErrPluginPanic)
// or the context's error when it was canceled.
type Decision[R RegisterResult | AuthResult] struct {
	// Result is the answer of the plugin that decided, or the zero value.
	Result R
	// Plugin is the name of the plugin whose answer ended the chain, or ""
	// when no plugin did (ErrNoPlugin, ErrChainExhausted).
	Plugin string
	// Err is nil when the chain accepted, and says why it did not otherwise.
	Err error

	passed uint32 // the plugins that answered Next, for the Core's counters
}

// ReplyError returns the error that decides the reply code of d, for
// ConnackReturnCode and ConnackReasonCode. It is d.Err, except for a plugin's
// rejection: there a *RejectError, or one of the sentinels a plugin may
// reject with (see Reject), chooses the code, and any other error is
// ErrRejected (v3 5, v5 0x87). A plugin cannot pose as a failure of the core
// by rejecting with one of the core's own errors, such as ErrPluginPanic.
func (d Decision[R]) ReplyError() error {
	if d.Err == nil || !d.pluginRejected() {
		return d.Err
	}
	for _, e := range pluginRejections {
		if errors.Is(d.Err, e) {
			return e
		}
	}
	var re *RejectError
	if errors.As(d.Err, &re) {
		return re
	}
	return ErrRejected
}

// pluginRejections are the errors whose codes a plugin may reject with.
var pluginRejections = [...]error{ErrInvalidCredentials, ErrClientIDRejected, ErrProtocolVersion,
	ErrSessionLimit, ErrWillQoS, ErrWillRetain}

func (d Decision[R]) pluginRejected() bool {
	switch r := any(d.Result).(type) {
	case RegisterResult:
		return r.verdict == VerdictReject
	case AuthResult:
		return r.verdict == AuthVerdictReject
	}
	return false
}

// PanicError is the error of a Decision whose plugin panicked. It matches
// ErrPluginPanic with errors.Is.
type PanicError struct {
	// Plugin and Hook name the plugin that panicked and the hook it was in.
	Plugin string
	Hook   string
	// Value is what the plugin passed to panic; Stack the stack at the time.
	Value any
	Stack []byte
}

func (e *PanicError) Error() string {
	return fmt.Sprintf("mqtthooks: plugin %q panicked in %s: %v", e.Plugin, e.Hook, e.Value)
}

// Is reports whether target is ErrPluginPanic.
func (e *PanicError) Is(target error) bool { return target == ErrPluginPanic }
