// Package pebble is an mqtthooks.SessionStore on Pebble
// (github.com/cockroachdb/pebble), the LSM key-value store of CockroachDB: a
// write-ahead log with group commit, so that the small writes of many
// sessions share their fsyncs.
//
//	store, err := pebble.Open("/var/lib/broker", pebble.Options{}) // Always: fsync before acknowledging
//	if err != nil { … }
//	defer store.Close()
//	core, err := mqtthooks.NewCore(chain, mqtthooks.Options{Store: store})
//
// Commits that only add or drop queue entries, messages, subscriptions and
// records join a group that one goroutine applies while the next gathers:
// a message stored and acknowledged within one group is never written.
//
// Each session's record, subscriptions, queue and inbound QoS 2 identifiers
// lie under one key prefix, the queue in Seq order; messages lie apart, once
// each, however many sessions refer to them.
//
// What a crash keeps depends on the Sync policy. Always (the default) makes a
// commit durable before it reports it done: after a crash or a power loss
// nothing reported is missing. Interval(d) reports a commit as soon as it is
// written and syncs every d: a power loss may cost the last d of commits,
// and so may a crash of the process alone, since Pebble buffers the
// write-ahead log before handing it to the operating system. None leaves
// syncing to the operating system. Only Always survives kill -9 with every
// reported commit. In every case a batch survives whole or not at all, and in commit
// order.
package pebble

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"iter"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/mqtthooks/mqtthooks"
)

// ErrClosed is the error of a commit after Close.
var ErrClosed = errors.New("pebble store: closed")

// SyncPolicy says when a commit is reported durable.
type SyncPolicy struct {
	every time.Duration
	none  bool
}

// Always syncs every commit before reporting it; concurrent commits share an
// fsync. It is the zero SyncPolicy.
var Always = SyncPolicy{}

// None never syncs: the operating system writes back when it will.
var None = SyncPolicy{none: true}

// Interval reports commits once written, and syncs every d.
func Interval(d time.Duration) SyncPolicy { return SyncPolicy{every: d} }

// String returns "always", "none" or "interval(d)".
func (p SyncPolicy) String() string {
	switch {
	case p.none:
		return "none"
	case p.every > 0:
		return fmt.Sprintf("interval(%v)", p.every)
	}
	return "always"
}

// Options configure a Store.
type Options struct {
	// Sync is the sync policy; the zero value is Always.
	Sync SyncPolicy
	// Pebble, if not nil, tunes the database (cache, memtable, file system);
	// the store copies it and sets what it needs.
	Pebble *pebble.Options
}

// Store is a SessionStore on a Pebble database in a directory. Open it with
// Open and Close it after the Core's Shutdown. It is safe for concurrent use.
type Store struct {
	db     *pebble.DB
	policy SyncPolicy
	fs     *countingFS

	mu       sync.Mutex // orders commits and guards what follows
	closed   bool
	gens     map[mqtthooks.SubscriberID]uint64 // the stored life of each session
	refs     pages[int64]                      // entries that refer to each message, and holds not yet released
	gen      uint64                            // the last generation handed out
	reserved uint64                            // generations up to this one are reserved on disk

	known     known                   // the queue entries of the sessions held in memory
	cond      *sync.Cond              // on mu: the writer and those waiting for it
	pend      map[string]pendingValue // writes committed, not yet handed to Pebble
	pendDone  []func(error)           // their commits' callbacks, in commit order
	doneSpare []func(error)
	flushing  map[string]pendingValue // the group the writer is applying
	failed    error                   // a write that failed: no more are accepted
	scratch   map[string]pendingValue // the overlay of the batch being prepared
	stop      chan struct{}
	bg        sync.WaitGroup
	commits   atomic.Uint64
}

// Stats are a Store's counters.
type Stats struct {
	// Commits counts committed batches; Syncs the fsyncs of the write-ahead
	// log, which Always shares among the commits made at once.
	Commits, Syncs uint64
	// WALBytes is what the write-ahead log has written.
	WALBytes uint64
}

// Open opens the store in dir, creating it if needed.
func Open(dir string, opts Options) (*Store, error) {
	po := &pebble.Options{}
	if opts.Pebble != nil {
		cp := *opts.Pebble
		po = &cp
	}
	if po.FS == nil {
		po.FS = vfs.Default
	}
	fs := &countingFS{FS: po.FS}
	po.FS = fs
	po.Logger = quietLogger{}
	db, err := pebble.Open(dir, po)
	if err != nil {
		return nil, fmt.Errorf("pebble store: opening %s: %w", dir, err)
	}
	s := &Store{db: db, policy: opts.Sync, fs: fs, gens: map[mqtthooks.SubscriberID]uint64{},
		known: known{budget: defaultKnownBudget}, pend: map[string]pendingValue{}, stop: make(chan struct{})}
	s.cond = sync.NewCond(&s.mu)
	if v, closer, err := db.Get([]byte{kindGen}); err == nil {
		if len(v) == 8 {
			s.gen = binary.BigEndian.Uint64(v)
			s.reserved = s.gen
		}
		_ = closer.Close()
	} else if !errors.Is(err, pebble.ErrNotFound) {
		_ = db.Close()
		return nil, fmt.Errorf("pebble store: %w", err)
	}
	s.bg.Add(1)
	go s.writeLoop()
	if opts.Sync.every > 0 {
		s.bg.Add(1)
		go s.intervalLoop(opts.Sync.every)
	}
	return s, nil
}

// Close waits for the commits in flight and closes the database.
func (s *Store) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return ErrClosed
	}
	s.closed = true
	close(s.stop)
	s.cond.Broadcast() // the writer applies what is pending, then returns
	s.mu.Unlock()
	s.bg.Wait()
	return s.db.Close()
}

// Stats returns the store's counters.
func (s *Store) Stats() Stats {
	return Stats{Commits: s.commits.Load(), Syncs: s.fs.syncs.Load(), WALBytes: s.db.Metrics().WAL.BytesWritten}
}

// intervalLoop syncs the write-ahead log every d.
func (s *Store) intervalLoop(d time.Duration) {
	defer s.bg.Done()
	t := time.NewTicker(d)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
			s.mu.Lock()
			if !s.closed {
				_ = s.db.LogData(nil, pebble.Sync)
			}
			s.mu.Unlock()
		}
	}
}

// NextGeneration returns a generation above every one handed out before,
// also across restarts: it reserves them on disk in blocks.
func (s *Store) NextGeneration() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.gen++
	if s.gen > s.reserved && !s.closed {
		s.reserved = s.gen + 4095
		_ = s.db.Set([]byte{kindGen}, binary.BigEndian.AppendUint64(nil, s.reserved), pebble.Sync)
	}
	return s.gen
}

// Load yields the stored sessions in key order, each with its
// subscriptions, queue (Seq order) and inbound identifiers. When the
// iteration completes, messages no entry refers to are dropped.
func (s *Store) Load(ctx context.Context) iter.Seq2[*mqtthooks.StoredSession, error] {
	return func(yield func(*mqtthooks.StoredSession, error) bool) {
		s.mu.Lock()
		s.drain() // Load reads Pebble: it must have every commit
		s.mu.Unlock()
		msgs, err := s.loadMessages(ctx)
		if err != nil {
			yield(nil, err)
			return
		}
		complete, err := s.load(ctx, msgs, yield)
		if err != nil {
			yield(nil, err)
			return
		}
		if complete {
			if err := s.collect(); err != nil {
				yield(nil, err)
			}
		}
	}
}

// loadMessages reads every stored message, in one pass in id order: cheaper
// than looking each up for the entries that refer to it, and each is decoded
// once however many sessions share it.
func (s *Store) loadMessages(ctx context.Context) (*pages[*mqtthooks.Message], error) {
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: []byte{kindMsg}, UpperBound: []byte{kindMsg + 1}})
	if err != nil {
		return nil, err
	}
	defer it.Close()
	msgs := new(pages[*mqtthooks.Message])
	for valid := it.First(); valid; valid = it.Next() {
		if len(it.Key()) != 9 {
			return nil, errCorrupt
		}
		id := binary.BigEndian.Uint64(it.Key()[1:])
		if id&0xFFFF == 0 {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
		}
		v, err := it.ValueAndErr()
		if err != nil {
			return nil, err
		}
		m, err := decodeMessage(v)
		if err != nil {
			return nil, fmt.Errorf("message %d: %w", id, err)
		}
		msgs.set(id, m)
	}
	return msgs, it.Error()
}

func (s *Store) load(ctx context.Context, msgs *pages[*mqtthooks.Message],
	yield func(*mqtthooks.StoredSession, error) bool) (complete bool, err error) {
	recs, err := s.db.NewIter(&pebble.IterOptions{LowerBound: []byte{kindRecord}, UpperBound: []byte{kindRecord + 1}})
	if err != nil {
		return false, err
	}
	defer recs.Close()
	parts := [3]*pebble.Iterator{}
	for i, kind := range []byte{kindSub, kindEntry, kindIn} {
		if parts[i], err = s.db.NewIter(&pebble.IterOptions{LowerBound: []byte{kind}, UpperBound: []byte{kind + 1}}); err != nil {
			return false, err
		}
		defer parts[i].Close()
		parts[i].First() // seekSession starts from there
	}
	for valid := recs.First(); valid; valid = recs.Next() {
		if err := ctx.Err(); err != nil {
			return false, err
		}
		id, _, err := parseID(recs.Key())
		if err != nil {
			return false, err
		}
		rec, err := decodeRecord(cloneID(id), recs.Value())
		if err != nil {
			return false, fmt.Errorf("record of %s: %w", id, err)
		}
		ss := &mqtthooks.StoredSession{Record: rec}
		if err := s.loadParts(parts, ss, msgs); err != nil {
			return false, fmt.Errorf("session %s: %w", id, err)
		}
		s.mu.Lock()
		s.gens[rec.ID] = rec.Generation
		s.gen = max(s.gen, rec.Generation)
		for _, e := range ss.Entries {
			s.refs.set(e.MessageID, s.refs.get(e.MessageID)+1)
		}
		if s.known.fits(1 + len(ss.Entries)) {
			entries := make(map[uint64]uint64, len(ss.Entries))
			for _, e := range ss.Entries {
				entries[e.Seq] = e.MessageID
			}
			s.known.add(rec.ID, entries)
		}
		s.mu.Unlock()
		if !yield(ss, nil) {
			return false, nil
		}
	}
	return true, recs.Error()
}

// loadParts reads the subscriptions, entries and inbound identifiers of ss.
func (s *Store) loadParts(parts [3]*pebble.Iterator, ss *mqtthooks.StoredSession, msgs *pages[*mqtthooks.Message]) error {
	id := ss.Record.ID
	for i, kind := range []byte{kindSub, kindEntry, kindIn} {
		it := parts[i]
		prefix := sessionKey(kind, id)
		for valid := seekSession(it, prefix); valid && hasPrefix(it.Key(), prefix); valid = it.Next() {
			rest := it.Key()[len(prefix):]
			switch kind {
			case kindSub:
				sub, err := decodeSub(string(rest), it.Value())
				if err != nil {
					return err
				}
				ss.Subscriptions = append(ss.Subscriptions, sub)
			case kindEntry:
				if len(rest) != 8 {
					return errCorrupt
				}
				e, err := decodeEntry(binary.BigEndian.Uint64(rest), it.Value())
				if err != nil {
					return err
				}
				if m := msgs.get(e.MessageID); m != nil { // batches apply in order, so only damage leaves an entry without its message
					ss.Entries = append(ss.Entries, mqtthooks.LoadedEntry{StoredEntry: e, Message: m})
				}
			case kindIn:
				if len(rest) != 2 {
					return errCorrupt
				}
				ss.Inbound = append(ss.Inbound, binary.BigEndian.Uint16(rest))
			}
		}
		if err := it.Error(); err != nil {
			return err
		}
	}
	return nil
}

// seekSession positions it, an iterator over one part of every session that
// only ever moves forward, at the first key at or after prefix, which comes
// after every prefix it was given before. Where it is, if not before prefix,
// is that key already: nothing lies between the previous session's keys and
// it.
func seekSession(it *pebble.Iterator, prefix []byte) bool {
	if !it.Valid() {
		return false // past the last key
	}
	if bytes.Compare(it.Key(), prefix) >= 0 {
		return true
	}
	return it.SeekGE(prefix)
}

// collect drops the messages no loaded entry refers to.
func (s *Store) collect() error {
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: []byte{kindMsg}, UpperBound: []byte{kindMsg + 1}})
	if err != nil {
		return err
	}
	b := s.db.NewBatch()
	defer b.Close()
	s.mu.Lock()
	for valid := it.First(); valid; valid = it.Next() {
		if id := binary.BigEndian.Uint64(it.Key()[1:]); s.refs.get(id) == 0 {
			_ = b.Delete(it.Key(), nil)
		}
	}
	s.mu.Unlock()
	if err := it.Close(); err != nil {
		return err
	}
	return s.db.Apply(b, pebble.NoSync)
}

func hasPrefix(b, p []byte) bool { return len(b) >= len(p) && string(b[:len(p)]) == string(p) }

func cloneID(id mqtthooks.SubscriberID) mqtthooks.SubscriberID {
	return mqtthooks.SubscriberID{Mountpoint: id.Mountpoint, ClientID: id.ClientID}
}

// Batch starts a batch.
func (s *Store) Batch() mqtthooks.StoreBatch { return &batch{s: s} }

// op is one change of a batch, checked and encoded at Commit.
type op struct {
	kind    byte // 'c' create, 'r' update, 'd' delete session, and the key kinds
	del     bool
	id      mqtthooks.SubscriberID
	gen     uint64
	rec     *mqtthooks.SessionRecord
	sub     mqtthooks.Subscription
	filter  string
	entry   mqtthooks.StoredEntry
	seq     uint64
	msgID   uint64
	msg     *mqtthooks.Message
	inbound uint16
}

type batch struct {
	s   *Store
	ops []op
}

func (b *batch) CreateSession(rec *mqtthooks.SessionRecord) {
	r := *rec
	r.Wills = append([]mqtthooks.DelayedWill(nil), rec.Wills...)
	b.ops = append(b.ops, op{kind: 'c', id: rec.ID, gen: rec.Generation, rec: &r})
}

func (b *batch) UpdateSession(rec *mqtthooks.SessionRecord) {
	r := *rec
	r.Wills = append([]mqtthooks.DelayedWill(nil), rec.Wills...)
	b.ops = append(b.ops, op{kind: 'r', id: rec.ID, gen: rec.Generation, rec: &r})
}

func (b *batch) DeleteSession(id mqtthooks.SubscriberID, gen uint64) {
	b.ops = append(b.ops, op{kind: 'd', id: id, gen: gen})
}

func (b *batch) RenewSession(id mqtthooks.SubscriberID, from, to uint64) {
	b.ops = append(b.ops, op{kind: 'n', id: id, gen: from, seq: to})
}

func (b *batch) PutSubscription(id mqtthooks.SubscriberID, gen uint64, sub mqtthooks.Subscription) {
	b.ops = append(b.ops, op{kind: kindSub, id: id, gen: gen, sub: sub, filter: sub.Filter})
}

func (b *batch) DeleteSubscription(id mqtthooks.SubscriberID, gen uint64, filter string) {
	b.ops = append(b.ops, op{kind: kindSub, del: true, id: id, gen: gen, filter: filter})
}

func (b *batch) PutMessage(msgID uint64, m *mqtthooks.Message) {
	b.ops = append(b.ops, op{kind: kindMsg, msgID: msgID, msg: m})
}

func (b *batch) ReleaseMessage(msgID uint64) {
	b.ops = append(b.ops, op{kind: kindMsg, del: true, msgID: msgID})
}

func (b *batch) PutEntry(id mqtthooks.SubscriberID, gen uint64, e *mqtthooks.StoredEntry) {
	b.ops = append(b.ops, op{kind: kindEntry, id: id, gen: gen, entry: *e, seq: e.Seq, msgID: e.MessageID})
}

func (b *batch) DeleteEntry(id mqtthooks.SubscriberID, gen uint64, seq uint64, msgID uint64) {
	b.ops = append(b.ops, op{kind: kindEntry, del: true, id: id, gen: gen, seq: seq, msgID: msgID})
}

func (b *batch) PutInbound(id mqtthooks.SubscriberID, gen uint64, packetID uint16) {
	b.ops = append(b.ops, op{kind: kindIn, id: id, gen: gen, inbound: packetID})
}

func (b *batch) DeleteInbound(id mqtthooks.SubscriberID, gen uint64, packetID uint16) {
	b.ops = append(b.ops, op{kind: kindIn, del: true, id: id, gen: gen, inbound: packetID})
}

// Commit checks the batch's generations and applies it whole. A batch that
// only adds, replaces or drops entries, messages, subscriptions and records
// (the writes of message traffic) joins the group the writer goroutine
// applies next, where a key written and dropped again before then costs
// nothing; done is called once its group is applied and, for Always,
// synced. A batch that drops a session's life waits for the group in
// flight and is applied at once.
func (b *batch) Commit(done func(error)) {
	s := b.s
	s.mu.Lock()
	err := s.commitLocked(b.ops)
	if err == nil {
		s.pendDone = append(s.pendDone, done) // reported by the writer, in commit order
		s.cond.Broadcast()
	}
	s.mu.Unlock()
	if err != nil && done != nil {
		done(err)
	}
}

// commitLocked checks ops and applies them: to the pending group, or, when
// they drop a session's life, to Pebble at once. s.mu is held.
func (s *Store) commitLocked(ops []op) error {
	if err := s.usable(); err != nil {
		return err
	}
	if !s.dropsLife(ops) {
		w := s.overlay()
		gens, refs, err := s.prepare(ops, w)
		if err != nil {
			return err
		}
		s.install(gens, refs)
		w.mergeInto(s.pend)
		return nil
	}
	for s.flushing != nil { // a session's keys are read from Pebble: it must have them all
		s.cond.Wait()
	}
	if err := s.usable(); err != nil {
		return err
	}
	// The pending group goes to Pebble first, on its own: dropSession reads
	// the session's entries from Pebble, and must see the group's puts and
	// deletions. Its commits are reported by the writer, as always.
	if len(s.pend) > 0 {
		if err := s.applyGroup(s.pend, pebble.NoSync); err != nil {
			s.failed = fmt.Errorf("pebble store: write failed, refusing further writes: %w", err)
			return s.failed
		}
		clear(s.pend)
	}
	pb := s.db.NewBatch()
	defer pb.Close()
	gens, refs, err := s.prepare(ops, pebbleWriter{pb})
	if err == nil {
		err = s.db.Apply(pb, pebble.NoSync)
	}
	if err != nil {
		return err
	}
	s.install(gens, refs)
	return nil
}

// usable returns why the store takes no more writes, or nil. s.mu is held.
func (s *Store) usable() error {
	if s.closed {
		return ErrClosed
	}
	return s.failed
}

// dropsLife reports whether ops drop a stored session's life, whose keys
// prepare then reads from Pebble. s.mu is held.
func (s *Store) dropsLife(ops []op) bool {
	var created map[mqtthooks.SubscriberID]bool
	for i := range ops {
		switch o := &ops[i]; o.kind {
		case 'd':
			return true
		case 'c':
			if created[o.id] || s.storedGen(o.id) != 0 {
				return true
			}
			if created == nil {
				created = map[mqtthooks.SubscriberID]bool{}
			}
			created[o.id] = true
		}
	}
	return false
}

// install records the generations and reference counts of a batch that
// committed, and its entries in known. s.mu is held.
func (s *Store) install(gens map[mqtthooks.SubscriberID]uint64, refs map[uint64]int64) {
	for id, g := range gens {
		if g == 0 {
			delete(s.gens, id)
		} else {
			s.gens[id] = g
		}
	}
	for id, n := range refs {
		s.refs.set(id, max(n, 0))
	}
	s.known.apply()
	s.commits.Add(1)
}

// writeLoop applies the group of pending writes, again and again: the
// commits made while it applies one form the next.
func (s *Store) writeLoop() {
	defer s.bg.Done()
	spare := map[string]pendingValue{}
	for {
		s.mu.Lock()
		for len(s.pend) == 0 && len(s.pendDone) == 0 && !s.closed {
			s.cond.Wait()
		}
		if len(s.pend) == 0 && len(s.pendDone) == 0 {
			s.mu.Unlock()
			return // closed, and nothing left
		}
		group, dones := s.pend, s.pendDone
		s.pend, s.pendDone = spare, s.doneSpare[:0]
		s.flushing = group
		failed := s.failed
		s.mu.Unlock()

		err := failed // after a failed write, what follows may depend on it: refused too
		if err == nil {
			err = s.apply(group)
		}

		s.mu.Lock()
		s.flushing = nil
		if err != nil && s.failed == nil {
			s.failed = fmt.Errorf("pebble store: write failed, refusing further writes: %w", err)
		}
		s.cond.Broadcast()
		s.mu.Unlock()
		for _, done := range dones {
			if done != nil {
				done(err)
			}
		}
		clear(group)
		spare = group
		clear(dones)
		s.doneSpare = dones
	}
}

// apply writes group to Pebble in one batch, synced under Always.
func (s *Store) apply(group map[string]pendingValue) error {
	opt := pebble.NoSync
	if !s.policy.none && s.policy.every == 0 {
		opt = pebble.Sync
	}
	if len(group) == 0 {
		if opt == pebble.Sync {
			return s.db.LogData(nil, pebble.Sync) // commits applied at once (see Commit) wait for this
		}
		return nil
	}
	return s.applyGroup(group, opt)
}

// applyGroup writes group to Pebble in one batch.
func (s *Store) applyGroup(group map[string]pendingValue, opt *pebble.WriteOptions) error {
	pb := s.db.NewBatch()
	defer pb.Close()
	for k, v := range group {
		if v.del {
			_ = pb.Delete([]byte(k), nil)
		} else {
			_ = pb.Set([]byte(k), v.val, nil)
		}
	}
	return s.db.Apply(pb, opt)
}

// get returns the value of key as the commits so far leave it: the group
// being gathered, then the one being applied, then Pebble; nil when absent.
// s.mu is held.
func (s *Store) get(key []byte) ([]byte, error) {
	for _, layer := range []map[string]pendingValue{s.pend, s.flushing} {
		if v, ok := layer[string(key)]; ok {
			if v.del {
				return nil, nil
			}
			return v.val, nil
		}
	}
	v, closer, err := s.db.Get(key)
	if errors.Is(err, pebble.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer closer.Close()
	return bytes.Clone(v), nil
}

// drain waits until every commit is applied to Pebble. s.mu is held.
func (s *Store) drain() {
	for len(s.pend) > 0 || len(s.pendDone) > 0 || s.flushing != nil {
		s.cond.Broadcast()
		s.cond.Wait()
	}
}

// prepare checks ops against the stored generations and writes them to pb
// (a Pebble batch, or the pending group's overlay). It returns the generations and reference counts the batch
// leaves, to install once it is applied. s.mu is held.
func (s *Store) prepare(ops []op, pb writer) (map[mqtthooks.SubscriberID]uint64, map[uint64]int64, error) {
	gens := map[mqtthooks.SubscriberID]uint64{} // 0: deleted by the batch
	genOf := func(id mqtthooks.SubscriberID) uint64 {
		if g, ok := gens[id]; ok {
			return g
		}
		return s.storedGen(id)
	}
	var recs map[mqtthooks.SubscriberID]*mqtthooks.SessionRecord // the records this batch wrote
	wrote := func(r *mqtthooks.SessionRecord) {
		if recs == nil {
			recs = map[mqtthooks.SubscriberID]*mqtthooks.SessionRecord{}
		}
		recs[r.ID] = r
	}
	refs := map[uint64]int64{}
	ref := func(msgID uint64, d int64) {
		if _, ok := refs[msgID]; !ok {
			refs[msgID] = s.refs.get(msgID)
		}
		refs[msgID] += d
	}
	entries := map[string]uint64{} // entries this batch wrote (msgID) or deleted (0)
	s.known.events = s.known.events[:0]
	for i := range ops {
		o := &ops[i]
		switch o.kind {
		case 'c':
			if cur := genOf(o.id); cur != 0 && cur >= o.gen {
				return nil, nil, mqtthooks.ErrStaleGeneration
			} else if cur != 0 {
				if err := s.dropSession(pb, o.id, ref, entries); err != nil {
					return nil, nil, err
				}
			}
			gens[o.id] = o.gen
			wrote(o.rec)
			s.known.events = append(s.known.events, knownEvent{op: 'd', id: o.id}, knownEvent{op: 'c', id: o.id})
			pb.put(sessionKey(kindRecord, o.id), encodeRecord(o.rec), false)
			continue
		case kindMsg:
			if o.del { // the hold of PutMessage ends
				ref(o.msgID, -1)
				continue
			}
			ref(o.msgID, +1)
			pb.put(msgKey(o.msgID), encodeMessage(o.msg), true) // a new id: stored nowhere yet
			continue
		}
		if g := genOf(o.id); g == 0 || g != o.gen {
			return nil, nil, mqtthooks.ErrStaleGeneration
		}
		switch o.kind {
		case 'r':
			pb.put(sessionKey(kindRecord, o.id), encodeRecord(o.rec), false)
			wrote(o.rec)
		case 'n': // the life goes on under generation o.seq
			if o.seq <= o.gen {
				return nil, nil, mqtthooks.ErrStaleGeneration
			}
			rec, err := s.record(o.id, recs)
			if err != nil {
				return nil, nil, err
			}
			rec.Generation = o.seq
			wrote(rec)
			gens[o.id] = o.seq
			pb.put(sessionKey(kindRecord, o.id), encodeRecord(rec), false)
		case 'd':
			if err := s.dropSession(pb, o.id, ref, entries); err != nil {
				return nil, nil, err
			}
			gens[o.id] = 0
			s.known.events = append(s.known.events, knownEvent{op: 'd', id: o.id})
		case kindSub:
			if o.del {
				pb.del(subKey(o.id, o.filter))
			} else {
				pb.put(subKey(o.id, o.filter), encodeSub(o.sub), false)
			}
		case kindIn:
			if o.del {
				pb.del(inboundKey(o.id, o.inbound))
			} else {
				pb.put(inboundKey(o.id, o.inbound), []byte{version}, false)
			}
		case kindEntry:
			key := entryKey(o.id, o.seq)
			_, inBatch := entries[string(key)]
			old, err := s.entryMessage(o.id, o.seq, key, entries)
			if err != nil {
				return nil, nil, err
			}
			if o.del {
				if old != 0 {
					ref(old, -1)
					pb.del(key)
					entries[string(key)] = 0
					s.known.events = append(s.known.events, knownEvent{op: 'e', id: o.id, seq: o.seq})
				}
				continue
			}
			s.known.events = append(s.known.events, knownEvent{op: 'e', id: o.id, seq: o.seq, msgID: o.msgID})
			if old != o.msgID {
				if old != 0 {
					ref(old, -1)
				}
				ref(o.msgID, +1)
			}
			pb.put(key, encodeEntry(&o.entry), old == 0 && !inBatch)
			entries[string(key)] = o.msgID
		}
	}
	for msgID, n := range refs {
		if n <= 0 { // the batch dropped the last reference, or the hold of a message no entry took
			pb.del(msgKey(msgID))
		}
	}
	return gens, refs, nil
}

// record returns a copy of the record of id as the batch so far leaves it.
// s.mu is held.
func (s *Store) record(id mqtthooks.SubscriberID, recs map[mqtthooks.SubscriberID]*mqtthooks.SessionRecord) (*mqtthooks.SessionRecord, error) {
	if r, ok := recs[id]; ok {
		cp := *r
		return &cp, nil
	}
	v, err := s.get(sessionKey(kindRecord, id))
	if err != nil {
		return nil, err
	}
	if v == nil {
		return nil, mqtthooks.ErrStaleGeneration
	}
	r, err := decodeRecord(cloneID(id), v)
	if err != nil {
		return nil, err
	}
	return &r, nil
}

// storedGen returns the generation of the stored life of id, or 0; it reads
// the record when Load has not (a store written before Load, or a session
// Load did not reach). s.mu is held.
func (s *Store) storedGen(id mqtthooks.SubscriberID) uint64 {
	if g, ok := s.gens[id]; ok {
		return g
	}
	v, err := s.get(sessionKey(kindRecord, id))
	if err != nil || v == nil {
		return 0
	}
	d := decoder{b: v}
	d.version()
	if g := d.u(); d.err == nil {
		s.gens[cloneID(id)] = g
		return g
	}
	return 0
}

// entryMessage returns the message id of the stored entry at key, as the
// batch so far leaves it; 0 for none.
func (s *Store) entryMessage(id mqtthooks.SubscriberID, seq uint64, key []byte, entries map[string]uint64) (uint64, error) {
	if msgID, ok := entries[string(key)]; ok {
		return msgID, nil
	}
	if msgID, ok := s.known.lookup(id, seq); ok {
		return msgID, nil
	}
	v, err := s.get(key)
	if err != nil || v == nil {
		return 0, err
	}
	return entryMessageID(v)
}

// dropSession deletes everything of id, dropping its entries' references.
func (s *Store) dropSession(pb writer, id mqtthooks.SubscriberID, ref func(uint64, int64), entries map[string]uint64) error {
	prefix := sessionKey(kindEntry, id)
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: prefix, UpperBound: prefixEnd(prefix)})
	if err != nil {
		return err
	}
	for valid := it.First(); valid; valid = it.Next() {
		if _, seen := entries[string(it.Key())]; seen {
			continue
		}
		msgID, err := entryMessageID(it.Value())
		if err != nil {
			_ = it.Close()
			return err
		}
		ref(msgID, -1)
		entries[string(it.Key())] = 0 // gone with the life: a new life reusing the seq starts from nothing
	}
	if err := it.Close(); err != nil {
		return err
	}
	for k, msgID := range entries { // entries this batch wrote for the session
		if msgID != 0 && hasPrefix([]byte(k), prefix) {
			ref(msgID, -1)
			entries[k] = 0
		}
	}
	for _, kind := range []byte{kindRecord, kindSub, kindEntry, kindIn} {
		p := sessionKey(kind, id)
		if kind == kindRecord {
			pb.del(p)
			continue
		}
		pb.delRange(p, prefixEnd(p))
	}
	return nil
}

// quietLogger drops Pebble's informational logs; errors come back as errors.
type quietLogger struct{}

func (quietLogger) Infof(string, ...any)  {}
func (quietLogger) Errorf(string, ...any) {}
func (quietLogger) Fatalf(format string, args ...any) {
	panic(fmt.Sprintf("pebble: "+format, args...))
}

// countingFS counts the fsyncs of the files Pebble writes.
type countingFS struct {
	vfs.FS
	syncs atomic.Uint64
}

func (fs *countingFS) Create(name string, category vfs.DiskWriteCategory) (vfs.File, error) {
	f, err := fs.FS.Create(name, category)
	if err != nil {
		return nil, err
	}
	return &countingFile{File: f, fs: fs}, nil
}

func (fs *countingFS) ReuseForWrite(oldname, newname string, category vfs.DiskWriteCategory) (vfs.File, error) {
	f, err := fs.FS.ReuseForWrite(oldname, newname, category)
	if err != nil {
		return nil, err
	}
	return &countingFile{File: f, fs: fs}, nil
}

type countingFile struct {
	vfs.File
	fs *countingFS
}

func (f *countingFile) Sync() error {
	f.fs.syncs.Add(1)
	return f.File.Sync()
}

func (f *countingFile) SyncData() error {
	f.fs.syncs.Add(1)
	return f.File.SyncData()
}
