package mqtthooks_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/mqtthooks/mqtthooks"
	"github.com/mqtthooks/mqtthooks/mqtthookstest"
)

// benchCore returns a Core whose chain has one plugin that accepts every
// CONNECT and implements the lifecycle hooks as no-ops.
func benchCore(b *testing.B) *mqtthooks.Core {
	b.Helper()
	chain := mqtthooks.NewChain(mqtthooks.ChainOptions{})
	if err := chain.Register("P", acceptAll{}); err != nil {
		b.Fatal(err)
	}
	core, err := mqtthooks.NewCore(chain, mqtthooks.Options{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = core.Shutdown(context.Background()) })
	return core
}

type acceptAll struct{}

func (acceptAll) AuthOnRegister(context.Context, *mqtthooks.RegisterRequest) mqtthooks.RegisterResult {
	return mqtthooks.Accept()
}
func (acceptAll) AuthOnRegisterM5(context.Context, *mqtthooks.RegisterRequest) mqtthooks.RegisterResult {
	return mqtthooks.Accept()
}
func (acceptAll) OnRegister(context.Context, *mqtthooks.RegisterEvent)      {}
func (acceptAll) OnRegisterM5(context.Context, *mqtthooks.RegisterEvent)    {}
func (acceptAll) OnClientWakeup(context.Context, *mqtthooks.SessionEvent)   {}
func (acceptAll) OnClientOffline(context.Context, *mqtthooks.SessionEvent)  {}
func (acceptAll) OnClientGone(context.Context, *mqtthooks.SessionEvent)     {}
func (acceptAll) OnSessionExpired(context.Context, *mqtthooks.SessionEvent) {}

// connectCycle connects a v3 client with req and disconnects it, as a broker
// would: Connect, Start, Disconnect.
func connectCycle(b *testing.B, core *mqtthooks.Core, ci *mqtthooks.ConnInfo, req *mqtthooks.ConnectRequest,
	conn mqtthooks.Conn, wantPresent bool) {
	ctx := context.Background()
	_, step := core.Connect(ctx, ci, req, conn)
	s := step.Session
	if s == nil || step.Connack.SessionPresent != wantPresent {
		b.Fatalf("CONNECT: %+v %v", step.Connack, step.Err)
	}
	if err := s.Start(); err != nil {
		b.Fatal(err)
	}
	if err := s.Disconnect(ctx, mqtthooks.CodeNormalDisconnection); err != nil {
		b.Fatal(err)
	}
}

// BenchmarkConnectDisconnect measures a whole session cycle through the core
// with a one-plugin chain and a fake conn: CONNECT → Wakeup → OnRegister →
// CONNACK → DISCONNECT → Gone (clean), or → Offline and back (persistent).
func BenchmarkConnectDisconnect(b *testing.B) {
	b.Run("clean", func(b *testing.B) {
		core := benchCore(b)
		ci := &mqtthooks.ConnInfo{Listener: "default", Transport: "tcp", ConnID: 1}
		req := mqtthookstest.V3("c1", "u", true)
		conn := mqtthookstest.NewConn()
		b.ReportAllocs()
		for b.Loop() {
			connectCycle(b, core, ci, req, conn, false)
		}
	})
	b.Run("persistent-resume", func(b *testing.B) {
		core := benchCore(b)
		ci := &mqtthooks.ConnInfo{Listener: "default", Transport: "tcp", ConnID: 1}
		req := mqtthookstest.V3("c1", "u", false)
		conn := mqtthookstest.NewConn()
		connectCycle(b, core, ci, req, conn, false)
		b.ReportAllocs()
		for b.Loop() {
			connectCycle(b, core, ci, req, conn, true)
		}
	})
}

// BenchmarkTakeover measures a persistent CONNECT that takes over the online
// session of the same client id: the old connection is ended (0x8E),
// Offline fires, and the new connection attaches.
func BenchmarkTakeover(b *testing.B) {
	core := benchCore(b)
	req := mqtthookstest.V3("c1", "u", false)
	ctx := context.Background()
	conns := [2]*mqtthookstest.Conn{mqtthookstest.NewConn(), mqtthookstest.NewConn()}
	cis := [2]*mqtthooks.ConnInfo{{Listener: "default", ConnID: 1}, {Listener: "default", ConnID: 2}}
	_, step := core.Connect(ctx, cis[0], req, conns[0])
	if step.Session == nil {
		b.Fatal(step.Err)
	}
	_ = step.Session.Start()
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		i++
		_, step := core.Connect(ctx, cis[i%2], req, conns[i%2])
		if step.Session == nil || !step.Connack.SessionPresent {
			b.Fatal(fmt.Sprint(step.Err))
		}
		_ = step.Session.Start()
	}
}

// BenchmarkSubscribe subscribes one more filter and unsubscribes it again, in
// a session that holds 10, 1 000 or 100 000 subscriptions already: the cost
// per filter must not grow with them.
func BenchmarkSubscribe(b *testing.B) {
	for _, n := range []int{10, 1000, 100000} {
		b.Run(fmt.Sprintf("%d", n), func(b *testing.B) {
			chain := mqtthooks.NewChain(mqtthooks.ChainOptions{})
			if err := chain.Register("P", acceptAll{}); err != nil {
				b.Fatal(err)
			}
			core, err := mqtthooks.NewCore(chain, mqtthooks.Options{Router: nopRouter{}})
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { _ = core.Shutdown(context.Background()) })
			c := mqtthookstest.ConnectV3(context.Background(), core, "s", "u", false)
			ctx := context.Background()
			subs := make([]mqtthooks.Subscription, n)
			for i := range subs {
				subs[i] = mqtthooks.Subscription{Filter: fmt.Sprintf("a/%d/#", i), QoS: 1}
			}
			if err := c.Session.Subscribe(ctx, subs...); err != nil {
				b.Fatal(err)
			}
			filters := make([]string, 1024)
			for i := range filters {
				filters[i] = fmt.Sprintf("b/%d", i)
			}
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				f := filters[i%len(filters)]
				i++
				if err := c.Session.Subscribe(ctx, mqtthooks.Subscription{Filter: f, QoS: 1}); err != nil {
					b.Fatal(err)
				}
				if _, err := c.Session.Unsubscribe(ctx, f); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
