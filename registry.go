package mqtthooks

import (
	"context"
	"hash/maphash"
	"log/slog"
	"maps"
	"runtime/debug"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// The registry maps SubscriberIDs to entries without a global lock: the map
// is sharded, and each entry serialises the lifecycle operations of its
// SubscriberID.
//
// Serialisation is not a mutex held across hooks. An entry has a queue of
// operations and a running flag: the goroutine that finds the entry idle runs
// its operation and then every operation queued meanwhile, while the callers
// of those wait for theirs to finish. Hooks therefore run one at a time per
// SubscriberID, with no lock held, and a hook may call back into the Core:
// such a call (recognised by the hook's context) is queued and returns at once.

const registryShards = 64

type registry struct {
	seed        maphash.Seed
	hookTimeout time.Duration
	logger      *slog.Logger
	shards      [registryShards]registryShard
}

type registryShard struct {
	mu sync.Mutex
	m  map[SubscriberID]*entry
}

// entry is the registry's slot for one SubscriberID. It lives while a session
// exists for the id or an operation holds a reference to it.
type entry struct {
	id SubscriberID

	mu      sync.Mutex // guards the fields below; never held across a call out
	refs    int        // operations holding the entry, running or queued
	running bool
	queue   []*op
	// state is the session of the SubscriberID's current life, nil while none
	// exists; written under mu by the running op. Each life has a state of
	// its own, so that a caller holding an ended life's state (Deliver, a
	// stale Session) can tell it ended.
	state atomic.Pointer[sessionState]
}

// op is a lifecycle operation on one SubscriberID. Hot operations embed it in
// a value they already have (a Handshake, a Session), so that running them
// allocates nothing.
type op struct {
	runner opRunner
	// ctx is the context of the operation's hooks, made when it starts.
	ctx opCtx
	// status moves from opQueued to opRunning (the executor took it) or
	// opCanceled (its caller gave up first).
	status atomic.Int32
	done   chan struct{}
	// keep makes the op run even if its caller stops waiting: the end of a
	// connection must happen once reported.
	keep bool
}

// opRunner is the work of an op.
type opRunner interface {
	runOp(ctx context.Context, e *entry)
}

// opFunc adapts a function to opRunner.
type opFunc func(ctx context.Context, e *entry)

func (f opFunc) runOp(ctx context.Context, e *entry) { f(ctx, e) }

// newOp returns an op that runs fn.
func newOp(fn func(ctx context.Context, e *entry)) *op { return &op{runner: opFunc(fn)} }

const (
	opQueued int32 = iota
	opRunning
	opCanceled
)

func newRegistry(hookTimeout time.Duration, logger *slog.Logger) *registry {
	r := &registry{seed: maphash.MakeSeed(), hookTimeout: hookTimeout, logger: logger}
	for i := range r.shards {
		r.shards[i].m = make(map[SubscriberID]*entry)
	}
	return r
}

func (r *registry) shard(id SubscriberID) *registryShard {
	return &r.shards[hashID(r.seed, id)%registryShards]
}

// hashID hashes a SubscriberID, to pick the shard of a sharded map.
func hashID(seed maphash.Seed, id SubscriberID) uint64 {
	var h maphash.Hash
	h.SetSeed(seed)
	h.WriteString(id.Mountpoint)
	h.WriteByte(0)
	h.WriteString(id.ClientID)
	return h.Sum64()
}

// acquire returns the entry of id, creating it, with one more reference.
func (r *registry) acquire(id SubscriberID) *entry {
	s := r.shard(id)
	s.mu.Lock()
	e := s.m[id]
	if e == nil {
		e = &entry{id: id}
		s.m[id] = e
	}
	e.mu.Lock()
	e.refs++
	e.mu.Unlock()
	s.mu.Unlock()
	return e
}

// release drops a reference and removes the entry when nothing holds it and no
// session exists.
func (r *registry) release(e *entry) {
	s := r.shard(e.id)
	s.mu.Lock()
	e.mu.Lock()
	e.refs--
	if e.refs == 0 && e.state.Load() == nil {
		delete(s.m, e.id)
	}
	e.mu.Unlock()
	s.mu.Unlock()
}

// lookup returns the entry of id if one exists, without a reference.
func (r *registry) lookup(id SubscriberID) *entry {
	s := r.shard(id)
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.m[id]
}

// each calls fn for every entry until fn returns false. Entries added or
// removed meanwhile may or may not be seen.
func (r *registry) each(fn func(*entry) bool) {
	for i := range r.shards {
		s := &r.shards[i]
		s.mu.Lock()
		entries := slices.Collect(maps.Values(s.m))
		s.mu.Unlock()
		for _, e := range entries {
			if !fn(e) {
				return
			}
		}
	}
}

// insideHook reports whether ctx is (derived from) a context the Core handed
// to a lifecycle hook.
func insideHook(ctx context.Context) bool { return ctx.Value(hookCtxKey{}) != nil }

// do runs o as an operation on id, after the operations queued before it, and
// waits for it to finish. Called with the context of a hook, it queues o and
// returns at once, since the caller may be the operation o must wait for. If
// ctx ends before o starts, o never runs and do returns ctx.Err(). An op is
// run once: do must not be called again with the same o.
func (r *registry) do(ctx context.Context, id SubscriberID, o *op) error {
	e := r.acquire(id)
	e.mu.Lock()
	if e.running {
		wait := !insideHook(ctx)
		if wait {
			o.done = make(chan struct{})
		}
		e.queue = append(e.queue, o)
		e.mu.Unlock()
		if !wait {
			return nil
		}
		select {
		case <-o.done:
			return nil
		case <-ctx.Done():
			if o.keep {
				return ctx.Err() // it still runs, later
			}
			if o.status.CompareAndSwap(opQueued, opCanceled) {
				return ctx.Err()
			}
			<-o.done // already running: it finishes
			return nil
		}
	}
	e.running = true
	e.mu.Unlock()
	o.status.Store(opRunning)
	r.execute(e, o)
	return nil
}

// run runs one op. A panic in it (a Router, PublishWill, ResumePolicy or
// store of the broker's; hooks recover their own) is logged and does not
// leave the SubscriberID stuck: the queue goes on.
func (r *registry) run(e *entry, o *op) {
	defer func() {
		o.ctx.release()
		if v := recover(); v != nil {
			r.logger.Error("mqtthooks: panic in a lifecycle operation", "session", e.id.String(),
				"panic", v, "stack", string(debug.Stack()))
		}
	}()
	o.ctx.start(r.hookTimeout)
	o.runner.runOp(&o.ctx, e)
}

// execute runs o and then the operations queued on e, until none is left. It
// releases o's reference and those of the operations it runs or finds
// canceled. Its bookkeeping runs on every way out: an operation that ends its
// goroutine with runtime.Goexit (a plugin calling t.FailNow, say) cannot be
// stopped, but the operations queued behind it go on, on a new goroutine, and
// the SubscriberID stays usable.
func (r *registry) execute(e *entry, o *op) {
	returned := false
	defer func() {
		if returned {
			return
		}
		r.logger.Error("mqtthooks: runtime.Goexit in a lifecycle operation; the operation was cut short",
			"session", e.id.String())
		r.finish(e, o)
		if next := r.next(e); next != nil {
			go r.execute(e, next)
		}
	}()
	for o != nil {
		r.run(e, o)
		r.finish(e, o)
		o = r.next(e)
	}
	returned = true
}

// finish tells o's caller that o is over and drops its reference.
func (r *registry) finish(e *entry, o *op) {
	if o.done != nil {
		close(o.done)
	}
	r.release(e)
}

// next takes the next queued operation of e that was not canceled, or marks
// e idle and returns nil. It drops the references of canceled operations.
func (r *registry) next(e *entry) *op {
	var o *op
	canceled := 0
	e.mu.Lock()
	for len(e.queue) > 0 && o == nil {
		next := e.queue[0]
		e.queue[0] = nil
		e.queue = e.queue[1:]
		if next.status.CompareAndSwap(opQueued, opRunning) {
			o = next
		} else {
			canceled++
		}
	}
	if o == nil {
		e.running = false
		e.queue = nil
	}
	e.mu.Unlock()
	for range canceled {
		r.release(e)
	}
	return o
}
