package main

import (
	"fmt"
	"testing"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/mqtthooks/mqtthooks"
)

// The router against mochi-mqtt's TopicsIndex (a well-kept index that
// matches, keeps retained messages and shared subscriptions), on the cases
// of issue 13: which one the broker uses is decided by these.

func retainedFilters() []string {
	filters := make([]string, 1000)
	for i := range filters {
		filters[i] = fmt.Sprintf("site/%d/device/+/temp", i%100)
		if i%10 == 0 {
			filters[i] = fmt.Sprintf("site/%d/#", i%100)
		}
	}
	return filters
}

// BenchmarkRetainedLookupMochi is BenchmarkRetainedLookup on TopicsIndex.
func BenchmarkRetainedLookupMochi(b *testing.B) {
	x := mqtt.NewTopicsIndex()
	for i := range 20_000 {
		x.RetainMessage(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Retain: true},
			TopicName: fmt.Sprintf("site/%d/device/%d/temp", i%100, i), Payload: []byte("21.5")})
	}
	filters := retainedFilters()
	b.ReportAllocs()
	for b.Loop() {
		n := 0
		for _, f := range filters {
			n += len(x.Messages(f))
		}
		if n == 0 {
			b.Fatal("nothing matched")
		}
	}
}

// BenchmarkFilterChurn subscribes and unsubscribes unique reply filters, as
// request/response clients do, and reports the heap after four rounds of
// 50,000 against the heap after one.
func BenchmarkFilterChurn(b *testing.B) {
	const perRound = 50_000
	run := func(b *testing.B, sub func(k, i int), unsub func(k, i int)) {
		for b.Loop() {
			var after1 uint64
			for k := range 4 {
				for i := range perRound {
					sub(k, i)
					unsub(k, i)
				}
				if k == 0 {
					after1 = heapAfterGC()
				}
			}
			b.ReportMetric(float64(heapAfterGC())/float64(after1), "heap4/heap1")
		}
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*4*perRound), "ns/filter")
	}
	b.Run("router", func(b *testing.B) {
		r := newRouter()
		id := func(k, i int) mqtthooks.SubscriberID {
			return mqtthooks.SubscriberID{ClientID: fmt.Sprintf("req-%d-%d", k, i)}
		}
		run(b, func(k, i int) {
			r.Add(id(k, i), 1, mqtthooks.Subscription{Filter: fmt.Sprintf("replies/%d-%d/status", k, i), QoS: 1})
		}, func(k, i int) { r.Remove(id(k, i), 1, fmt.Sprintf("replies/%d-%d/status", k, i)) })
	})
	b.Run("mochi", func(b *testing.B) {
		x := mqtt.NewTopicsIndex()
		run(b, func(k, i int) {
			x.Subscribe(fmt.Sprintf("req-%d-%d", k, i), packets.Subscription{Filter: fmt.Sprintf("replies/%d-%d/status", k, i), Qos: 1})
		}, func(k, i int) {
			x.Unsubscribe(fmt.Sprintf("replies/%d-%d/status", k, i), fmt.Sprintf("req-%d-%d", k, i))
		})
	})
}
