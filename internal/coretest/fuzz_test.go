package mqtthooks_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/mqtthooks/mqtthooks"
	"github.com/mqtthooks/mqtthooks/mqtthookstest"
)

// FuzzModifiersValidate checks that Validate never panics, and that what it
// accepts keeps the rules it promises.
func FuzzModifiersValidate(f *testing.F) {
	f.Add(byte(5), uint32(0xFFFF), "mp", "c1", "user", -1, 10, byte(1), byte(1), uint16(10), uint32(100))
	f.Add(byte(4), uint32(0), "", "", "\x00", -2, 70000, byte(3), byte(2), uint16(0), uint32(0))
	f.Fuzz(func(t *testing.T, version byte, set uint32, mountpoint, clientID, username string,
		queue, inflight int, queueType, maxQoS byte, recvMax uint16, size uint32) {
		var m mqtthooks.Modifiers
		on := func(bit uint) bool { return set&(1<<bit) != 0 }
		if on(0) {
			m.SubscriberID = mqtthooks.Some(mqtthooks.SubscriberID{Mountpoint: mountpoint, ClientID: clientID})
		}
		if on(1) {
			m.Username = mqtthooks.Some(username)
		}
		if on(2) {
			m.Persistent = mqtthooks.Some(true)
		}
		if on(3) {
			m.SessionExpiryInterval = mqtthooks.Some(size)
		}
		if on(4) {
			m.MaxOnlineMessages = mqtthooks.Some(queue)
		}
		if on(5) {
			m.MaxOfflineMessages = mqtthooks.Some(queue)
		}
		if on(6) {
			m.QueueType = mqtthooks.Some(mqtthooks.QueueType(queueType))
		}
		if on(7) {
			m.MaxInflightMessages = mqtthooks.Some(inflight)
		}
		if on(8) {
			m.MaximumQoS = mqtthooks.Some(maxQoS)
		}
		if on(9) {
			m.ReceiveMaximum = mqtthooks.Some(recvMax)
		}
		if on(10) {
			m.MaximumPacketSize = mqtthooks.Some(size)
		}
		if on(11) {
			m.UserProperties = mqtthooks.Some([]mqtthooks.UserProperty{{Key: username, Value: mountpoint}})
		}
		rules := mqtthooks.ModifierRules{ProtocolVersion: mqtthooks.ProtocolVersion(version % 7),
			Capabilities: mqtthooks.DefaultCapabilities()}
		err := m.Validate(rules)
		if err != nil {
			if !errors.Is(err, mqtthooks.ErrInvalidModifiers) {
				t.Fatalf("error %v is not ErrInvalidModifiers", err)
			}
			return
		}
		v5 := rules.ProtocolVersion.IsV5()
		switch {
		case m.SubscriberID.Set && (clientID == "" || len(clientID) > 100 || !utf8.ValidString(clientID) ||
			strings.ContainsRune(clientID, 0)):
			t.Fatalf("accepted client id %q", clientID)
		case m.Username.Set && (!utf8.ValidString(username) || strings.ContainsRune(username, 0)):
			t.Fatalf("accepted username %q", username)
		case (m.MaxOnlineMessages.Set || m.MaxOfflineMessages.Set) && queue < -1:
			t.Fatalf("accepted a queue limit of %d", queue)
		case m.Persistent.Set && v5, m.SessionExpiryInterval.Set && !v5:
			t.Fatal("accepted a field of the other protocol version")
		case m.MaximumQoS.Set && maxQoS > 1:
			t.Fatalf("accepted MaximumQoS %d", maxQoS)
		case m.MaxInflightMessages.Set && (inflight < 0 || inflight > 65535):
			t.Fatalf("accepted MaxInflightMessages %d", inflight)
		}
	})
}

// FuzzConnect drives the core's CONNECT handling with arbitrary CONNECTs: it
// never panics, answers only with a CONNACK or a close (never anything
// else), accepts only valid client ids, and leaves nothing behind after the
// session is ended.
func FuzzConnect(f *testing.F) {
	f.Add(byte(4), "c1", true, "u", true, []byte("p"), true, "w", byte(1), false, uint32(0), "")
	f.Add(byte(5), "", false, "", false, []byte(nil), false, "", byte(0), false, uint32(300), "M")
	f.Add(byte(3), "", true, "\xff", true, []byte{0}, true, "w/#", byte(3), true, uint32(0xFFFFFFFF), "")
	f.Add(byte(5), strings.Repeat("x", 101), true, "u", true, []byte("p"), false, "", byte(0), false, uint32(10), "")
	f.Fuzz(func(t *testing.T, version byte, clientID string, clean bool, user string, hasUser bool, pass []byte,
		hasWill bool, willTopic string, willQoS byte, willRetain bool, sei uint32, method string) {
		chain := mqtthooks.NewChain(mqtthooks.ChainOptions{})
		rec := &mqtthookstest.Recorder{Accept: true}
		rec.OnAuthM5Func = func(context.Context, *mqtthooks.AuthRequest) mqtthooks.AuthResult {
			return mqtthooks.AuthSuccess(nil, "id")
		}
		if err := chain.Register("P", rec); err != nil {
			t.Fatal(err)
		}
		core, err := mqtthooks.NewCore(chain, mqtthooks.Options{})
		if err != nil {
			t.Fatal(err)
		}
		defer core.Shutdown(context.Background())
		req := &mqtthooks.ConnectRequest{ProtocolVersion: mqtthooks.ProtocolVersion(version % 7), ClientID: clientID,
			CleanStart: clean, Username: user, HasUsername: hasUser, Password: pass, HasPassword: pass != nil}
		req.Properties.SessionExpiryInterval = sei
		req.Properties.AuthenticationMethod = method
		if hasWill {
			req.Will = &mqtthooks.Will{Message: mqtthooks.Message{Topic: willTopic, Payload: []byte("x"), QoS: willQoS, Retain: willRetain}}
		}
		c := mqtthookstest.NewClient(core)
		step := c.Connect(context.Background(), req)
		switch step.Kind {
		case mqtthooks.SendConnack:
			if (step.Session != nil) != (step.Connack.ReturnCode == 0 && step.Connack.ReasonCode == 0) {
				t.Fatalf("CONNACK %+v with session %v", step.Connack, step.Session != nil)
			}
			if step.Session == nil && (step.Connack.SessionPresent || step.Connack.ReasonCode < 0x80) {
				t.Fatalf("a failed CONNACK %+v", step.Connack)
			}
		case mqtthooks.CloseConnection, mqtthooks.SendAuth:
		default:
			t.Fatalf("step %v", step.Kind)
		}
		if step.Session != nil {
			id := step.Session.ID().ClientID
			if id == "" || len(id) > 100 || !utf8.ValidString(id) || strings.ContainsRune(id, 0) {
				t.Fatalf("accepted client id %q", id)
			}
			_ = step.Session.DisconnectWithExpiry(context.Background(), mqtthooks.CodeNormalDisconnection, 0)
			if _, ok := core.Lookup(step.Session.ID()); ok && (req.ProtocolVersion.IsV5() || clean) {
				t.Fatal("a session is left after a clean end")
			}
		}
		if len(rec.Overlaps()) > 0 {
			t.Fatal(rec.Overlaps())
		}
	})
}
