package natsjs

import (
	"cmp"
	"maps"
	"slices"

	"github.com/mqtthooks/mqtthooks"
)

// state is one stored session, as its log builds it up: the Store's mirror
// of a session it writes, or a session read from the stream.
type state struct {
	rec     mqtthooks.SessionRecord
	subs    map[string]mqtthooks.Subscription
	entries map[uint64]mqtthooks.StoredEntry
	inbound map[uint16]struct{}
	// refs counts the entries that name each message id; msgs holds the
	// messages the session has, those its log inlined and an entry still
	// names. An entry whose message is not in msgs is left out when loaded.
	refs map[uint64]int
	msgs map[uint64]*mqtthooks.Message
}

func newState(rec mqtthooks.SessionRecord) *state {
	return &state{rec: rec, subs: map[string]mqtthooks.Subscription{}, entries: map[uint64]mqtthooks.StoredEntry{},
		inbound: map[uint16]struct{}{}, refs: map[uint64]int{}, msgs: map[uint64]*mqtthooks.Message{}}
}

// events collects the messages that enter and leave sessions' msgs, for the
// Store's index of the messages it has.
type events struct {
	added   []msgEvent
	dropped []uint64
}

type msgEvent struct {
	id uint64
	m  *mqtthooks.Message
}

// putEntry stores en, with m, the message it names, if the log inlines it.
// The reader of a log and its writer call it alike, so both agree on the
// messages a session has.
func (st *state) putEntry(en *mqtthooks.StoredEntry, m *mqtthooks.Message, ev *events) {
	st.refs[en.MessageID]++
	if m != nil && st.msgs[en.MessageID] == nil {
		st.msgs[en.MessageID] = m
		if ev != nil {
			ev.added = append(ev.added, msgEvent{en.MessageID, m})
		}
	}
	if old, ok := st.entries[en.Seq]; ok {
		st.unref(old.MessageID, ev)
	}
	st.entries[en.Seq] = *en
}

func (st *state) delEntry(seq uint64, ev *events) {
	if old, ok := st.entries[seq]; ok {
		delete(st.entries, seq)
		st.unref(old.MessageID, ev)
	}
}

func (st *state) unref(id uint64, ev *events) {
	if st.refs[id]--; st.refs[id] > 0 {
		return
	}
	delete(st.refs, id)
	if _, ok := st.msgs[id]; ok {
		delete(st.msgs, id)
		if ev != nil {
			ev.dropped = append(ev.dropped, id)
		}
	}
}

// dropAll reports every message of st as gone.
func (st *state) dropAll(ev *events) {
	if ev == nil {
		return
	}
	for id := range st.msgs {
		ev.dropped = append(ev.dropped, id)
	}
}

// stored returns st as Load yields it: entries in Seq order, without those
// whose message the session does not have.
func (st *state) stored() *mqtthooks.StoredSession {
	ss := &mqtthooks.StoredSession{Record: cloneRecord(&st.rec),
		Subscriptions: slices.SortedFunc(maps.Values(st.subs), func(a, b mqtthooks.Subscription) int {
			return cmp.Compare(a.Filter, b.Filter)
		}),
		Inbound: slices.Sorted(maps.Keys(st.inbound))}
	for _, seq := range slices.Sorted(maps.Keys(st.entries)) {
		en := st.entries[seq]
		if m := st.msgs[en.MessageID]; m != nil {
			en.SubscriptionIdentifiers = slices.Clone(en.SubscriptionIdentifiers)
			ss.Entries = append(ss.Entries, mqtthooks.LoadedEntry{StoredEntry: en, Message: m})
		}
	}
	return ss
}

// cloneRecord copies rec, with its own Wills.
func cloneRecord(rec *mqtthooks.SessionRecord) mqtthooks.SessionRecord {
	r := *rec
	r.Wills = slices.Clone(rec.Wills)
	r.ConnectionWills = slices.Clone(rec.ConnectionWills)
	return r
}

// op is one change of a batch.
type op struct {
	kind   byte
	rec    *mqtthooks.SessionRecord // opCreate, opUpdate: the Store's own copy
	id     mqtthooks.SubscriberID
	gen    uint64 // the life the change names; for opRenew, the one it leaves
	to     uint64 // opRenew
	sub    mqtthooks.Subscription
	entry  mqtthooks.StoredEntry // opPutEntry: the Store's own copy
	seq    uint64                // opDelEntry
	pid    uint16
	msgID  uint64             // opPutMsg, opReleaseMsg
	msg    *mqtthooks.Message // opPutMsg; opPutEntry: the message found when committed, if any
	filter string
}

// life is what fencing checks of a session: whether one is stored, and its
// generation.
type life struct {
	exists bool
	gen    uint64
}

func lifeOf(st *state) life {
	if st == nil {
		return life{}
	}
	return life{true, st.rec.Generation}
}

// after returns the life after ops, the changes of one batch to the
// session, and whether they name its lives right.
func (l life) after(ops []*op) (life, bool) {
	for _, o := range ops {
		switch o.kind {
		case opCreate:
			if l.exists && l.gen >= o.rec.Generation {
				return l, false
			}
			l = life{true, o.rec.Generation}
		case opRenew:
			if !l.exists || l.gen != o.gen || o.to <= o.gen {
				return l, false
			}
			l.gen = o.to
		case opDelete:
			if !l.exists || l.gen != o.gen {
				return l, false
			}
			l = life{}
		default:
			if !l.exists || l.gen != o.gen {
				return l, false
			}
		}
	}
	return l, true
}

// applyOp applies o, checked by life.after, to st and returns the session after
// it. Unless it replaced or ended the life (reset), the change is appended
// to e as a delta operation.
func applyOp(st *state, o *op, e *encoder, ev *events) (_ *state, reset bool) {
	switch o.kind {
	case opCreate:
		if st != nil {
			st.dropAll(ev)
		}
		return newState(*o.rec), true
	case opDelete:
		st.dropAll(ev)
		return nil, true
	case opUpdate:
		st.rec = *o.rec
		e.byte(opUpdate)
		e.record(o.rec)
	case opRenew:
		st.rec.Generation = o.to
		e.byte(opRenew)
		e.u(o.to)
	case opPutSub:
		st.subs[o.sub.Filter] = o.sub
		e.byte(opPutSub)
		e.sub(&o.sub)
	case opDelSub:
		delete(st.subs, o.filter)
		e.byte(opDelSub)
		e.str(o.filter)
	case opPutEntry:
		var m *mqtthooks.Message
		if o.msg != nil && st.msgs[o.entry.MessageID] == nil {
			m = o.msg // the session's log has it from now on
		}
		st.putEntry(&o.entry, m, ev)
		e.byte(opPutEntry)
		e.entry(&o.entry)
		e.bool(m != nil)
		if m != nil {
			e.message(m)
		}
	case opDelEntry:
		st.delEntry(o.seq, ev)
		e.byte(opDelEntry)
		e.u(o.seq)
	case opPutIn:
		st.inbound[o.pid] = struct{}{}
		e.byte(opPutIn)
		e.u(uint64(o.pid))
	case opDelIn:
		delete(st.inbound, o.pid)
		e.byte(opDelIn)
		e.u(uint64(o.pid))
	}
	return st, false
}
