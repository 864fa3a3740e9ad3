package pebble_test

import (
	"context"
	"testing"
	"time"

	"github.com/mqtthooks/mqtthooks"
	"github.com/mqtthooks/mqtthooks/mqtthookstest"
	store "github.com/mqtthooks/mqtthooks/stores/pebble"
)

// The core's Enqueue and PullAck benchmarks (internal/coretest) on a
// persistent session, without a store, on MemoryStore and on this store with
// each sync policy, on disk in b.TempDir(). They measure the delivery path:
// Deliver and Puback return before a sync (Commit never waits), so Always
// shows the cost of handing the write over, not the fsync; the fsync's cost
// shows in the example broker's throughput (bench/cmd/connstorm -mode
// durable).

type benchStore struct {
	name string
	open func(b *testing.B) mqtthooks.SessionStore
}

func benchStores() []benchStore {
	pebbleWith := func(p store.SyncPolicy) func(b *testing.B) mqtthooks.SessionStore {
		return func(b *testing.B) mqtthooks.SessionStore {
			s, err := store.Open(b.TempDir(), store.Options{Sync: p})
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { _ = s.Close() })
			return s
		}
	}
	return []benchStore{
		{"none", func(*testing.B) mqtthooks.SessionStore { return nil }},
		{"memory", func(*testing.B) mqtthooks.SessionStore { return new(mqtthooks.MemoryStore) }},
		{"pebble-always", pebbleWith(store.Always)},
		{"pebble-interval", pebbleWith(store.Interval(100 * time.Millisecond))},
	}
}

type acceptAll struct{}

func (acceptAll) AuthOnRegister(context.Context, *mqtthooks.RegisterRequest) mqtthooks.RegisterResult {
	return mqtthooks.Accept()
}

func (acceptAll) AuthOnRegisterM5(context.Context, *mqtthooks.RegisterRequest) mqtthooks.RegisterResult {
	return mqtthooks.Accept()
}

func benchCore(b *testing.B, opts mqtthooks.Options) *mqtthooks.Core {
	b.Helper()
	chain := mqtthooks.NewChain(mqtthooks.ChainOptions{})
	if err := chain.Register("P", acceptAll{}); err != nil {
		b.Fatal(err)
	}
	core, err := mqtthooks.NewCore(chain, opts)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = core.Shutdown(context.Background()) }) // before the store's Close: cleanups run last-in first-out
	return core
}

// BenchmarkEnqueue: Deliver of a QoS 1 message to an offline persistent
// session, drained every 4096 messages outside the timer.
func BenchmarkEnqueue(b *testing.B) {
	msg := &mqtthooks.Message{Topic: "t", Payload: []byte("hello"), QoS: 1}
	id := mqtthooks.SubscriberID{ClientID: "c1"}
	for _, bs := range benchStores() {
		b.Run(bs.name, func(b *testing.B) {
			core := benchCore(b, mqtthooks.Options{Store: bs.open(b), MaxOnlineMessages: mqtthooks.Some(-1),
				MaxOfflineMessages: mqtthooks.Some(-1), MaxInflightMessages: mqtthooks.Some(0)})
			mqtthookstest.ConnectV3(context.Background(), core, "c1", "u", false).Drop(context.Background(), nil)
			b.ReportAllocs()
			b.ResetTimer()
			for i := range b.N {
				if err := core.Deliver(id, msg, mqtthooks.DeliverOptions{QoS: 1}); err != nil {
					b.Fatal(err)
				}
				if i%4096 == 4095 {
					b.StopTimer()
					c := mqtthookstest.ConnectV3(context.Background(), core, "c1", "u", false)
					if _, err := c.Receive(); err != nil { // pulls and acknowledges all
						b.Fatal(err)
					}
					c.Drop(context.Background(), nil)
					b.StartTimer()
				}
			}
		})
	}
}

// BenchmarkPullAck: Deliver, Pull and Puback of one QoS 1 message on an
// online persistent session.
func BenchmarkPullAck(b *testing.B) {
	msg := &mqtthooks.Message{Topic: "t", Payload: []byte("hello"), QoS: 1}
	id := mqtthooks.SubscriberID{ClientID: "c1"}
	for _, bs := range benchStores() {
		b.Run(bs.name, func(b *testing.B) {
			core := benchCore(b, mqtthooks.Options{Store: bs.open(b)})
			c := mqtthookstest.ConnectV3(context.Background(), core, "c1", "u", false)
			buf := make([]mqtthooks.Delivery, 16)
			b.ReportAllocs()
			for b.Loop() {
				if err := core.Deliver(id, msg, mqtthooks.DeliverOptions{QoS: 1}); err != nil {
					b.Fatal(err)
				}
				n, err := c.Session.Pull(buf)
				if err != nil || n != 1 {
					b.Fatal(n, err)
				}
				if err := c.Session.Puback(buf[0].PacketID); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
