package mqtthooks

import (
	"context"
	"iter"
	"maps"
	"slices"
	"sync"
)

// MemoryStore is a SessionStore in memory. It keeps sessions across the Cores
// of one process, not across processes: a Core started on it after another
// shut down, or was abandoned as if it had crashed, restores their sessions.
// That makes it the store of tests, and the reference implementation of the
// contract. A Core without a store (the default) costs less: it writes
// nothing at all.
//
// Its zero value is ready to use; it is safe for concurrent use. Commit
// applies a batch at once and calls done before it returns. A batch copies
// the maps of each session it touches, so that a refused batch changes
// nothing: a write costs in proportion to the session's queue, which suits
// tests, not queues of thousands of messages.
type MemoryStore struct {
	mu       sync.Mutex
	gen      uint64
	sessions map[SubscriberID]*memSession
	messages map[uint64]*memMessage
}

type memSession struct {
	rec     SessionRecord
	subs    map[string]Subscription
	entries map[uint64]StoredEntry
	inbound map[uint16]bool
}

type memMessage struct {
	m    *Message
	refs int // entries, and holds of PutMessage not yet released
}

// Load yields the stored sessions, in no particular order.
func (s *MemoryStore) Load(context.Context) iter.Seq2[*StoredSession, error] {
	return func(yield func(*StoredSession, error) bool) {
		s.mu.Lock()
		var out []*StoredSession
		for _, ms := range s.sessions {
			out = append(out, s.stored(ms))
		}
		s.mu.Unlock()
		for _, ss := range out {
			if !yield(ss, nil) {
				return
			}
		}
	}
}

// LoadSession returns the stored session of id, or nil.
func (s *MemoryStore) LoadSession(_ context.Context, id SubscriberID) (*StoredSession, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if ms := s.sessions[id]; ms != nil {
		return s.stored(ms), nil
	}
	return nil, nil
}

// stored returns ms as Load yields it. s.mu is held.
func (s *MemoryStore) stored(ms *memSession) *StoredSession {
	ss := &StoredSession{Record: cloneRecord(&ms.rec),
		Subscriptions: slices.Collect(maps.Values(ms.subs)),
		Inbound:       slices.Sorted(maps.Keys(ms.inbound))}
	for _, seq := range slices.Sorted(maps.Keys(ms.entries)) {
		e := ms.entries[seq]
		m := s.messages[e.MessageID]
		if m == nil {
			continue
		}
		ss.Entries = append(ss.Entries, LoadedEntry{StoredEntry: e, Message: m.m})
	}
	return ss
}

// NextGeneration returns 1, 2, 3, …
func (s *MemoryStore) NextGeneration() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.gen++
	return s.gen
}

// Batch starts a batch.
func (s *MemoryStore) Batch() StoreBatch { return &memBatch{s: s} }

// memBatch records the operations of a batch, to apply them at Commit.
type memBatch struct {
	s   *MemoryStore
	ops []func(tx *memTx) error
}

// memTx applies a batch: changes go to copies of what they touch, swapped
// in only if the whole batch succeeds.
type memTx struct {
	s        *MemoryStore
	sessions map[SubscriberID]*memSession // touched sessions; nil value: deleted
	messages map[uint64]*memMessage       // touched messages; nil value: deleted
}

func (tx *memTx) session(id SubscriberID) *memSession {
	if ms, ok := tx.sessions[id]; ok {
		return ms
	}
	ms := tx.s.sessions[id]
	if ms != nil {
		ms = &memSession{rec: ms.rec, subs: maps.Clone(ms.subs), entries: maps.Clone(ms.entries),
			inbound: maps.Clone(ms.inbound)}
	}
	tx.sessions[id] = ms
	return ms
}

// live returns the session of id if gen is its life, or ErrStaleGeneration.
func (tx *memTx) live(id SubscriberID, gen uint64) (*memSession, error) {
	ms := tx.session(id)
	if ms == nil || ms.rec.Generation != gen {
		return nil, ErrStaleGeneration
	}
	return ms, nil
}

func (tx *memTx) message(msgID uint64) *memMessage {
	if m, ok := tx.messages[msgID]; ok {
		return m
	}
	m := tx.s.messages[msgID]
	if m != nil {
		cp := *m
		m = &cp
	}
	tx.messages[msgID] = m
	return m
}

// unref drops one reference to msgID.
func (tx *memTx) unref(msgID uint64) {
	if m := tx.message(msgID); m != nil {
		if m.refs--; m.refs <= 0 {
			tx.messages[msgID] = nil
		}
	}
}

// dropEntries drops the references of every entry of ms.
func (tx *memTx) dropEntries(ms *memSession) {
	for _, e := range ms.entries {
		tx.unref(e.MessageID)
	}
}

func (b *memBatch) add(op func(tx *memTx) error) { b.ops = append(b.ops, op) }

func (b *memBatch) CreateSession(rec *SessionRecord) {
	r := cloneRecord(rec)
	b.add(func(tx *memTx) error {
		if old := tx.session(r.ID); old != nil {
			if old.rec.Generation >= r.Generation {
				return ErrStaleGeneration
			}
			tx.dropEntries(old)
		}
		tx.sessions[r.ID] = &memSession{rec: r, subs: map[string]Subscription{},
			entries: map[uint64]StoredEntry{}, inbound: map[uint16]bool{}}
		return nil
	})
}

func (b *memBatch) UpdateSession(rec *SessionRecord) {
	r := cloneRecord(rec)
	b.add(func(tx *memTx) error {
		ms, err := tx.live(r.ID, r.Generation)
		if err == nil {
			ms.rec = r
		}
		return err
	})
}

func (b *memBatch) DeleteSession(id SubscriberID, gen uint64) {
	b.add(func(tx *memTx) error {
		ms, err := tx.live(id, gen)
		if err == nil {
			tx.dropEntries(ms)
			tx.sessions[id] = nil
		}
		return err
	})
}

func (b *memBatch) RenewSession(id SubscriberID, from, to uint64) {
	b.add(func(tx *memTx) error {
		ms, err := tx.live(id, from)
		if err != nil {
			return err
		}
		if to <= from {
			return ErrStaleGeneration
		}
		ms.rec.Generation = to
		return nil
	})
}

func (b *memBatch) PutSubscription(id SubscriberID, gen uint64, sub Subscription) {
	b.add(func(tx *memTx) error {
		ms, err := tx.live(id, gen)
		if err == nil {
			ms.subs[sub.Filter] = sub
		}
		return err
	})
}

func (b *memBatch) DeleteSubscription(id SubscriberID, gen uint64, filter string) {
	b.add(func(tx *memTx) error {
		ms, err := tx.live(id, gen)
		if err == nil {
			delete(ms.subs, filter)
		}
		return err
	})
}

func (b *memBatch) PutMessage(msgID uint64, m *Message) {
	b.add(func(tx *memTx) error {
		if held := tx.message(msgID); held != nil {
			held.refs++
		} else {
			tx.messages[msgID] = &memMessage{m: m, refs: 1}
		}
		return nil
	})
}

func (b *memBatch) ReleaseMessage(msgID uint64) {
	b.add(func(tx *memTx) error {
		tx.unref(msgID)
		return nil
	})
}

func (b *memBatch) PutEntry(id SubscriberID, gen uint64, e *StoredEntry) {
	entry := *e
	entry.SubscriptionIdentifiers = slices.Clone(e.SubscriptionIdentifiers)
	b.add(func(tx *memTx) error {
		ms, err := tx.live(id, gen)
		if err != nil {
			return err
		}
		if old, ok := ms.entries[entry.Seq]; ok {
			if old.MessageID != entry.MessageID {
				tx.unref(old.MessageID)
				if m := tx.message(entry.MessageID); m != nil {
					m.refs++
				}
			}
		} else if m := tx.message(entry.MessageID); m != nil {
			m.refs++
		}
		ms.entries[entry.Seq] = entry
		return nil
	})
}

func (b *memBatch) DeleteEntry(id SubscriberID, gen uint64, seq uint64, msgID uint64) {
	b.add(func(tx *memTx) error {
		ms, err := tx.live(id, gen)
		if err != nil {
			return err
		}
		if e, ok := ms.entries[seq]; ok {
			delete(ms.entries, seq)
			tx.unref(e.MessageID)
		}
		return nil
	})
}

func (b *memBatch) PutInbound(id SubscriberID, gen uint64, packetID uint16) {
	b.add(func(tx *memTx) error {
		ms, err := tx.live(id, gen)
		if err == nil {
			ms.inbound[packetID] = true
		}
		return err
	})
}

func (b *memBatch) DeleteInbound(id SubscriberID, gen uint64, packetID uint16) {
	b.add(func(tx *memTx) error {
		ms, err := tx.live(id, gen)
		if err == nil {
			delete(ms.inbound, packetID)
		}
		return err
	})
}

// Commit applies the batch, all or nothing, and calls done.
func (b *memBatch) Commit(done func(error)) {
	s := b.s
	s.mu.Lock()
	tx := &memTx{s: s, sessions: map[SubscriberID]*memSession{}, messages: map[uint64]*memMessage{}}
	var err error
	for _, op := range b.ops {
		if err = op(tx); err != nil {
			break
		}
	}
	if err == nil {
		if s.sessions == nil {
			s.sessions, s.messages = map[SubscriberID]*memSession{}, map[uint64]*memMessage{}
		}
		for id, ms := range tx.sessions {
			if ms == nil {
				delete(s.sessions, id)
			} else {
				s.sessions[id] = ms
				s.gen = max(s.gen, ms.rec.Generation)
			}
		}
		for id, m := range tx.messages {
			if m == nil {
				delete(s.messages, id)
			} else {
				s.messages[id] = m
			}
		}
	}
	s.mu.Unlock()
	b.ops = nil
	if done != nil {
		done(err)
	}
}

// cloneRecord copies rec, with its own Wills.
func cloneRecord(rec *SessionRecord) SessionRecord {
	r := *rec
	r.Wills = slices.Clone(rec.Wills)
	r.ConnectionWills = slices.Clone(rec.ConnectionWills)
	return r
}
