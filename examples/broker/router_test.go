package main

import (
	"fmt"
	"math/rand/v2"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mqtthooks/mqtthooks"
)

// nodes counts the nodes of every tree.
func (r *router) nodes() int {
	r.mu.RLock()
	defer r.mu.RUnlock()
	var count func(n *node) int
	count = func(n *node) int {
		c := 1
		for _, ch := range n.children {
			c += count(ch)
		}
		return c
	}
	total := 0
	for _, root := range r.trees {
		total += count(root)
	}
	return total
}

func heapAfterGC() uint64 {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// Request/response clients each subscribe their own reply topic and leave:
// Unsubscribe and the session's end prune what they leave empty, so four
// rounds of 50,000 unique filters cost what one does (the tree once kept
// every filter ever subscribed).
func TestRouterPrunesFilters(t *testing.T) {
	r := newRouter()
	keep := mqtthooks.SubscriberID{ClientID: "stays"}
	r.Add(keep, 1, mqtthooks.Subscription{Filter: "replies/+/status", QoS: 1})
	base := r.nodes()
	round := func(k int) {
		for i := range 50_000 {
			id := mqtthooks.SubscriberID{Mountpoint: fmt.Sprint("m", i%3), ClientID: fmt.Sprintf("req-%d-%d", k, i)}
			r.Add(id, 1, mqtthooks.Subscription{Filter: fmt.Sprintf("replies/%d-%d/status", k, i), QoS: 1})
			r.Add(id, 1, mqtthooks.Subscription{Filter: fmt.Sprintf("replies/%d-%d/+/#", k, i), QoS: 0})
			if i%2 == 0 {
				r.Remove(id, 1, fmt.Sprintf("replies/%d-%d/status", k, i)) // UNSUBSCRIBE
			}
			r.RemoveAll(id, 1) // the session ends
		}
	}
	round(0)
	after1 := heapAfterGC()
	for k := 1; k < 4; k++ {
		round(k)
	}
	after4 := heapAfterGC()
	assert.Equal(t, base, r.nodes(), "only the filter still subscribed has nodes")
	assert.Len(t, r.bySub, 1)
	assert.LessOrEqual(t, float64(after4), 1.1*float64(after1), "heap after 4 rounds within 10 %% of after 1")
	require.Len(t, r.matches("", "replies/x/status", mqtthooks.SubscriberID{}), 1, "the remaining subscription still matches")
}

// topicMatches reports whether filter matches topic, level by level: the
// reference the retained tree's walk is checked against.
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

// The retained tree's walk returns exactly the retained messages a filter
// matches, by the reference matcher, for random topics and filters ($
// topics, empty levels, + and # included); expired ones are not returned
// and are cleared.
func TestRetainedWalkMatchesReference(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	levels := []string{"a", "b", "c", "$SYS", "", "x"}
	topic := func() string {
		n := 1 + rng.IntN(4)
		parts := make([]string, n)
		for i := range parts {
			parts[i] = levels[rng.IntN(len(levels))]
		}
		return strings.Join(parts, "/")
	}
	r := newRouter()
	topics := map[string]bool{}
	for range 300 {
		tp := topic()
		if !validTopic(tp) {
			continue
		}
		r.retain("", &mqtthooks.Message{Topic: tp, Payload: []byte(tp)})
		topics[tp] = true
	}
	r.retain("", &mqtthooks.Message{Topic: "a/gone", Payload: []byte("x"),
		Properties: mqtthooks.PublishProperties{MessageExpiryInterval: mqtthooks.Some(uint32(1))}})
	for range 500 {
		filter := topic()
		parts := strings.Split(filter, "/")
		for i := range parts {
			switch rng.IntN(5) {
			case 0:
				parts[i] = "+"
			case 1:
				if i == len(parts)-1 {
					parts[i] = "#"
				}
			}
		}
		filter = strings.Join(parts, "/")
		if !validFilter(filter) {
			continue // the empty filter
		}
		var want, got []string
		for tp := range topics {
			if topicMatches(filter, tp) {
				want = append(want, tp)
			}
		}
		for _, m := range r.retainedFor("", filter) {
			if m.Topic != "a/gone" {
				got = append(got, m.Topic)
			}
		}
		slices.Sort(want)
		slices.Sort(got)
		assert.Equal(t, want, got, "filter %q", filter)
	}
	r.retainedFor("", "a/#") // a/gone has not expired yet: kept
	r.rmu.Lock()
	r.retained[""].children["a"].children["gone"].msg.expires = time.Now().Add(-time.Second)
	r.rmu.Unlock()
	for _, m := range r.retainedFor("", "a/#") {
		assert.NotEqual(t, "a/gone", m.Topic, "expired")
	}
	r.rmu.RLock()
	_, kept := r.retained[""].children["a"].children["gone"]
	r.rmu.RUnlock()
	assert.False(t, kept, "an expired message's node is pruned")
	for tp := range topics { // clearing them all prunes every node
		r.retain("", &mqtthooks.Message{Topic: tp})
	}
	assert.Empty(t, r.retained)
}

// A 1,000-filter SUBSCRIBE's retained lookups against 20,000 retained
// messages walk only what each filter can match.
func BenchmarkRetainedLookup(b *testing.B) {
	r := newRouter()
	for i := range 20_000 {
		tp := fmt.Sprintf("site/%d/device/%d/temp", i%100, i)
		r.retain("", &mqtthooks.Message{Topic: tp, Payload: []byte("21.5")})
	}
	filters := make([]string, 1000)
	for i := range filters {
		filters[i] = fmt.Sprintf("site/%d/device/+/temp", i%100)
		if i%10 == 0 {
			filters[i] = fmt.Sprintf("site/%d/#", i%100)
		}
	}
	b.ReportAllocs()
	for b.Loop() {
		n := 0
		for _, f := range filters {
			n += len(r.retainedFor("", f))
		}
		if n == 0 {
			b.Fatal("nothing matched")
		}
	}
}

// A wildcard at the first level never matches a topic that starts with $
// [MQTT-4.7.2-1]; a filter that names the $ level does.
func TestDollarTopicsAndWildcards(t *testing.T) {
	r := newRouter()
	for i, f := range []string{"#", "+/broker/#", "+/+/uptime", "$SYS/#", "$SYS/+/uptime", "a/#"} {
		r.Add(mqtthooks.SubscriberID{ClientID: fmt.Sprint("c", i)}, 1, mqtthooks.Subscription{Filter: f})
	}
	var got []string
	for _, m := range r.matches("", "$SYS/broker/uptime", mqtthooks.SubscriberID{}) {
		got = append(got, m.id.ClientID)
	}
	slices.Sort(got)
	assert.Equal(t, []string{"c3", "c4"}, got)
	assert.Len(t, r.matches("", "a/b", mqtthooks.SubscriberID{}), 2, "# and a/# match an ordinary topic")
}

// The subscription tree's walk, which cuts the topic into levels in place,
// finds exactly the sessions whose filters match by the reference matcher,
// for random topics and filters ($ topics, empty levels, + and # included),
// and appendMatches appends to the slice it is given.
func TestMatchesAgainstReference(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	levels := []string{"a", "b", "$SYS", "", "x"}
	random := func(wild bool) string {
		parts := make([]string, 1+rng.IntN(4))
		for i := range parts {
			parts[i] = levels[rng.IntN(len(levels))]
			if wild && rng.IntN(4) == 0 {
				parts[i] = "+"
			}
			if wild && i == len(parts)-1 && rng.IntN(5) == 0 {
				parts[i] = "#"
			}
		}
		return strings.Join(parts, "/")
	}
	r := newRouter()
	filters := map[mqtthooks.SubscriberID]string{}
	for i := range 200 {
		f := random(true)
		if !validFilter(f) {
			continue
		}
		id := mqtthooks.SubscriberID{ClientID: fmt.Sprint("c", i)}
		r.Add(id, 1, mqtthooks.Subscription{Filter: f, QoS: 1})
		filters[id] = f
	}
	sentinel := match{id: mqtthooks.SubscriberID{ClientID: "already there"}}
	for range 500 {
		topic := random(false)
		if !validTopic(topic) {
			continue
		}
		var want []string
		for id, f := range filters {
			if topicMatches(f, topic) {
				want = append(want, id.ClientID)
			}
		}
		ms := r.appendMatches([]match{sentinel}, "", topic, mqtthooks.SubscriberID{})
		require.Equal(t, sentinel.id, ms[0].id, "appended after what was there")
		var got []string
		for _, m := range ms[1:] {
			got = append(got, m.id.ClientID)
		}
		slices.Sort(want)
		slices.Sort(got)
		assert.Equal(t, want, got, "topic %q", topic)
	}
}
