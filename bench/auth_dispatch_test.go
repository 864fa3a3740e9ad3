package bench

import (
	"bytes"
	"context"
	"testing"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/mqtthooks/mqtthooks"
)

// mochiAuth is a mochi hook that answers OnConnectAuthenticate with allow.
type mochiAuth struct {
	mqtt.HookBase
	id    string
	allow bool
}

func (h *mochiAuth) ID() string { return h.id }

func (h *mochiAuth) Provides(b byte) bool {
	return bytes.Contains([]byte{mqtt.OnConnectAuthenticate}, []byte{b})
}

func (h *mochiAuth) OnConnectAuthenticate(*mqtt.Client, packets.Packet) bool { return h.allow }

// BenchmarkAuthDispatch measures the dispatch of one CONNECT's authentication
// through three plugins, the third of which accepts: ours through the chain,
// mochi-mqtt's through its Hooks value.
func BenchmarkAuthDispatch(b *testing.B) {
	b.Run("mqtthooks", func(b *testing.B) {
		chain := mqtthooks.NewChain(mqtthooks.ChainOptions{})
		for i, r := range []mqtthooks.RegisterResult{mqtthooks.Next(), mqtthooks.Next(), mqtthooks.Accept()} {
			err := chain.Register(string(rune('a'+i)), mqtthooks.AuthOnRegisterFunc(
				func(context.Context, *mqtthooks.RegisterRequest) mqtthooks.RegisterResult { return r }))
			if err != nil {
				b.Fatal(err)
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Hour)
		defer cancel()
		req := &mqtthooks.RegisterRequest{
			SubscriberID: mqtthooks.SubscriberID{ClientID: "c1"},
			Connect: &mqtthooks.ConnectRequest{ProtocolVersion: mqtthooks.MQTT311, ClientID: "c1",
				Username: "u", HasUsername: true, Password: []byte("p"), HasPassword: true},
			Conn: &mqtthooks.ConnInfo{Listener: "tcp", Transport: "tcp"},
		}
		b.ReportAllocs()
		for b.Loop() {
			if d := chain.Snapshot().AuthOnRegister(ctx, req); d.Err != nil {
				b.Fatal(d.Err)
			}
		}
	})
	b.Run("mochi", func(b *testing.B) {
		hooks := new(mqtt.Hooks)
		for i, allow := range []bool{false, false, true} {
			if err := hooks.Add(&mochiAuth{id: string(rune('a' + i)), allow: allow}, nil); err != nil {
				b.Fatal(err)
			}
		}
		cl := &mqtt.Client{ID: "c1"}
		pk := packets.Packet{
			FixedHeader:     packets.FixedHeader{Type: packets.Connect},
			ProtocolVersion: 4,
			Connect: packets.ConnectParams{ClientIdentifier: "c1", UsernameFlag: true, Username: []byte("u"),
				PasswordFlag: true, Password: []byte("p")},
		}
		b.ReportAllocs()
		for b.Loop() {
			if !hooks.OnConnectAuthenticate(cl, pk) {
				b.Fatal("mochi rejected")
			}
		}
	})
}
