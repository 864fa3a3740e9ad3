package main

import (
	"hash/maphash"
	"sync"

	"github.com/mqtthooks/mqtthooks"
)

// The resends of QoS 2 PUBLISHes. A client sends a QoS 2 PUBLISH again, DUP
// set, when it got no PUBREC. When the broker did not take it (a node did
// not store its copies, a session it matches was moving, a write failed),
// the Core has forgotten its packet identifier, so the resend is routed
// again; the copies its first sending stored must not be stored twice.
//
// So the node that receives a client's QoS 2 PUBLISH names it with a nonce
// of its own, kept until the client's PUBREL for its identifier. A PUBLISH
// that the Core takes for the resend of one this node refused (its
// Receipt says so, and topic and payload are the same) carries the first
// sending's nonce. Any other PUBLISH, DUP or not, gets a new nonce: a
// client that sends a new PUBLISH again because it was lost on the wire
// sets DUP too, perhaps with the topic and payload of the identifier's
// previous PUBLISH, whose PUBREL may have gone to another node.
//
// Every node remembers, for each nonce it routed, which of its sessions
// and share groups a copy reached; a resend skips them. What a node
// remembers is bounded (resendWindowSize PUBLISHes, the oldest forgotten
// first, and maxReached copies in all) and in memory: a resend that
// arrives at another node than the first sending (its node died, or the
// client moved), or whose first sending reached a session on a node that
// died since, may reach a session twice: at least once rather than lost.

// Bounds of what a node remembers.
const (
	resendWindowSize = 1 << 16 // PUBLISHes routed, and PUBLISHes of this node's clients in the balance
	maxReached       = 1 << 20 // copies recorded for them
)

// resendRef names a client's QoS 2 PUBLISH as routed: its packet
// identifier and nonce (0: not a client's QoS 2 PUBLISH).
type resendRef struct {
	pid   uint16
	nonce uint64
}

// resendKey names the PUBLISHes of one client under one identifier.
type resendKey struct {
	from mqtthooks.SubscriberID
	pid  uint16
}

// resendEntry is what one QoS 2 PUBLISH reached on this node.
type resendEntry struct {
	key     resendKey
	nonce   uint64
	reached map[mqtthooks.SubscriberID]struct{} // past maxReached, not all of them
}

// balance is a PUBLISH of a client of this node, in the balance until its PUBREL.
type balance struct{ sum, nonce uint64 }

// resendWindow is what a node remembers of QoS 2 PUBLISHes.
type resendWindow struct {
	mu      sync.Mutex
	seed    maphash.Seed
	nonce   uint64
	clients map[resendKey]balance
	m       map[resendKey]*resendEntry
	ring    []resendKey // insertion order of m's keys; the oldest is at next once full
	next    int
	pairs   int // copies recorded in m
}

// init sets the window up; boot salts the nonces, so that a restarted node
// does not reuse its earlier ones.
func (w *resendWindow) init(boot uint64) {
	w.seed, w.nonce = maphash.MakeSeed(), boot
	w.clients, w.m, w.ring = map[resendKey]balance{}, map[resendKey]*resendEntry{}, make([]resendKey, 0, resendWindowSize)
}

// admit names the PUBLISH msg of this node's client from, received with
// packet identifier pid; resent says that the Core took it for the resend
// of one this node refused (mqtthooks.Receipt.Resent).
func (w *resendWindow) admit(from mqtthooks.SubscriberID, pid uint16, resent bool, msg *mqtthooks.Message) resendRef {
	if msg.QoS != 2 || pid == 0 {
		return resendRef{}
	}
	var h maphash.Hash
	h.SetSeed(w.seed)
	h.WriteString(msg.Topic)
	h.WriteByte(0)
	h.Write(msg.Payload)
	sum := h.Sum64()
	k := resendKey{from, pid}
	w.mu.Lock()
	defer w.mu.Unlock()
	if b, ok := w.clients[k]; ok && resent && b.sum == sum {
		return resendRef{pid, b.nonce}
	}
	if _, ok := w.clients[k]; !ok && len(w.clients) >= resendWindowSize {
		for old := range w.clients { // any one: they leave at their PUBREL
			delete(w.clients, old)
			break
		}
	}
	if w.nonce++; w.nonce == 0 { // 0 names none
		w.nonce++
	}
	w.clients[k] = balance{sum, w.nonce}
	return resendRef{pid, w.nonce}
}

// released forgets the PUBLISH of from under pid: its PUBREL came.
func (w *resendWindow) released(from mqtthooks.SubscriberID, pid uint16) {
	w.mu.Lock()
	delete(w.clients, resendKey{from, pid})
	w.mu.Unlock()
}

// begin returns the entry of the PUBLISH ref names, new unless a sending
// of it was routed here before; nil for none.
func (w *resendWindow) begin(from mqtthooks.SubscriberID, ref resendRef) *resendEntry {
	if ref.nonce == 0 {
		return nil
	}
	k := resendKey{from, ref.pid}
	w.mu.Lock()
	defer w.mu.Unlock()
	e, ok := w.m[k]
	if ok && e.nonce == ref.nonce {
		return e
	}
	if ok {
		w.pairs -= len(e.reached)
	} else { // a new key takes the oldest's place
		if len(w.ring) < cap(w.ring) {
			w.ring = append(w.ring, k)
		} else {
			if old, ok := w.m[w.ring[w.next]]; ok {
				w.pairs -= len(old.reached)
				delete(w.m, w.ring[w.next])
			}
			w.ring[w.next] = k
			w.next = (w.next + 1) % len(w.ring)
		}
	}
	e = &resendEntry{key: k, nonce: ref.nonce}
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
	_, ok := e.reached[to]
	return ok
}

// reach records that e's PUBLISH reached to.
func (w *resendWindow) reach(e *resendEntry, to mqtthooks.SubscriberID) {
	if e == nil {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.pairs >= maxReached || w.m[e.key] != e { // full, or replaced meanwhile: not counted
		return
	}
	if e.reached == nil {
		e.reached = map[mqtthooks.SubscriberID]struct{}{}
	}
	if _, ok := e.reached[to]; !ok {
		e.reached[to] = struct{}{}
		w.pairs++
	}
}
