package mqtthookstest

import (
	"context"
	"errors"
	"sync"
	"testing"

	"github.com/mqtthooks/mqtthooks"
)

// ErrCrashed is the error of a write to a Store after its Crash.
var ErrCrashed = errors.New("mqtthookstest: the store crashed")

// Store is a SessionStore for tests of restarts and crashes: a
// mqtthooks.MemoryStore that can hold its writes back, as a store whose fsync
// has not returned yet, and crash, leaving what a killed process leaves.
//
//	store := new(mqtthookstest.Store)
//	core, _ := mqtthooks.NewCore(chain, mqtthooks.Options{Store: store})
//	… // the broker runs
//	after := store.Crash(t)             // the process dies here
//	_ = core.Shutdown(ctx)              // its writes from now on go nowhere
//	restarted, _ := mqtthooks.NewCore(chain, mqtthooks.Options{Store: after})
//
// Its zero value is ready to use; it is safe for concurrent use.
type Store struct {
	mqtthooks.MemoryStore
	mu      sync.Mutex
	holding bool
	held    []heldCommit
	crashed bool
}

type heldCommit struct {
	b    mqtthooks.StoreBatch
	done func(error)
}

// Batch starts a batch whose Commit follows Hold and Crash.
func (s *Store) Batch() mqtthooks.StoreBatch {
	return &storeBatch{StoreBatch: s.MemoryStore.Batch(), s: s}
}

type storeBatch struct {
	mqtthooks.StoreBatch
	s *Store
}

func (b *storeBatch) Commit(done func(error)) {
	s := b.s
	s.mu.Lock()
	switch {
	case s.crashed:
		s.mu.Unlock()
		if done != nil {
			done(ErrCrashed)
		}
		return
	case s.holding:
		s.held = append(s.held, heldCommit{b.StoreBatch, done})
		s.mu.Unlock()
		return
	}
	s.mu.Unlock()
	b.StoreBatch.Commit(done)
}

// Hold makes later commits wait, neither applied nor reported, until Release:
// writes that a crash meanwhile loses.
func (s *Store) Hold() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.holding = true
}

// Release applies the held commits, in order, and ends Hold.
func (s *Store) Release() {
	s.mu.Lock()
	held := s.held
	s.held, s.holding = nil, false
	s.mu.Unlock()
	for _, h := range held {
		h.b.Commit(h.done)
	}
}

// Crash returns a new Store holding what s has made durable: every commit
// whose done was called, nothing held. From now on s refuses every write with
// ErrCrashed, and fails those it held, so that the Core that used it can be
// shut down without touching what the crash left.
func (s *Store) Crash(t testing.TB) *Store {
	t.Helper()
	s.mu.Lock()
	held := s.held
	s.held, s.crashed = nil, true
	s.mu.Unlock()
	after := new(Store)
	for gen := s.MemoryStore.NextGeneration(); after.MemoryStore.NextGeneration() < gen; {
	}
	var last error
	commit := func(b mqtthooks.StoreBatch) {
		b.Commit(func(err error) { last = err })
		if last != nil {
			t.Fatalf("mqtthookstest: copying the store: %v", last)
		}
	}
	for ss, err := range s.MemoryStore.Load(context.Background()) {
		if err != nil {
			t.Fatalf("mqtthookstest: reading the store: %v", err)
		}
		r := &ss.Record
		b := after.MemoryStore.Batch()
		b.CreateSession(r)
		for _, sub := range ss.Subscriptions {
			b.PutSubscription(r.ID, r.Generation, sub)
		}
		for _, e := range ss.Entries {
			b.PutMessage(e.MessageID, e.Message)
			b.PutEntry(r.ID, r.Generation, &e.StoredEntry)
			b.ReleaseMessage(e.MessageID) // the hold, not the entry's reference
		}
		for _, id := range ss.Inbound {
			b.PutInbound(r.ID, r.Generation, id)
		}
		commit(b)
	}
	for _, h := range held {
		if h.done != nil {
			h.done(ErrCrashed)
		}
	}
	return after
}
