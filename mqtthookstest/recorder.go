// Package mqtthookstest provides test doubles for mqtthooks, in the spirit of
// net/http/httptest: a Recorder plugin that records every hook call in order,
// and fake connections and clients that drive a Core's step API without a
// network. With them, users unit-test their plugins and brokers.
package mqtthookstest

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/mqtthooks/mqtthooks"
)

// Call is one recorded call: a hook, a Router call or a published Will.
type Call struct {
	// Hook is the hook's name ("AuthOnRegister", "OnClientWakeup", …), or
	// "Add", "Remove", "RemoveAll", "Moved" for the Router and "PublishWill".
	Hook string
	ID   mqtthooks.SubscriberID
	// Event is the SessionEvent of a lifecycle hook (for OnRegister and
	// OnRegisterM5, the embedded one).
	Event mqtthooks.SessionEvent
	// SessionPresent and Connack are OnRegister's and OnRegisterM5's.
	SessionPresent bool
	Connack        *mqtthooks.ConnackProperties
	// Register is a copy of an AuthOnRegister or AuthOnRegisterM5 request;
	// Auth of an OnAuthM5 request.
	Register *mqtthooks.RegisterRequest
	Auth     *mqtthooks.AuthRequest
	// Will is the published Will; Subscription the Router's Add; Filter its
	// Remove; Generation the session life a Router call names.
	Will         *mqtthooks.Will
	Subscription mqtthooks.Subscription
	Filter       string
	Generation   uint64
	// Drop is the DropEvent of OnMessageDrop.
	Drop *mqtthooks.DropEvent
}

// Recorder is a plugin that implements every hook and records each call, in
// order. Its conditional hooks answer with the funcs below; where a func is
// nil they answer Next, so that the zero Recorder sits in a chain beside the
// plugin under test and decides nothing, unless Accept is set. It also
// offers a Router and a PublishWill func that record into the same log, so
// tests can check the order of hooks, Router calls and Wills.
//
//	rec := &mqtthookstest.Recorder{}             // observes, decides nothing
//	rec := &mqtthookstest.Recorder{Accept: true} // lets every client in
//
// A Recorder is safe for concurrent use. It notes when two lifecycle hooks of
// one SubscriberID overlap; Overlaps reports them.
type Recorder struct {
	// Accept makes AuthOnRegister and AuthOnRegisterM5 accept every client
	// when their func is nil, instead of answering Next.
	Accept bool
	// AuthOnRegisterFunc answers AuthOnRegister; see Accept for nil.
	AuthOnRegisterFunc func(ctx context.Context, req *mqtthooks.RegisterRequest) mqtthooks.RegisterResult
	// AuthOnRegisterM5Func answers AuthOnRegisterM5; see Accept for nil.
	AuthOnRegisterM5Func func(ctx context.Context, req *mqtthooks.RegisterRequest) mqtthooks.RegisterResult
	// OnAuthM5Func answers OnAuthM5; nil means AuthNext.
	OnAuthM5Func func(ctx context.Context, req *mqtthooks.AuthRequest) mqtthooks.AuthResult
	// Lifecycle, if set, runs inside every lifecycle hook after it is
	// recorded: a test can block or call back into the Core there.
	Lifecycle func(ctx context.Context, c Call)

	mu       sync.Mutex
	calls    []Call
	running  map[mqtthooks.SubscriberID]string
	overlaps []string
}

func (r *Recorder) record(c Call) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls = append(r.calls, c)
}

// Calls returns every call so far, in order.
func (r *Recorder) Calls() []Call {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.calls)
}

// CallsFor returns the calls for id, in order.
func (r *Recorder) CallsFor(id mqtthooks.SubscriberID) []Call {
	var out []Call
	for _, c := range r.Calls() {
		if c.ID == id {
			out = append(out, c)
		}
	}
	return out
}

// Hooks returns the names of the calls for id, in order: the sequence a test
// compares with what it expects.
func (r *Recorder) Hooks(id mqtthooks.SubscriberID) []string {
	var out []string
	for _, c := range r.CallsFor(id) {
		out = append(out, c.Hook)
	}
	return out
}

// Last returns the last call of hook for id, and whether there was one.
func (r *Recorder) Last(id mqtthooks.SubscriberID, hook string) (Call, bool) {
	calls := r.CallsFor(id)
	for i := len(calls) - 1; i >= 0; i-- {
		if calls[i].Hook == hook {
			return calls[i], true
		}
	}
	return Call{}, false
}

// Count returns how often hook was called for id.
func (r *Recorder) Count(id mqtthooks.SubscriberID, hook string) int {
	n := 0
	for _, c := range r.CallsFor(id) {
		if c.Hook == hook {
			n++
		}
	}
	return n
}

// Reset forgets the calls recorded so far.
func (r *Recorder) Reset() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls = nil
}

// Overlaps describes every moment two lifecycle hooks of one SubscriberID ran
// at once; the Core promises there are none.
func (r *Recorder) Overlaps() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.overlaps)
}

// ExpectHooks fails t unless the calls for id are exactly want, in order.
func (r *Recorder) ExpectHooks(t testing.TB, id mqtthooks.SubscriberID, want ...string) {
	t.Helper()
	got := r.Hooks(id)
	if !slices.Equal(got, want) {
		t.Errorf("hooks for %s:\n got  %s\n want %s", id, strings.Join(got, " → "), strings.Join(want, " → "))
	}
}

// CheckLifecycle fails t if the lifecycle hooks recorded for id break the
// order every life of a session keeps when it has one connection at a
// time: OnClientWakeup attaches a connection, and exactly one
// OnClientOffline or OnClientGone ends it before the next OnClientWakeup
// (OnClientGone may also end an offline session, which a clean start
// discards).
// A Recorder registered on every node of a cluster checks the order
// cluster-wide. Sessions that allow multiple connections wake up once per
// connection and are not for this check.
func (r *Recorder) CheckLifecycle(t testing.TB, id mqtthooks.SubscriberID) {
	t.Helper()
	hooks := r.Hooks(id)
	online := false
	for i, h := range hooks {
		switch h {
		case "OnClientWakeup":
			if online {
				t.Errorf("%s, hook %d: OnClientWakeup while a connection was attached: %s", id, i, strings.Join(hooks, " → "))
			}
			online = true
		case "OnClientOffline":
			if !online {
				t.Errorf("%s, hook %d: OnClientOffline with no connection attached: %s", id, i, strings.Join(hooks, " → "))
			}
			online = false
		case "OnClientGone": // ends the connection, or an offline session a clean start discards
			online = false
		}
	}
}

func (r *Recorder) lifecycle(ctx context.Context, c Call) {
	r.mu.Lock()
	if r.running == nil {
		r.running = map[mqtthooks.SubscriberID]string{}
	}
	if other, busy := r.running[c.ID]; busy {
		r.overlaps = append(r.overlaps, fmt.Sprintf("%s of %s ran during %s", c.Hook, c.ID, other))
	} else {
		r.running[c.ID] = c.Hook
		defer func() {
			r.mu.Lock()
			delete(r.running, c.ID)
			r.mu.Unlock()
		}()
	}
	r.calls = append(r.calls, c)
	r.mu.Unlock()
	if r.Lifecycle != nil {
		r.Lifecycle(ctx, c)
	}
}

// AuthOnRegister records the call and answers with AuthOnRegisterFunc.
func (r *Recorder) AuthOnRegister(ctx context.Context, req *mqtthooks.RegisterRequest) mqtthooks.RegisterResult {
	r.record(Call{Hook: "AuthOnRegister", ID: req.SubscriberID, Register: copyRegister(req)})
	if r.AuthOnRegisterFunc == nil {
		return r.undecided()
	}
	return r.AuthOnRegisterFunc(ctx, req)
}

// AuthOnRegisterM5 records the call and answers with AuthOnRegisterM5Func.
func (r *Recorder) AuthOnRegisterM5(ctx context.Context, req *mqtthooks.RegisterRequest) mqtthooks.RegisterResult {
	r.record(Call{Hook: "AuthOnRegisterM5", ID: req.SubscriberID, Register: copyRegister(req)})
	if r.AuthOnRegisterM5Func == nil {
		return r.undecided()
	}
	return r.AuthOnRegisterM5Func(ctx, req)
}

// undecided is the answer of a registration hook without a func.
func (r *Recorder) undecided() mqtthooks.RegisterResult {
	if r.Accept {
		return mqtthooks.Accept()
	}
	return mqtthooks.Next()
}

// OnAuthM5 records the call and answers with OnAuthM5Func.
func (r *Recorder) OnAuthM5(ctx context.Context, req *mqtthooks.AuthRequest) mqtthooks.AuthResult {
	cp := *req
	cp.Data = slices.Clone(req.Data)
	r.record(Call{Hook: "OnAuthM5", ID: req.SubscriberID, Auth: &cp})
	if r.OnAuthM5Func == nil {
		return mqtthooks.AuthNext()
	}
	return r.OnAuthM5Func(ctx, req)
}

// OnRegister records the call.
func (r *Recorder) OnRegister(ctx context.Context, ev *mqtthooks.RegisterEvent) {
	r.lifecycle(ctx, Call{Hook: "OnRegister", ID: ev.SubscriberID, Event: ev.SessionEvent, SessionPresent: ev.SessionPresent})
}

// OnRegisterM5 records the call.
func (r *Recorder) OnRegisterM5(ctx context.Context, ev *mqtthooks.RegisterEvent) {
	c := Call{Hook: "OnRegisterM5", ID: ev.SubscriberID, Event: ev.SessionEvent, SessionPresent: ev.SessionPresent}
	if ev.Connack != nil {
		props := *ev.Connack
		c.Connack = &props
	}
	r.lifecycle(ctx, c)
}

// OnClientWakeup records the call.
func (r *Recorder) OnClientWakeup(ctx context.Context, ev *mqtthooks.SessionEvent) {
	r.lifecycle(ctx, Call{Hook: "OnClientWakeup", ID: ev.SubscriberID, Event: *ev})
}

// OnClientOffline records the call.
func (r *Recorder) OnClientOffline(ctx context.Context, ev *mqtthooks.SessionEvent) {
	r.lifecycle(ctx, Call{Hook: "OnClientOffline", ID: ev.SubscriberID, Event: *ev})
}

// OnClientGone records the call.
func (r *Recorder) OnClientGone(ctx context.Context, ev *mqtthooks.SessionEvent) {
	r.lifecycle(ctx, Call{Hook: "OnClientGone", ID: ev.SubscriberID, Event: *ev})
}

// OnSessionExpired records the call.
func (r *Recorder) OnSessionExpired(ctx context.Context, ev *mqtthooks.SessionEvent) {
	r.lifecycle(ctx, Call{Hook: "OnSessionExpired", ID: ev.SubscriberID, Event: *ev})
}

// OnMessageDrop records the call.
func (r *Recorder) OnMessageDrop(_ context.Context, ev *mqtthooks.DropEvent) {
	cp := *ev
	r.record(Call{Hook: "OnMessageDrop", ID: ev.SubscriberID, Drop: &cp})
}

// PublishWill records the Will; use it as mqtthooks.Options.PublishWill.
func (r *Recorder) PublishWill(_ context.Context, id mqtthooks.SubscriberID, w *mqtthooks.Will) {
	r.record(Call{Hook: "PublishWill", ID: id, Will: w})
}

// Router returns a mqtthooks.Router that records its calls into r. It is a
// mqtthooks.MovingRouter: a session handed over to another node is
// recorded as "Moved".
func (r *Recorder) Router() mqtthooks.Router { return recRouter{r} }

type recRouter struct{ r *Recorder }

func (rr recRouter) Add(id mqtthooks.SubscriberID, gen uint64, sub mqtthooks.Subscription) {
	rr.r.record(Call{Hook: "Add", ID: id, Generation: gen, Subscription: sub})
}

func (rr recRouter) Remove(id mqtthooks.SubscriberID, gen uint64, filter string) {
	rr.r.record(Call{Hook: "Remove", ID: id, Generation: gen, Filter: filter})
}

func (rr recRouter) RemoveAll(id mqtthooks.SubscriberID, gen uint64) {
	rr.r.record(Call{Hook: "RemoveAll", ID: id, Generation: gen})
}

func (rr recRouter) Moved(id mqtthooks.SubscriberID, gen uint64) {
	rr.r.record(Call{Hook: "Moved", ID: id, Generation: gen})
}

func copyRegister(req *mqtthooks.RegisterRequest) *mqtthooks.RegisterRequest {
	cp := *req
	if req.Connect != nil {
		c := *req.Connect
		c.Password = slices.Clone(c.Password)
		cp.Connect = &c
	}
	if req.EnhancedAuth != nil {
		ea := *req.EnhancedAuth
		cp.EnhancedAuth = &ea
	}
	return &cp
}
