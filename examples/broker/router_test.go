package main

import (
	"fmt"
	"runtime"
	"testing"

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
