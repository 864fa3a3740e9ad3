package natsjs

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"iter"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"

	"github.com/mqtthooks/mqtthooks"
)

// Options configures a Store. The zero value of each field is a usable
// default.
type Options struct {
	// Stream is the name of the JetStream stream; "MQTTHOOKS" if empty.
	Stream string
	// Prefix is the first token(s) of the stream's subjects; Stream if
	// empty. The stream holds the subjects Prefix.>; no other stream may.
	Prefix string
	// Replicas is the stream's number of replicas in a JetStream cluster:
	// 3 keeps every acknowledged write through the loss of one server. 1 if
	// zero.
	Replicas int
	// Timeout bounds a read (Load, LoadSession), a write (from Commit to
	// its done) and a reservation of generations, retries included; 10
	// seconds if zero. A write still unanswered then fails with an error
	// saying that its outcome is unknown: JetStream may have stored it, and
	// a later read sees it. The Core takes it as failed: the PUBLISH it
	// stored a copy of is not acknowledged (so its resend may be stored
	// twice), the CONNECT it recorded is refused (its session stays in the
	// store for the next CONNECT).
	Timeout time.Duration
	// Logger receives what the Store cannot report otherwise; slog.Default()
	// if nil.
	Logger *slog.Logger
}

// Store is a mqtthooks.SessionLoader on a JetStream stream, which the nodes
// of a cluster share, each with its own Store on its own connection. It is
// safe for concurrent use. See the package documentation for the layout and
// what each operation costs.
type Store struct {
	nc        *nats.Conn
	stream    string
	logPrefix string // Prefix.l.
	genSubj   string // Prefix.g
	timeout   time.Duration
	logger    *slog.Logger
	atomic    bool   // the server takes atomic batches
	maxChunk  int    // the most payload one message carries
	writer    string // this Store's id in hdrWrite
	writes    atomic.Uint64

	mu       sync.Mutex
	closed   bool
	sessions map[string]*sess // by log subject
	index    map[uint64]*held // messages this Store has, for the entries committed after
	inflight sync.WaitGroup   // commits not yet done

	genMu       sync.Mutex
	genNext     uint64 // the next generation of the reserved block, if not past genEnd
	genEnd      uint64
	genFloor    atomic.Uint64 // the highest generation this Store saw stored
	counterSeen atomic.Uint64 // the generation counter, as this Store last saw it
}

var _ mqtthooks.SessionLoader = (*Store)(nil)

// ErrClosed is the error of a Commit after Close.
var ErrClosed = errors.New("natsjs: the store is closed")

// ErrAtomicPublishUnsupported is the error of a write that needs an atomic
// batch of several messages (a batch that changes several sessions, or a
// session too large for one message) when the server does not take them.
var ErrAtomicPublishUnsupported = errors.New("natsjs: the JetStream server does not support atomic batch publish")

// Compaction: a session's log is written whole again (a snapshot that rolls
// up the log) when it has at least minDeltas changes since its last
// snapshot and their size reaches half the snapshot's, or when it has
// maxDeltas changes.
const (
	minDeltas = 16
	maxDeltas = 1024
)

// genBlock is the number of generations a Store reserves at once.
const genBlock = 1000

// tombstoneTTL is how long the marker of a deleted session stays. Fencing
// does not need it to stay: a writer of the ended life expects a later
// sequence, which an empty subject does not have either.
const tombstoneTTL = "10m"

// Open returns a Store on the stream opts.Stream, which it creates, or
// updates to the settings the Store needs. nc stays the caller's: the Store
// does not close it, and must be closed before it is. The Store uses the
// default JetStream API prefix, $JS.API: a JetStream domain is not
// supported. It needs nats-server 2.12 or later (atomic batch publish and
// per-message TTL).
func Open(ctx context.Context, nc *nats.Conn, opts Options) (*Store, error) {
	if nc == nil {
		return nil, errors.New("natsjs: Open needs a NATS connection")
	}
	if opts.Stream == "" {
		opts.Stream = "MQTTHOOKS"
	}
	if opts.Prefix == "" {
		opts.Prefix = opts.Stream
	}
	if strings.ContainsAny(opts.Stream, " \t\r\n.*>/\\") {
		return nil, fmt.Errorf("natsjs: invalid stream name %q", opts.Stream)
	}
	if strings.ContainsAny(opts.Prefix, " \t\r\n*>") || strings.HasPrefix(opts.Prefix, ".") ||
		strings.HasSuffix(opts.Prefix, ".") || strings.Contains(opts.Prefix, "..") {
		return nil, fmt.Errorf("natsjs: invalid subject prefix %q", opts.Prefix)
	}
	if opts.Replicas == 0 {
		opts.Replicas = 1
	}
	if opts.Timeout <= 0 {
		opts.Timeout = 10 * time.Second
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, fmt.Errorf("natsjs: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, opts.Timeout)
	defer cancel()
	stream, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:               opts.Stream,
		Description:        "mqtthooks sessions",
		Subjects:           []string{opts.Prefix + ".>"},
		Storage:            jetstream.FileStorage,
		Replicas:           opts.Replicas,
		Retention:          jetstream.LimitsPolicy,
		Discard:            jetstream.DiscardOld,
		AllowRollup:        true,
		AllowDirect:        true,
		AllowAtomicPublish: true,
		AllowMsgTTL:        true,
	})
	if err != nil {
		return nil, fmt.Errorf("natsjs: creating the stream %s: %w", opts.Stream, err)
	}
	cfg := stream.CachedInfo().Config
	if !cfg.AllowMsgTTL {
		return nil, fmt.Errorf("natsjs: the stream %s has no per-message TTL: nats-server 2.12 or later is needed", opts.Stream)
	}
	s := &Store{
		nc:        nc,
		stream:    opts.Stream,
		logPrefix: opts.Prefix + ".l.",
		genSubj:   opts.Prefix + ".g",
		timeout:   opts.Timeout,
		logger:    opts.Logger,
		atomic:    cfg.AllowAtomicPublish,
		maxChunk:  max(int(nc.MaxPayload())-4096, 1024),
		writer:    nuid.Next(),
		sessions:  map[string]*sess{},
		index:     map[uint64]*held{},
	}
	if v, _, err := s.readCounter(ctx); err != nil {
		return nil, fmt.Errorf("natsjs: reading the generation counter: %w", err)
	} else {
		s.counterSeen.Store(v)
	}
	return s, nil
}

// Close waits until every commit made before has called its done, and
// makes later commits fail with ErrClosed. It does not close the
// connection.
func (s *Store) Close() error {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	s.inflight.Wait()
	return nil
}

// Forget drops what the Store keeps in memory of the session id: its copy
// of the session, and its hold on the messages the session's entries name.
// A node calls it when the session has moved to another node; the stored
// session is untouched, and a later write for id reads it again. A session
// with writes under way is kept.
func (s *Store) Forget(id mqtthooks.SubscriberID) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if ss := s.sessions[s.subject(id)]; ss != nil && !ss.busy && len(ss.queue) == 0 {
		s.dropMirror(ss)
		delete(s.sessions, ss.subject)
	}
}

// subject returns the subject of id's log: Prefix.l. and a token that
// encodes the mountpoint and client id, base64url of both with their
// lengths, or, for ids too long for a subject, of their SHA-256.
func (s *Store) subject(id mqtthooks.SubscriberID) string {
	b := binary.AppendUvarint(make([]byte, 0, 4+len(id.Mountpoint)+len(id.ClientID)), uint64(len(id.Mountpoint)))
	b = append(b, id.Mountpoint...)
	b = append(append(b, '/'), id.ClientID...)
	if len(b) <= 192 {
		return s.logPrefix + "i" + base64.RawURLEncoding.EncodeToString(b)
	}
	h := sha256.Sum256(b)
	return s.logPrefix + "h" + base64.RawURLEncoding.EncodeToString(h[:])
}

// held is a message the Store has: held by PutMessage, named by an entry of
// a commit under way, or in a session the Store knows.
type held struct {
	m    *mqtthooks.Message
	refs int
}

func (s *Store) ref(id uint64, m *mqtthooks.Message) {
	if h := s.index[id]; h != nil {
		h.refs++
	} else {
		s.index[id] = &held{m: m, refs: 1}
	}
}

func (s *Store) unref(id uint64) {
	if h := s.index[id]; h != nil {
		if h.refs--; h.refs <= 0 {
			delete(s.index, id)
		}
	}
}

// sess is a session this Store writes or knows: its commits under way, and
// its mirror, what the Store knows of it stored. While busy, a job owns the
// mirror; otherwise s.mu guards it.
type sess struct {
	id      mqtthooks.SubscriberID
	subject string
	queue   []*commit // in commit order; a job takes them from the front
	busy    bool

	known      bool   // the mirror is read or written
	st         *state // nil: no session stored
	lastSeq    uint64 // the stream sequence of the log's last message; 0 for none
	deltas     int    // messages since the last snapshot
	deltaBytes int
	snapBytes  int
}

// session returns the sess of id, made if needed. s.mu is held.
func (s *Store) session(id mqtthooks.SubscriberID) *sess {
	subj := s.subject(id)
	ss := s.sessions[subj]
	if ss == nil {
		ss = &sess{id: id, subject: subj}
		s.sessions[subj] = ss
	}
	return ss
}

// setMirror makes lg the mirror of ss. s.mu is held.
func (s *Store) setMirror(ss *sess, lg *logState) {
	s.dropMirror(ss)
	ss.known, ss.st, ss.lastSeq = true, lg.st, lg.lastSeq
	ss.deltas, ss.deltaBytes, ss.snapBytes = lg.deltas, lg.deltaBytes, lg.snapBytes
	if ss.st != nil {
		for id, m := range ss.st.msgs {
			s.ref(id, m)
		}
	}
}

// dropMirror forgets the mirror of ss. s.mu is held.
func (s *Store) dropMirror(ss *sess) {
	if ss.st != nil {
		for id := range ss.st.msgs {
			s.unref(id)
		}
	}
	ss.known, ss.st, ss.lastSeq = false, nil, 0
}

// Batch starts a batch of changes; a batch is used by one goroutine. Its
// Commit does not wait for I/O: the batches of each session are written in
// Commit order, one write in flight at a time, those that wait meanwhile
// merged into one message. done is called once JetStream acknowledged the
// write (on a quorum of replicas), with ErrStaleGeneration if a life it
// names is not the stored one (nothing of the batch is then stored), or
// with the error that failed it once Options.Timeout passed; a batch of
// message holds only (PutMessage, ReleaseMessage) calls done at once.
func (s *Store) Batch() mqtthooks.StoreBatch { return &batch{s: s} }

type batch struct {
	s   *Store
	ops []*op
}

func (b *batch) add(o *op) { b.ops = append(b.ops, o) }

// CreateSession: see mqtthooks.StoreBatch.
func (b *batch) CreateSession(rec *mqtthooks.SessionRecord) {
	r := cloneRecord(rec)
	b.add(&op{kind: opCreate, id: r.ID, rec: &r, gen: r.Generation})
}

// UpdateSession: see mqtthooks.StoreBatch.
func (b *batch) UpdateSession(rec *mqtthooks.SessionRecord) {
	r := cloneRecord(rec)
	b.add(&op{kind: opUpdate, id: r.ID, rec: &r, gen: r.Generation})
}

// DeleteSession: see mqtthooks.StoreBatch.
func (b *batch) DeleteSession(id mqtthooks.SubscriberID, gen uint64) {
	b.add(&op{kind: opDelete, id: id, gen: gen})
}

// RenewSession: see mqtthooks.StoreBatch.
func (b *batch) RenewSession(id mqtthooks.SubscriberID, from, to uint64) {
	b.add(&op{kind: opRenew, id: id, gen: from, to: to})
}

// PutSubscription: see mqtthooks.StoreBatch.
func (b *batch) PutSubscription(id mqtthooks.SubscriberID, gen uint64, sub mqtthooks.Subscription) {
	b.add(&op{kind: opPutSub, id: id, gen: gen, sub: sub})
}

// DeleteSubscription: see mqtthooks.StoreBatch.
func (b *batch) DeleteSubscription(id mqtthooks.SubscriberID, gen uint64, filter string) {
	b.add(&op{kind: opDelSub, id: id, gen: gen, filter: filter})
}

// PutMessage: see mqtthooks.StoreBatch. The message is kept in memory until
// released, and written with the first entry of each session that names it.
func (b *batch) PutMessage(msgID uint64, m *mqtthooks.Message) {
	b.add(&op{kind: opPutMsg, msgID: msgID, msg: m})
}

// ReleaseMessage: see mqtthooks.StoreBatch.
func (b *batch) ReleaseMessage(msgID uint64) { b.add(&op{kind: opReleaseMsg, msgID: msgID}) }

// PutEntry: see mqtthooks.StoreBatch.
func (b *batch) PutEntry(id mqtthooks.SubscriberID, gen uint64, e *mqtthooks.StoredEntry) {
	o := &op{kind: opPutEntry, id: id, gen: gen, entry: *e}
	o.entry.SubscriptionIdentifiers = slices.Clone(e.SubscriptionIdentifiers)
	b.add(o)
}

// DeleteEntry: see mqtthooks.StoreBatch.
func (b *batch) DeleteEntry(id mqtthooks.SubscriberID, gen uint64, seq uint64, _ uint64) {
	b.add(&op{kind: opDelEntry, id: id, gen: gen, seq: seq})
}

// PutInbound: see mqtthooks.StoreBatch.
func (b *batch) PutInbound(id mqtthooks.SubscriberID, gen uint64, packetID uint16) {
	b.add(&op{kind: opPutIn, id: id, gen: gen, pid: packetID})
}

// DeleteInbound: see mqtthooks.StoreBatch.
func (b *batch) DeleteInbound(id mqtthooks.SubscriberID, gen uint64, packetID uint16) {
	b.add(&op{kind: opDelIn, id: id, gen: gen, pid: packetID})
}

// commit is a batch handed to Commit.
type commit struct {
	parts    []part // one per session, in the order of their first change
	done     func(error)
	err      error
	attached []uint64 // the messages found for its entries, held until it is done
}

type part struct {
	ss  *sess
	ops []*op
}

// Commit applies the batch: the changes of each session it names become one
// message on that session's log (or one atomic batch of messages, for a
// batch that changes several sessions), published with the expectation
// that the log ends where this Store last saw it, so that JetStream refuses
// it if another node wrote the session since. done is called once
// JetStream has acknowledged it (stored on a quorum of the stream's
// replicas), or with ErrStaleGeneration, or with the error that failed it
// after retries for Options.Timeout. Commit does not wait for I/O: the
// batches of a session are written one at a time, in Commit order, by a
// goroutine of the Store, and the batches that wait meanwhile are written
// together. Message holds (PutMessage, ReleaseMessage) apply at once; a
// batch with nothing else calls done before Commit returns.
func (b *batch) Commit(done func(error)) {
	if done == nil {
		done = func(error) {}
	}
	s := b.s
	ops := b.ops
	b.ops = nil
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		done(ErrClosed)
		return
	}
	c := &commit{done: done}
	for _, o := range ops {
		switch o.kind {
		case opPutMsg:
			s.ref(o.msgID, o.msg)
			continue
		case opReleaseMsg:
			s.unref(o.msgID)
			continue
		case opPutEntry:
			if h := s.index[o.entry.MessageID]; h != nil {
				o.msg = h.m
				h.refs++
				c.attached = append(c.attached, o.entry.MessageID)
			}
		}
		ss := s.session(o.id)
		i := 0
		for i < len(c.parts) && c.parts[i].ss != ss {
			i++
		}
		if i == len(c.parts) {
			c.parts = append(c.parts, part{ss: ss})
		}
		c.parts[i].ops = append(c.parts[i].ops, o)
	}
	if len(c.parts) == 0 {
		s.mu.Unlock()
		done(nil)
		return
	}
	s.inflight.Add(1)
	for _, p := range c.parts {
		p.ss.queue = append(p.ss.queue, c)
	}
	for _, p := range c.parts {
		s.dispatch(p.ss)
	}
	s.mu.Unlock()
}

// maxGroup bounds the commits of a session written as one message.
const maxGroup = 256

// job is a write under way: the commits at the front of the queue of one
// session, or one commit that changes several sessions.
type job struct {
	sessions []*sess
	commits  []*commit
}

// dispatch starts a job for the commits at the front of ss's queue, unless
// one is under way, or the first one changes other sessions whose queues
// are not there yet. s.mu is held.
func (s *Store) dispatch(ss *sess) {
	if ss.busy || len(ss.queue) == 0 {
		return
	}
	c := ss.queue[0]
	if len(c.parts) == 1 {
		n := 1
		for n < len(ss.queue) && n < maxGroup && len(ss.queue[n].parts) == 1 {
			n++
		}
		ss.busy = true
		go s.run(&job{sessions: []*sess{ss}, commits: slices.Clone(ss.queue[:n])})
		return
	}
	j := &job{commits: []*commit{c}}
	for _, p := range c.parts {
		if p.ss.busy || p.ss.queue[0] != c {
			return
		}
		j.sessions = append(j.sessions, p.ss)
	}
	for _, o := range j.sessions {
		o.busy = true
	}
	go s.run(j)
}

// run writes j, trying again while the failure allows and Options.Timeout
// lasts, and calls the commits' done.
func (s *Store) run(j *job) {
	ctx, cancel := context.WithTimeout(context.Background(), s.timeout)
	defer cancel()
	w := &writing{outcomes: map[string][]error{}, fresh: map[*sess]bool{}}
	var err error
	for n := 0; ; n++ {
		if err = s.attempt(ctx, j, w); err == nil || !retryable(err) || ctx.Err() != nil {
			break
		}
		s.logger.Debug("natsjs: session store: write again", "session", j.sessions[0].id.String(), "err", err)
		if backoff(ctx, n) != nil {
			break
		}
	}
	if err != nil {
		for _, c := range j.commits {
			if c.err == nil {
				c.err = err
			}
		}
	}
	s.mu.Lock()
	for _, ss := range j.sessions {
		clear(ss.queue[:len(j.commits)]) // let the done commits go
		if ss.queue = ss.queue[len(j.commits):]; len(ss.queue) == 0 {
			ss.queue = nil
		}
		ss.busy = false
	}
	for _, c := range j.commits {
		for _, id := range c.attached {
			s.unref(id)
		}
	}
	for _, ss := range j.sessions {
		s.dispatch(ss)
		if !ss.busy && len(ss.queue) == 0 && ss.st == nil {
			s.dropMirror(ss)
			delete(s.sessions, ss.subject)
		}
	}
	s.mu.Unlock()
	for _, c := range j.commits {
		c.done(c.err)
		s.inflight.Done()
	}
}

// writing is what the attempts of a job have written: each attempt's write
// id, and the outcome of each commit had it been stored; and the sessions
// whose mirror was read during the job.
type writing struct {
	outcomes map[string][]error
	fresh    map[*sess]bool
}

// read makes the mirror of ss what its log holds.
func (s *Store) read(ctx context.Context, ss *sess, w *writing) error {
	lg, err := s.readLog(ctx, ss.subject)
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.setMirror(ss, lg)
	s.mu.Unlock()
	w.fresh[ss] = true
	return nil
}

// attempt writes the commits of j once. The commits a session's life
// refuses get ErrStaleGeneration; nil means that the others are stored.
func (s *Store) attempt(ctx context.Context, j *job, w *writing) error {
	for _, ss := range j.sessions {
		if ss.known {
			continue
		}
		if first := j.firstOp(ss); first != nil && first.kind == opCreate {
			// Most likely a new session: written expecting an empty log,
			// read only if JetStream says otherwise.
			ss.known, ss.st, ss.lastSeq, ss.deltas, ss.deltaBytes, ss.snapBytes = true, nil, 0, 0, 0, 0
			w.fresh[ss] = false
			continue
		}
		if err := s.read(ctx, ss, w); err != nil {
			return err
		}
	}

	// Check the lives the commits name; each applies whole or not at all.
	// A refusal on what this Store knows from memory is checked again on
	// what is stored: another node may have written the session since.
	outcome := make([]error, len(j.commits))
	for {
		lives := map[*sess]life{}
		for _, ss := range j.sessions {
			lives[ss] = lifeOf(ss.st)
		}
		var reread []*sess
		for i, c := range j.commits {
			outcome[i] = nil
			next := make([]life, len(c.parts))
			ok := true
			for k, p := range c.parts {
				var pok bool
				next[k], pok = lives[p.ss].after(p.ops)
				ok = ok && pok
			}
			if ok {
				for k, p := range c.parts {
					lives[p.ss] = next[k]
				}
				continue
			}
			outcome[i] = mqtthooks.ErrStaleGeneration
			for _, p := range c.parts {
				if !w.fresh[p.ss] && !slices.Contains(reread, p.ss) {
					reread = append(reread, p.ss)
				}
			}
		}
		if len(reread) == 0 {
			break
		}
		for _, ss := range reread {
			if err := s.read(ctx, ss, w); err != nil {
				return err
			}
		}
	}

	// Apply them to the mirrors.
	type work struct {
		e     encoder
		reset bool
		ev    events
	}
	works := make([]work, len(j.sessions))
	pos := func(ss *sess) int {
		for i, o := range j.sessions {
			if o == ss {
				return i
			}
		}
		panic("natsjs: a session outside its job")
	}
	var maxGen uint64
	for i, c := range j.commits {
		if outcome[i] != nil {
			continue
		}
		for _, p := range c.parts {
			wk := &works[pos(p.ss)]
			for _, o := range p.ops {
				var reset bool
				p.ss.st, reset = applyOp(p.ss.st, o, &wk.e, &wk.ev)
				wk.reset = wk.reset || reset
				switch o.kind {
				case opCreate:
					maxGen = max(maxGen, o.rec.Generation)
				case opRenew:
					maxGen = max(maxGen, o.to)
				}
			}
		}
	}
	s.mu.Lock()
	for i := range works {
		for _, a := range works[i].ev.added {
			s.ref(a.id, a.m)
		}
		for _, id := range works[i].ev.dropped {
			s.unref(id)
		}
	}
	s.mu.Unlock()
	for i, c := range j.commits {
		c.err = outcome[i]
	}

	// One part per session that changed.
	writeID := s.writer + "." + strconv.FormatUint(s.writes.Add(1), 10)
	var msgs []*nats.Msg
	type written struct {
		ss       *sess
		last     int // index in msgs
		size     int
		snapshot bool
	}
	var parts []written
	for i, ss := range j.sessions {
		wk := &works[i]
		if len(wk.e.b) == 0 && !wk.reset {
			continue
		}
		var b []byte
		snapshot := wk.reset || ss.deltas+1 >= maxDeltas ||
			(ss.deltas+1 >= minDeltas && ss.deltaBytes+len(wk.e.b) >= ss.snapBytes/2)
		switch {
		case snapshot && ss.st == nil:
			b = tombstone
		case snapshot:
			b = encodeSnapshot(ss.st)
		default:
			b = append([]byte{version, kindDelta}, wk.e.b...)
		}
		n := (len(b) + s.maxChunk - 1) / s.maxChunk
		for k := range n {
			m := nats.NewMsg(ss.subject)
			m.Data = b[k*s.maxChunk : min(len(b), (k+1)*s.maxChunk)]
			if n > 1 {
				m.Header.Set(hdrChunk, strconv.Itoa(k+1)+"/"+strconv.Itoa(n))
			}
			if k == 0 {
				m.Header.Set(hdrWrite, writeID)
				m.Header.Set(hdrExpectedLastSubjSeq, strconv.FormatUint(ss.lastSeq, 10))
				if snapshot {
					m.Header.Set(hdrRollup, "sub")
				}
				if snapshot && ss.st == nil {
					m.Header.Set(hdrTTL, tombstoneTTL)
				}
			}
			msgs = append(msgs, m)
		}
		parts = append(parts, written{ss: ss, last: len(msgs) - 1, size: len(b), snapshot: snapshot})
	}
	if len(msgs) == 0 {
		return nil
	}
	w.outcomes[writeID] = outcome

	if maxGen > s.counterSeen.Load() {
		if err := s.raiseCounter(ctx, maxGen); err != nil {
			s.invalidate(j)
			return err
		}
	}
	seqs, err := s.publish(ctx, msgs)
	if err != nil {
		s.invalidate(j)
		if retryable(err) {
			// The write may be stored (an unknown outcome, or an earlier
			// attempt's): read the logs again, and look for it.
			if found, rerr := s.reload(ctx, j, w); rerr == nil && found {
				return nil
			}
		}
		return err
	}
	for _, p := range parts {
		p.ss.lastSeq = seqs[p.last]
		if p.snapshot {
			p.ss.deltas, p.ss.deltaBytes, p.ss.snapBytes = 0, 0, p.size
		} else {
			p.ss.deltas++
			p.ss.deltaBytes += p.size
		}
	}
	for {
		if f := s.genFloor.Load(); maxGen <= f || s.genFloor.CompareAndSwap(f, maxGen) {
			break
		}
	}
	return nil
}

// firstOp returns the first change of the job to ss.
func (j *job) firstOp(ss *sess) *op {
	for _, c := range j.commits {
		for _, p := range c.parts {
			if p.ss == ss && len(p.ops) > 0 {
				return p.ops[0]
			}
		}
	}
	return nil
}

// invalidate forgets the mirrors of j's sessions, which a failed write left
// ahead of what is stored.
func (s *Store) invalidate(j *job) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, ss := range j.sessions {
		s.dropMirror(ss)
	}
}

// reload reads the logs of j's sessions again, and says whether one of the
// job's writes is in them; if so, the commits get that write's outcomes.
func (s *Store) reload(ctx context.Context, j *job, w *writing) (bool, error) {
	var found []error
	for _, ss := range j.sessions {
		lg, err := s.readLog(ctx, ss.subject)
		if err != nil {
			return false, err
		}
		s.mu.Lock()
		s.setMirror(ss, lg)
		s.mu.Unlock()
		w.fresh[ss] = true
		for _, id := range lg.writes {
			if o, ok := w.outcomes[id]; ok {
				found = o
			}
		}
	}
	if found == nil {
		return false, nil
	}
	for i, c := range j.commits {
		c.err = found[i]
	}
	return true, nil
}

// logState is a session's log as read.
type logState struct {
	st         *state // nil: no session
	lastSeq    uint64
	deltas     int
	deltaBytes int
	snapBytes  int
	writes     []string // the writes since the last snapshot, and its own
}

// readLog reads the log on subject, through the leader or checked against
// it, so that it has every write acknowledged before.
func (s *Store) readLog(ctx context.Context, subject string) (*logState, error) {
	last, err := s.leaderGet(ctx, msgGetRequest{LastFor: subject})
	if errors.Is(err, errNotFound) {
		return &logState{}, nil
	}
	if err != nil {
		return nil, err
	}
	if i, n := last.chunk(); i == 1 && n == 1 && len(last.data) > 1 &&
		(last.data[1] == kindSnapshot || last.data[1] == kindTombstone) {
		return replay([]rawMsg{*last})
	}
	msgs, err := s.readRange(ctx, subject, last.seq)
	if err != nil {
		return nil, err
	}
	return replay(msgs)
}

// replay builds a session from the messages of its log, in order.
func replay(msgs []rawMsg) (*logState, error) {
	lg := &logState{}
	for i := 0; i < len(msgs); {
		k, n := msgs[i].chunk()
		if k != 1 {
			i++ // the rest of a part whose start a rollup removed
			continue
		}
		if i+n > len(msgs) {
			return nil, fmt.Errorf("%w: %s: a part of %d messages ends early", errCorrupt, msgs[i].subject, n)
		}
		data := msgs[i].data
		if n > 1 {
			data = nil
			for k := range n {
				if ck, cn := msgs[i+k].chunk(); ck != k+1 || cn != n {
					return nil, fmt.Errorf("%w: %s: a part's messages are out of order", errCorrupt, msgs[i].subject)
				}
				data = append(data, msgs[i+k].data...)
			}
		}
		if len(data) < 2 {
			return nil, fmt.Errorf("%w: %s: an empty part", errCorrupt, msgs[i].subject)
		}
		st, err := decodePart(lg.st, data, nil)
		if err != nil {
			return nil, fmt.Errorf("%s at %d: %w", msgs[i].subject, msgs[i].seq, err)
		}
		lg.st = st
		if data[1] == kindDelta {
			lg.deltas++
			lg.deltaBytes += len(data)
		} else {
			lg.deltas, lg.deltaBytes, lg.snapBytes, lg.writes = 0, 0, len(data), lg.writes[:0]
		}
		lg.writes = append(lg.writes, msgs[i].hdr.Get(hdrWrite))
		lg.lastSeq = msgs[i+n-1].seq
		i += n
	}
	return lg, nil
}

// LoadSession returns the stored session of id, or nil and no error. It
// reads through the stream leader (or a replica checked against the
// leader's last sequence), so it sees every batch any node's Store reported
// done before it was called. The Store keeps what it read, to write the
// session next. Reading costs one request when the session's log was just
// rolled up, and one more for each batch of up to 512 messages otherwise.
func (s *Store) LoadSession(ctx context.Context, id mqtthooks.SubscriberID) (*mqtthooks.StoredSession, error) {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	subj := s.subject(id)
	lg, err := s.readLog(ctx, subj)
	if err != nil {
		return nil, fmt.Errorf("natsjs: reading session %s: %w", id, err)
	}
	if lg.st != nil && lg.st.rec.ID != id {
		return nil, nil // another id with the same hash
	}
	s.mu.Lock()
	if ss := s.sessions[subj]; ss == nil && lg.st != nil || ss != nil && !ss.busy && len(ss.queue) == 0 {
		s.setMirror(s.session(id), lg)
	}
	s.mu.Unlock()
	if lg.st == nil {
		return nil, nil
	}
	s.raiseFloor(lg.st.rec.Generation)
	return lg.st.stored(), nil
}

// Load yields every stored session, read from the start of the stream to
// past the leader's last message. The Store keeps the sessions it does not
// write already, to write them next.
func (s *Store) Load(ctx context.Context) iter.Seq2[*mqtthooks.StoredSession, error] {
	return func(yield func(*mqtthooks.StoredSession, error) bool) {
		out, err := s.loadAll(ctx)
		if err != nil {
			yield(nil, fmt.Errorf("natsjs: loading sessions: %w", err))
			return
		}
		for _, ss := range out {
			if !yield(ss, nil) {
				return
			}
		}
	}
}

func (s *Store) loadAll(ctx context.Context) ([]*mqtthooks.StoredSession, error) {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	filter := s.logPrefix + ">"
	last, err := s.leaderGet(ctx, msgGetRequest{LastFor: filter})
	if errors.Is(err, errNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	msgs, err := s.readRange(ctx, filter, last.seq)
	if err != nil {
		return nil, err
	}
	bySubject := map[string][]rawMsg{}
	var order []string
	for _, m := range msgs {
		if _, ok := bySubject[m.subject]; !ok {
			order = append(order, m.subject)
		}
		bySubject[m.subject] = append(bySubject[m.subject], m)
	}
	logs := make([]*logState, 0, len(order))
	for _, subj := range order {
		lg, err := replay(bySubject[subj])
		if err != nil {
			return nil, err
		}
		logs = append(logs, lg)
	}
	var out []*mqtthooks.StoredSession
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, lg := range logs {
		if lg.st == nil {
			continue
		}
		out = append(out, lg.st.stored())
		s.raiseFloor(lg.st.rec.Generation)
		if ss := s.sessions[order[i]]; ss == nil || !ss.busy && len(ss.queue) == 0 && !ss.known {
			s.setMirror(s.session(lg.st.rec.ID), lg)
		}
	}
	return out, nil
}

func (s *Store) raiseFloor(gen uint64) {
	for {
		if f := s.genFloor.Load(); gen <= f || s.genFloor.CompareAndSwap(f, gen) {
			return
		}
	}
}

// NextGeneration returns a generation no Store on the stream returned
// before, greater than every generation this Store returned, loaded or
// wrote, and than every generation stored when its block was reserved.
// The generations come from blocks of 1000 reserved on a counter in the
// stream (with an expected-sequence publish, so nodes never share a block);
// a call that needs a new block waits for JetStream. If JetStream cannot
// reserve one within Options.Timeout, NextGeneration panics with the error:
// returning a number another node may hand out too would break fencing (the
// Core recovers the panic as a failed registration).
func (s *Store) NextGeneration() uint64 {
	s.genMu.Lock()
	defer s.genMu.Unlock()
	floor := s.genFloor.Load()
	if s.genNext == 0 || s.genNext > s.genEnd || s.genNext <= floor {
		ctx, cancel := context.WithTimeout(context.Background(), s.timeout)
		defer cancel()
		for n := 0; ; n++ {
			v, seq, err := s.readCounter(ctx)
			if err == nil {
				base := max(v, floor, s.genEnd)
				if err = s.writeCounter(ctx, base+genBlock, seq); err == nil {
					s.genNext, s.genEnd = base+1, base+genBlock
					s.raiseCounterSeen(s.genEnd)
					break
				}
			}
			if !retryable(err) || backoff(ctx, n) != nil {
				panic(fmt.Errorf("natsjs: reserving generations: %w", err))
			}
		}
	}
	g := s.genNext
	s.genNext++
	return g
}

func (s *Store) raiseCounterSeen(v uint64) {
	for {
		if c := s.counterSeen.Load(); v <= c || s.counterSeen.CompareAndSwap(c, v) {
			return
		}
	}
}

// readCounter returns the generation counter and the sequence of its
// message (0, 0 if none).
func (s *Store) readCounter(ctx context.Context) (v, seq uint64, err error) {
	m, err := s.leaderGet(ctx, msgGetRequest{LastFor: s.genSubj})
	if errors.Is(err, errNotFound) {
		return 0, 0, nil
	}
	if err != nil {
		return 0, 0, err
	}
	v, err = strconv.ParseUint(string(m.data), 10, 64)
	if err != nil {
		return 0, 0, fmt.Errorf("%w: the generation counter is %q", errCorrupt, m.data)
	}
	return v, m.seq, nil
}

// writeCounter sets the generation counter to v, if its message is still
// the one at seq.
func (s *Store) writeCounter(ctx context.Context, v, seq uint64) error {
	m := nats.NewMsg(s.genSubj)
	m.Data = []byte(strconv.FormatUint(v, 10))
	m.Header.Set(hdrExpectedLastSubjSeq, strconv.FormatUint(seq, 10))
	m.Header.Set(hdrRollup, "sub")
	_, err := s.publish(ctx, []*nats.Msg{m})
	return err
}

// raiseCounter makes the generation counter at least gen, for a life
// numbered by another writer than NextGeneration.
func (s *Store) raiseCounter(ctx context.Context, gen uint64) error {
	for n := 0; ; n++ {
		v, seq, err := s.readCounter(ctx)
		if err == nil {
			if v >= gen {
				s.raiseCounterSeen(v)
				return nil
			}
			if err = s.writeCounter(ctx, gen, seq); err == nil {
				s.raiseCounterSeen(gen)
				return nil
			}
		}
		if !retryable(err) || backoff(ctx, n) != nil {
			return fmt.Errorf("natsjs: raising the generation counter: %w", err)
		}
	}
}
