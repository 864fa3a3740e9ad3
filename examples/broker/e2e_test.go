package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	pahopackets "github.com/eclipse/paho.mqtt.golang/packets"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	xdg "github.com/xdg-go/scram"

	"github.com/mqtthooks/mqtthooks"
	"github.com/mqtthooks/mqtthooks/plugins/scram"
)

// v5 is an MQTT 5 client made with paho.golang.
type v5 struct {
	*paho.Client
	nc          net.Conn // closing it drops the connection without a DISCONNECT
	connack     *paho.Connack
	received    chan *paho.Publish
	disconnects chan *paho.Disconnect
}

// v5Client connects an MQTT 5 client; cp may set credentials, SEI, auth.
func v5Client(t *testing.T, addr string, cp *paho.Connect, auther paho.Auther) (*v5, error) {
	t.Helper()
	nc, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	c := &v5{nc: nc, received: make(chan *paho.Publish, 100), disconnects: make(chan *paho.Disconnect, 1)}
	c.Client = paho.NewClient(paho.ClientConfig{
		Conn:        nc,
		AuthHandler: auther,
		OnPublishReceived: []func(paho.PublishReceived) (bool, error){func(pr paho.PublishReceived) (bool, error) {
			c.received <- pr.Packet
			return true, nil
		}},
		OnServerDisconnect: func(d *paho.Disconnect) { c.disconnects <- d },
		OnClientError:      func(error) {},
	})
	if cp.KeepAlive == 0 {
		cp.KeepAlive = 30
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c.connack, err = c.Connect(ctx, cp)
	if err != nil {
		_ = nc.Close()
	} else {
		t.Cleanup(func() { _ = c.Disconnect(&paho.Disconnect{}) })
	}
	return c, err
}

func sei(v uint32) *paho.ConnectProperties { return &paho.ConnectProperties{SessionExpiryInterval: &v} }

func receive[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(5 * time.Second):
		t.Fatalf("timed out waiting for %s", what)
		var zero T
		return zero
	}
}

// passwdFile writes a password file for alice (wonderland), made with this
// package's test vectors.
func passwdFile(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "passwd")
	// $7$, 101 iterations, as mosquitto_passwd writes it (see plugins/passwd/testdata).
	data, err := os.ReadFile("../../plugins/passwd/testdata/mosquitto.passwd")
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(path, data, 0o600))
	return path
}

// Good and bad credentials, over MQTT 3.1.1 and 5.
func TestCredentials(t *testing.T) {
	for _, tell := range []bool{false, true} {
		t.Run(fmt.Sprintf("tell-wrong-password=%v", tell), func(t *testing.T) {
			b := startBroker(t, flags{passwd: passwdFile(t), passwdTellWrong: tell})
			wrong3, wrong5 := pahopackets.ErrorRefusedNotAuthorised, byte(0x87) // what an unknown user gets
			if tell {
				wrong3, wrong5 = pahopackets.ErrorRefusedBadUsernameOrPassword, 0x86
			}

			c, err := v3Client(t, b.addr, "good", "alice", "wonderland", true)
			require.NoError(t, err)
			c.Disconnect(100)
			_, err = v3Client(t, b.addr, "bad", "alice", "nope", true)
			assert.ErrorIs(t, err, wrong3)
			_, err = v3Client(t, b.addr, "unknown", "mallory", "x", true)
			assert.ErrorIs(t, err, pahopackets.ErrorRefusedNotAuthorised)

			_, err = v5Client(t, b.addr, &paho.Connect{ClientID: "g5", CleanStart: true, Username: "alice", UsernameFlag: true,
				Password: []byte("wonderland"), PasswordFlag: true}, nil)
			require.NoError(t, err)
			c5, err := v5Client(t, b.addr, &paho.Connect{ClientID: "b5", CleanStart: true, Username: "alice", UsernameFlag: true,
				Password: []byte("nope"), PasswordFlag: true}, nil)
			require.Error(t, err)
			assert.Equal(t, wrong5, c5.connack.ReasonCode)
			c5, err = v5Client(t, b.addr, &paho.Connect{ClientID: "u5", CleanStart: true, Username: "mallory", UsernameFlag: true,
				Password: []byte("x"), PasswordFlag: true}, nil)
			require.Error(t, err)
			assert.Equal(t, byte(0x87), c5.connack.ReasonCode)
		})
	}
}

// Anonymous clients: accepted with -allow-anonymous, refused without.
func TestAnonymous(t *testing.T) {
	on := startBroker(t, flags{passwd: passwdFile(t), allowAnonymous: true, allowAnonymousSet: true})
	c, err := v3Client(t, on.addr, "anon", "", "", true)
	require.NoError(t, err)
	c.Disconnect(100)

	off := startBroker(t, flags{passwd: passwdFile(t)})
	_, err = v3Client(t, off.addr, "anon", "", "", true)
	assert.ErrorIs(t, err, pahopackets.ErrorRefusedNotAuthorised)
	c5, err := v5Client(t, off.addr, &paho.Connect{ClientID: "anon5", CleanStart: true}, nil)
	require.Error(t, err)
	assert.Equal(t, byte(0x87), c5.connack.ReasonCode)
}

// A persistent session receives QoS 1 messages published while it was
// offline; a clean one does not.
func TestOfflineMessages(t *testing.T) {
	b := startBroker(t, flags{})
	for _, persistent := range []bool{true, false} {
		id := fmt.Sprint("sub-", persistent)
		props := sei(0)
		if persistent {
			props = sei(300)
		}
		sub, err := v5Client(t, b.addr, &paho.Connect{ClientID: id, CleanStart: true, Properties: props}, nil)
		require.NoError(t, err)
		_, err = sub.Subscribe(context.Background(), &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "news/" + id, QoS: 1}}})
		require.NoError(t, err)
		require.NoError(t, sub.Disconnect(&paho.Disconnect{}))

		pub, err := v3Client(t, b.addr, "pub-"+id, "", "", true)
		require.NoError(t, err)
		require.NoError(t, waitToken(pub.Publish("news/"+id, 1, false, "while you were away")))
		pub.Disconnect(100)

		again, err := v5Client(t, b.addr, &paho.Connect{ClientID: id, CleanStart: false, Properties: props}, nil)
		require.NoError(t, err)
		if persistent {
			assert.True(t, again.connack.SessionPresent)
			m := receive(t, again.received, "the queued message")
			assert.Equal(t, "while you were away", string(m.Payload))
			assert.Equal(t, byte(1), m.QoS)
		} else {
			assert.False(t, again.connack.SessionPresent)
			select {
			case m := <-again.received:
				t.Fatalf("a clean session got %q", m.Payload)
			case <-time.After(300 * time.Millisecond): // a negative: nothing may arrive in this window
			}
		}
	}
}

// A takeover: the old MQTT 5 client gets DISCONNECT 0x8E, and the hooks run
// in order.
func TestTakeover(t *testing.T) {
	b := startBroker(t, flags{})
	old, err := v5Client(t, b.addr, &paho.Connect{ClientID: "dev", CleanStart: false, Properties: sei(300)}, nil)
	require.NoError(t, err)
	newer, err := v5Client(t, b.addr, &paho.Connect{ClientID: "dev", CleanStart: false, Properties: sei(300)}, nil)
	require.NoError(t, err)
	assert.True(t, newer.connack.SessionPresent)

	d := receive(t, old.disconnects, "the DISCONNECT of the old client")
	assert.Equal(t, byte(0x8E), d.ReasonCode)
	b.rec.ExpectHooks(t, mqtthooks.SubscriberID{ClientID: "dev"}, "AuthOnRegisterM5", "OnClientWakeup", "OnRegisterM5",
		"AuthOnRegisterM5", "OnClientOffline", "OnClientWakeup", "OnRegisterM5")
}

// The Will is published on an abnormal close, and not after DISCONNECT 0x00.
func TestWill(t *testing.T) {
	b := startBroker(t, flags{})
	watcher, err := v5Client(t, b.addr, &paho.Connect{ClientID: "watcher", CleanStart: true}, nil)
	require.NoError(t, err)
	_, err = watcher.Subscribe(context.Background(), &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "wills/#", QoS: 1}}})
	require.NoError(t, err)

	withWill := func(id string) *paho.Connect {
		return &paho.Connect{ClientID: id, CleanStart: true,
			WillMessage: &paho.WillMessage{Topic: "wills/" + id, Payload: []byte(id + " died"), QoS: 1}}
	}
	polite, err := v5Client(t, b.addr, withWill("polite"), nil)
	require.NoError(t, err)
	require.NoError(t, polite.Disconnect(&paho.Disconnect{ReasonCode: 0}))

	// An abrupt close: a raw connection, so no DISCONNECT can be sent.
	nc := rawConnect(t, b.addr, 5, "rude", func(c *packets.ConnectParams) {
		c.WillFlag, c.WillTopic, c.WillPayload, c.WillQos = true, "wills/rude", []byte("rude died"), 1
	})
	require.NoError(t, nc.Close())

	m := receive(t, watcher.received, "a Will")
	assert.Equal(t, "wills/rude", m.Topic)
	select {
	case m := <-watcher.received:
		t.Fatalf("unexpected Will %q", m.Topic)
	case <-time.After(300 * time.Millisecond): // a negative: the polite client's Will must not come
	}
}

// A client silent past 1.5 × its keep-alive gets DISCONNECT 0x8D.
func TestKeepAliveTimeout(t *testing.T) {
	b := startBroker(t, flags{})
	nc := rawConnect(t, b.addr, 5, "sleepy", func(c *packets.ConnectParams) { c.Keepalive = 1 })
	defer nc.Close()
	start := time.Now()
	pk := readRaw(t, nc, 5)
	assert.Equal(t, packets.Disconnect, pk.FixedHeader.Type)
	assert.Equal(t, byte(0x8D), pk.ReasonCode)
	assert.GreaterOrEqual(t, time.Since(start), 1400*time.Millisecond)
	require.Eventually(t, func() bool { return b.rec.Count(mqtthooks.SubscriberID{ClientID: "sleepy"}, "OnClientGone") == 1 },
		5*time.Second, 10*time.Millisecond)
	gone, _ := b.rec.Last(mqtthooks.SubscriberID{ClientID: "sleepy"}, "OnClientGone")
	assert.Equal(t, mqtthooks.ReasonKeepAlive, gone.Event.Reason)
}

// scramAuther is paho's side of SCRAM-SHA-256, with xdg-go/scram's client.
type scramAuther struct {
	mu   sync.Mutex
	conv *xdg.ClientConversation
	t    *testing.T
}

func (a *scramAuther) Authenticate(in *paho.Auth) *paho.Auth {
	a.mu.Lock()
	defer a.mu.Unlock()
	resp, err := a.conv.Step(string(in.Properties.AuthData))
	if err != nil {
		a.t.Logf("SCRAM client: %v", err)
	}
	return &paho.Auth{ReasonCode: 0x18, Properties: &paho.AuthProperties{AuthMethod: scram.Method, AuthData: []byte(resp)}}
}

func (a *scramAuther) Authenticated() {}

// start begins a conversation and returns client-first.
func (a *scramAuther) start(user, pass string) []byte {
	a.mu.Lock()
	defer a.mu.Unlock()
	client, err := xdg.SHA256.NewClient(user, pass, "")
	require.NoError(a.t, err)
	a.conv = client.NewConversation()
	first, err := a.conv.Step("")
	require.NoError(a.t, err)
	return []byte(first)
}

// SCRAM-SHA-256 through paho's Auther: success, failure, re-authentication.
func TestSCRAM(t *testing.T) {
	file := filepath.Join(t.TempDir(), "scram.txt")
	require.NoError(t, addSCRAMUser(file, "alice", bytes.NewBufferString("wonderland\n")))
	b := startBroker(t, flags{scram: file})

	a := &scramAuther{t: t}
	c, err := v5Client(t, b.addr, &paho.Connect{ClientID: "s1", CleanStart: true,
		Properties: &paho.ConnectProperties{AuthMethod: scram.Method, AuthData: a.start("alice", "wonderland")}}, a)
	require.NoError(t, err)
	require.NotNil(t, c.connack.Properties)
	_, err = a.conv.Step(string(c.connack.Properties.AuthData)) // verifies server-final
	require.NoError(t, err)
	reg, _ := b.rec.Last(mqtthooks.SubscriberID{ClientID: "s1"}, "OnRegisterM5")
	assert.Equal(t, "alice", reg.Event.Username)

	resp, err := c.Authenticate(context.Background(), &paho.Auth{ReasonCode: 0x19,
		Properties: &paho.AuthProperties{AuthMethod: scram.Method, AuthData: a.start("alice", "wonderland")}})
	require.NoError(t, err)
	assert.True(t, resp.Success, "re-authentication: %+v", resp)

	bad := &scramAuther{t: t}
	f, err := v5Client(t, b.addr, &paho.Connect{ClientID: "s2", CleanStart: true,
		Properties: &paho.ConnectProperties{AuthMethod: scram.Method, AuthData: bad.start("alice", "nope")}}, bad)
	require.Error(t, err)
	assert.Equal(t, byte(0x87), f.connack.ReasonCode)
}

// rawConnect sends a CONNECT made with the codec on a raw connection and
// reads the CONNACK.
func rawConnect(t *testing.T, addr string, version byte, id string, edit func(*packets.ConnectParams)) net.Conn {
	t.Helper()
	nc, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect}, ProtocolVersion: version,
		Connect: packets.ConnectParams{ProtocolName: []byte("MQTT"), ClientIdentifier: id, Clean: true, Keepalive: 30},
		Mods:    packets.Mods{AllowResponseInfo: true}} // else the codec leaves out a Will's Response Topic
	if edit != nil {
		edit(&pk.Connect)
	}
	var buf bytes.Buffer
	require.NoError(t, pk.ConnectEncode(&buf))
	_, err = nc.Write(buf.Bytes())
	require.NoError(t, err)
	ack := readRaw(t, nc, version)
	require.Equal(t, packets.Connack, ack.FixedHeader.Type)
	require.Equal(t, byte(0), ack.ReasonCode)
	return nc
}

// readRaw reads one packet from the server, decoded for version.
func readRaw(t *testing.T, nc net.Conn, version byte) packets.Packet {
	t.Helper()
	require.NoError(t, nc.SetReadDeadline(time.Now().Add(5*time.Second)))
	r := bufio.NewReader(nc)
	var pk packets.Packet
	hb, err := r.ReadByte()
	require.NoError(t, err)
	require.NoError(t, pk.FixedHeader.Decode(hb))
	n, _, err := packets.DecodeLength(r)
	require.NoError(t, err)
	body := make([]byte, n)
	_, err = io.ReadFull(r, body)
	require.NoError(t, err)
	pk.FixedHeader.Remaining = n
	pk.ProtocolVersion = version
	switch pk.FixedHeader.Type {
	case packets.Connack:
		require.NoError(t, pk.ConnackDecode(body))
	case packets.Disconnect:
		require.NoError(t, pk.DisconnectDecode(body))
	}
	return pk
}

// Retained messages, Retain Handling and NoLocal end to end.
func TestRetainedAndSubscriptionOptions(t *testing.T) {
	b := startBroker(t, flags{})
	pub, err := v5Client(t, b.addr, &paho.Connect{ClientID: "pub", CleanStart: true}, nil)
	require.NoError(t, err)
	_, err = pub.Publish(context.Background(), &paho.Publish{Topic: "r/1", QoS: 1, Retain: true, Payload: []byte("kept")})
	require.NoError(t, err)

	sub, err := v5Client(t, b.addr, &paho.Connect{ClientID: "sub", CleanStart: true}, nil)
	require.NoError(t, err)
	subscribe := func(rh byte) {
		_, err := sub.Subscribe(context.Background(), &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{
			{Topic: "r/#", QoS: 1, RetainHandling: rh}}})
		require.NoError(t, err)
	}
	subscribe(0)
	m := receive(t, sub.received, "the retained message")
	assert.Equal(t, "kept", string(m.Payload))
	assert.True(t, m.Retain)
	subscribe(1) // already subscribed: no retained message again
	subscribe(2)
	_, err = pub.Publish(context.Background(), &paho.Publish{Topic: "r/1", QoS: 1, Payload: []byte("live")})
	require.NoError(t, err)
	m = receive(t, sub.received, "a live message")
	assert.Equal(t, "live", string(m.Payload), "no retained message came back in between")
	assert.False(t, m.Retain)

	// NoLocal: a client does not get its own messages on that subscription.
	_, err = pub.Subscribe(context.Background(), &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{
		{Topic: "chat", QoS: 1, NoLocal: true}}})
	require.NoError(t, err)
	_, err = sub.Subscribe(context.Background(), &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "chat", QoS: 1}}})
	require.NoError(t, err)
	_, err = pub.Publish(context.Background(), &paho.Publish{Topic: "chat", QoS: 1, Payload: []byte("hi")})
	require.NoError(t, err)
	assert.Equal(t, "hi", string(receive(t, sub.received, "chat").Payload))
	select {
	case m := <-pub.received:
		t.Fatalf("NoLocal: the publisher got %q", m.Payload)
	case <-time.After(300 * time.Millisecond): // a negative: nothing may arrive in this window
	}
}

// QoS 2 end to end: exactly once.
func TestQoS2(t *testing.T) {
	b := startBroker(t, flags{})
	sub, err := v5Client(t, b.addr, &paho.Connect{ClientID: "s", CleanStart: true}, nil)
	require.NoError(t, err)
	_, err = sub.Subscribe(context.Background(), &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "q2", QoS: 2}}})
	require.NoError(t, err)
	pub, err := v5Client(t, b.addr, &paho.Connect{ClientID: "p", CleanStart: true}, nil)
	require.NoError(t, err)
	resp, err := pub.Publish(context.Background(), &paho.Publish{Topic: "q2", QoS: 2, Payload: []byte("once")})
	require.NoError(t, err)
	assert.Equal(t, byte(0), resp.ReasonCode)
	m := receive(t, sub.received, "the QoS 2 message")
	assert.Equal(t, byte(2), m.QoS)
	assert.Equal(t, "once", string(m.Payload))
}

// A message larger than the client's Maximum Packet Size is not sent (MQTT 5
// §3.1.2.11.4); the core counts it dropped and fires OnMessageDrop.
func TestTooLargeForClient(t *testing.T) {
	b := startBroker(t, flags{})
	limit := uint32(64)
	sub, err := v5Client(t, b.addr, &paho.Connect{ClientID: "small", CleanStart: true,
		Properties: &paho.ConnectProperties{MaximumPacketSize: &limit}}, nil)
	require.NoError(t, err)
	_, err = sub.Subscribe(context.Background(), &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "m", QoS: 1}}})
	require.NoError(t, err)
	pub, err := v5Client(t, b.addr, &paho.Connect{ClientID: "p", CleanStart: true}, nil)
	require.NoError(t, err)
	for _, payload := range []string{string(bytes.Repeat([]byte("x"), 100)), "fits"} {
		_, err = pub.Publish(context.Background(), &paho.Publish{Topic: "m", QoS: 1, Payload: []byte(payload)})
		require.NoError(t, err)
	}

	assert.Equal(t, "fits", string(receive(t, sub.received, "the message that fits").Payload))
	drop, ok := b.rec.Last(mqtthooks.SubscriberID{ClientID: "small"}, "OnMessageDrop")
	require.True(t, ok, "OnMessageDrop for the large message")
	assert.Equal(t, mqtthooks.DropTooLarge, drop.Drop.Reason)
	assert.Len(t, drop.Drop.Message.Payload, 100)
	assert.Equal(t, uint64(1), b.srv.core.Stats().Dropped)
}

// DISCONNECT 0x04 publishes the Will; a SCRAM re-authentication that fails
// ends the connection with 0x87; Shutdown tells clients 0x8B.
func TestWillWithMessageAndShutdown(t *testing.T) {
	b := startBroker(t, flags{})
	watcher, err := v5Client(t, b.addr, &paho.Connect{ClientID: "watcher", CleanStart: true}, nil)
	require.NoError(t, err)
	_, err = watcher.Subscribe(context.Background(), &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "wills/#", QoS: 1}}})
	require.NoError(t, err)
	c, err := v5Client(t, b.addr, &paho.Connect{ClientID: "w4", CleanStart: true,
		WillMessage: &paho.WillMessage{Topic: "wills/w4", Payload: []byte("bye"), QoS: 1}}, nil)
	require.NoError(t, err)
	require.NoError(t, c.Disconnect(&paho.Disconnect{ReasonCode: 0x04}))
	assert.Equal(t, "wills/w4", receive(t, watcher.received, "the Will").Topic)

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	require.NoError(t, b.srv.shutdown(ctx))
	d := receive(t, watcher.disconnects, "the shutdown DISCONNECT")
	assert.Equal(t, byte(0x8B), d.ReasonCode)
}

func TestSCRAMReauthFails(t *testing.T) {
	file := filepath.Join(t.TempDir(), "scram.txt")
	require.NoError(t, addSCRAMUser(file, "alice", bytes.NewBufferString("wonderland\n")))
	b := startBroker(t, flags{scram: file})
	a := &scramAuther{t: t}
	c, err := v5Client(t, b.addr, &paho.Connect{ClientID: "s1", CleanStart: true,
		Properties: &paho.ConnectProperties{AuthMethod: scram.Method, AuthData: a.start("alice", "wonderland")}}, a)
	require.NoError(t, err)
	_, _ = c.Authenticate(context.Background(), &paho.Auth{ReasonCode: 0x19,
		Properties: &paho.AuthProperties{AuthMethod: scram.Method, AuthData: a.start("alice", "wrong")}})
	d := receive(t, c.disconnects, "the DISCONNECT after a failed re-authentication")
	assert.Equal(t, byte(0x87), d.ReasonCode)
}
