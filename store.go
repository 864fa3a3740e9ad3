package mqtthooks

import (
	"context"
	"hash/maphash"
	"iter"
	"maps"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// SessionRecord is what survives a session's connections: the part of a
// session a SessionStore keeps.
type SessionRecord struct {
	ID SubscriberID
	// Generation is the session's life; a new life gets a new number.
	Generation uint64

	// The identity of the session's last connection, for events with no live
	// connection and for the resume policy.
	Username        string
	HasUsername     bool
	ConnID          uint64
	Peer            netip.AddrPort
	ProtocolVersion ProtocolVersion

	// Subscriptions of the session, one per filter, in no particular order.
	Subscriptions []Subscription

	// Wills are the Wills waiting for their Will Delay Interval to pass,
	// earliest first: at most one, except in a multiple session, where each
	// connection that ended may leave one.
	Wills []DelayedWill
	// ExpiresAt is when an offline session expires; zero means never, or
	// that the session is online.
	ExpiresAt time.Time

	// The session's messages, filled for a durable store when the session is
	// saved offline (the in-memory store needs no copy: the Core holds them):
	// pending messages in queue order, deliveries in flight in the order they
	// were sent, and inbound QoS 2 identifiers awaiting PUBREL.
	Pending     []QueuedMessage
	Inflight    []InflightMessage
	InboundQoS2 []uint16
}

// DelayedWill is a Will waiting for its delay: it is published at At, or when
// the session ends if that is sooner, and dropped if a connection resumes the
// session first (MQTT 5 §3.1.3.2.2).
type DelayedWill struct {
	Will *Will
	At   time.Time
}

// Subscription is a subscription of a session, as the client made it.
type Subscription struct {
	Filter            string
	QoS               byte
	NoLocal           bool
	RetainAsPublished bool
	RetainHandling    byte
	// Identifier is the v5 Subscription Identifier; 0 means none.
	Identifier uint32
}

// SessionStore keeps the sessions of a Core while they exist. It is shaped
// around whole sessions, so that a durable or distributed store can replace the
// in-memory default without changing the Core's API.
//
// The Core calls a store for one SubscriberID at a time, never concurrently
// for the same one, and never while holding a lock. A store that keeps
// records beyond the call must copy them: the Core goes on changing its own.
type SessionStore interface {
	// Create records a new session. An error refuses it: the CONNECT is
	// rejected with ErrRegistration and nothing is left behind. When a
	// CONNECT replaces a session (a clean start, or a takeover of a session
	// with cleanup on disconnect), Create is called for the new life while
	// the old one's record still exists, and replaces it: the old life is
	// ended only once Create succeeded, and is not Deleted.
	Create(ctx context.Context, rec *SessionRecord) error
	// Save records the current state of an existing session. The Core calls
	// it when the session goes offline and when its subscriptions change.
	Save(ctx context.Context, rec *SessionRecord) error
	// Delete removes the session; deleting a missing one is not an error.
	Delete(ctx context.Context, id SubscriberID) error
	// Sessions returns an iterator over the stored sessions, which NewCore
	// uses to take over the offline sessions of a durable store. A failure
	// is yielded once, as a nil record with the error, and ends the
	// iteration.
	Sessions(ctx context.Context) iter.Seq2[*SessionRecord, error]
	// NextGeneration returns a number greater than any it returned before,
	// also across restarts for a durable store.
	NextGeneration() uint64
	// Durable reports whether sessions outlive the process. A Core with a
	// store that is not durable publishes pending delayed Wills at Shutdown,
	// since those sessions end with the process.
	Durable() bool
}

// MemoryStore is the default SessionStore: sessions live in the Core's memory
// and end with the process. Its zero value is ready to use.
//
// Unlike other stores, it keeps the pointers it is given: the records are the
// Core's own, so sessions are not held twice. Its map is sharded, so that
// CONNECTs of different clients do not wait for one lock.
type MemoryStore struct {
	generation atomic.Uint64
	once       sync.Once
	seed       maphash.Seed
	shards     [memoryShards]memoryShard
}

const memoryShards = 64

type memoryShard struct {
	mu sync.Mutex
	m  map[SubscriberID]*SessionRecord
}

func (m *MemoryStore) shard(id SubscriberID) *memoryShard {
	m.once.Do(func() { m.seed = maphash.MakeSeed() })
	return &m.shards[hashID(m.seed, id)%memoryShards]
}

func (m *MemoryStore) put(rec *SessionRecord) {
	s := m.shard(rec.ID)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.m == nil {
		s.m = make(map[SubscriberID]*SessionRecord)
	}
	s.m[rec.ID] = rec
}

// Create records rec.
func (m *MemoryStore) Create(_ context.Context, rec *SessionRecord) error {
	m.put(rec)
	return nil
}

// Save records rec.
func (m *MemoryStore) Save(_ context.Context, rec *SessionRecord) error {
	m.put(rec)
	return nil
}

// Delete forgets the session id.
func (m *MemoryStore) Delete(_ context.Context, id SubscriberID) error {
	s := m.shard(id)
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.m, id)
	return nil
}

// Sessions returns an iterator over the sessions; it never fails.
func (m *MemoryStore) Sessions(context.Context) iter.Seq2[*SessionRecord, error] {
	return func(yield func(*SessionRecord, error) bool) {
		for i := range m.shards {
			s := &m.shards[i]
			s.mu.Lock()
			recs := slices.Collect(maps.Values(s.m))
			s.mu.Unlock()
			for _, r := range recs {
				if !yield(r, nil) {
					return
				}
			}
		}
	}
}

// NextGeneration returns 1, 2, 3, …
func (m *MemoryStore) NextGeneration() uint64 { return m.generation.Add(1) }

// Durable returns false.
func (m *MemoryStore) Durable() bool { return false }
