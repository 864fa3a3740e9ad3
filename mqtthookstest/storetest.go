package mqtthookstest

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mqtthooks/mqtthooks"
)

// StoreHarness opens the stores TestSessionStore checks.
type StoreHarness struct {
	// Open returns a new, empty store. Required.
	Open func(t *testing.T) mqtthooks.SessionStore
	// Reopen stops s cleanly and opens its data again, as a restart after
	// a Shutdown does. Required.
	Reopen func(t *testing.T, s mqtthooks.SessionStore) mqtthooks.SessionStore
	// Crash ends s as a killed process would, without closing it, and opens
	// what it left. Nil leaves crashes untested.
	Crash func(t *testing.T, s mqtthooks.SessionStore) mqtthooks.SessionStore
	// Synced says that every commit whose done was called with nil survives
	// Crash: a store that syncs each commit (Pebble's Always). A store that
	// may lose recent commits (an interval of syncs) must still leave whole
	// batches, in the order they were committed.
	Synced bool
}

// TestSessionStore checks a SessionStore implementation against the contract
// of mqtthooks.SessionStore, in the manner of testing/fstest.TestFS: what a
// store keeps and loads, atomic batches, fencing by Generation (a write for an
// older or ended life is refused and changes nothing), entries in Seq order,
// messages stored once for many sessions, held until released and then
// dropped with their last entry, generations that grow across restarts,
// concurrent commits, a life renewed under a new generation (as when a
// session moves between the nodes of a cluster), LoadSession for a
// mqtthooks.SessionLoader, and, with h.Crash, what survives a crash.
func TestSessionStore(t *testing.T, h StoreHarness) {
	t.Helper()
	if h.Open == nil || h.Reopen == nil {
		t.Fatal("mqtthookstest: TestSessionStore needs Open and Reopen")
	}
	st := &storeTest{h: h}
	t.Run("Empty", st.empty)
	t.Run("KeepsEverything", st.keepsEverything)
	t.Run("Changes", st.changes)
	t.Run("EntriesInSeqOrder", st.seqOrder)
	t.Run("ManySessions", st.manySessions)
	t.Run("Fencing", st.fencing)
	t.Run("Renew", st.renew)
	if _, ok := h.Open(t).(mqtthooks.SessionLoader); ok {
		t.Run("LoadSession", st.loadSession)
	}
	t.Run("BatchIsAtomic", st.atomic)
	t.Run("MessagesStoredOnce", st.messagesOnce)
	t.Run("MessageHeldUntilReleased", st.held)
	t.Run("Generations", st.generations)
	t.Run("ConcurrentCommits", st.concurrent)
	t.Run("PipelinedCommits", st.pipelined)
	if h.Crash != nil {
		t.Run("Crash", st.crash)
	}
}

type storeTest struct{ h StoreHarness }

var (
	storeT0   = time.Date(2026, 1, 2, 3, 4, 5, 6000, time.UTC)
	storeWill = &mqtthooks.Will{DelayInterval: 30, Message: mqtthooks.Message{Topic: "will/x", Payload: []byte("bye"),
		QoS: 1, Retain: true, Properties: mqtthooks.PublishProperties{ContentType: "text/plain",
			MessageExpiryInterval: mqtthooks.Some[uint32](60), UserProperties: []mqtthooks.UserProperty{{Key: "k", Value: "v"}}}}}
)

// commit commits b and waits for its done.
func commit(t *testing.T, b mqtthooks.StoreBatch) error {
	t.Helper()
	ch := make(chan error, 1)
	b.Commit(func(err error) { ch <- err })
	select {
	case err := <-ch:
		return err
	case <-time.After(10 * time.Second):
		t.Fatal("mqtthookstest: Commit never called done")
		return nil
	}
}

func mustCommit(t *testing.T, b mqtthooks.StoreBatch) {
	t.Helper()
	if err := commit(t, b); err != nil {
		t.Fatalf("Commit: %v", err)
	}
}

// load returns the stored sessions by client id.
func load(t *testing.T, s mqtthooks.SessionStore) map[string]*mqtthooks.StoredSession {
	t.Helper()
	out := map[string]*mqtthooks.StoredSession{}
	for ss, err := range s.Load(context.Background()) {
		if err != nil {
			t.Fatalf("Load: %v", err)
		}
		if _, dup := out[ss.Record.ID.String()]; dup {
			t.Fatalf("Load yielded %s twice", ss.Record.ID)
		}
		out[ss.Record.ID.String()] = ss
	}
	return out
}

func storeID(name string) mqtthooks.SubscriberID {
	return mqtthooks.SubscriberID{Mountpoint: "m", ClientID: name}
}

func storeRecord(name string, gen uint64) *mqtthooks.SessionRecord {
	return &mqtthooks.SessionRecord{ID: storeID(name), Generation: gen, Username: "user-" + name, HasUsername: true,
		ConnID: 77, Peer: netip.MustParseAddrPort("10.0.0.5:40000"), ProtocolVersion: mqtthooks.MQTT5,
		Connected: true, Cleanup: len(name)%2 == 1, Expiry: time.Hour, ExpiresAt: storeT0,
		Wills:           []mqtthooks.DelayedWill{{Will: storeWill, At: storeT0.Add(time.Minute)}},
		ConnectionWills: []*mqtthooks.Will{storeWill, {Message: mqtthooks.Message{Topic: "will/y", QoS: 2}}},
		Queue: mqtthooks.QueueSettings{MaxOnlineMessages: 10, MaxOfflineMessages: -1, QueueType: mqtthooks.QueueLIFO,
			DeliverMode: mqtthooks.DeliverBalance, StoreQoS0Offline: true, MaxInflight: 7}}
}

func storeMessage(payload string) *mqtthooks.Message {
	return &mqtthooks.Message{Topic: "t/" + payload, Payload: []byte(payload), QoS: 2, Retain: true,
		Properties: mqtthooks.PublishProperties{PayloadFormatIndicator: 1, MessageExpiryInterval: mqtthooks.Some[uint32](9),
			ContentType: "ct", ResponseTopic: "rt", CorrelationData: []byte("cd"),
			UserProperties: []mqtthooks.UserProperty{{Key: "a", Value: "b"}, {Key: "a", Value: "c"}}}}
}

func storeEntry(seq, msgID uint64, state mqtthooks.EntryState) *mqtthooks.StoredEntry {
	e := &mqtthooks.StoredEntry{Seq: seq, MessageID: msgID, QoS: 1 + byte(seq%2), Retain: seq%3 == 0,
		SubscriptionIdentifiers: []uint32{uint32(seq), 3}, State: state}
	if seq%2 == 0 {
		e.ExpiresAt = storeT0.Add(time.Duration(seq) * time.Second)
	}
	if state != mqtthooks.EntryPending {
		e.Sent = uint32(seq)
	}
	return e
}

// sameTime compares times by instant, which is all a store must keep.
func sameTime(a, b time.Time) bool { return a.IsZero() == b.IsZero() && a.Equal(b) }

func checkRecord(t *testing.T, got, want *mqtthooks.SessionRecord) {
	t.Helper()
	g, w := *got, *want
	if !sameTime(g.ExpiresAt, w.ExpiresAt) {
		t.Errorf("record %s: ExpiresAt %v, want %v", w.ID, g.ExpiresAt, w.ExpiresAt)
	}
	if len(g.Wills) != len(w.Wills) {
		t.Fatalf("record %s: %d Wills, want %d", w.ID, len(g.Wills), len(w.Wills))
	}
	for i := range w.Wills {
		if !sameTime(g.Wills[i].At, w.Wills[i].At) || !reflect.DeepEqual(g.Wills[i].Will, w.Wills[i].Will) {
			t.Errorf("record %s: Will %d is %+v at %v, want %+v at %v", w.ID, i, g.Wills[i].Will, g.Wills[i].At,
				w.Wills[i].Will, w.Wills[i].At)
		}
	}
	g.ExpiresAt, w.ExpiresAt, g.Wills, w.Wills = time.Time{}, time.Time{}, nil, nil
	if !reflect.DeepEqual(g, w) {
		t.Errorf("record:\n got  %+v\n want %+v", g, w)
	}
}

func checkEntries(t *testing.T, name string, got []mqtthooks.LoadedEntry, want []*mqtthooks.StoredEntry, msgs map[uint64]*mqtthooks.Message) {
	t.Helper()
	if len(got) != len(want) {
		seqs := make([]uint64, len(got))
		for i, e := range got {
			seqs[i] = e.Seq
		}
		t.Fatalf("%s: %d entries %v, want %d", name, len(got), seqs, len(want))
	}
	for i, w := range want {
		g := got[i]
		if !sameTime(g.ExpiresAt, w.ExpiresAt) {
			t.Errorf("%s: entry %d ExpiresAt %v, want %v", name, w.Seq, g.ExpiresAt, w.ExpiresAt)
		}
		ge, we := g.StoredEntry, *w
		ge.ExpiresAt, we.ExpiresAt = time.Time{}, time.Time{}
		if !reflect.DeepEqual(ge, we) {
			t.Errorf("%s: entry %d is\n %+v, want\n %+v", name, i, ge, we)
		}
		if !reflect.DeepEqual(g.Message, msgs[w.MessageID]) {
			t.Errorf("%s: entry %d has message %+v, want %+v", name, w.Seq, g.Message, msgs[w.MessageID])
		}
	}
}

func (st *storeTest) empty(t *testing.T) {
	s := st.h.Open(t)
	if got := load(t, s); len(got) != 0 {
		t.Errorf("a new store loads %d sessions", len(got))
	}
	a, b := s.NextGeneration(), s.NextGeneration()
	if b <= a || a == 0 {
		t.Errorf("NextGeneration gave %d then %d; want growing numbers above 0", a, b)
	}
	mustCommit(t, s.Batch()) // an empty batch commits
}

// keepsEverything: every field of every kind of write comes back after a
// restart.
func (st *storeTest) keepsEverything(t *testing.T) {
	s := st.h.Open(t)
	rec := storeRecord("a", s.NextGeneration())
	msgs := map[uint64]*mqtthooks.Message{10: storeMessage("one"), 11: storeMessage("two")}
	subs := []mqtthooks.Subscription{{Filter: "x/#", QoS: 2, NoLocal: true, RetainAsPublished: true, RetainHandling: 2,
		Identifier: 42}, {Filter: "y", QoS: 0}}
	entries := []*mqtthooks.StoredEntry{storeEntry(1, 10, mqtthooks.EntrySent), storeEntry(2, 11, mqtthooks.EntryPubrelOwed),
		storeEntry(3, 10, mqtthooks.EntryPending)}
	b := s.Batch()
	b.CreateSession(rec)
	for _, sub := range subs {
		b.PutSubscription(rec.ID, rec.Generation, sub)
	}
	for id, m := range msgs {
		b.PutMessage(id, m)
	}
	for _, e := range entries {
		b.PutEntry(rec.ID, rec.Generation, e)
	}
	b.PutInbound(rec.ID, rec.Generation, 9)
	b.PutInbound(rec.ID, rec.Generation, 65535)
	mustCommit(t, b)

	s = st.h.Reopen(t, s)
	got := load(t, s)
	ss := got[rec.ID.String()]
	if len(got) != 1 || ss == nil {
		t.Fatalf("loaded %d sessions, want 1 (%s)", len(got), rec.ID)
	}
	checkRecord(t, &ss.Record, rec)
	gotSubs := slices.SortedFunc(slices.Values(ss.Subscriptions), func(a, b mqtthooks.Subscription) int {
		return cmp.Compare(a.Filter, b.Filter)
	})
	if !reflect.DeepEqual(gotSubs, subs) {
		t.Errorf("subscriptions %+v, want %+v", gotSubs, subs)
	}
	checkEntries(t, "a", ss.Entries, entries, msgs)
	if got := slices.Sorted(slices.Values(ss.Inbound)); !slices.Equal(got, []uint16{9, 65535}) {
		t.Errorf("inbound %v, want [9 65535]", got)
	}
}

// changes: updates, deletions and state changes apply; deleted things stay
// deleted across a restart.
func (st *storeTest) changes(t *testing.T) {
	s := st.h.Open(t)
	rec := storeRecord("a", s.NextGeneration())
	other := storeRecord("b", s.NextGeneration())
	msgs := map[uint64]*mqtthooks.Message{1: storeMessage("m1"), 2: storeMessage("m2")}
	b := s.Batch()
	b.CreateSession(rec)
	b.CreateSession(other)
	b.PutSubscription(rec.ID, rec.Generation, mqtthooks.Subscription{Filter: "keep", QoS: 1})
	b.PutSubscription(rec.ID, rec.Generation, mqtthooks.Subscription{Filter: "drop", QoS: 1})
	b.PutMessage(1, msgs[1])
	b.PutMessage(2, msgs[2])
	b.PutEntry(rec.ID, rec.Generation, storeEntry(1, 1, mqtthooks.EntryPending))
	b.PutEntry(rec.ID, rec.Generation, storeEntry(2, 2, mqtthooks.EntryPending))
	b.PutInbound(rec.ID, rec.Generation, 5)
	b.PutInbound(rec.ID, rec.Generation, 6)
	mustCommit(t, b)

	updated := *rec
	updated.Connected, updated.ExpiresAt, updated.Wills, updated.Username = false, storeT0.Add(time.Hour), nil, "renamed"
	updated.ConnectionWills = nil
	sent := storeEntry(2, 2, mqtthooks.EntryPubrelOwed)
	b = s.Batch()
	b.UpdateSession(&updated)
	b.PutSubscription(rec.ID, rec.Generation, mqtthooks.Subscription{Filter: "keep", QoS: 2}) // replaces
	b.DeleteSubscription(rec.ID, rec.Generation, "drop")
	b.DeleteSubscription(rec.ID, rec.Generation, "never there")
	b.DeleteEntry(rec.ID, rec.Generation, 1, 1)
	b.PutEntry(rec.ID, rec.Generation, sent)
	b.DeleteInbound(rec.ID, rec.Generation, 5)
	b.DeleteSession(other.ID, other.Generation)
	mustCommit(t, b)

	for _, restart := range []bool{false, true} {
		if restart {
			s = st.h.Reopen(t, s)
		}
		got := load(t, s)
		if len(got) != 1 {
			t.Fatalf("restart %v: %d sessions, want 1 (b was deleted)", restart, len(got))
		}
		ss := got[rec.ID.String()]
		checkRecord(t, &ss.Record, &updated)
		if want := []mqtthooks.Subscription{{Filter: "keep", QoS: 2}}; !reflect.DeepEqual(ss.Subscriptions, want) {
			t.Errorf("restart %v: subscriptions %+v, want %+v", restart, ss.Subscriptions, want)
		}
		checkEntries(t, "a", ss.Entries, []*mqtthooks.StoredEntry{sent}, msgs)
		if !slices.Equal(ss.Inbound, []uint16{6}) {
			t.Errorf("restart %v: inbound %v, want [6]", restart, ss.Inbound)
		}
	}
}

// seqOrder: entries come back in Seq order, whatever order they were written
// in, also past 65535 and across byte boundaries.
func (st *storeTest) seqOrder(t *testing.T) {
	s := st.h.Open(t)
	rec := storeRecord("a", s.NextGeneration())
	msgs := map[uint64]*mqtthooks.Message{1: storeMessage("m")}
	seqs := []uint64{300, 1, 65536, 2, 256, 255, 70000, 1 << 40, 3}
	b := s.Batch()
	b.CreateSession(rec)
	b.PutMessage(1, msgs[1])
	for _, seq := range seqs {
		b.PutEntry(rec.ID, rec.Generation, storeEntry(seq, 1, mqtthooks.EntryPending))
	}
	mustCommit(t, b)
	slices.Sort(seqs)
	want := make([]*mqtthooks.StoredEntry, len(seqs))
	for i, seq := range seqs {
		want[i] = storeEntry(seq, 1, mqtthooks.EntryPending)
	}
	checkEntries(t, "a", load(t, s)[rec.ID.String()].Entries, want, msgs)
	s = st.h.Reopen(t, s)
	checkEntries(t, "a after a restart", load(t, s)[rec.ID.String()].Entries, want, msgs)
}

// manySessions: each session loads with its own parts and no other's, where
// neighbours have none of a kind, or many; written in no particular order.
func (st *storeTest) manySessions(t *testing.T) {
	s := st.h.Open(t)
	const n = 60
	msgs := map[uint64]*mqtthooks.Message{}
	recs := make([]*mqtthooks.SessionRecord, n)
	for i := range n {
		recs[i] = storeRecord(fmt.Sprintf("s%03d", (i*37)%n), s.NextGeneration())
	}
	parts := func(i int) (subs, entries, inbound int) { return i % 3, (i * 7) % 5, i % 4 / 3 }
	for i, r := range recs {
		b := s.Batch()
		b.CreateSession(r)
		subs, entries, inbound := parts(i)
		for k := range subs {
			b.PutSubscription(r.ID, r.Generation, mqtthooks.Subscription{Filter: fmt.Sprintf("%s/%d", r.ID.ClientID, k)})
		}
		for k := range entries {
			id := uint64(1000*i + k + 1)
			msgs[id] = storeMessage(fmt.Sprint(id))
			b.PutMessage(id, msgs[id])
			b.PutEntry(r.ID, r.Generation, storeEntry(uint64(k+1), id, mqtthooks.EntryPending))
			b.ReleaseMessage(id)
		}
		for k := range inbound {
			b.PutInbound(r.ID, r.Generation, uint16(i+k+1))
		}
		mustCommit(t, b)
	}
	for _, restart := range []bool{false, true} {
		if restart {
			s = st.h.Reopen(t, s)
		}
		got := load(t, s)
		if len(got) != n {
			t.Fatalf("restart %v: %d sessions, want %d", restart, len(got), n)
		}
		for i, r := range recs {
			ss := got[r.ID.String()]
			subs, entries, inbound := parts(i)
			if len(ss.Subscriptions) != subs || len(ss.Inbound) != inbound {
				t.Errorf("restart %v: %s has %d subscriptions and %d inbound ids, want %d and %d", restart, r.ID,
					len(ss.Subscriptions), len(ss.Inbound), subs, inbound)
			}
			for _, sub := range ss.Subscriptions {
				if !strings.HasPrefix(sub.Filter, r.ID.ClientID+"/") {
					t.Errorf("restart %v: %s has another session's subscription %q", restart, r.ID, sub.Filter)
				}
			}
			for _, id := range ss.Inbound {
				if id != uint16(i+1) {
					t.Errorf("restart %v: %s has inbound id %d, want %d", restart, r.ID, id, i+1)
				}
			}
			want := make([]*mqtthooks.StoredEntry, entries)
			for k := range entries {
				want[k] = storeEntry(uint64(k+1), uint64(1000*i+k+1), mqtthooks.EntryPending)
			}
			checkEntries(t, r.ID.String(), ss.Entries, want, msgs)
		}
	}
}

// fencing (ACCEPTANCE D5): a write for a life that is not the stored one is
// refused with ErrStaleGeneration and changes nothing.
func (st *storeTest) fencing(t *testing.T) {
	s := st.h.Open(t)
	old := storeRecord("a", s.NextGeneration())
	msgs := map[uint64]*mqtthooks.Message{1: storeMessage("old"), 2: storeMessage("new")}
	b := s.Batch()
	b.CreateSession(old)
	b.PutMessage(1, msgs[1])
	b.PutEntry(old.ID, old.Generation, storeEntry(1, 1, mqtthooks.EntryPending))
	b.PutSubscription(old.ID, old.Generation, mqtthooks.Subscription{Filter: "old"})
	b.PutInbound(old.ID, old.Generation, 1)
	mustCommit(t, b)

	cur := storeRecord("a", s.NextGeneration())
	cur.Username = "new life"
	b = s.Batch()
	b.CreateSession(cur) // a new life replaces the old one, with everything in it
	b.PutMessage(2, msgs[2])
	b.PutEntry(cur.ID, cur.Generation, storeEntry(5, 2, mqtthooks.EntryPending))
	mustCommit(t, b)

	stale := []struct {
		name string
		op   func(b mqtthooks.StoreBatch)
	}{
		{"UpdateSession", func(b mqtthooks.StoreBatch) { b.UpdateSession(old) }},
		{"CreateSession with the old generation", func(b mqtthooks.StoreBatch) { b.CreateSession(old) }},
		{"DeleteSession", func(b mqtthooks.StoreBatch) { b.DeleteSession(old.ID, old.Generation) }},
		{"PutSubscription", func(b mqtthooks.StoreBatch) {
			b.PutSubscription(old.ID, old.Generation, mqtthooks.Subscription{Filter: "late"})
		}},
		{"DeleteSubscription", func(b mqtthooks.StoreBatch) { b.DeleteSubscription(old.ID, old.Generation, "old") }},
		{"PutEntry", func(b mqtthooks.StoreBatch) {
			b.PutEntry(old.ID, old.Generation, storeEntry(9, 2, mqtthooks.EntryPending))
		}},
		{"DeleteEntry", func(b mqtthooks.StoreBatch) { b.DeleteEntry(old.ID, old.Generation, 5, 2) }},
		{"PutInbound", func(b mqtthooks.StoreBatch) { b.PutInbound(old.ID, old.Generation, 7) }},
		{"DeleteInbound", func(b mqtthooks.StoreBatch) { b.DeleteInbound(old.ID, old.Generation, 1) }},
		{"a write for a session that does not exist", func(b mqtthooks.StoreBatch) {
			b.PutEntry(storeID("nobody"), 1, storeEntry(1, 2, mqtthooks.EntryPending))
		}},
	}
	check := func(when string) {
		t.Helper()
		got := load(t, s)
		ss := got[cur.ID.String()]
		if len(got) != 1 || ss == nil {
			t.Fatalf("%s: %d sessions, want the one life of a", when, len(got))
		}
		checkRecord(t, &ss.Record, cur)
		if len(ss.Subscriptions) != 0 || len(ss.Inbound) != 0 {
			t.Errorf("%s: the new life has the old one's subscriptions %v or inbound ids %v", when, ss.Subscriptions, ss.Inbound)
		}
		checkEntries(t, when, ss.Entries, []*mqtthooks.StoredEntry{storeEntry(5, 2, mqtthooks.EntryPending)}, msgs)
	}
	check("after the new life")
	for _, tc := range stale {
		b := s.Batch()
		tc.op(b)
		if err := commit(t, b); !errors.Is(err, mqtthooks.ErrStaleGeneration) {
			t.Errorf("%s for an older life: Commit gave %v; want ErrStaleGeneration", tc.name, err)
		}
		check("after a stale " + tc.name)
	}

	b = s.Batch()
	b.DeleteSession(cur.ID, cur.Generation)
	mustCommit(t, b)
	b = s.Batch()
	b.PutEntry(cur.ID, cur.Generation, storeEntry(6, 2, mqtthooks.EntryPending))
	if err := commit(t, b); !errors.Is(err, mqtthooks.ErrStaleGeneration) {
		t.Errorf("a write for an ended life: Commit gave %v; want ErrStaleGeneration", err)
	}
	s = st.h.Reopen(t, s)
	if got := load(t, s); len(got) != 0 {
		t.Errorf("an ended life came back: %d sessions", len(got))
	}
}

// renew: a life renewed under a new generation keeps everything in it, and
// refuses the writes that name the old one.
func (st *storeTest) renew(t *testing.T) {
	s := st.h.Open(t)
	old := storeRecord("a", s.NextGeneration())
	msgs := map[uint64]*mqtthooks.Message{1: storeMessage("one"), 2: storeMessage("two")}
	b := s.Batch()
	b.CreateSession(old)
	b.PutMessage(1, msgs[1])
	b.PutEntry(old.ID, old.Generation, storeEntry(1, 1, mqtthooks.EntrySent))
	b.PutSubscription(old.ID, old.Generation, mqtthooks.Subscription{Filter: "f", QoS: 1})
	b.PutInbound(old.ID, old.Generation, 9)
	b.ReleaseMessage(1)
	mustCommit(t, b)

	gen := s.NextGeneration()
	for _, to := range []uint64{old.Generation, old.Generation - 1} {
		b = s.Batch()
		b.RenewSession(old.ID, old.Generation, to)
		if err := commit(t, b); !errors.Is(err, mqtthooks.ErrStaleGeneration) {
			t.Errorf("RenewSession from %d to %d: Commit gave %v; want ErrStaleGeneration", old.Generation, to, err)
		}
	}
	b = s.Batch()
	b.RenewSession(storeID("nobody"), 1, gen)
	if err := commit(t, b); !errors.Is(err, mqtthooks.ErrStaleGeneration) {
		t.Errorf("RenewSession of a session that does not exist: Commit gave %v; want ErrStaleGeneration", err)
	}

	cur := *old
	cur.Generation = gen
	cur.Connected = false
	b = s.Batch()
	b.RenewSession(old.ID, old.Generation, gen)
	b.UpdateSession(&cur) // in the same batch: the renewed life is the current one
	b.PutMessage(2, msgs[2])
	b.PutEntry(cur.ID, gen, storeEntry(2, 2, mqtthooks.EntryPending))
	b.ReleaseMessage(2)
	mustCommit(t, b)
	for _, op := range []func(b mqtthooks.StoreBatch){
		func(b mqtthooks.StoreBatch) { b.UpdateSession(old) },
		func(b mqtthooks.StoreBatch) { b.DeleteEntry(old.ID, old.Generation, 1, 1) },
		func(b mqtthooks.StoreBatch) { b.RenewSession(old.ID, old.Generation, gen+1) },
	} {
		b = s.Batch()
		op(b)
		if err := commit(t, b); !errors.Is(err, mqtthooks.ErrStaleGeneration) {
			t.Errorf("a write naming the life before RenewSession: Commit gave %v; want ErrStaleGeneration", err)
		}
	}
	check := func(when string) {
		t.Helper()
		ss := load(t, s)[cur.ID.String()]
		if ss == nil {
			t.Fatalf("%s: the renewed session is gone", when)
		}
		checkRecord(t, &ss.Record, &cur)
		if len(ss.Subscriptions) != 1 || ss.Subscriptions[0].Filter != "f" || !slices.Equal(ss.Inbound, []uint16{9}) {
			t.Errorf("%s: subscriptions %v, inbound %v; want those of the life before", when, ss.Subscriptions, ss.Inbound)
		}
		checkEntries(t, when, ss.Entries, []*mqtthooks.StoredEntry{storeEntry(1, 1, mqtthooks.EntrySent),
			storeEntry(2, 2, mqtthooks.EntryPending)}, msgs)
	}
	check("after RenewSession")
	s = st.h.Reopen(t, s)
	check("after RenewSession and a restart")
	if g := s.NextGeneration(); g <= gen {
		t.Errorf("NextGeneration gave %d after a life renewed as %d", g, gen)
	}
}

// loadSession: LoadSession reads one session as Load does, and nil for one
// that is not stored.
func (st *storeTest) loadSession(t *testing.T) {
	s := st.h.Open(t)
	l := s.(mqtthooks.SessionLoader)
	rec := storeRecord("a", s.NextGeneration())
	msgs := map[uint64]*mqtthooks.Message{3: storeMessage("m")}
	b := s.Batch()
	b.CreateSession(rec)
	b.CreateSession(storeRecord("b", s.NextGeneration()))
	b.PutMessage(3, msgs[3])
	b.PutEntry(rec.ID, rec.Generation, storeEntry(4, 3, mqtthooks.EntryPubrelOwed))
	b.PutSubscription(rec.ID, rec.Generation, mqtthooks.Subscription{Filter: "x/#", QoS: 2, Identifier: 5})
	b.PutInbound(rec.ID, rec.Generation, 3)
	b.ReleaseMessage(3)
	mustCommit(t, b)
	ctx := context.Background()
	for _, name := range []string{"nobody", "a/b", ""} {
		if ss, err := l.LoadSession(ctx, storeID(name)); err != nil || ss != nil {
			t.Errorf("LoadSession(%q), not stored: %v, %v; want nil, nil", name, ss, err)
		}
	}
	ss, err := l.LoadSession(ctx, rec.ID)
	if err != nil || ss == nil {
		t.Fatalf("LoadSession(a): %v, %v", ss, err)
	}
	checkRecord(t, &ss.Record, rec)
	checkEntries(t, "LoadSession", ss.Entries, []*mqtthooks.StoredEntry{storeEntry(4, 3, mqtthooks.EntryPubrelOwed)}, msgs)
	if !reflect.DeepEqual(ss.Subscriptions, []mqtthooks.Subscription{{Filter: "x/#", QoS: 2, Identifier: 5}}) ||
		!slices.Equal(ss.Inbound, []uint16{3}) {
		t.Errorf("LoadSession(a): subscriptions %v, inbound %v", ss.Subscriptions, ss.Inbound)
	}
	b = s.Batch()
	b.DeleteSession(rec.ID, rec.Generation)
	mustCommit(t, b)
	if ss, err := l.LoadSession(ctx, rec.ID); err != nil || ss != nil {
		t.Errorf("LoadSession after DeleteSession: %v, %v; want nil, nil", ss, err)
	}
}

// atomic: a batch with one refused write applies none of its writes.
func (st *storeTest) atomic(t *testing.T) {
	s := st.h.Open(t)
	a := storeRecord("a", s.NextGeneration())
	b0 := s.Batch()
	b0.CreateSession(a)
	mustCommit(t, b0)

	b := s.Batch()
	b.CreateSession(storeRecord("fresh", s.NextGeneration()))
	b.PutSubscription(a.ID, a.Generation, mqtthooks.Subscription{Filter: "good"})
	b.PutSubscription(a.ID, a.Generation+1000, mqtthooks.Subscription{Filter: "stale"}) // refused
	if err := commit(t, b); !errors.Is(err, mqtthooks.ErrStaleGeneration) {
		t.Fatalf("Commit gave %v; want ErrStaleGeneration", err)
	}
	for _, restart := range []bool{false, true} {
		if restart {
			s = st.h.Reopen(t, s)
		}
		got := load(t, s)
		if len(got) != 1 || len(got[a.ID.String()].Subscriptions) != 0 {
			t.Errorf("restart %v: part of a refused batch was applied: %d sessions, a has %v", restart, len(got),
				got[a.ID.String()].Subscriptions)
		}
	}
}

// messagesOnce: one message for many sessions' entries; it stays while an
// entry refers to it, and an entry whose message is gone is left out.
func (st *storeTest) messagesOnce(t *testing.T) {
	s := st.h.Open(t)
	msgs := map[uint64]*mqtthooks.Message{7: storeMessage("shared")}
	recs := []*mqtthooks.SessionRecord{storeRecord("a", s.NextGeneration()), storeRecord("b", s.NextGeneration()),
		storeRecord("c", s.NextGeneration())}
	b := s.Batch()
	b.PutMessage(7, msgs[7])
	for _, r := range recs {
		b.CreateSession(r)
		b.PutEntry(r.ID, r.Generation, storeEntry(1, 7, mqtthooks.EntryPending))
	}
	b.ReleaseMessage(7)
	mustCommit(t, b)
	b = s.Batch()
	b.DeleteEntry(recs[0].ID, recs[0].Generation, 1, 7)
	b.DeleteSession(recs[1].ID, recs[1].Generation)
	mustCommit(t, b)
	s = st.h.Reopen(t, s)
	got := load(t, s)
	checkEntries(t, "c", got[recs[2].ID.String()].Entries, []*mqtthooks.StoredEntry{storeEntry(1, 7, mqtthooks.EntryPending)}, msgs)

	// The last reference goes: an entry that names the message again, without
	// writing it, finds nothing, and is left out.
	b = s.Batch()
	b.DeleteEntry(recs[2].ID, recs[2].Generation, 1, 7)
	mustCommit(t, b)
	b = s.Batch()
	b.PutEntry(recs[2].ID, recs[2].Generation, storeEntry(2, 7, mqtthooks.EntryPending))
	mustCommit(t, b)
	s = st.h.Reopen(t, s)
	if es := load(t, s)[recs[2].ID.String()].Entries; len(es) != 0 {
		t.Errorf("an entry whose message was dropped came back: %+v", es)
	}
}

// held: a message stays from PutMessage to ReleaseMessage, even when every
// entry written so far is deleted in between (a copy acknowledged while the
// message is still being routed to other sessions); once released, it goes
// with its last entry, or at once if it has none.
func (st *storeTest) held(t *testing.T) {
	s := st.h.Open(t)
	msgs := map[uint64]*mqtthooks.Message{1: storeMessage("routed"), 2: storeMessage("nobody's")}
	a, b := storeRecord("a", s.NextGeneration()), storeRecord("b", s.NextGeneration())
	batch := s.Batch()
	batch.CreateSession(a)
	batch.CreateSession(b)
	batch.PutMessage(1, msgs[1])
	batch.PutEntry(a.ID, a.Generation, storeEntry(1, 1, mqtthooks.EntryPending))
	batch.PutMessage(2, msgs[2])
	mustCommit(t, batch)
	batch = s.Batch()
	batch.DeleteEntry(a.ID, a.Generation, 1, 1) // a acknowledged it
	mustCommit(t, batch)
	batch = s.Batch()
	batch.PutEntry(b.ID, b.Generation, storeEntry(1, 1, mqtthooks.EntryPending)) // b's copy, routed after
	mustCommit(t, batch)
	batch = s.Batch()
	batch.ReleaseMessage(1)
	batch.ReleaseMessage(2)
	mustCommit(t, batch)
	want := []*mqtthooks.StoredEntry{storeEntry(1, 1, mqtthooks.EntryPending)}
	checkEntries(t, "b", load(t, s)[b.ID.String()].Entries, want, msgs)
	s = st.h.Reopen(t, s)
	checkEntries(t, "b after a restart", load(t, s)[b.ID.String()].Entries, want, msgs)

	// Released, the messages go with their last entry: entries that name them
	// afterwards, without writing them, find nothing.
	batch = s.Batch()
	batch.DeleteEntry(b.ID, b.Generation, 1, 1)
	mustCommit(t, batch)
	batch = s.Batch()
	batch.PutEntry(a.ID, a.Generation, storeEntry(2, 1, mqtthooks.EntryPending))
	batch.PutEntry(a.ID, a.Generation, storeEntry(3, 2, mqtthooks.EntryPending))
	mustCommit(t, batch)
	for _, restart := range []bool{false, true} {
		if restart {
			s = st.h.Reopen(t, s)
		}
		if es := load(t, s)[a.ID.String()].Entries; len(es) != 0 {
			t.Errorf("restart %v: entries whose messages were released and dropped came back: %+v", restart, es)
		}
	}
}

// generations: NextGeneration grows across restarts, past every stored life.
func (st *storeTest) generations(t *testing.T) {
	s := st.h.Open(t)
	var last uint64
	for range 3 {
		last = s.NextGeneration()
	}
	rec := storeRecord("a", last+100) // a life numbered by another writer
	b := s.Batch()
	b.CreateSession(rec)
	mustCommit(t, b)
	s = st.h.Reopen(t, s)
	if g := s.NextGeneration(); g <= rec.Generation {
		t.Errorf("after a restart NextGeneration gave %d; want above %d", g, rec.Generation)
	}
	if st.h.Crash != nil {
		g := s.NextGeneration()
		s = st.h.Crash(t, s)
		if g2 := s.NextGeneration(); g2 <= g && st.h.Synced {
			t.Errorf("after a crash NextGeneration gave %d; want above %d", g2, g)
		}
	}
}

// concurrent: many goroutines commit at once, each for its own session; every
// done is called, and everything is there.
func (st *storeTest) concurrent(t *testing.T) {
	s := st.h.Open(t)
	const writers, perWriter = 16, 50
	var wg sync.WaitGroup
	errs := make(chan error, writers*(perWriter+1))
	recs := make([]*mqtthooks.SessionRecord, writers)
	for w := range writers {
		recs[w] = storeRecord("w"+strconv.Itoa(w), s.NextGeneration())
	}
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := recs[w]
			b := s.Batch()
			b.CreateSession(r)
			b.Commit(func(err error) { errs <- err })
			for i := 1; i <= perWriter; i++ {
				msgID := uint64(w*1000 + i)
				b := s.Batch()
				b.PutMessage(msgID, storeMessage(fmt.Sprint(msgID)))
				b.PutEntry(r.ID, r.Generation, storeEntry(uint64(i), msgID, mqtthooks.EntryPending))
				b.Commit(func(err error) { errs <- err })
			}
		}()
	}
	wg.Wait()
	for range writers * (perWriter + 1) {
		select {
		case err := <-errs:
			if err != nil {
				t.Errorf("Commit: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("a Commit never called done")
		}
	}
	s = st.h.Reopen(t, s)
	got := load(t, s)
	for _, r := range recs {
		if n := len(got[r.ID.String()].Entries); n != perWriter {
			t.Errorf("%s has %d entries, want %d", r.ID, n, perWriter)
		}
	}
}

// pipelined: commits made without waiting for each other, as the core makes
// them, across sessions that share messages: acknowledgements, a session's
// drop and a new life that reuses the old life's sequence numbers, all
// before the earlier ones are done. Messages another session refers to stay.
func (st *storeTest) pipelined(t *testing.T) {
	s := st.h.Open(t)
	x, y, z := storeRecord("px", s.NextGeneration()), storeRecord("py", s.NextGeneration()), storeRecord("pz", s.NextGeneration())
	var pending []chan error
	send := func(b mqtthooks.StoreBatch) {
		ch := make(chan error, 1)
		b.Commit(func(err error) { ch <- err })
		pending = append(pending, ch)
	}
	b := s.Batch()
	for _, r := range []*mqtthooks.SessionRecord{x, y, z} {
		b.CreateSession(r)
	}
	for i := uint64(1); i <= 20; i++ {
		b.PutMessage(100+i, storeMessage(fmt.Sprint(100+i)))
		for _, r := range []*mqtthooks.SessionRecord{x, y, z} {
			b.PutEntry(r.ID, r.Generation, storeEntry(i, 100+i, mqtthooks.EntryPending))
		}
		b.ReleaseMessage(100 + i)
	}
	send(b)
	for i := uint64(1); i <= 10; i++ { // x acknowledges the first half, one by one
		b := s.Batch()
		b.DeleteEntry(x.ID, x.Generation, i, 100+i)
		send(b)
	}
	b = s.Batch() // and goes
	b.DeleteSession(x.ID, x.Generation)
	send(b)
	for i := uint64(11); i <= 15; i++ { // y marks some sent
		b := s.Batch()
		b.PutEntry(y.ID, y.Generation, storeEntry(i, 100+i, mqtthooks.EntrySent))
		send(b)
	}
	z2 := storeRecord("pz", s.NextGeneration()) // z starts a new life, reusing seq 1 and 2
	b = s.Batch()
	b.CreateSession(z2)
	b.PutMessage(200, storeMessage("200"))
	b.PutEntry(z2.ID, z2.Generation, storeEntry(1, 200, mqtthooks.EntryPending))
	b.PutEntry(z2.ID, z2.Generation, storeEntry(2, 101, mqtthooks.EntryPending))
	b.ReleaseMessage(200)
	send(b)
	for _, ch := range pending {
		select {
		case err := <-ch:
			if err != nil {
				t.Fatalf("Commit: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("a Commit never called done")
		}
	}

	s = st.h.Reopen(t, s)
	got := load(t, s)
	if _, ok := got[x.ID.String()]; ok {
		t.Errorf("%s was dropped, and is back", x.ID)
	}
	ys := got[y.ID.String()]
	if ys == nil || len(ys.Entries) != 20 {
		t.Fatalf("%s: want its 20 entries, got %+v", y.ID, ys)
	}
	for i, e := range ys.Entries {
		want := mqtthooks.EntryPending
		if e.Seq >= 11 && e.Seq <= 15 {
			want = mqtthooks.EntrySent
		}
		if e.Seq != uint64(i+1) || e.MessageID != 100+e.Seq || e.State != want || e.Message == nil ||
			string(e.Message.Payload) != fmt.Sprint(100+e.Seq) {
			t.Errorf("%s entry %d: %+v", y.ID, i, e)
		}
	}
	zs := got[z2.ID.String()]
	if zs == nil || zs.Record.Generation != z2.Generation || len(zs.Entries) != 2 ||
		zs.Entries[0].Message == nil || string(zs.Entries[0].Message.Payload) != "200" ||
		zs.Entries[1].Message == nil || string(zs.Entries[1].Message.Payload) != "101" {
		t.Errorf("%s: want the new life with messages 200 and 101, got %+v", z2.ID, zs)
	}
}

// crash: what a killed process leaves. A synced store keeps every commit
// whose done was called; any store leaves whole batches, in commit order.
func (st *storeTest) crash(t *testing.T) {
	s := st.h.Open(t)
	rec := storeRecord("a", s.NextGeneration())
	b := s.Batch()
	b.CreateSession(rec)
	b.PutMessage(1, storeMessage("m"))
	b.PutEntry(rec.ID, rec.Generation, storeEntry(1, 1, mqtthooks.EntryPending))
	b.PutSubscription(rec.ID, rec.Generation, mqtthooks.Subscription{Filter: "f1"})
	mustCommit(t, b)
	s = st.h.Reopen(t, s) // the session and its message are surely on disk
	const n = 200
	for i := 2; i <= n; i++ {
		b := s.Batch()
		b.PutEntry(rec.ID, rec.Generation, storeEntry(uint64(i), 1, mqtthooks.EntryPending))
		b.PutSubscription(rec.ID, rec.Generation, mqtthooks.Subscription{Filter: "f" + strconv.Itoa(i)})
		mustCommit(t, b)
	}
	s = st.h.Crash(t, s)
	ss := load(t, s)[rec.ID.String()]
	if ss == nil {
		t.Fatal("the session is gone after a crash")
	}
	k := len(ss.Entries)
	if st.h.Synced && k != n {
		t.Errorf("a synced store lost commits in a crash: %d of %d entries left", k, n)
	}
	for i, e := range ss.Entries {
		if e.Seq != uint64(i+1) {
			t.Fatalf("after a crash the entries are not a prefix of the commits: entry %d has Seq %d", i, e.Seq)
		}
	}
	if len(ss.Subscriptions) != k {
		t.Errorf("after a crash %d entries but %d subscriptions: a batch was split", k, len(ss.Subscriptions))
	}
}
