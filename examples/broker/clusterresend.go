package main

import (
	"hash/maphash"
	"slices"
	"sync"

	"github.com/mqtthooks/mqtthooks"
)

// The resends of QoS 2 PUBLISHes. A client sends a QoS 2 PUBLISH again, DUP
// set, when it got no PUBREC. When this node refused it (another node did
// not store its copies, or a session it matches was moving), the Core has
// forgotten its packet identifier, so the resend is routed again; the copies
// the first sending stored must not be stored twice. Each node remembers,
// for the QoS 2 PUBLISHes it routed, which of its sessions and share groups
// a copy reached; a resend that this node refused before skips them here,
// and is forwarded as a resend so that the other nodes skip theirs.
//
// Any other PUBLISH is routed as a new one, DUP or not: a packet identifier
// is reused once released, and a client whose new PUBLISH was lost on the
// wire sends it again with DUP set, identical, perhaps, to the last one
// under that identifier; skipping sessions then would lose it. So a resend
// after its first sending's node died, or arriving at another node than
// the one that refused it, may reach a session twice (at least once rather
// than lost). What a node remembers is bounded (resendWindowSize PUBLISHes
// each way, the oldest forgotten first) and in memory.

// resendWindowSize is how many QoS 2 PUBLISHes a node remembers.
const resendWindowSize = 1 << 16

// resendRef names a client's QoS 2 PUBLISH: its packet identifier (0 for
// none: other QoS, Wills) and whether it is a resend.
type resendRef struct {
	pid uint16
	dup bool
}

// wire encodes ref for a routeMsg.
func (ref resendRef) wire() uint64 {
	v := uint64(ref.pid) << 1
	if ref.dup {
		v |= 1
	}
	return v
}

func resendRefFromWire(v uint64) resendRef {
	return resendRef{pid: uint16(v >> 1), dup: v&1 == 1}
}

// resendKey names a QoS 2 PUBLISH among those of every client.
type resendKey struct {
	from mqtthooks.SubscriberID
	pid  uint16
}

// resendEntry is what one QoS 2 PUBLISH reached on this node.
type resendEntry struct {
	sum     uint64 // topic and payload: a resend carries the same
	reached []mqtthooks.SubscriberID
}

// resendWindow remembers the QoS 2 PUBLISHes routed on this node, and those
// of its clients' that it refused.
type resendWindow struct {
	mu      sync.Mutex
	seed    maphash.Seed
	m       map[resendKey]*resendEntry
	ring    []resendKey // insertion order; the oldest is at next once full
	next    int
	refused map[resendKey]uint64 // → the PUBLISH's sum
}

func (w *resendWindow) init(n int) {
	w.seed, w.m, w.ring = maphash.MakeSeed(), map[resendKey]*resendEntry{}, make([]resendKey, 0, n)
	w.refused = map[resendKey]uint64{}
}

// sum identifies a PUBLISH among those under one packet identifier.
func (w *resendWindow) sum(msg *mqtthooks.Message) uint64 {
	var h maphash.Hash
	h.SetSeed(w.seed)
	h.WriteString(msg.Topic)
	h.WriteByte(0)
	h.Write(msg.Payload)
	return h.Sum64()
}

// refuse records that this node did not acknowledge the QoS 2 PUBLISH msg
// of its client from, so that the client's resend is taken for one.
func (w *resendWindow) refuse(from mqtthooks.SubscriberID, ref resendRef, msg *mqtthooks.Message) {
	if msg.QoS != 2 || ref.pid == 0 {
		return
	}
	sum := w.sum(msg)
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.refused) >= cap(w.ring) {
		for k := range w.refused { // any one: they are few, and consumed at the resend
			delete(w.refused, k)
			break
		}
	}
	w.refused[resendKey{from, ref.pid}] = sum
}

// admit returns ref as this node routes its client's PUBLISH msg: a
// resend only if this node refused the same PUBLISH before.
func (w *resendWindow) admit(from mqtthooks.SubscriberID, ref resendRef, msg *mqtthooks.Message) resendRef {
	if !ref.dup || msg.QoS != 2 {
		ref.dup = false
		return ref
	}
	k := resendKey{from, ref.pid}
	sum := w.sum(msg)
	w.mu.Lock()
	defer w.mu.Unlock()
	s, ok := w.refused[k]
	delete(w.refused, k)
	ref.dup = ok && s == sum
	return ref
}

// begin returns the entry of the PUBLISH msg of from: the one remembered
// if ref is a resend of it, or a new one. It returns nil for what is not
// a client's QoS 2 PUBLISH.
func (w *resendWindow) begin(from mqtthooks.SubscriberID, ref resendRef, msg *mqtthooks.Message) *resendEntry {
	if msg.QoS != 2 || ref.pid == 0 {
		return nil
	}
	sum := w.sum(msg)
	k := resendKey{from, ref.pid}
	w.mu.Lock()
	defer w.mu.Unlock()
	e, ok := w.m[k]
	if ok && ref.dup && e.sum == sum {
		return e
	}
	if !ok { // a new key takes the oldest's place
		if len(w.ring) < cap(w.ring) {
			w.ring = append(w.ring, k)
		} else {
			delete(w.m, w.ring[w.next])
			w.ring[w.next] = k
			w.next = (w.next + 1) % len(w.ring)
		}
	}
	e = &resendEntry{sum: sum}
	w.m[k] = e
	return e
}

// reached reports whether e's PUBLISH reached to already.
func (w *resendWindow) reached(e *resendEntry, to mqtthooks.SubscriberID) bool {
	if e == nil {
		return false
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Contains(e.reached, to)
}

// reach records that e's PUBLISH reached to.
func (w *resendWindow) reach(e *resendEntry, to mqtthooks.SubscriberID) {
	if e == nil {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	e.reached = append(e.reached, to)
}
