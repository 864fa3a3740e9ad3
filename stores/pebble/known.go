package pebble

import "github.com/mqtthooks/mqtthooks"

// known holds, for the sessions this process created or loaded, which
// message each queue entry refers to, so that a commit finds the entry it
// replaces or drops without reading it back from Pebble: online, every
// message is written, marked sent and dropped within moments, and a read
// costs more than the write. A session is in it whole or not at all; one
// not in it (the budget was spent) is read from Pebble as before.
type known struct {
	sessions map[mqtthooks.SubscriberID]map[uint64]uint64 // seq → message id; nil: no entries
	size     int                                          // sessions and entries held, against the budget
	budget   int
	events   []knownEvent // the changes of the batch being prepared
}

// defaultKnownBudget bounds what known holds: at most this many sessions
// and entries together, some tens of bytes each.
const defaultKnownBudget = 1 << 18

type knownEvent struct {
	op    byte // 'c' created (empty), 'd' dropped, 'e' entry set (msgID 0: deleted)
	id    mqtthooks.SubscriberID
	seq   uint64
	msgID uint64
}

// lookup returns the message of the entry seq of id and true, or false when
// id is not held.
func (k *known) lookup(id mqtthooks.SubscriberID, seq uint64) (uint64, bool) {
	m, ok := k.sessions[id]
	if !ok {
		return 0, false
	}
	return m[seq], true
}

// fits reports whether n more sessions and entries are within the budget.
func (k *known) fits(n int) bool { return k.size+n <= k.budget }

// add holds a session with its entries (seq → msgID), if the budget allows.
func (k *known) add(id mqtthooks.SubscriberID, entries map[uint64]uint64) {
	k.drop(id)
	if k.size+1+len(entries) > k.budget {
		return
	}
	if k.sessions == nil {
		k.sessions = map[mqtthooks.SubscriberID]map[uint64]uint64{}
	}
	k.sessions[cloneID(id)] = entries
	k.size += 1 + len(entries)
}

func (k *known) drop(id mqtthooks.SubscriberID) {
	if m, ok := k.sessions[id]; ok {
		k.size -= 1 + len(m)
		delete(k.sessions, id)
	}
}

// set records that the entry seq of id now refers to msgID (0: gone).
func (k *known) set(id mqtthooks.SubscriberID, seq, msgID uint64) {
	m, ok := k.sessions[id]
	if !ok {
		return
	}
	_, had := m[seq]
	switch {
	case msgID == 0 && had:
		delete(m, seq)
		k.size--
	case msgID != 0 && !had:
		if k.size >= k.budget {
			k.drop(id) // out of budget: read from Pebble from now on
			return
		}
		if m == nil {
			m = map[uint64]uint64{}
			k.sessions[id] = m
		}
		m[seq] = msgID
		k.size++
	case msgID != 0:
		m[seq] = msgID
	}
}

// apply installs the events of a batch that committed.
func (k *known) apply() {
	for _, e := range k.events {
		switch e.op {
		case 'c':
			k.add(e.id, nil)
		case 'd':
			k.drop(e.id)
		case 'e':
			k.set(e.id, e.seq, e.msgID)
		}
	}
	k.events = k.events[:0]
}
