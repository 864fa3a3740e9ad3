package main

import (
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/mqtthooks/mqtthooks"
)

// router is the broker's topic router: the subscriptions the core tells it
// about (it implements mqtthooks.Router), topic matching with + and #, and
// retained messages, each namespaced by the session's mountpoint.
type router struct {
	mu       sync.RWMutex
	trees    map[string]*node // mountpoint → subscription tree
	bySub    map[mqtthooks.SubscriberID]map[string]bool
	retained map[string]map[string]retainedMessage // mountpoint → topic → message
}

// retainedMessage is a retained message with the end of its v5 Message
// Expiry Interval (zero: never).
type retainedMessage struct {
	msg     *mqtthooks.Message
	expires time.Time
}

// node is one level of a subscription tree.
type node struct {
	children map[string]*node
	subs     map[mqtthooks.SubscriberID]routedSub
}

func (n *node) empty() bool { return len(n.subs) == 0 && len(n.children) == 0 }

// routedSub is a subscription with the life of the session that made it.
type routedSub struct {
	mqtthooks.Subscription
	gen uint64
}

func newRouter() *router {
	return &router{trees: map[string]*node{}, bySub: map[mqtthooks.SubscriberID]map[string]bool{},
		retained: map[string]map[string]retainedMessage{}}
}

// Add records a subscription of id's life gen.
func (r *router) Add(id mqtthooks.SubscriberID, gen uint64, sub mqtthooks.Subscription) {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := r.trees[id.Mountpoint]
	if n == nil {
		n = &node{}
		r.trees[id.Mountpoint] = n
	}
	for _, level := range strings.Split(sub.Filter, "/") {
		if n.children == nil {
			n.children = map[string]*node{}
		}
		next := n.children[level]
		if next == nil {
			next = &node{}
			n.children[level] = next
		}
		n = next
	}
	if n.subs == nil {
		n.subs = map[mqtthooks.SubscriberID]routedSub{}
	}
	n.subs[id] = routedSub{sub, gen}
	if r.bySub[id] == nil {
		r.bySub[id] = map[string]bool{}
	}
	r.bySub[id][sub.Filter] = true
}

// Remove forgets the subscription of id to filter.
func (r *router) Remove(id mqtthooks.SubscriberID, _ uint64, filter string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.removeLocked(id, filter)
}

// RemoveAll forgets every subscription of id.
func (r *router) RemoveAll(id mqtthooks.SubscriberID, _ uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for filter := range r.bySub[id] {
		r.removeLocked(id, filter)
	}
}

// removeLocked forgets the subscription of id to filter, and prunes the
// nodes it leaves empty: a tree holds only the filters subscribed now, not
// every filter ever subscribed.
func (r *router) removeLocked(id mqtthooks.SubscriberID, filter string) {
	root := r.trees[id.Mountpoint]
	levels := strings.Split(filter, "/")
	path := make([]*node, 0, len(levels)+1) // path[i] is the parent of levels[i]
	n := root
	for _, level := range levels {
		if n == nil {
			break
		}
		path = append(path, n)
		n = n.children[level]
	}
	if n != nil {
		delete(n.subs, id)
		for i := len(levels) - 1; i >= 0 && n.empty(); i-- {
			delete(path[i].children, levels[i])
			n = path[i]
		}
		if root.empty() {
			delete(r.trees, id.Mountpoint)
		}
	}
	if subs := r.bySub[id]; subs != nil {
		delete(subs, filter)
		if len(subs) == 0 {
			delete(r.bySub, id)
		}
	}
}

// has reports whether id subscribes to filter.
func (r *router) has(id mqtthooks.SubscriberID, filter string) bool {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.bySub[id][filter]
}

// match is one session a message goes to, with the best QoS and the
// subscription identifiers of its matching subscriptions.
type match struct {
	id       mqtthooks.SubscriberID
	gen      uint64 // the life whose subscriptions matched
	qos      byte
	rap      bool // retain as published
	identity []uint32
}

// matches returns the sessions subscribed to topic on mountpoint, one entry
// per session, leaving out the NoLocal subscriptions of from, the publisher.
func (r *router) matches(mountpoint, topic string, from mqtthooks.SubscriberID) []match {
	r.mu.RLock()
	defer r.mu.RUnlock()
	root := r.trees[mountpoint]
	if root == nil {
		return nil
	}
	var out []match
	levels := strings.Split(topic, "/")
	dollar := strings.HasPrefix(topic, "$") // [MQTT-4.7.2-1]: no wildcard matches it at the first level
	r.walk(root, levels, 0, dollar, from, &out)
	return out
}

func (r *router) walk(n *node, levels []string, i int, dollar bool, from mqtthooks.SubscriberID, out *[]match) {
	if i == len(levels) {
		collect(n, from, out)
		if hash := n.children["#"]; hash != nil {
			collect(hash, from, out) // "a/#" matches "a"
		}
		return
	}
	wild := !(dollar && i == 0)
	if hash := n.children["#"]; hash != nil && wild {
		collect(hash, from, out)
	}
	if plus := n.children["+"]; plus != nil && wild {
		r.walk(plus, levels, i+1, dollar, from, out)
	}
	if next := n.children[levels[i]]; next != nil {
		r.walk(next, levels, i+1, dollar, from, out)
	}
}

// collect adds the subscriptions of n to out, merging those of one session.
func collect(n *node, from mqtthooks.SubscriberID, out *[]match) {
	for id, sub := range n.subs {
		if sub.NoLocal && id == from {
			continue
		}
		i := slices.IndexFunc(*out, func(m match) bool { return m.id == id })
		if i < 0 {
			*out = append(*out, match{id: id, gen: sub.gen})
			i = len(*out) - 1
		}
		m := &(*out)[i]
		m.qos = max(m.qos, sub.QoS)
		m.rap = m.rap || sub.RetainAsPublished
		if sub.Identifier != 0 {
			m.identity = append(m.identity, sub.Identifier)
		}
	}
}

// retain stores msg as the retained message of its topic, or clears it when
// the payload is empty.
func (r *router) retain(mountpoint string, msg *mqtthooks.Message) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(msg.Payload) == 0 {
		delete(r.retained[mountpoint], msg.Topic)
		return
	}
	if r.retained[mountpoint] == nil {
		r.retained[mountpoint] = map[string]retainedMessage{}
	}
	rm := retainedMessage{msg: msg}
	if exp := msg.Properties.MessageExpiryInterval; exp.Set {
		rm.expires = time.Now().Add(time.Duration(exp.V) * time.Second)
	}
	r.retained[mountpoint][msg.Topic] = rm
}

// retainedFor returns the retained messages that filter matches, with what is
// left of their expiry; expired ones are forgotten.
func (r *router) retainedFor(mountpoint, filter string) []*mqtthooks.Message {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []*mqtthooks.Message
	now := time.Now()
	for topic, rm := range r.retained[mountpoint] {
		if !rm.expires.IsZero() && !now.Before(rm.expires) {
			delete(r.retained[mountpoint], topic)
			continue
		}
		if !topicMatches(filter, topic) {
			continue
		}
		msg := rm.msg
		if !rm.expires.IsZero() {
			cp := *msg
			cp.Properties.MessageExpiryInterval = mqtthooks.Some(uint32((rm.expires.Sub(now) + time.Second - 1) / time.Second))
			msg = &cp
		}
		out = append(out, msg)
	}
	return out
}

// topicMatches reports whether filter matches topic.
func topicMatches(filter, topic string) bool {
	if strings.HasPrefix(topic, "$") && (strings.HasPrefix(filter, "+") || strings.HasPrefix(filter, "#")) {
		return false
	}
	f, t := strings.Split(filter, "/"), strings.Split(topic, "/")
	for i, level := range f {
		switch {
		case level == "#":
			return true
		case i >= len(t):
			return false
		case level != "+" && level != t[i]:
			return false
		}
	}
	return len(f) == len(t)
}

// validFilter reports whether filter is a well-formed topic filter.
func validFilter(filter string) bool {
	if filter == "" {
		return false
	}
	levels := strings.Split(filter, "/")
	for i, l := range levels {
		if strings.Contains(l, "#") && (l != "#" || i != len(levels)-1) {
			return false
		}
		if strings.Contains(l, "+") && l != "+" {
			return false
		}
	}
	return true
}

// validTopic reports whether topic is a well-formed topic name.
func validTopic(topic string) bool {
	return topic != "" && !strings.ContainsAny(topic, "+#")
}
