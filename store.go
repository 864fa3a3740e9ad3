package mqtthooks

import (
	"context"
	"errors"
	"iter"
	"net/netip"
	"time"
)

// A SessionStore keeps the persistent sessions of a Core beyond the process:
// their records, subscriptions, queued messages and inbound QoS 2 packet
// identifiers. The Core keeps every session in memory and writes each change
// through to its store as it happens, in small batches; a new Core loads the
// store when it starts. Without a store (Options.Store nil, the default),
// sessions end with the process and nothing is written anywhere.
//
// Only persistent sessions are stored: a session whose first connection has
// cleanup on disconnect (MQTT 3 Clean Session, MQTT 5 Session Expiry
// Interval 0) is not, unless the Core is a node of a cluster
// (Options.Cluster), which stores every session. Only QoS 1 and 2 messages
// are stored.
//
// Every write names the session's life, its Generation. A store refuses, with
// ErrStaleGeneration, a batch that names a life older than the one it holds
// for that SubscriberID, or one that has ended: a writer that lost a race (a
// slow goroutine, a node that was taken over) can never resurrect or corrupt
// a session.
//
// mqtthookstest.TestSessionStore checks an implementation against this
// contract.
type SessionStore interface {
	// Load yields every stored session, each with its subscriptions,
	// queue and inbound identifiers, for a Core to restore when it starts. A
	// failure is yielded once, as a nil session with the error, and ends the
	// iteration. The Core commits batches while the iteration is under way.
	Load(ctx context.Context) iter.Seq2[*StoredSession, error]
	// Batch starts a batch of changes, which Commit applies atomically.
	Batch() StoreBatch
	// NextGeneration returns a number greater than any it returned before,
	// also across restarts, and greater than every Generation it holds.
	NextGeneration() uint64
}

// A StoreBatch collects changes to a SessionStore; Commit applies them
// atomically, in order. The Core builds each batch on one goroutine and
// commits the batches that change one SubscriberID in the order of the
// changes.
type StoreBatch interface {
	// CreateSession stores rec as a new life of its SubscriberID, which
	// replaces the stored one, if any, with everything in it. A
	// rec.Generation not newer than the stored life's is stale.
	CreateSession(rec *SessionRecord)
	// UpdateSession stores rec as the new record of the current life. The
	// store keeps its own copies of what it is handed.
	UpdateSession(rec *SessionRecord)
	// DeleteSession drops the life gen of id and everything in it.
	DeleteSession(id SubscriberID, gen uint64)
	// RenewSession moves the life from of id to the generation to, with
	// everything in it: the session moved to another Core of a cluster,
	// whose writes name to, and a write that still names from (the node it
	// left, if that one is slow or cut off) must be refused from now on. A
	// to not greater than from, or a from that is not the stored life, is
	// stale.
	RenewSession(id SubscriberID, from, to uint64)
	// PutSubscription stores sub, replacing the subscription with the same
	// filter; DeleteSubscription drops the one with filter.
	PutSubscription(id SubscriberID, gen uint64, sub Subscription)
	DeleteSubscription(id SubscriberID, gen uint64, filter string)
	// PutMessage stores a message under msgID, and holds it: the store
	// keeps it until ReleaseMessage, whatever happens to the entries that
	// refer to it. Entries of any session refer to it, in this batch or in
	// later ones; once released, it is dropped with the last entry that
	// refers to it, so a message routed to many sessions is stored once. The
	// hold keeps the message while the Core is still routing it: an entry
	// acknowledged and deleted before the next session's entry is written
	// must not take the message with it. Holds need not survive a restart: a
	// store may drop, when it loads, every message no entry refers to.
	PutMessage(msgID uint64, m *Message)
	// ReleaseMessage ends the hold of PutMessage on msgID; the message goes
	// now if no entry refers to it.
	ReleaseMessage(msgID uint64)
	// PutEntry adds an entry to the session's queue or, for a Seq it holds,
	// replaces it (a state change). DeleteEntry drops the entry seq, which
	// refers to msgID.
	PutEntry(id SubscriberID, gen uint64, e *StoredEntry)
	DeleteEntry(id SubscriberID, gen uint64, seq uint64, msgID uint64)
	// PutInbound and DeleteInbound add and drop the packet identifier of a
	// QoS 2 PUBLISH the client sent and has not yet released.
	PutInbound(id SubscriberID, gen uint64, packetID uint16)
	DeleteInbound(id SubscriberID, gen uint64, packetID uint16)
	// Commit applies the batch and calls done, if not nil, once it is
	// durable as the store's policy says, with nil, or with the error that
	// refused it (ErrStaleGeneration) or failed it. Commit must not wait for
	// I/O: the Core calls it on its delivery path, sometimes with a session's
	// lock held, so a durable store hands the work to its own goroutines.
	// done may run on any goroutine and must not block. Batches apply in
	// the order of their Commit calls.
	Commit(done func(error))
}

// A SessionLoader is a SessionStore that can read one session. The Cores of a
// cluster (Options.Cluster) share one store, and a node reads a session from
// it when the session comes to it from another node; a store used so must
// implement SessionLoader.
type SessionLoader interface {
	SessionStore
	// LoadSession returns the stored session of id, as Load would yield it,
	// or nil and no error when none is stored. It sees every batch whose
	// Commit reported done before it was called, on any node.
	LoadSession(ctx context.Context, id SubscriberID) (*StoredSession, error)
}

// A SessionForgetter is a SessionStore that keeps copies of sessions in
// memory, which a clustered Core lets go when a session leaves its node:
// Forget(id) is called once the session of id is another node's. The store
// keeps the session itself.
type SessionForgetter interface {
	Forget(id SubscriberID)
}

// ErrStaleGeneration is the error of a store write that names a session
// life that is not the stored one: an older life, or one that has ended.
var ErrStaleGeneration = errors.New("mqtthooks: write for a session life that is not the current one")

// SessionRecord is what a store keeps of a session apart from its
// subscriptions and messages.
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

	// Connected is set while a connection is attached. A session stored
	// with it set lost that connection when the process stopped: the Core
	// that restores it fires OnClientOffline (ReasonRestart) at start.
	Connected bool
	// Expiry is how long the session lives offline; 0 means never.
	Expiry time.Duration
	// ExpiresAt is when the offline session expires; zero while a
	// connection is attached, or when Expiry is 0. A session stored while a
	// connection was attached (the process stopped or crashed with it
	// online) is restored offline, expiring Expiry after the restart.
	ExpiresAt time.Time
	// Wills are the Wills waiting for their Will Delay Interval to pass,
	// earliest first: at most one, except in a multiple session, where each
	// connection that ended may leave one.
	Wills []DelayedWill
	// ConnectionWills are the Wills of the connections attached when the
	// record was written. A Core that restores a record with Connected set
	// treats them as the Wills of connections lost without a DISCONNECT:
	// due at start, or after their delay.
	ConnectionWills []*Will
	// Queue holds the queue limits in force.
	Queue QueueSettings
	// Cleanup says that the session ends with its connection (MQTT 3 Clean
	// Session, MQTT 5 Session Expiry Interval 0). Only the Cores of a
	// cluster store such sessions: when a node dies, another one ends them,
	// with their Wills, from what the store holds.
	Cleanup bool
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

// EntryState is where a stored queue entry is in its delivery.
type EntryState uint8

// The states of a stored entry.
const (
	// EntryPending: queued, not yet handed to a connection.
	EntryPending EntryState = iota
	// EntrySent: handed out at least once, not acknowledged; after a
	// restart it is offered again first, with DUP set.
	EntrySent
	// EntryPubrelOwed: a QoS 2 delivery the client acknowledged with PUBREC;
	// the PUBREL is owed, and sent again first after a restart.
	EntryPubrelOwed
)

// StoredEntry is one message in a stored session's queue.
type StoredEntry struct {
	// Seq orders the session's queue; it also fixes the entry's packet
	// identifier (PacketIDOf), so that a delivery sent before a restart is
	// sent again with the same one [MQTT-4.4.0-1].
	Seq uint64
	// MessageID names the stored message (StoreBatch.PutMessage).
	MessageID               uint64
	QoS                     byte
	Retain                  bool
	SubscriptionIdentifiers []uint32
	// ExpiresAt is when the v5 Message Expiry Interval runs out; zero for
	// never.
	ExpiresAt time.Time
	State     EntryState
	// Sent orders the entries that were sent, in the order they first
	// went out, so that they are sent again in that order after a restart
	// [MQTT-4.6.0-1]; it counts up from 1 and wraps. 0 for a pending entry.
	Sent uint32
}

// PacketIDOf returns the packet identifier of the queue entry seq: the
// sequence numbers 1, 2, … 65535, 65536 … map to 1, 2, … 65535, 1 …
func PacketIDOf(seq uint64) uint16 { return uint16((seq-1)%65535) + 1 }

// StoredSession is one session as a store loads it.
type StoredSession struct {
	Record        SessionRecord
	Subscriptions []Subscription
	// Entries in Seq order, each with its message. A store leaves out the
	// entries whose message it does not have (a crash between the two
	// writes), which no publisher saw acknowledged.
	Entries []LoadedEntry
	// Inbound are the QoS 2 packet identifiers the client has not released.
	Inbound []uint16
}

// LoadedEntry is a stored entry with its message.
type LoadedEntry struct {
	StoredEntry
	Message *Message
}
