package mqtthooks_test

import (
	"context"
	"fmt"
	"runtime"
	"strings"
	"testing"

	"github.com/mqtthooks/mqtthooks"
	"github.com/mqtthooks/mqtthooks/mqtthookstest"
)

// drainBuf is drain's buffer, so that draining (outside the timer) does not
// leave garbage for the timed part to collect.
var drainBuf = make([]mqtthooks.Delivery, 1024)

// drain pulls and acks everything c has.
func drain(b *testing.B, c *mqtthookstest.Client) {
	for {
		n, err := c.Session.Pull(drainBuf)
		if err != nil {
			b.Fatal(err)
		}
		for _, d := range drainBuf[:n] {
			if err := c.Session.Puback(d.PacketID); err != nil {
				b.Fatal(err)
			}
		}
		if n == 0 {
			return
		}
	}
}

// BenchmarkEnqueue measures Core.Deliver of a QoS 1 message to one session,
// online (started, its broker pulling now and then, outside the timer) and
// offline.
func BenchmarkEnqueue(b *testing.B) {
	opts := mqtthooks.Options{MaxOnlineMessages: mqtthooks.Some(-1), MaxOfflineMessages: mqtthooks.Some(-1),
		MaxInflightMessages: mqtthooks.Some(0)}
	msg := &mqtthooks.Message{Topic: "t", Payload: []byte("hello"), QoS: 1}
	id := mqtthooks.SubscriberID{ClientID: "c1"}
	b.Run("online", func(b *testing.B) {
		core := benchCoreWith(b, opts)
		c := mqtthookstest.ConnectV3(context.Background(), core, "c1", "u", false)
		b.ReportAllocs()
		b.ResetTimer()
		for i := range b.N {
			if err := core.Deliver(id, msg, mqtthooks.DeliverOptions{QoS: 1}); err != nil {
				b.Fatal(err)
			}
			if i%4096 == 4095 {
				b.StopTimer()
				drain(b, c)
				b.StartTimer()
			}
		}
	})
	b.Run("offline", func(b *testing.B) {
		core := benchCoreWith(b, opts)
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
				drain(b, c)
				c.Drop(context.Background(), nil)
				b.StartTimer()
			}
		}
	})
}

// BenchmarkPullAck measures a QoS 1 round trip through a session: Deliver,
// Pull, Puback.
func BenchmarkPullAck(b *testing.B) {
	core := benchCoreWith(b, mqtthooks.Options{})
	c := mqtthookstest.ConnectV3(context.Background(), core, "c1", "u", false)
	msg := &mqtthooks.Message{Topic: "t", Payload: []byte("hello"), QoS: 1}
	id := mqtthooks.SubscriberID{ClientID: "c1"}
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
}

// BenchmarkOfflineSessions reports the memory of an idle offline session, at
// 100k of them: v5, expiry armed, 2 subscriptions, no messages, with client id
// and username handed in as substrings of a 1 KiB buffer, as a zero-copy
// decoder would. Run it with -benchtime=1x.
func BenchmarkOfflineSessions(b *testing.B) {
	const sessions = 100_000
	ctx := context.Background()
	for b.Loop() {
		core := benchCoreWith(b, mqtthooks.Options{})
		ci := &mqtthooks.ConnInfo{Listener: "default", Transport: "tcp"}
		before := heapInUse()
		for i := range sessions {
			packet := fmt.Sprintf("%-1024s", fmt.Sprintf("client-%07d user-%07d", i, i)) // the decoder's buffer
			clientID, user := packet[:14], packet[15:27]
			req := &mqtthooks.ConnectRequest{ProtocolVersion: mqtthooks.MQTT5, ClientID: clientID,
				Username: user, HasUsername: true, Properties: mqtthooks.ConnectProperties{SessionExpiryInterval: 3600}}
			_, step := core.Connect(ctx, ci, req, mqtthookstest.NewConn())
			if step.Session == nil {
				b.Fatal(step.Err)
			}
			s := step.Session
			_ = s.Start()
			if err := s.Subscribe(ctx, mqtthooks.Subscription{Filter: strings.Clone(packet[40:60]), QoS: 1},
				mqtthooks.Subscription{Filter: strings.Clone(packet[60:80]), QoS: 1}); err != nil {
				b.Fatal(err)
			}
			s.Lost(ctx, nil)
		}
		after := heapInUse()
		if got := core.Stats().Sessions; got != sessions {
			b.Fatalf("%d sessions", got)
		}
		b.ReportMetric(float64(after-before)/sessions, "B/session")
		runtime.KeepAlive(core)
	}
}

func heapInUse() uint64 {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// benchCoreWith is benchCore with options.
func benchCoreWith(b *testing.B, opts mqtthooks.Options) *mqtthooks.Core {
	b.Helper()
	chain := mqtthooks.NewChain(mqtthooks.ChainOptions{})
	if err := chain.Register("P", acceptAll{}); err != nil {
		b.Fatal(err)
	}
	core, err := mqtthooks.NewCore(chain, opts)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = core.Shutdown(context.Background()) })
	return core
}
