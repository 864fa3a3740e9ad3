package main

// Three brokers in this process, each a node of one cluster with its own
// embedded nats-server (routes to the others, JetStream with three
// replicas), started through the -nats-embedded code path; real MQTT 3.1.1
// and 5 clients (ACCEPTANCE C5, and a session that moves between nodes).

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	pahov3 "github.com/eclipse/paho.mqtt.golang"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mqtthooks/mqtthooks"
)

// startTestCluster runs one broker per name, each with an embedded NATS node
// routed to the others' and as many replicas as nodes. Each broker's start
// waits for the JetStream cluster, which needs every node, so they start on
// goroutines; one after the other, though, each once the one before listens
// for routes, as a JetStream cluster whose first node is alone elects its
// meta leader at once, and one whose nodes start together only after an
// election timeout (4 to 9 s).
func startTestCluster(t *testing.T, names ...string) []*testBroker {
	t.Helper()
	ports := freePorts(t, len(names))
	routes := make([]string, len(names))
	for i, p := range ports {
		routes[i] = fmt.Sprintf("127.0.0.1:%d", p)
	}
	built := make([]*broker, len(names))
	errs := make([]error, len(names))
	var wg sync.WaitGroup
	for i, name := range names {
		f := &flags{addr: "127.0.0.1:0", maxPacketSize: 1 << 20, maxQueued: 1000, dataDir: t.TempDir(),
			cluster: clusterFlags{embedded: true, node: name, clusterListen: routes[i], clusterName: "test",
				routes: strings.Join(routes, ","), replicas: len(names), wait: 20 * time.Second}}
		wg.Go(func() { built[i], errs[i] = build(f, testLogger(t)) })
		require.Eventually(t, func() bool {
			c, err := net.Dial("tcp", routes[i])
			if err == nil {
				_ = c.Close()
			}
			return err == nil
		}, 10*time.Second, 5*time.Millisecond, "node %s listens for routes", name)
	}
	wg.Wait()
	var nodes []*testBroker
	for i, b := range built {
		if errs[i] == nil {
			nodes = append(nodes, serveBroker(t, b))
		}
	}
	t.Cleanup(func() {
		// Every node leaves while every NATS node is up (one alone has no
		// JetStream quorum to store its sessions in), then they stop, at
		// once (each NATS node hands its leaderships over for a second).
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		var wg sync.WaitGroup
		for _, n := range nodes {
			wg.Go(func() {
				assert.NoError(t, n.srv.core.Shutdown(ctx))
				assert.NoError(t, n.srv.cluster.stopRouting(ctx))
			})
		}
		wg.Wait()
		for _, n := range nodes {
			wg.Go(func() { n.stop(t) })
		}
		wg.Wait()
	})
	for i, err := range errs {
		require.NoError(t, err, "node %s", names[i])
	}
	return nodes
}

// freePorts returns n ports of 127.0.0.1 free at the time of the call.
func freePorts(t *testing.T, n int) []int {
	t.Helper()
	ports := make([]int, n)
	for i := range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		defer l.Close()
		ports[i] = l.Addr().(*net.TCPAddr).Port
	}
	return ports
}

// v3Sub is an MQTT 3.1.1 client whose messages, of any subscription, come
// on a channel.
type v3Sub struct {
	pahov3.Client
	received       chan pahov3.Message
	sessionPresent bool
}

func v3Connect(t *testing.T, addr, id string, clean bool) *v3Sub {
	t.Helper()
	c := &v3Sub{received: make(chan pahov3.Message, 100)}
	o := pahov3.NewClientOptions().AddBroker("tcp://" + addr).SetClientID(id).SetCleanSession(clean).
		SetAutoReconnect(false).SetConnectRetry(false).SetProtocolVersion(4).SetConnectTimeout(5 * time.Second).
		SetOrderMatters(true).SetDefaultPublishHandler(func(_ pahov3.Client, m pahov3.Message) { c.received <- m })
	c.Client = pahov3.NewClient(o)
	tok := c.Connect()
	require.NoError(t, waitToken(tok))
	c.sessionPresent = tok.(*pahov3.ConnectToken).SessionPresent()
	t.Cleanup(func() { c.Disconnect(100) })
	return c
}

func (c *v3Sub) subscribe(t *testing.T, filter string, qos byte) {
	t.Helper()
	require.NoError(t, waitToken(c.Subscribe(filter, qos, nil)))
}

func v5Subscribe(t *testing.T, c *v5, filter string, qos byte) {
	t.Helper()
	_, err := c.Subscribe(context.Background(), &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: filter, QoS: qos}}})
	require.NoError(t, err)
}

// v5Publish publishes and, for QoS 1 and 2, waits for the acknowledgement.
func v5Publish(t *testing.T, c *v5, topic, payload string, qos byte, retain bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	resp, err := c.Publish(ctx, &paho.Publish{Topic: topic, Payload: []byte(payload), QoS: qos, Retain: retain})
	require.NoError(t, err)
	if resp != nil {
		require.Less(t, resp.ReasonCode, byte(0x80), "PUBLISH %q refused", payload)
	}
}

// TestClusterC5 is ACCEPTANCE C5 on three nodes: a PUBLISH on A reaches a
// subscriber on B (MQTT 5) and one on C (3.1.1) once each, with the QoS of
// the message and the subscription, the smaller; a retained message
// published on A is seen by new subscribers on B and C, and its deletion
// clears it on both; a Will reaches other nodes; a shared subscription with
// members on two nodes gets each message once; and a persistent session
// that moves from A to B finds the messages published for it on A and C
// while it was offline. Then the forwarding itself: a request sent twice is
// delivered once and answered twice; a node that does not answer gets the
// request again, and the publisher no PUBACK, its connection closed.
func TestClusterC5(t *testing.T) {
	nodes := startTestCluster(t, "A", "B", "C")
	a, b, c := nodes[0], nodes[1], nodes[2]

	pub, err := v5Client(t, a.addr, &paho.Connect{ClientID: "pub", CleanStart: true}, nil)
	require.NoError(t, err)

	t.Run("QoS", func(t *testing.T) {
		onB, err := v5Client(t, b.addr, &paho.Connect{ClientID: "sub5", CleanStart: true}, nil)
		require.NoError(t, err)
		v5Subscribe(t, onB, "c5/+", 2)
		onC := v3Connect(t, c.addr, "sub3", true)
		onC.subscribe(t, "c5/#", 1)

		// The SUBACKs mean that A routes to both: no waiting.
		for qos := range byte(3) {
			v5Publish(t, pub, "c5/t", fmt.Sprint("q", qos), qos, false)
		}
		v5Publish(t, pub, "c5/t", "end", 1, false)

		got5 := map[string]byte{}
		for m := receive(t, onB.received, "a message on B"); string(m.Payload) != "end"; m = receive(t, onB.received, "a message on B") {
			assert.NotContains(t, got5, string(m.Payload), "received twice on B")
			got5[string(m.Payload)] = m.QoS
		}
		assert.Equal(t, map[string]byte{"q0": 0, "q1": 1, "q2": 2}, got5, "on B, subscribed with QoS 2")
		got3 := map[string]byte{}
		for m := receive(t, onC.received, "a message on C"); string(m.Payload()) != "end"; m = receive(t, onC.received, "a message on C") {
			assert.NotContains(t, got3, string(m.Payload()), "received twice on C")
			got3[string(m.Payload())] = m.Qos()
		}
		assert.Equal(t, map[string]byte{"q0": 0, "q1": 1, "q2": 1}, got3, "on C, subscribed with QoS 1")
	})

	t.Run("retained", func(t *testing.T) {
		v5Publish(t, pub, "c5r/x", "kept", 1, true)

		onC, err := v5Client(t, c.addr, &paho.Connect{ClientID: "r5", CleanStart: true}, nil)
		require.NoError(t, err)
		v5Subscribe(t, onC, "c5r/#", 1)
		m := receive(t, onC.received, "the retained message on C")
		assert.Equal(t, "kept", string(m.Payload))
		assert.True(t, m.Retain)
		assert.Equal(t, byte(1), m.QoS)
		onB := v3Connect(t, b.addr, "r3", true)
		onB.subscribe(t, "c5r/#", 1)
		m3 := receive(t, onB.received, "the retained message on B")
		assert.Equal(t, "kept", string(m3.Payload()))
		assert.True(t, m3.Retained())

		v5Publish(t, pub, "c5r/x", "", 1, true) // deletes it everywhere
		again5, err := v5Client(t, b.addr, &paho.Connect{ClientID: "r5b", CleanStart: true}, nil)
		require.NoError(t, err)
		v5Subscribe(t, again5, "c5r/#", 1)
		again3 := v3Connect(t, c.addr, "r3c", true)
		again3.subscribe(t, "c5r/#", 1)
		v5Publish(t, pub, "c5r/x", "after", 1, false)
		assert.Equal(t, "after", string(receive(t, again5.received, "a message on B").Payload), "no retained message on B")
		assert.Equal(t, "after", string(receive(t, again3.received, "a message on C").Payload()), "no retained message on C")
	})

	t.Run("will", func(t *testing.T) {
		watcher, err := v5Client(t, c.addr, &paho.Connect{ClientID: "watcher", CleanStart: true}, nil)
		require.NoError(t, err)
		v5Subscribe(t, watcher, "c5w/#", 1)
		nc := rawConnect(t, a.addr, 5, "dying", func(c *packets.ConnectParams) {
			c.WillFlag, c.WillTopic, c.WillPayload, c.WillQos = true, "c5w/dying", []byte("bye"), 1
		})
		require.NoError(t, nc.Close()) // no DISCONNECT: the Will is due
		m := receive(t, watcher.received, "the Will on C")
		assert.Equal(t, "c5w/dying", m.Topic)
		assert.Equal(t, "bye", string(m.Payload))
	})

	t.Run("shared", func(t *testing.T) {
		members := map[string]*v5{}
		for _, n := range []*testBroker{b, c} {
			m, err := v5Client(t, n.addr, &paho.Connect{ClientID: "member-" + n.srv.cluster.node, CleanStart: true}, nil)
			require.NoError(t, err)
			v5Subscribe(t, m, "$share/g/c5s/t", 1)
			v5Subscribe(t, m, "c5s/end", 1)
			members[n.srv.cluster.node] = m
		}
		const n = 6
		for i := range n {
			v5Publish(t, pub, "c5s/t", fmt.Sprint("s", i), 1, false)
		}
		v5Publish(t, pub, "c5s/end", "end", 1, false) // after the shared ones, on each member's node
		got := map[string]string{}
		for node, m := range members {
			for p := receive(t, m.received, "a message on "+node); string(p.Payload) != "end"; p = receive(t, m.received, "a message on "+node) {
				assert.NotContains(t, got, string(p.Payload), "delivered twice")
				got[string(p.Payload)] = node
			}
		}
		assert.Len(t, got, n, "each message to one member: %v", got)
		assert.Contains(t, got, "s0")
		nodesUsed := map[string]bool{}
		for _, node := range got {
			nodesUsed[node] = true
		}
		assert.Len(t, nodesUsed, 2, "the group's nodes take turns: %v", got)
	})

	t.Run("moving session", func(t *testing.T) {
		x := v3Connect(t, a.addr, "mover", false)
		x.subscribe(t, "mv/t", 1)
		x.Disconnect(100) // offline on A, subscribed

		onC, err := v5Client(t, c.addr, &paho.Connect{ClientID: "pubC", CleanStart: true}, nil)
		require.NoError(t, err)
		v5Publish(t, onC, "mv/t", "from C", 1, false)
		v5Publish(t, pub, "mv/t", "from A", 1, false)

		moved := v3Connect(t, b.addr, "mover", false)
		assert.True(t, moved.sessionPresent, "SP 1 on B")
		got := []string{string(receive(t, moved.received, "a queued message").Payload()),
			string(receive(t, moved.received, "a queued message").Payload())}
		assert.Equal(t, []string{"from C", "from A"}, got)

		// And it is B's now: a PUBLISH on C reaches it there.
		v5Publish(t, onC, "mv/t", "to B", 1, false)
		assert.Equal(t, "to B", string(receive(t, moved.received, "a message on B").Payload()))
		assert.Equal(t, 1, b.rec.Count(mqtthooks.SubscriberID{ClientID: "mover"}, "OnClientWakeup"))
	})

	// A client of the NATS cluster, beside the brokers.
	nc, err := nats.Connect(a.srv.cluster.ns.ClientURL())
	require.NoError(t, err)
	defer nc.Close()

	t.Run("dedup", func(t *testing.T) {
		sub, err := v5Client(t, b.addr, &paho.Connect{ClientID: "dd", CleanStart: true}, nil)
		require.NoError(t, err)
		v5Subscribe(t, sub, "dd/t", 1)
		req := func(seq uint64, payload string) {
			data := encodeRoute(&routeMsg{boot: 42, seq: seq, from: mqtthooks.SubscriberID{ClientID: "x"},
				msg: &mqtthooks.Message{Topic: "dd/t", Payload: []byte(payload), QoS: 1}})
			resp, err := nc.Request("mqtthooks.route.B", data, 5*time.Second)
			require.NoError(t, err)
			assert.NoError(t, decodeReply(resp.Data))
		}
		req(7, "once")
		req(7, "once") // sent again: answered, not delivered again
		req(8, "end")
		assert.Equal(t, "once", string(receive(t, sub.received, "the message").Payload))
		assert.Equal(t, "end", string(receive(t, sub.received, "the next message").Payload))
	})

	t.Run("unanswered", func(t *testing.T) {
		// A node Z that subscribes to zz/# and never answers a forwarded PUBLISH.
		requests := make(chan *nats.Msg, 10)
		zr, err := nc.ChanSubscribe("mqtthooks.route.Z", requests)
		require.NoError(t, err)
		defer zr.Unsubscribe()
		zs, err := nc.Subscribe("mqtthooks.sync.Z", func(m *nats.Msg) { _ = m.Respond(nil) })
		require.NoError(t, err)
		defer zs.Unsubscribe()
		require.NoError(t, nc.Flush())
		cl := a.srv.cluster
		ctx := context.Background()
		token, _ := keyToken("", "zz/#")
		_, err = cl.interestKV.Put(ctx, "Z.n", nil)
		require.NoError(t, err)
		_, err = cl.interestKV.Put(ctx, "Z.f."+token, encodeInterest("", "zz/#"))
		require.NoError(t, err)
		defer func() { assert.NoError(t, cl.purgeKeys(ctx, "Z")) }()
		require.Eventually(t, func() bool { return len(cl.targets("", "zz/t")) == 1 }, 5*time.Second, 5*time.Millisecond,
			"A learns of Z's subscription")

		cl.timing.timeout.Store(int64(time.Second))
		cl.timing.retry.Store(int64(200 * time.Millisecond))
		defer cl.timing.timeout.Store(0)
		defer cl.timing.retry.Store(0)
		p, err := v5Client(t, a.addr, &paho.Connect{ClientID: "zpub", CleanStart: true}, nil)
		require.NoError(t, err)
		pctx, cancel := context.WithCancel(ctx)
		defer cancel()
		published := make(chan error, 1)
		go func() {
			_, err := p.Publish(pctx, &paho.Publish{Topic: "zz/t", Payload: []byte("lost?"), QoS: 1})
			published <- err
		}()
		receive(t, p.Done(), "the broker closing the publisher's connection")
		cancel() // paho keeps the PUBLISH for a reconnection
		assert.Error(t, receive(t, published, "the end of the PUBLISH"), "no PUBACK")
		first := receive(t, requests, "the request")
		again := receive(t, requests, "the request, again")
		assert.Equal(t, first.Data, again.Data, "the same message, with the same id")
		assert.Equal(t, first.Reply, again.Reply)
		rm, err := decodeRoute(first.Data)
		require.NoError(t, err)
		assert.Equal(t, "lost?", string(rm.msg.Payload))
		assert.Equal(t, mqtthooks.SubscriberID{ClientID: "zpub"}, rm.from)
	})

	// A session that left A for B (the Core called Moved on A) and whose
	// subscriptions B does not route yet: a QoS 1 PUBLISH matching them is
	// refused, on A and on the other nodes (A keeps its interest), until B
	// routes them; a QoS 0 one is not. A QoS 2 PUBLISH refused that way and
	// sent again reaches each subscriber once.
	t.Run("moving session refused", func(t *testing.T) {
		ghost := mqtthooks.SubscriberID{ClientID: "ghost"}
		sub := mqtthooks.Subscription{Filter: "gh/+", QoS: 2}
		ra, rb := a.srv.cluster.router(), b.srv.cluster.router()
		ra.Add(ghost, 1, sub)
		onB, err := v5Client(t, b.addr, &paho.Connect{ClientID: "ghwatch", CleanStart: true}, nil)
		require.NoError(t, err)
		v5Subscribe(t, onB, "gh/#", 2)
		ra.Moved(ghost, 1)
		bc := b.srv.cluster
		bc.imu.Lock()
		assert.Equal(t, map[string]bool{"A": true}, bc.movedFrom[ghost], "Moved returns once B knows that A holds moved filters of the session")
		bc.imu.Unlock()
		assert.True(t, a.srv.cluster.moved.refuses("", "gh/t"))

		refused := func(addr, id string) {
			t.Helper()
			p, err := v5Client(t, addr, &paho.Connect{ClientID: id, CleanStart: true}, nil)
			require.NoError(t, err)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			published := make(chan error, 1)
			go func() {
				_, err := p.Publish(ctx, &paho.Publish{Topic: "gh/t", Payload: []byte("refused " + id), QoS: 1})
				published <- err
			}()
			receive(t, p.Done(), "the broker closing the publisher's connection")
			cancel()
			assert.Error(t, receive(t, published, "the end of the PUBLISH"), "no PUBACK")
		}
		refused(a.addr, "ghpubA") // matches the moved filter here: routed nowhere
		refused(c.addr, "ghpubC") // forwarded to A, which refuses it; B takes its copy
		assert.Equal(t, "refused ghpubC", string(receive(t, onB.received, "B's copy").Payload),
			"at least once: the client sends it again")

		// QoS 2 from C, refused; the subscriber on B got its copy all the same.
		nc := rawConnect(t, c.addr, 4, "ghq2", func(p *packets.ConnectParams) { p.Clean = false })
		publishQoS2 := func(nc net.Conn, dup bool) {
			t.Helper()
			pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 2, Dup: dup},
				ProtocolVersion: 4, TopicName: "gh/q2", Payload: []byte("once"), PacketID: 9}
			var buf bytes.Buffer
			require.NoError(t, pk.PublishEncode(&buf))
			_, err := nc.Write(buf.Bytes())
			require.NoError(t, err)
		}
		publishQoS2(nc, false)
		_, err = io.ReadAll(nc) // no PUBREC: the connection ends
		require.NoError(t, err)
		assert.Equal(t, "once", string(receive(t, onB.received, "the copy on B").Payload))

		v5Publish(t, pub, "gh/t", "qos 0 goes through", 0, false)
		assert.Equal(t, "qos 0 goes through", string(receive(t, onB.received, "the QoS 0 message").Payload))

		rb.Add(ghost, 2, sub) // B routes the session's filter: A lets it go before Add returns
		assert.False(t, a.srv.cluster.moved.refuses("", "gh/t"), "A no longer refuses")
		v5Publish(t, pub, "gh/t", "taken", 1, false)
		assert.Equal(t, "taken", string(receive(t, onB.received, "the message after the move").Payload))

		// The resend of the QoS 2 PUBLISH is routed again (the Core forgot its
		// identifier), and skips the subscriber it reached the first time.
		nc = rawConnect(t, c.addr, 4, "ghq2", func(p *packets.ConnectParams) { p.Clean = false })
		publishQoS2(nc, true)
		rec := readRaw(t, nc, 4)
		assert.Equal(t, packets.Pubrec, rec.FixedHeader.Type, "the resend is taken")
		_ = nc.Close()
		v5Publish(t, pub, "gh/t", "end", 1, false)
		assert.Equal(t, "end", string(receive(t, onB.received, "the next message").Payload), "no second copy of the QoS 2 message")

		// Nobody routes a moved session's filter: A lets it go after routeTimeout.
		cl := a.srv.cluster
		cl.timing.timeout.Store(int64(300 * time.Millisecond))
		defer cl.timing.timeout.Store(0)
		gone := mqtthooks.SubscriberID{ClientID: "gone"}
		ra.Add(gone, 1, mqtthooks.Subscription{Filter: "gone/t", QoS: 1})
		ra.Moved(gone, 1)
		assert.True(t, cl.moved.refuses("", "gone/t"))
		require.Eventually(t, func() bool { return !cl.moved.refuses("", "gone/t") }, 5*time.Second, 5*time.Millisecond)
		require.Eventually(t, func() bool { return len(c.srv.cluster.targets("", "gone/t")) == 0 }, 5*time.Second,
			5*time.Millisecond, "A's interest in the filter is withdrawn")
		rb.RemoveAll(ghost, 2)
	})
}

// A client's QoS 2 PUBLISH is named by a nonce until its PUBREL; a resend
// (DUP, same topic and payload) of one in the balance carries it, and finds
// what its first sending reached. Anything else is a new PUBLISH: after the
// PUBREL (a new PUBLISH reusing the identifier, lost on the wire and sent
// again with DUP), or another payload under the identifier.
func TestResendWindow(t *testing.T) {
	var w resendWindow
	w.init(42)
	p := mqtthooks.SubscriberID{ClientID: "p"}
	s1, s2 := mqtthooks.SubscriberID{ClientID: "s1"}, mqtthooks.SubscriberID{ClientID: "s2"}
	msg := &mqtthooks.Message{Topic: "t", Payload: []byte("x"), QoS: 2}

	assert.Zero(t, w.admit(p, 1, false, &mqtthooks.Message{Topic: "t", QoS: 1}), "QoS 1 is not named")
	assert.Zero(t, w.admit(p, 0, false, msg), "nor a message without a packet identifier (a Will)")
	assert.Nil(t, w.begin(p, resendRef{}))

	first := w.admit(p, 1, false, msg)
	require.NotZero(t, first.nonce)
	w.reach(w.begin(p, first), s1)
	again := w.admit(p, 1, true, msg)
	assert.Equal(t, first, again, "the resend of the PUBLISH in the balance")
	e := w.begin(p, again)
	assert.True(t, w.reached(e, s1), "finds what its first sending reached")
	assert.False(t, w.reached(e, s2))
	other := w.admit(p, 1, true, &mqtthooks.Message{Topic: "t", Payload: []byte("y"), QoS: 2})
	assert.NotEqual(t, first.nonce, other.nonce, "another payload under the identifier is another PUBLISH")

	w.released(p, 1)
	w.reach(w.begin(p, w.admit(p, 1, false, msg)), s1)
	w.released(p, 1)
	lost := w.admit(p, 1, true, msg) // a new PUBLISH, identical, whose first sending never arrived
	assert.False(t, w.reached(w.begin(p, lost), s1), "after the PUBREL, a DUP is a new PUBLISH")

	// Refused before anything was routed, then sent again: nothing to skip,
	// though an earlier PUBLISH under the identifier reached s1.
	w.reach(w.begin(p, w.admit(p, 2, false, msg)), s1)
	w.released(p, 2)
	refused := w.admit(p, 2, false, msg)
	w.begin(p, refused)
	assert.False(t, w.reached(w.begin(p, w.admit(p, 2, true, msg)), s1))

	// A routing that still holds an entry replaced meanwhile records nothing.
	w.init(9)
	old := w.begin(p, w.admit(p, 4, false, msg))
	w.begin(p, w.admit(p, 4, false, msg))
	w.reach(old, s1)
	assert.Zero(t, w.pairs, "copies of a replaced entry are not counted")

	// The window forgets the oldest first.
	w.init(7)
	w.ring = make([]resendKey, 0, 2)
	r1, r2, r3 := w.admit(p, 1, false, msg), w.admit(p, 2, false, msg), w.admit(p, 3, false, msg)
	w.reach(w.begin(p, r1), s1)
	w.reach(w.begin(p, r2), s1)
	w.reach(w.begin(p, r3), s1) // pid 1 goes
	assert.False(t, w.reached(w.begin(p, r1), s1), "forgotten")
	assert.True(t, w.reached(w.begin(p, r3), s1))
}

// The encodings between nodes read back what they wrote, and refuse what
// they cannot read.
func TestClusterCodec(t *testing.T) {
	m := &mqtthooks.Message{Topic: "a/b", Payload: []byte("payload"), QoS: 2, Retain: true,
		Properties: mqtthooks.PublishProperties{PayloadFormatIndicator: 1, MessageExpiryInterval: mqtthooks.Some(uint32(60)),
			ContentType: "text/plain", ResponseTopic: "r/t", CorrelationData: []byte{},
			UserProperties: []mqtthooks.UserProperty{{Key: "k", Value: "v"}, {Key: "k", Value: "w"}}}}
	in := &routeMsg{boot: 1 << 60, seq: 12345, from: mqtthooks.SubscriberID{Mountpoint: "mp", ClientID: "c"},
		shares: []string{"$share/g/a/+"}, ref: resendRef{pid: 65535, nonce: 1 << 63}, msg: m}
	out, err := decodeRoute(encodeRoute(in))
	require.NoError(t, err)
	assert.Equal(t, in, out)
	assert.NotNil(t, out.msg.Properties.CorrelationData, "empty Correlation Data stays set")

	plain := &mqtthooks.Message{Topic: "t", QoS: 0}
	out, err = decodeRoute(encodeRoute(&routeMsg{msg: plain}))
	require.NoError(t, err)
	assert.Equal(t, plain.Topic, out.msg.Topic)
	assert.Empty(t, out.msg.Payload)
	assert.False(t, out.msg.Properties.MessageExpiryInterval.Set)

	mp, rm, err := decodeRetained(encodeRetained("mp", m))
	require.NoError(t, err)
	assert.Equal(t, "mp", mp)
	assert.Equal(t, m, rm)
	mp, f, err := decodeInterest(encodeInterest("mp", "$share/g/#"))
	require.NoError(t, err)
	assert.Equal(t, []string{"mp", "$share/g/#"}, []string{mp, f})
	assert.NoError(t, decodeReply(encodeReply(nil)))
	assert.ErrorContains(t, decodeReply(encodeReply(errors.New("disk full"))), "disk full")

	for _, bad := range [][]byte{nil, {2, kindRoute}, {wireVersion, 1}, {wireVersion, kindReply}, encodeRoute(in)[:20]} {
		_, err := decodeRoute(bad)
		assert.Error(t, err, "%x", bad)
	}

	token, hashed := keyToken("mp", "a/+/b c#")
	assert.False(t, hashed)
	assert.Regexp(t, `^k[A-Za-z0-9_-]+$`, token)
	gotMP, gotS, ok := parseKeyToken(token)
	assert.True(t, ok)
	assert.Equal(t, []string{"mp", "a/+/b c#"}, []string{gotMP, gotS})
	long, hashed := keyToken("", strings.Repeat("x/", 500))
	assert.True(t, hashed)
	assert.Regexp(t, `^h[A-Za-z0-9_-]{43}$`, long)
	_, _, ok = parseKeyToken(long)
	assert.False(t, ok)
}

// The cluster flags: what goes together, and the node's default name.
func TestClusterFlags(t *testing.T) {
	for _, args := range [][]string{
		{"-nats", "nats://x:4222", "-nats-embedded"},
		{"-nats", "nats://x:4222", "-nats-routes", "a:1"},
		{"-nats-embedded", "-nats-routes", "a:1"},
		{"-node", "A"},
		{"-nats-embedded", "-node", "a.b"},
		{"-nats-embedded", "-nats-replicas", "0"},
	} {
		_, err := parseFlags(args, io.Discard)
		assert.Error(t, err, "%v", args)
	}
	f, err := parseFlags([]string{"-nats-embedded", "-nats-cluster-listen", "127.0.0.1:6222", "-nats-routes",
		"127.0.0.1:6222,nats-route://127.0.0.1:6223", "-nats-replicas", "3"}, io.Discard)
	require.NoError(t, err)
	assert.Regexp(t, nodeNameRe, f.cluster.node)
	assert.Equal(t, 3, f.cluster.replicas)
	routes, err := parseRoutes(f.cluster.routes)
	require.NoError(t, err)
	require.Len(t, routes, 2)
	assert.Equal(t, "nats-route://127.0.0.1:6222", routes[0].String())
	_, err = parseRoutes("nats-route://")
	assert.Error(t, err)

	var out bytes.Buffer
	assert.ErrorIs(t, run([]string{"-help"}, nil, &out), flag.ErrHelp)
	for _, name := range []string{"-nats ", "-nats-embedded", "-nats-routes", "-nats-listen", "-nats-cluster-listen",
		"-node", "-nats-replicas", "-nats-wait"} {
		assert.Contains(t, out.String(), name)
	}
	assert.Contains(t, out.String(), "not used for sessions")
}
