package mqtthooks_test

import (
	"context"
	"crypto/subtle"
	"fmt"
	"strings"

	"github.com/mqtthooks/mqtthooks"
	"github.com/mqtthooks/mqtthooks/mqtthookstest"
)

// staticUsers is a plugin: it authenticates MQTT 3 and 5 clients against a
// fixed table and hears when their sessions end. It answers Next for users it
// does not know, so a later plugin may know them.
type staticUsers struct {
	passwords map[string]string
}

func (p *staticUsers) check(req *mqtthooks.RegisterRequest) mqtthooks.RegisterResult {
	c := req.Connect
	want, known := p.passwords[c.Username]
	if !c.HasUsername || !known {
		return mqtthooks.Next()
	}
	if subtle.ConstantTimeCompare([]byte(want), c.Password) != 1 {
		return mqtthooks.Reject(mqtthooks.ErrInvalidCredentials)
	}
	return mqtthooks.Accept()
}

func (p *staticUsers) AuthOnRegister(_ context.Context, req *mqtthooks.RegisterRequest) mqtthooks.RegisterResult {
	return p.check(req)
}

func (p *staticUsers) AuthOnRegisterM5(_ context.Context, req *mqtthooks.RegisterRequest) mqtthooks.RegisterResult {
	return p.check(req)
}

func (p *staticUsers) OnClientGone(_ context.Context, ev *mqtthooks.SessionEvent) {
	fmt.Printf("gone: %s (%s)\n", ev.SubscriberID, ev.Reason)
}

// Writing a plugin: implement the hooks you need, on any type.
func Example_writeAPlugin() {
	chain := mqtthooks.NewChain(mqtthooks.ChainOptions{})
	if err := chain.Register("users", &staticUsers{passwords: map[string]string{"alice": "secret"}}); err != nil {
		panic(err)
	}

	connect := func(user, password string) {
		req := &mqtthooks.RegisterRequest{
			SubscriberID: mqtthooks.SubscriberID{ClientID: "sensor-1"},
			Connect: &mqtthooks.ConnectRequest{ProtocolVersion: mqtthooks.MQTT311, ClientID: "sensor-1",
				Username: user, HasUsername: true, Password: []byte(password), HasPassword: true},
		}
		d := chain.Snapshot().AuthOnRegister(context.Background(), req)
		fmt.Printf("%s/%s: CONNACK %s\n", user, password, mqtthooks.ConnackReturnCode(d.Err))
	}
	connect("alice", "secret")
	connect("alice", "wrong")
	connect("bob", "secret") // unknown: Next, and nobody else decides

	chain.Snapshot().OnClientGone(context.Background(), &mqtthooks.SessionEvent{
		SubscriberID: mqtthooks.SubscriberID{ClientID: "sensor-1"}, Reason: mqtthooks.ReasonClientDisconnect})
	// Output:
	// alice/secret: CONNACK 0 (accepted)
	// alice/wrong: CONNACK 4 (bad user name or password)
	// bob/secret: CONNACK 5 (not authorized)
	// gone: sensor-1 (client-disconnect)
}

// Building a chain: plugins run by priority, then in registration order; the
// first one that accepts or rejects decides.
func ExampleChain() {
	chain := mqtthooks.NewChain(mqtthooks.ChainOptions{})

	// A deny list runs first, whatever the registration order.
	banned := mqtthooks.AuthOnRegisterM5Func(func(_ context.Context, req *mqtthooks.RegisterRequest) mqtthooks.RegisterResult {
		if req.SubscriberID.ClientID == "mallory" {
			return mqtthooks.RejectCode(mqtthooks.CodeBanned, "banned", "")
		}
		return mqtthooks.Next()
	})
	// Everybody else with a username gets in, on a mountpoint of their own.
	tenants := mqtthooks.AuthOnRegisterM5Func(func(_ context.Context, req *mqtthooks.RegisterRequest) mqtthooks.RegisterResult {
		if !req.Connect.HasUsername {
			return mqtthooks.Next()
		}
		return mqtthooks.AcceptWith(&mqtthooks.Modifiers{
			SubscriberID: mqtthooks.Some(mqtthooks.SubscriberID{Mountpoint: req.Connect.Username, ClientID: req.SubscriberID.ClientID}),
		})
	})
	if err := chain.Register("tenants", tenants); err != nil {
		panic(err)
	}
	if err := chain.Register("banned", banned, mqtthooks.Priority(0)); err != nil {
		panic(err)
	}
	fmt.Println("order:", chain.Snapshot().Plugins())

	for _, c := range []struct{ id, user string }{{"mallory", "m"}, {"c1", "acme"}, {"c2", ""}} {
		connect := &mqtthooks.ConnectRequest{ProtocolVersion: mqtthooks.MQTT5, ClientID: c.id,
			Username: c.user, HasUsername: c.user != ""}
		d := chain.Snapshot().AuthOnRegisterM5(context.Background(), &mqtthooks.RegisterRequest{
			SubscriberID: mqtthooks.SubscriberID{ClientID: c.id}, Connect: connect})
		code, _ := mqtthooks.ConnackReasonCode(d.Err)
		fmt.Printf("%s: %s by %q", c.id, code, d.Plugin)
		if m := d.Result.Modifiers(); m != nil {
			fmt.Printf(", session %s", m.SubscriberID.V)
		}
		fmt.Println()
	}
	// Output:
	// order: [banned tenants]
	// mallory: 0x8a (banned) by "banned"
	// c1: 0x00 (success) by "tenants", session acme/c1
	// c2: 0x87 (not authorized) by ""
}

// A listener that authenticates with its own plugins, in its own order.
func ExampleSnapshot_Restrict() {
	chain := mqtthooks.NewChain(mqtthooks.ChainOptions{})
	for _, name := range []string{"ldap", "passwd", "certs"} {
		err := chain.Register(name, mqtthooks.AuthOnRegisterFunc(
			func(context.Context, *mqtthooks.RegisterRequest) mqtthooks.RegisterResult {
				fmt.Println("asked", name)
				return mqtthooks.Next()
			}))
		if err != nil {
			panic(err)
		}
	}
	internal, err := chain.Subset("certs", "ldap")
	if err != nil {
		panic(err)
	}

	req := &mqtthooks.RegisterRequest{Connect: &mqtthooks.ConnectRequest{ProtocolVersion: mqtthooks.MQTT311}}
	d := chain.Snapshot().Restrict(internal).AuthOnRegister(context.Background(), req)
	fmt.Println(d.Err)
	// Output:
	// asked certs
	// asked ldap
	// mqtthooks: every plugin answered Next
}

// Checking a plugin's modifiers the way the core does.
func ExampleModifiers_Validate() {
	m := &mqtthooks.Modifiers{
		MaxOfflineMessages: mqtthooks.Some(-2),
		Persistent:         mqtthooks.Some(true),
	}
	err := m.Validate(mqtthooks.ModifierRules{ProtocolVersion: mqtthooks.MQTT5, MaxClientIDLen: 100,
		Capabilities: mqtthooks.DefaultCapabilities()})
	fmt.Println(err)
	// Output:
	// mqtthooks: invalid modifier Persistent: is for MQTT 3 only; MQTT 5 uses SessionExpiryInterval
	// mqtthooks: invalid modifier MaxOfflineMessages: -2 is below -1 (-1 is unlimited)
}

// A broker's side of one connection, through the step API: the CONNECT, the
// CONNACK the core decided, then deliveries pulled at the socket's pace.
func ExampleCore_Connect() {
	chain := mqtthooks.NewChain(mqtthooks.ChainOptions{})
	_ = chain.Register("users", &staticUsers{passwords: map[string]string{"alice": "secret"}})
	core, _ := mqtthooks.NewCore(chain, mqtthooks.Options{})
	defer core.Shutdown(context.Background())
	ctx := context.Background()

	conn := mqtthookstest.NewConn() // the broker's socket, as the core sees it
	info := &mqtthooks.ConnInfo{Listener: "tcp", Transport: "tcp", ConnID: 1}
	connect := &mqtthooks.ConnectRequest{ProtocolVersion: mqtthooks.MQTT5, ClientID: "sensor-1",
		Username: "alice", HasUsername: true, Password: []byte("secret"), HasPassword: true,
		Properties: mqtthooks.ConnectProperties{SessionExpiryInterval: 3600}}

	_, step := core.Connect(ctx, info, connect, conn) // no SendAuth: no enhanced authentication here
	fmt.Println("send CONNACK", step.Connack.ReasonCode, "session present", step.Connack.SessionPresent)
	session := step.Session
	_ = session.Start() // the CONNACK is out: deliveries may flow
	_ = session.Subscribe(ctx, mqtthooks.Subscription{Filter: "cmd/#", QoS: 1})

	// The router matched "cmd/reboot" for this session:
	_ = core.Deliver(session.ID(), &mqtthooks.Message{Topic: "cmd/reboot", Payload: []byte("now"), QoS: 1},
		mqtthooks.DeliverOptions{QoS: 1})
	<-conn.Notified() // the write loop wakes up
	buf := make([]mqtthooks.Delivery, 16)
	n, _ := session.Pull(buf)
	for _, d := range buf[:n] {
		fmt.Printf("send PUBLISH %s id=%d qos=%d\n", d.Message.Topic, d.PacketID, d.QoS)
		_ = session.Puback(d.PacketID) // the client's PUBACK
	}
	_ = session.Disconnect(ctx, mqtthooks.CodeNormalDisconnection)
	info2, _ := core.Lookup(session.ID())
	fmt.Println("offline, subscriptions kept:", len(info2.Subscriptions))
	// Output:
	// send CONNACK 0x00 (success) session present false
	// send PUBLISH cmd/reboot id=1 qos=1
	// offline, subscriptions kept: 1
}

// A broker's router and write loop: Deliver queues a message for a session
// and notifies its connection, which pulls at the socket's pace until Pull
// returns fewer deliveries than asked, and reports the client's PUBACKs.
func ExampleCore_Deliver() {
	chain := mqtthooks.NewChain(mqtthooks.ChainOptions{})
	_ = chain.Register("all", mqtthooks.AuthOnRegisterBothFunc(
		func(context.Context, *mqtthooks.RegisterRequest) mqtthooks.RegisterResult { return mqtthooks.Accept() }))
	core, _ := mqtthooks.NewCore(chain, mqtthooks.Options{MaxInflightMessages: mqtthooks.Some(2)})
	defer core.Shutdown(context.Background())
	ctx := context.Background()

	client := mqtthookstest.ConnectV3(ctx, core, "sensor-1", "", false) // CONNACK sent, Start called
	session := client.Session
	_ = session.Subscribe(ctx, mqtthooks.Subscription{Filter: "cmd/#", QoS: 1})

	// Router side: for each subscription that matched, with the life it belongs to.
	for i := range 3 {
		msg := &mqtthooks.Message{Topic: fmt.Sprintf("cmd/%d", i), QoS: 1}
		_ = core.Deliver(session.ID(), msg, mqtthooks.DeliverOptions{QoS: 1, Generation: session.Generation()})
	}

	// Connection side: woken by Conn.Notify.
	buf := make([]mqtthooks.Delivery, 8)
	for range 2 {
		<-client.Conn.Notified()
		for {
			n, err := session.Pull(buf)
			if err != nil { // an *mqtthooks.EndedError: send its DISCONNECT code and close
				return
			}
			for _, d := range buf[:n] {
				fmt.Printf("PUBLISH %s id=%d\n", d.Message.Topic, d.PacketID)
			}
			if n < len(buf) {
				break // nothing more for now: wait for the next Notify
			}
		}
		// The client's PUBACKs free the window (2 here); the core notifies again.
		_ = session.Puback(1)
		_ = session.Puback(2)
	}
	// Output:
	// PUBLISH cmd/0 id=1
	// PUBLISH cmd/1 id=2
	// PUBLISH cmd/2 id=3
}

// loggingStore is a SessionStore that prints the batches a Core writes, and
// keeps them in a MemoryStore.
type loggingStore struct{ mqtthooks.MemoryStore }

func (s *loggingStore) Batch() mqtthooks.StoreBatch {
	return &loggingBatch{StoreBatch: s.MemoryStore.Batch()}
}

type loggingBatch struct {
	mqtthooks.StoreBatch
	ops []string
}

func (b *loggingBatch) CreateSession(rec *mqtthooks.SessionRecord) {
	b.ops = append(b.ops, fmt.Sprintf("create %s gen %d", rec.ID, rec.Generation))
	b.StoreBatch.CreateSession(rec)
}

func (b *loggingBatch) UpdateSession(rec *mqtthooks.SessionRecord) {
	b.ops = append(b.ops, "update record")
	b.StoreBatch.UpdateSession(rec)
}

func (b *loggingBatch) PutSubscription(id mqtthooks.SubscriberID, gen uint64, sub mqtthooks.Subscription) {
	b.ops = append(b.ops, "subscribe "+sub.Filter)
	b.StoreBatch.PutSubscription(id, gen, sub)
}

func (b *loggingBatch) PutMessage(msgID uint64, m *mqtthooks.Message) {
	b.ops = append(b.ops, fmt.Sprintf("message %d %q", msgID, m.Payload))
	b.StoreBatch.PutMessage(msgID, m)
}

func (b *loggingBatch) PutEntry(id mqtthooks.SubscriberID, gen uint64, e *mqtthooks.StoredEntry) {
	b.ops = append(b.ops, fmt.Sprintf("entry %d state %d", e.Seq, e.State))
	b.StoreBatch.PutEntry(id, gen, e)
}

func (b *loggingBatch) DeleteEntry(id mqtthooks.SubscriberID, gen, seq, msgID uint64) {
	b.ops = append(b.ops, fmt.Sprintf("delete entry %d", seq))
	b.StoreBatch.DeleteEntry(id, gen, seq, msgID)
}

func (b *loggingBatch) Commit(done func(error)) {
	fmt.Println("commit:", strings.Join(b.ops, ", "))
	b.StoreBatch.Commit(done)
}

// A SessionStore sees the small batches of a persistent session's changes,
// and a new Core restores what it holds.
func ExampleSessionStore() {
	chain := mqtthooks.NewChain(mqtthooks.ChainOptions{})
	_ = chain.Register("all", mqtthooks.AuthOnRegisterBothFunc(
		func(context.Context, *mqtthooks.RegisterRequest) mqtthooks.RegisterResult { return mqtthooks.Accept() }))
	store := new(loggingStore)
	core, _ := mqtthooks.NewCore(chain, mqtthooks.Options{Store: store})
	ctx := context.Background()

	c := mqtthookstest.ConnectV3(ctx, core, "sensor-1", "", false) // persistent: stored
	_ = c.Session.Subscribe(ctx, mqtthooks.Subscription{Filter: "cmd/#", QoS: 1})
	c.Drop(ctx, nil)
	_ = core.Deliver(c.Session.ID(), &mqtthooks.Message{Topic: "cmd/1", Payload: []byte("reboot"), QoS: 1},
		mqtthooks.DeliverOptions{QoS: 1})
	_ = core.Shutdown(ctx)

	restarted, _ := mqtthooks.NewCore(chain, mqtthooks.Options{Store: &store.MemoryStore})
	defer restarted.Shutdown(context.Background())
	info, _ := restarted.Lookup(c.Session.ID())
	fmt.Println("after the restart:", len(info.Subscriptions), "subscription,", info.Pending, "message pending")
	// Output:
	// commit: create sensor-1 gen 1
	// commit: update record
	// commit: subscribe cmd/#
	// commit: update record
	// commit: message 1 "reboot", entry 1 state 0
	// after the restart: 1 subscription, 1 message pending
}
