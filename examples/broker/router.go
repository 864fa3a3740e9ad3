package main

import (
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mqtthooks/mqtthooks"
)

// router is the broker's topic router: the subscriptions the core tells it
// about (it implements mqtthooks.Router), topic matching with + and #, and
// retained messages, each namespaced by the session's mountpoint.
type router struct {
	mu    sync.RWMutex
	trees map[string]*node // mountpoint → subscription tree
	bySub map[mqtthooks.SubscriberID]map[string]bool

	online func(mqtthooks.SubscriberID) bool // whether a session has a connection; nil: all do

	rmu           sync.RWMutex             // retained messages have their own lock: a SUBSCRIBE's lookups do not stall routing
	retained      map[string]*retainedNode // mountpoint → retained messages by topic level
	retainedCount int
}

// retainedNode is one topic level of the retained messages.
type retainedNode struct {
	children map[string]*retainedNode
	msg      *retainedMessage // nil: no message retained on this topic
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
	shared   map[string]*shareGroup // share name → the group's members on this filter
}

// shareGroup is one shared subscription, $share/{name}/{filter} (MQTT 5
// §4.8.2): each message goes to one of its members, in turn.
type shareGroup struct {
	members []sharedMember
	next    atomic.Uint32 // taken under the router's read lock, so atomic
}

type sharedMember struct {
	id  mqtthooks.SubscriberID
	sub routedSub
}

// parseShare splits a shared subscription's filter, "$share/{name}/{filter}",
// into the share name and the filter; ok is false for any other filter.
func parseShare(filter string) (name, topicFilter string, ok bool) {
	rest, ok := strings.CutPrefix(filter, "$share/")
	if !ok {
		return "", "", false
	}
	name, topicFilter, ok = strings.Cut(rest, "/")
	return name, topicFilter, ok
}

// validShare reports whether filter is a well-formed shared subscription: a
// share name without "/", "+" or "#", and a valid topic filter
// [MQTT-4.8.2-1] [MQTT-4.8.2-2].
func validShare(filter string) bool {
	name, f, ok := parseShare(filter)
	return ok && name != "" && !strings.ContainsAny(name, "+#") && validFilter(f)
}

func (n *node) empty() bool { return len(n.subs) == 0 && len(n.children) == 0 && len(n.shared) == 0 }

// addShared adds id to the share group name of n, or replaces its
// subscription there.
func (n *node) addShared(name string, id mqtthooks.SubscriberID, sub routedSub) {
	g := n.shared[name]
	if g == nil {
		if n.shared == nil {
			n.shared = map[string]*shareGroup{}
		}
		g = &shareGroup{}
		n.shared[name] = g
	}
	for i := range g.members {
		if g.members[i].id == id {
			g.members[i].sub = sub
			return
		}
	}
	g.members = append(g.members, sharedMember{id, sub})
}

// removeShared takes id out of the share group name of n.
func (n *node) removeShared(name string, id mqtthooks.SubscriberID) {
	g := n.shared[name]
	if g == nil {
		return
	}
	g.members = slices.DeleteFunc(g.members, func(m sharedMember) bool { return m.id == id })
	if len(g.members) == 0 {
		delete(n.shared, name)
	}
}

// routedSub is a subscription with the life of the session that made it.
type routedSub struct {
	mqtthooks.Subscription
	gen uint64
}

func newRouter() *router {
	return &router{trees: map[string]*node{}, bySub: map[mqtthooks.SubscriberID]map[string]bool{},
		retained: map[string]*retainedNode{}}
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
	filter := sub.Filter
	share, shared, isShared := parseShare(filter)
	if isShared {
		filter = shared
	}
	for _, level := range strings.Split(filter, "/") {
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
	if isShared {
		n.addShared(share, id, routedSub{sub, gen})
	} else {
		if n.subs == nil {
			n.subs = map[mqtthooks.SubscriberID]routedSub{}
		}
		n.subs[id] = routedSub{sub, gen}
	}
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
	full := filter
	share, shared, isShared := parseShare(filter)
	if isShared {
		filter = shared
	}
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
		if isShared {
			n.removeShared(share, id)
		} else {
			delete(n.subs, id)
		}
		for i := len(levels) - 1; i >= 0 && n.empty(); i-- {
			delete(path[i].children, levels[i])
			n = path[i]
		}
		if root.empty() {
			delete(r.trees, id.Mountpoint)
		}
	}
	if subs := r.bySub[id]; subs != nil {
		delete(subs, full)
		if len(subs) == 0 {
			delete(r.bySub, id)
		}
	}
}

// counts returns how many subscriptions and retained messages there are.
func (r *router) counts() (subs, retained int) {
	r.mu.RLock()
	for _, filters := range r.bySub {
		subs += len(filters)
	}
	r.mu.RUnlock()
	r.rmu.RLock()
	retained = r.retainedCount
	r.rmu.RUnlock()
	return subs, retained
}

// has reports whether id subscribes to filter.
func (r *router) has(id mqtthooks.SubscriberID, filter string) bool {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.bySub[id][filter]
}

// filters returns the filters id subscribes to.
func (r *router) filters(id mqtthooks.SubscriberID) []string {
	r.mu.RLock()
	defer r.mu.RUnlock()
	out := make([]string, 0, len(r.bySub[id]))
	for f := range r.bySub[id] {
		out = append(out, f)
	}
	return out
}

// hasShared reports whether the shared subscription filter
// ($share/{name}/{filter}) has a member on mountpoint.
func (r *router) hasShared(mountpoint, filter string) bool {
	name, f, ok := parseShare(filter)
	if !ok {
		return false
	}
	r.mu.RLock()
	defer r.mu.RUnlock()
	n := r.trees[mountpoint]
	for _, level := range strings.Split(f, "/") {
		if n == nil {
			return false
		}
		n = n.children[level]
	}
	return n != nil && n.shared[name] != nil
}

// match is one session a message goes to, with the best QoS and the
// subscription identifiers of its matching subscriptions.
type match struct {
	id       mqtthooks.SubscriberID
	gen      uint64 // the life whose subscriptions matched
	qos      byte
	rap      bool // retain as published
	identity []uint32
	shared   bool   // chosen as a share group's member: a delivery of its own
	share    string // then the shared subscription: $share/{name}/{filter}
}

// matches returns the sessions subscribed to topic on mountpoint, one entry
// per session, leaving out the NoLocal subscriptions of from, the publisher.
func (r *router) matches(mountpoint, topic string, from mqtthooks.SubscriberID) []match {
	return r.appendMatches(nil, mountpoint, topic, from)
}

// appendMatches is matches appending to out, so that a caller routing
// message after message can reuse one slice (see server.route). The topic's
// levels are walked in place, not split into a slice of their own.
func (r *router) appendMatches(out []match, mountpoint, topic string, from mqtthooks.SubscriberID) []match {
	r.mu.RLock()
	defer r.mu.RUnlock()
	root := r.trees[mountpoint]
	if root == nil {
		return out
	}
	dollar := strings.HasPrefix(topic, "$") // [MQTT-4.7.2-1]: no wildcard matches it at the first level
	r.walk(root, topic, false, true, dollar, from, &out)
	return out
}

// walk adds the matches under n for rest, the levels of the topic not yet
// matched; end: there are none (rest "" alone is one empty level, as
// strings.Split has it). first: rest starts at the topic's first level.
func (r *router) walk(n *node, rest string, end, first, dollar bool, from mqtthooks.SubscriberID, out *[]match) {
	if end {
		r.collect(n, from, out)
		if hash := n.children["#"]; hash != nil {
			r.collect(hash, from, out) // "a/#" matches "a"
		}
		return
	}
	level, next, more := strings.Cut(rest, "/")
	wild := !(dollar && first)
	if hash := n.children["#"]; hash != nil && wild {
		r.collect(hash, from, out)
	}
	if plus := n.children["+"]; plus != nil && wild {
		r.walk(plus, next, !more, false, dollar, from, out)
	}
	if child := n.children[level]; child != nil {
		r.walk(child, next, !more, false, dollar, from, out)
	}
}

// collect adds the subscriptions of n to out, merging those of one session,
// and one member of each share group on n.
func (r *router) collect(n *node, from mqtthooks.SubscriberID, out *[]match) {
	for _, g := range n.shared {
		*out = append(*out, g.pick(r.online).match())
	}
	for id, sub := range n.subs {
		if sub.NoLocal && id == from {
			continue
		}
		i := slices.IndexFunc(*out, func(m match) bool { return m.id == id && !m.shared })
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

// pick returns the member whose turn it is, passing over those that are not
// online (when online is set) while any member is.
func (g *shareGroup) pick(online func(mqtthooks.SubscriberID) bool) sharedMember {
	n := uint32(len(g.members))
	start := g.next.Add(1) - 1
	if online != nil {
		for k := range n {
			if m := g.members[(start+k)%n]; online(m.id) {
				return m
			}
		}
	}
	return g.members[start%n]
}

func (m sharedMember) match() match {
	return match{id: m.id, gen: m.sub.gen, qos: m.sub.QoS, rap: m.sub.RetainAsPublished,
		identity: identities(m.sub.Identifier), shared: true, share: m.sub.Filter}
}

// pickShared returns the member whose turn it is in the shared subscription
// filter ($share/{name}/{filter}) on mountpoint; false when it has none.
func (r *router) pickShared(mountpoint, filter string) (match, bool) {
	name, f, ok := parseShare(filter)
	if !ok {
		return match{}, false
	}
	r.mu.RLock()
	defer r.mu.RUnlock()
	n := r.trees[mountpoint]
	for _, level := range strings.Split(f, "/") {
		if n == nil {
			return match{}, false
		}
		n = n.children[level]
	}
	if n == nil || n.shared[name] == nil {
		return match{}, false
	}
	return n.shared[name].pick(r.online).match(), true
}

func identities(id uint32) []uint32 {
	if id == 0 {
		return nil
	}
	return []uint32{id}
}

// retain stores msg as the retained message of its topic, or clears it when
// the payload is empty.
func (r *router) retain(mountpoint string, msg *mqtthooks.Message) {
	rm := &retainedMessage{msg: msg}
	if exp := msg.Properties.MessageExpiryInterval; exp.Set {
		rm.expires = time.Now().Add(time.Duration(exp.V) * time.Second)
	}
	r.rmu.Lock()
	defer r.rmu.Unlock()
	if len(msg.Payload) == 0 {
		r.unretainLocked(mountpoint, msg.Topic)
		return
	}
	n := r.retained[mountpoint]
	if n == nil {
		n = &retainedNode{}
		r.retained[mountpoint] = n
	}
	for _, level := range strings.Split(msg.Topic, "/") {
		next := n.children[level]
		if next == nil {
			if n.children == nil {
				n.children = map[string]*retainedNode{}
			}
			next = &retainedNode{}
			n.children[level] = next
		}
		n = next
	}
	if n.msg == nil {
		r.retainedCount++
	}
	n.msg = rm
}

// unretainLocked clears the retained message of topic and prunes the nodes
// left empty. r.rmu is held.
func (r *router) unretainLocked(mountpoint, topic string) {
	root := r.retained[mountpoint]
	levels := strings.Split(topic, "/")
	path := make([]*retainedNode, 0, len(levels))
	n := root
	for _, level := range levels {
		if n == nil {
			return
		}
		path = append(path, n)
		n = n.children[level]
	}
	if n == nil || n.msg == nil {
		return
	}
	n.msg = nil
	r.retainedCount--
	for i := len(levels) - 1; i >= 0 && n.msg == nil && len(n.children) == 0; i-- {
		delete(path[i].children, levels[i])
		n = path[i]
	}
	if root.msg == nil && len(root.children) == 0 {
		delete(r.retained, mountpoint)
	}
}

// retainedFor returns the retained messages that filter matches, with what is
// left of their expiry. It walks only the branches filter can match, under
// the read lock; the expired messages it meets are cleared after.
func (r *router) retainedFor(mountpoint, filter string) []*mqtthooks.Message {
	now := time.Now()
	var out []*mqtthooks.Message
	var expired []string
	r.rmu.RLock()
	if root := r.retained[mountpoint]; root != nil {
		w := retainedWalk{now: now, out: &out, expired: &expired}
		w.walk(root, strings.Split(filter, "/"), 0, make([]string, 0, 16)) // a topic's levels, in one array
	}
	r.rmu.RUnlock()
	if len(expired) > 0 {
		r.rmu.Lock()
		for _, topic := range expired {
			r.unretainExpiredLocked(mountpoint, topic, now)
		}
		r.rmu.Unlock()
	}
	return out
}

// unretainExpiredLocked clears topic if its message is still the expired one
// (a new one may have come since the read). r.rmu is held.
func (r *router) unretainExpiredLocked(mountpoint, topic string, now time.Time) {
	n := r.retained[mountpoint]
	for _, level := range strings.Split(topic, "/") {
		if n == nil {
			return
		}
		n = n.children[level]
	}
	if n != nil && n.msg != nil && !n.msg.expires.IsZero() && !now.Before(n.msg.expires) {
		r.unretainLocked(mountpoint, topic)
	}
}

type retainedWalk struct {
	now     time.Time
	out     *[]*mqtthooks.Message
	expired *[]string
}

// walk collects the messages under n that the filter levels[i:] match;
// topic is the levels walked so far.
func (w retainedWalk) walk(n *retainedNode, levels []string, i int, topic []string) {
	if i == len(levels) {
		w.collect(n, topic)
		return
	}
	// [MQTT-4.7.2-1]: a wildcard at the first level does not match a $ topic.
	skipDollar := i == 0
	switch levels[i] {
	case "#":
		w.collect(n, topic) // "a/#" matches "a"
		for level, child := range n.children {
			if skipDollar && strings.HasPrefix(level, "$") {
				continue
			}
			w.all(child, append(topic, level))
		}
	case "+":
		for level, child := range n.children {
			if skipDollar && strings.HasPrefix(level, "$") {
				continue
			}
			w.walk(child, levels, i+1, append(topic, level))
		}
	default:
		if child := n.children[levels[i]]; child != nil {
			w.walk(child, levels, i+1, append(topic, levels[i]))
		}
	}
}

// all collects every message at and under n.
func (w retainedWalk) all(n *retainedNode, topic []string) {
	w.collect(n, topic)
	for level, child := range n.children {
		w.all(child, append(topic, level))
	}
}

// collect adds the message of n, if any, with what is left of its expiry.
func (w retainedWalk) collect(n *retainedNode, topic []string) {
	rm := n.msg
	if rm == nil || len(topic) == 0 {
		return
	}
	if rm.expires.IsZero() {
		*w.out = append(*w.out, rm.msg)
		return
	}
	if !w.now.Before(rm.expires) {
		*w.expired = append(*w.expired, strings.Join(topic, "/"))
		return
	}
	cp := *rm.msg
	cp.Properties.MessageExpiryInterval = mqtthooks.Some(uint32((rm.expires.Sub(w.now) + time.Second - 1) / time.Second))
	*w.out = append(*w.out, &cp)
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
