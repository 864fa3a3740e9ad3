// Package natsjs keeps the sessions of mqtthooks Cores in a NATS JetStream
// stream, which the nodes of a cluster share: Store is a
// mqtthooks.SessionLoader (see mqtthooks.Cluster), and passes
// mqtthookstest.TestSessionStore on one server and on a three-node
// JetStream cluster with three replicas.
//
// # Layout
//
// One stream (Options.Stream, "MQTTHOOKS" by default; file storage;
// Options.Replicas) holds the subjects Prefix.> (Prefix defaults to the
// stream's name):
//
//	Prefix.l.<token>   the log of one session
//	Prefix.g           the generation counter
//
// The token encodes the session's mountpoint and client id, base64url
// without padding of both with the mountpoint's length, so that it is one
// valid subject token; an id too long for a subject is hashed (SHA-256),
// and a session read under a hash that is not its own is not returned.
//
// A session's log is a snapshot of the whole session, followed by the
// changes made since, each the share of that session in one write. Each
// part is versioned binary: a version byte, a kind (snapshot, tombstone,
// delta) and its body (see codec.go). A part larger than a NATS message
// (the server's max_payload) is split over several messages of one atomic
// batch. When the changes since the snapshot reach 16 and half the
// snapshot's size, or 1024, the next write is a new snapshot published
// with the Nats-Rollup: sub header, which removes the earlier messages of
// the log as it is stored. A new life (CreateSession) is always a snapshot.
// A deleted session leaves a tombstone, also a rollup, which expires after
// ten minutes (per-message TTL); LoadSession and Load return nothing for it.
//
// # Messages
//
// A message is not stored on its own: its payload is written, inline, with
// the first entry of each session that names it, and stays in that
// session's log while an entry of the session names it. A message routed
// to many sessions is therefore stored once per session, not once for the
// stream. To write the message with an entry, the Store must have it: from
// PutMessage until ReleaseMessage, or while an entry of a session this
// Store wrote or read names it. An entry whose message the Store does not
// have is stored without one and left out when loaded, as the contract of
// mqtthooks.StoredSession allows. The Store keeps, in memory, a copy of each
// session it writes or has read (the messages are shared with the Core's),
// which it uses to write snapshots and to check lives; Forget drops it.
//
// # Fencing and order
//
// Every write of a session is published with the header
// Nats-Expected-Last-Subject-Sequence naming the last message of the
// session's log as this Store knows it, so that JetStream itself refuses
// the write if any other Store wrote the session since: a node whose
// session moved (the new owner read it with LoadSession and committed
// RenewSession) has its later writes refused by the server, whatever its
// memory says. A refusal makes the Store read the log again (through the
// stream leader): if the life the batch names is no longer the stored one,
// the batch fails with mqtthooks.ErrStaleGeneration and changes nothing;
// otherwise the Store writes it again on top of what it read. A refusal
// found in the Store's memory is checked against the stored log first.
//
// Because each write expects the one before it, a session's writes form a
// chain with no gap: the Store has one write of a session in flight at a
// time, and the batches committed meanwhile are merged into the next
// message, in Commit order. (The recommended alternative, an expectation on
// a separate generation subject through
// Nats-Expected-Last-Subject-Sequence-Subject so that one owner's writes
// could be pipelined, does not pipeline on a cluster either: nats-server
// refuses an expectation on a subject while an earlier proposal that
// checks or writes it is in flight, error 10164, see
// checkMsgHeadersPreClusteredProposal.) A write whose outcome is unknown
// (a timeout, a change of stream leader) is detected on the next read by
// the Mqtthooks-Write header that names each write: a write is never
// applied twice, and a later one never overtakes it.
//
// A batch that changes several sessions is one JetStream atomic batch
// (Nats-Batch-Id, nats-server 2.12 or later, enabled on the stream with
// AllowAtomicPublish), one message per session, each with its own
// expectation: all or nothing. It waits until no write of any of its
// sessions is in flight, and the later writes of those sessions wait for
// it.
//
// # Durability and reads
//
// done is called after JetStream acknowledged the write: stored by the
// stream leader and, with replicas, on a quorum of them (the file store's
// fsync follows the server's sync_interval). LoadSession reads the log's
// last message through the stream leader ($JS.API.STREAM.MSG.GET, which
// only the leader answers), and the rest with batched direct gets from any
// replica, until it has read that message: it sees every write any node's
// Store reported done before. Load reads every log the same way.
//
// # Generations
//
// NextGeneration hands out numbers from blocks of 1000, each reserved by
// an expected-sequence publish on Prefix.g, so that no two Stores (nodes,
// or restarts of one) share a block, and numbers grow across restarts. A
// Store moves past every generation it loads (a new block if needed), and a
// write of a generation past the counter (numbered by another writer)
// raises the counter first.
//
// # Connection
//
// Open takes a *nats.Conn that stays the caller's. The Store makes JetStream
// API requests the jetstream package does not offer (reads through the
// leader, batched direct gets, atomic batches), on the default API prefix
// $JS.API: a JetStream domain or a custom API prefix is not supported.
package natsjs
