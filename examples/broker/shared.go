package main

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mqtthooks/mqtthooks"
)

// sharedInFlight remembers, for each message handed to a share group's
// member and not yet acknowledged, which group it came through, so that a
// member whose session ends hands its unacknowledged messages to another
// member (MQTT 5 §4.8.2). Each such delivery is a copy of the message, so
// that the copy names one delivery.
type sharedInFlight struct {
	mu   sync.Mutex
	refs map[*mqtthooks.Message]shareRef
	n    atomic.Int64 // len(refs), read without the lock: most deliveries are not shared
}

// shareRef is the shared subscription a delivery came through.
type shareRef struct {
	mountpoint string
	filter     string // $share/{name}/{filter}
}

// track records that m went to a member of the shared subscription ref.
func (t *sharedInFlight) track(m *mqtthooks.Message, ref shareRef) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.refs == nil {
		t.refs = map[*mqtthooks.Message]shareRef{}
	}
	t.refs[m] = ref
	t.n.Store(int64(len(t.refs)))
}

// has reports whether m is a shared delivery not yet acknowledged.
func (t *sharedInFlight) has(m *mqtthooks.Message) bool {
	if t.n.Load() == 0 {
		return false
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	_, ok := t.refs[m]
	return ok
}

// done forgets m: acknowledged, dropped, or handed on.
func (t *sharedInFlight) done(m *mqtthooks.Message) (shareRef, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	ref, ok := t.refs[m]
	delete(t.refs, m)
	t.n.Store(int64(len(t.refs)))
	return ref, ok
}

func (t *sharedInFlight) len() int { return int(t.n.Load()) }

// discarded is the Core's Options.Discarded: the messages a session held
// unacknowledged when it ended. Those it got through a share group go to
// another member of the group, if one is left.
func (s *server) discarded(_ context.Context, _ mqtthooks.SubscriberID, msgs []mqtthooks.Unacknowledged) {
	now := time.Now()
	for _, u := range msgs {
		m := u.Message
		ref, ok := s.shared.done(m)
		if !ok {
			continue
		}
		if !u.ExpiresAt.IsZero() { // what is left of its expiry goes along
			left := u.ExpiresAt.Sub(now)
			if left <= 0 {
				continue // expired while it waited for the member that left
			}
			cp := *m
			cp.Properties.MessageExpiryInterval = mqtthooks.Some(uint32((left + time.Second - 1) / time.Second))
			m = &cp
		}
		next, ok := s.router.pickShared(ref.mountpoint, ref.filter)
		if !ok {
			continue // the group has no member left
		}
		_ = s.deliverShared(ref, next, m, nil)
	}
}

// deliverShared gives member of the shared subscription ref its own copy
// of msg; r, if not nil, learns when the copy is durable. A QoS 1 or 2 copy
// is tracked until acknowledged (QoS 0 has no acknowledgement to wait for).
// If the member's session ended in between, the next member gets it.
func (s *server) deliverShared(ref shareRef, member match, msg *mqtthooks.Message, r *mqtthooks.Receipt) error {
	for range 2 {
		cp := *msg
		qos := min(msg.QoS, member.qos)
		if qos > 0 {
			s.shared.track(&cp, ref)
		}
		err := s.core.Deliver(member.id, &cp, mqtthooks.DeliverOptions{QoS: qos, Retain: member.rap && msg.Retain,
			SubscriptionIdentifiers: member.identity, Generation: member.gen, Receipt: r})
		if err == nil {
			return nil
		}
		s.shared.done(&cp)
		next, ok := s.router.pickShared(ref.mountpoint, ref.filter)
		if !errors.Is(err, mqtthooks.ErrSessionNotFound) || !ok || next.id == member.id {
			return err
		}
		member = next
	}
	return mqtthooks.ErrSessionNotFound
}

// sharedDrops is a plugin that forgets the shared deliveries the Core
// dropped (queue full, expired, too large).
type sharedDrops struct{ t *sharedInFlight }

func (p sharedDrops) OnMessageDrop(_ context.Context, e *mqtthooks.DropEvent) { p.t.done(e.Message) }
