package mqtthooks_test

import (
	"context"
	"fmt"
	"strconv"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mqtthooks/mqtthooks"
	"github.com/mqtthooks/mqtthooks/mqtthookstest"
)

// publish delivers messages "1".."n" to id at qos.
func (f *fixture) publish(t *testing.T, id mqtthooks.SubscriberID, qos byte, n int) {
	t.Helper()
	for i := 1; i <= n; i++ {
		msg := &mqtthooks.Message{Topic: "t", Payload: []byte(strconv.Itoa(i)), QoS: qos}
		require.NoError(t, f.core.Deliver(id, msg, mqtthooks.DeliverOptions{QoS: qos}))
	}
}

// payloads returns the payloads of ds, in order.
func payloads(ds []mqtthooks.Delivery) []string {
	var out []string
	for _, d := range ds {
		if d.Message != nil {
			out = append(out, string(d.Message.Payload))
		}
	}
	return out
}

// offline returns a persistent v3 session for id that is offline, subscribed.
func (f *fixture) offline(t *testing.T, id string) {
	t.Helper()
	c := f.v3(id, false)
	requireAccepted(t, c)
	require.NoError(t, c.Subscribe(t.Context(), "t"))
	c.Drop(t.Context(), nil)
}

// checkNoLoss checks the message equation of Stats.
func checkNoLoss(t *testing.T, core *mqtthooks.Core) {
	t.Helper()
	st := core.Stats()
	held := 0
	for i := range core.Sessions() {
		held += i.Pending + i.Inflight
	}
	assert.Equal(t, st.Routed+st.Restored, st.Delivered+st.Dropped+st.NotStoredQoS0+st.Discarded+st.HandedOver+uint64(held),
		"routed + restored = delivered + dropped + not stored + discarded + handed over + held (%+v, held %d)", st, held)
}

// ACCEPTANCE 33: QoS 1 messages queue offline and arrive in order, DUP 0.
func TestOfflineQueueQoS1(t *testing.T) {
	f := newFixture(t, mqtthooks.Options{})
	f.offline(t, "s")
	f.publish(t, sid("s"), 1, 5)
	info, _ := f.core.Lookup(sid("s"))
	assert.Equal(t, 5, info.Pending)

	c := f.v3("s", false)
	ds, err := c.Receive()

	require.NoError(t, err)
	assert.Equal(t, []string{"1", "2", "3", "4", "5"}, payloads(ds))
	for _, d := range ds {
		assert.Equal(t, byte(1), d.QoS)
		assert.False(t, d.Dup)
		assert.NotZero(t, d.PacketID)
	}
	assert.Equal(t, uint64(5), f.core.Stats().Delivered)
	checkNoLoss(t, f.core)
}

// ACCEPTANCE 34: a FIFO offline queue keeps the oldest; the others drop.
func TestOfflineQueueFIFOLimit(t *testing.T) {
	f := newFixture(t, mqtthooks.Options{MaxOfflineMessages: mqtthooks.Some(2)})
	f.offline(t, "s")
	f.publish(t, sid("s"), 1, 5)

	var dropped []string
	for _, c := range f.rec.CallsFor(sid("s")) {
		if c.Hook == "OnMessageDrop" {
			assert.Equal(t, mqtthooks.DropQueueFull, c.Drop.Reason)
			dropped = append(dropped, string(c.Drop.Message.Payload))
		}
	}
	assert.Equal(t, []string{"3", "4", "5"}, dropped)
	ds, _ := f.v3("s", false).Receive()
	assert.Equal(t, []string{"1", "2"}, payloads(ds))
	assert.Equal(t, uint64(3), f.core.Stats().Dropped)
	checkNoLoss(t, f.core)
}

// ACCEPTANCE 35: a LIFO offline queue drops the oldest and delivers newest
// first; the limit also comes from a modifier.
func TestOfflineQueueLIFOLimit(t *testing.T) {
	f := newFixture(t, mqtthooks.Options{})
	f.rec.AuthOnRegisterFunc = answer(mqtthooks.AcceptWith(&mqtthooks.Modifiers{
		MaxOfflineMessages: mqtthooks.Some(2), QueueType: mqtthooks.Some(mqtthooks.QueueLIFO)}))
	f.offline(t, "s")
	f.publish(t, sid("s"), 1, 5)

	var dropped []string
	for _, c := range f.rec.CallsFor(sid("s")) {
		if c.Hook == "OnMessageDrop" {
			dropped = append(dropped, string(c.Drop.Message.Payload))
		}
	}
	assert.Equal(t, []string{"1", "2", "3"}, dropped)
	ds, _ := f.v3("s", false).Receive()
	assert.Equal(t, []string{"5", "4"}, payloads(ds))
}

// ACCEPTANCE 36: QoS 0 is not stored offline and is not a drop (OQ6), unless
// StoreQoS0Offline.
func TestOfflineQoS0(t *testing.T) {
	f := newFixture(t, mqtthooks.Options{})
	f.offline(t, "s")
	f.publish(t, sid("s"), 0, 1)
	ds, _ := f.v3("s", false).Receive()
	assert.Empty(t, ds)
	assert.Zero(t, f.rec.Count(sid("s"), "OnMessageDrop"))
	assert.Equal(t, uint64(1), f.core.Stats().NotStoredQoS0)
	checkNoLoss(t, f.core)

	f = newFixture(t, mqtthooks.Options{})
	f.rec.AuthOnRegisterFunc = answer(mqtthooks.AcceptWith(&mqtthooks.Modifiers{StoreQoS0Offline: mqtthooks.Some(true)}))
	f.offline(t, "s")
	f.publish(t, sid("s"), 0, 1)
	ds, _ = f.v3("s", false).Receive()
	require.Len(t, ds, 1)
	assert.Equal(t, byte(0), ds[0].QoS)
	assert.Zero(t, ds[0].PacketID)
}

// Online delivery: Notify once work waits, Pull hands out, Puback settles; the
// in-flight window bounds what is handed out.
func TestOnlineDeliveryAndWindow(t *testing.T) {
	f := newFixture(t, mqtthooks.Options{MaxInflightMessages: mqtthooks.Some(2)})
	c := f.v3("s", true)
	f.publish(t, sid("s"), 1, 3)
	within(t, c.Conn.Notified(), "a Notify")
	assert.Equal(t, 1, c.Conn.NotifyCount(), "one Notify until the broker pulls")

	first, err := c.PullAll()
	require.NoError(t, err)
	assert.Equal(t, []string{"1", "2"}, payloads(first), "the window holds 2")
	require.NoError(t, c.Settle(first[0]))
	within(t, c.Conn.Notified(), "a Notify") // the freed slot lets message 3 go
	next, _ := c.PullAll()
	assert.Equal(t, []string{"3"}, payloads(next))
	assert.ErrorIs(t, c.Session.Puback(first[0].PacketID), mqtthooks.ErrPacketIDNotFound, "acked twice")
	assert.ErrorIs(t, c.Session.Pubcomp(next[0].PacketID), mqtthooks.ErrPacketIDNotFound, "wrong flow")
}

// A delivery too large for the client is discarded as if sent (MQTT 5
// §3.1.2.11.4): it leaves the window, counts as dropped and fires
// OnMessageDrop with DropTooLarge.
func TestDiscardTooLarge(t *testing.T) {
	f := newFixture(t, mqtthooks.Options{MaxInflightMessages: mqtthooks.Some(1)})
	c := f.v5("s", true, 0)
	f.publish(t, sid("s"), 1, 2)
	within(t, c.Conn.Notified(), "a Notify")
	first, err := c.PullAll()
	require.NoError(t, err)
	require.Equal(t, []string{"1"}, payloads(first), "the window holds 1")

	require.NoError(t, c.Session.Discard(first[0]))
	within(t, c.Conn.Notified(), "a Notify") // the freed slot lets message 2 go
	next, _ := c.PullAll()
	assert.Equal(t, []string{"2"}, payloads(next))
	assert.ErrorIs(t, c.Session.Puback(first[0].PacketID), mqtthooks.ErrPacketIDNotFound, "discarded, not in flight")
	assert.ErrorIs(t, c.Session.Discard(first[0]), mqtthooks.ErrPacketIDNotFound, "discarded twice")
	require.NoError(t, c.Settle(next[0]))

	f.publish(t, sid("s"), 0, 3) // "1".."3" at QoS 0
	qos0, _ := c.PullAll()
	require.Len(t, qos0, 3)
	require.NoError(t, c.Session.Discard(qos0[1]))

	var dropped []string
	for _, call := range f.rec.CallsFor(sid("s")) {
		if call.Hook == "OnMessageDrop" {
			assert.Equal(t, mqtthooks.DropTooLarge, call.Drop.Reason)
			dropped = append(dropped, string(call.Drop.Message.Payload))
		}
	}
	assert.Equal(t, []string{"1", "2"}, dropped)
	st := f.core.Stats()
	assert.Equal(t, uint64(2), st.Dropped)
	assert.Equal(t, uint64(3), st.Delivered, "QoS 1 \"2\" and QoS 0 \"1\", \"3\"")
	checkNoLoss(t, f.core)

	for name, d := range map[string]mqtthooks.Delivery{
		"PUBREL":     {PacketID: 1, QoS: 2, Pubrel: true},
		"no message": {PacketID: 1, QoS: 1},
		"QoS 3":      {PacketID: 1, QoS: 3, Message: &mqtthooks.Message{}},
	} {
		assert.ErrorIs(t, c.Session.Discard(d), mqtthooks.ErrInvalidArgument, name)
	}
}

// The window is the smaller of MaxInflightMessages and the v5 Receive
// Maximum.
func TestReceiveMaximumBoundsWindow(t *testing.T) {
	f := newFixture(t, mqtthooks.Options{})
	req := mqtthookstest.V5("s", "u", true, 0)
	req.Properties.ReceiveMaximum = 3
	c := f.connect(req)
	f.publish(t, sid("s"), 1, 10)
	ds, _ := c.PullAll()
	assert.Len(t, ds, 3)
}

// QoS 2 outbound: PUBLISH → PUBREC → PUBREL → PUBCOMP, and a resumed session
// is offered its PUBREL again.
func TestQoS2Flow(t *testing.T) {
	f := newFixture(t, mqtthooks.Options{})
	c := f.v5("s", false, 300)
	f.publish(t, sid("s"), 2, 2)
	ds, _ := c.PullAll()
	require.Len(t, ds, 2)
	require.NoError(t, c.Session.Pubrec(ds[0].PacketID, nil))
	require.NoError(t, c.Session.Pubrec(ds[1].PacketID, nil))
	require.NoError(t, c.Session.Pubcomp(ds[0].PacketID))
	c.Drop(t.Context(), nil)

	again := f.v5("s", false, 300)
	resent, _ := again.PullAll()
	require.Len(t, resent, 1)
	assert.Equal(t, mqtthooks.Delivery{PacketID: ds[1].PacketID, QoS: 2, Pubrel: true}, resent[0])
	require.NoError(t, again.Session.Pubcomp(ds[1].PacketID))
	assert.Equal(t, uint64(2), f.core.Stats().Delivered)
	checkNoLoss(t, f.core)
}

// Inbound QoS 2 identifiers are kept until PUBREL, across connections.
func TestInboundQoS2(t *testing.T) {
	f := newFixture(t, mqtthooks.Options{})
	c := f.v5("s", false, 300)
	first, err := c.Session.InboundPublish(7, nil)
	require.NoError(t, err)
	assert.True(t, first)
	again, _ := c.Session.InboundPublish(7, nil)
	assert.False(t, again, "a DUP is not routed twice")
	c.Drop(t.Context(), nil)

	c2 := f.v5("s", false, 300)
	dup, _ := c2.Session.InboundPublish(7, nil)
	assert.False(t, dup, "kept with the session")
	known, _ := c2.Session.InboundPubrel(7, nil)
	assert.True(t, known)
	known, _ = c2.Session.InboundPubrel(7, nil)
	assert.False(t, known)
}

// ACCEPTANCE 38 (delivery part): a takeover offers the old connection's
// unacknowledged message to the new one first, DUP 1, same packet id.
func TestTakeoverResendsInflight(t *testing.T) {
	f := newFixture(t, mqtthooks.Options{})
	c1 := f.v3("s", false)
	f.publish(t, sid("s"), 1, 2)
	ds, _ := c1.PullAll()
	require.Len(t, ds, 2)
	require.NoError(t, c1.Settle(ds[1])) // only the second is acked
	f.publish(t, sid("s"), 1, 1)         // "1" again, pending

	c2 := f.v3("s", false)
	got, err := c2.PullAll()

	require.NoError(t, err)
	require.Len(t, got, 2)
	assert.Equal(t, ds[0].PacketID, got[0].PacketID)
	assert.True(t, got[0].Dup)
	assert.Equal(t, "1", string(got[0].Message.Payload))
	assert.False(t, got[1].Dup)
	assert.NotEqual(t, got[0].PacketID, got[1].PacketID)
	_, err = c1.Pull()
	assert.ErrorIs(t, err, mqtthooks.ErrTakenOver)
	assert.ErrorIs(t, c1.Session.Puback(ds[0].PacketID), mqtthooks.ErrTakenOver, "the old connection's acks are void")
	checkNoLoss(t, f.core)
}

// A clean session's pending messages are discarded at its end, not dropped.
func TestDiscardedAtSessionEnd(t *testing.T) {
	f := newFixture(t, mqtthooks.Options{})
	c := f.v3("s", true)
	f.publish(t, sid("s"), 1, 3)
	require.NoError(t, c.Disconnect(t.Context(), mqtthooks.CodeNormalDisconnection))
	st := f.core.Stats()
	assert.Equal(t, uint64(3), st.Discarded)
	assert.Zero(t, st.Dropped)
	assert.Zero(t, f.rec.Count(sid("s"), "OnMessageDrop"))
	assert.ErrorIs(t, f.core.Deliver(sid("s"), &mqtthooks.Message{Topic: "t"}, mqtthooks.DeliverOptions{QoS: 1}),
		mqtthooks.ErrSessionNotFound)
	checkNoLoss(t, f.core)
}

// v5 Message Expiry: expired messages drop at hand-out; the rest carry what is
// left of their interval; a message already sent does not expire.
func TestMessageExpiry(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFixture(t, mqtthooks.Options{})
		f.offline(t, "s")
		for _, exp := range []uint32{10, 100} {
			msg := &mqtthooks.Message{Topic: "t", Payload: []byte(strconv.Itoa(int(exp))), QoS: 1,
				Properties: mqtthooks.PublishProperties{MessageExpiryInterval: mqtthooks.Some(exp)}}
			require.NoError(t, f.core.Deliver(sid("s"), msg, mqtthooks.DeliverOptions{QoS: 1}))
		}
		time.Sleep(30 * time.Second)

		c := f.v3("s", false)
		ds, _ := c.PullAll()

		assert.Equal(t, []string{"100"}, payloads(ds))
		assert.Equal(t, uint32(70), ds[0].MessageExpiry)
		drop, ok := f.rec.Last(sid("s"), "OnMessageDrop")
		require.True(t, ok)
		assert.Equal(t, mqtthooks.DropExpired, drop.Drop.Reason)
		c.Drop(t.Context(), nil)
		time.Sleep(200 * time.Second)
		resent, _ := f.v3("s", false).PullAll()
		require.Len(t, resent, 1, "an in-flight message does not expire")
		assert.True(t, resent[0].Dup)
		checkNoLoss(t, f.core)
	})
}

// N15: nothing is offered before Start; after it, queued messages first,
// then one enqueued by OnRegister, in order.
func TestNothingBeforeStart(t *testing.T) {
	f := newFixture(t, mqtthooks.Options{})
	f.offline(t, "s")
	f.publish(t, sid("s"), 1, 2)
	f.rec.Lifecycle = func(_ context.Context, c mqtthookstest.Call) {
		if c.Hook == "OnRegister" {
			_ = f.core.Deliver(c.ID, &mqtthooks.Message{Topic: "t", Payload: []byte("3")}, mqtthooks.DeliverOptions{QoS: 1})
		}
	}
	c := mqtthookstest.NewClient(f.core)
	c.ManualStart = true
	c.Connect(t.Context(), mqtthookstest.V3("s", "u", false))
	requireAccepted(t, c)
	_, err := c.Session.Pull(make([]mqtthooks.Delivery, 8))
	assert.ErrorIs(t, err, mqtthooks.ErrNotStarted)
	assert.Zero(t, c.Conn.NotifyCount())

	require.NoError(t, c.Session.Start())
	within(t, c.Conn.Notified(), "a Notify")
	ds, _ := c.PullAll()
	assert.Equal(t, []string{"1", "2", "3"}, payloads(ds))
}

// ACCEPTANCE 43: a balanced multiple session gives each message to one
// connection; fanout gives each a copy.
func TestMultipleSessionsDelivery(t *testing.T) {
	for _, mode := range []mqtthooks.DeliverMode{mqtthooks.DeliverBalance, mqtthooks.DeliverFanout} {
		f := newFixture(t, mqtthooks.Options{})
		f.rec.AuthOnRegisterFunc = answer(mqtthooks.AcceptWith(&mqtthooks.Modifiers{
			AllowMultipleSessions: mqtthooks.Some(true), QueueDeliverMode: mqtthooks.Some(mode)}))
		c1, c2 := f.v3("s", false), f.v3("s", false)
		f.publish(t, sid("s"), 1, 10)
		d1, _ := c1.Receive()
		d2, _ := c2.Receive()
		if mode == mqtthooks.DeliverBalance {
			assert.Len(t, append(payloads(d1), payloads(d2)...), 10)
			assert.ElementsMatch(t, []string{"1", "2", "3", "4", "5", "6", "7", "8", "9", "10"}, append(payloads(d1), payloads(d2)...))
			assert.NotEmpty(t, d1)
			assert.NotEmpty(t, d2)
		} else {
			assert.Len(t, d1, 10)
			assert.Len(t, d2, 10)
		}
		// One leaves with messages pending: balance hands them on.
		f.publish(t, sid("s"), 1, 4)
		c1.Drop(t.Context(), nil)
		rest, _ := c2.Receive()
		if mode == mqtthooks.DeliverBalance {
			assert.Len(t, rest, 4, "the leaver's share goes to the one that stays")
		} else {
			assert.Len(t, rest, 4)
		}
		checkNoLoss(t, f.core)
	}
}

// Delivery to a session is never blocked by one of its lifecycle hooks.
func TestDeliveryNotBlockedByHook(t *testing.T) {
	f := newFixture(t, mqtthooks.Options{})
	running, release := make(chan struct{}), make(chan struct{})
	f.rec.Lifecycle = func(_ context.Context, c mqtthookstest.Call) {
		if c.Hook == "OnClientOffline" {
			close(running)
			<-release
		}
	}
	c := f.v3("s", false)
	go c.Drop(context.Background(), nil)
	within(t, running, "the hook")
	f.publish(t, sid("s"), 1, 3) // returns while Offline blocks
	close(release)
	info, _ := f.core.Lookup(sid("s"))
	assert.Equal(t, 3, info.Pending)
}

func TestDeliverBadInput(t *testing.T) {
	f := newFixture(t, mqtthooks.Options{})
	f.v3("s", false)
	assert.ErrorIs(t, f.core.Deliver(sid("s"), nil, mqtthooks.DeliverOptions{}), mqtthooks.ErrInvalidArgument)
	assert.ErrorIs(t, f.core.Deliver(sid("s"), &mqtthooks.Message{}, mqtthooks.DeliverOptions{QoS: 3}), mqtthooks.ErrInvalidArgument)
	assert.ErrorIs(t, f.core.Deliver(sid("nobody"), &mqtthooks.Message{}, mqtthooks.DeliverOptions{}), mqtthooks.ErrSessionNotFound)
	assert.Zero(t, f.core.Stats().Routed)
	_ = fmt.Sprint
}

// A store keeps a session's messages, and a new Core offers them again:
// in-flight first (DUP, same id), then pending.
func TestStoreKeepsMessages(t *testing.T) {
	store := new(mqtthooks.MemoryStore)
	f := newFixture(t, mqtthooks.Options{Store: store})
	c := f.v3("s", false)
	f.publish(t, sid("s"), 1, 3)
	ds, _ := c.Pull()
	require.Len(t, ds, 3)
	require.NoError(t, c.Settle(ds[1]))
	f.publish(t, sid("s"), 1, 1)
	c.Drop(t.Context(), nil)
	require.NoError(t, f.core.Shutdown(t.Context()))

	g := newFixture(t, mqtthooks.Options{Store: store})
	got, err := g.v3("s", false).PullAll()
	require.NoError(t, err)
	require.Len(t, got, 3)
	assert.Equal(t, []uint16{ds[0].PacketID, ds[2].PacketID}, []uint16{got[0].PacketID, got[1].PacketID})
	assert.Equal(t, []string{"1", "3", "1"}, payloads(got))
	assert.True(t, got[0].Dup && got[1].Dup)
	assert.False(t, got[2].Dup)
	assert.NotContains(t, []uint16{ds[0].PacketID, ds[2].PacketID}, got[2].PacketID, "a new id for the pending one")
}

// Without a window of its own, a connection still has only 65535 packet
// identifiers: the 65536th message waits for an acknowledgement.
func TestWindowBoundByPacketIDs(t *testing.T) {
	f := newFixture(t, mqtthooks.Options{MaxOnlineMessages: mqtthooks.Some(-1), MaxInflightMessages: mqtthooks.Some(0)})
	c := f.v3("s", false)
	f.publish(t, sid("s"), 1, 65536)
	ds, err := c.PullAll()
	require.NoError(t, err)
	require.Len(t, ds, 65535)
	require.NoError(t, c.Settle(ds[0]))
	rest, _ := c.PullAll()
	require.Len(t, rest, 1)
	assert.Equal(t, ds[0].PacketID, rest[0].PacketID, "the freed identifier is used again")
}

// A window that slides (the oldest acknowledged, one more sent, many times
// over) keeps every delivery in order, once, with packet identifiers unique
// among those in flight; its array is reused, not regrown.
func TestInflightWindowSlides(t *testing.T) {
	f := newFixture(t, mqtthooks.Options{MaxInflightMessages: mqtthooks.Some(8), MaxOnlineMessages: mqtthooks.Some(-1)})
	c := f.v3("s", true)
	requireAccepted(t, c)
	const total = 1000
	f.publish(t, sid("s"), 1, total)
	var inflight []mqtthooks.Delivery
	var got []string
	buf := make([]mqtthooks.Delivery, 3)
	for step := 0; len(got) < total; step++ {
		n, err := c.Session.Pull(buf)
		require.NoError(t, err)
		inflight = append(inflight, buf[:n]...)
		require.LessOrEqual(t, len(inflight), 8)
		ids := map[uint16]bool{}
		for _, d := range inflight {
			require.False(t, ids[d.PacketID], "packet id %d twice in flight", d.PacketID)
			ids[d.PacketID] = true
		}
		require.NotEmpty(t, inflight, "step %d: nothing in flight, %d of %d received", step, len(got), total)
		i := 0
		if step%7 == 3 && len(inflight) > 1 {
			i = len(inflight) - 1 // now and then the newest first
		}
		require.NoError(t, c.Session.Puback(inflight[i].PacketID))
		got = append(got, string(inflight[i].Message.Payload))
		inflight = append(inflight[:i], inflight[i+1:]...)
	}
	want := make([]string, total)
	for i := range want {
		want[i] = strconv.Itoa(i + 1)
	}
	assert.ElementsMatch(t, want, got)
	assert.Equal(t, uint64(total), f.core.Stats().Delivered)
	checkNoLoss(t, f.core)
}

// Options.Discarded receives what a session held unacknowledged when it
// ended, after the Router forgot it and before OnClientGone: pending
// messages and deliveries not acknowledged, not a QoS 2 message past PUBREC.
// The count stays in Stats.Discarded and no OnMessageDrop fires (OQ6). A
// panic in it is recovered: the session still ends.
func TestDiscardedCallback(t *testing.T) {
	for _, panics := range []bool{false, true} {
		t.Run(map[bool]string{false: "returns", true: "panics"}[panics], func(t *testing.T) {
			var got []string
			var order []string
			var f *fixture
			f = newFixture(t, mqtthooks.Options{Discarded: func(_ context.Context, id mqtthooks.SubscriberID, msgs []mqtthooks.Unacknowledged) {
				assert.Equal(t, sid("s"), id)
				for _, m := range msgs {
					got = append(got, string(m.Message.Payload))
					assert.Equal(t, string(m.Message.Payload) == "pending-1", !m.ExpiresAt.IsZero(), "the expiry goes along")
				}
				for _, call := range f.rec.CallsFor(sid("s")) {
					order = append(order, call.Hook)
				}
				if panics {
					panic("a broker's bug")
				}
			}})
			c := f.v5("s", true, 0)
			requireAccepted(t, c)
			require.NoError(t, c.Subscribe(t.Context(), "t"))
			deliver := func(payload string, qos byte) {
				msg := &mqtthooks.Message{Topic: "t", Payload: []byte(payload), QoS: qos}
				require.NoError(t, f.core.Deliver(sid("s"), msg, mqtthooks.DeliverOptions{QoS: qos}))
			}
			deliver("released", 2)
			deliver("sent", 1)
			ds, err := c.Pull()
			require.NoError(t, err)
			require.Len(t, ds, 2)
			require.NoError(t, c.Session.Pubrec(ds[0].PacketID, nil)) // "released" reached the client
			expiring := &mqtthooks.Message{Topic: "t", Payload: []byte("pending-1"), QoS: 1,
				Properties: mqtthooks.PublishProperties{MessageExpiryInterval: mqtthooks.Some(uint32(60))}}
			require.NoError(t, f.core.Deliver(sid("s"), expiring, mqtthooks.DeliverOptions{QoS: 1}))
			deliver("pending-2", 0)
			f.rec.Reset()

			require.NoError(t, c.Disconnect(t.Context(), mqtthooks.CodeNormalDisconnection))

			assert.Equal(t, []string{"sent", "pending-1", "pending-2"}, got)
			assert.Contains(t, order, "RemoveAll", "the Router forgot the session first")
			assert.NotContains(t, order, "OnClientGone", "the terminal hook comes after")
			f.rec.ExpectHooks(t, sid("s"), "RemoveAll", "OnClientGone")
			assert.Equal(t, uint64(4), f.core.Stats().Discarded)
			assert.Zero(t, f.rec.Count(sid("s"), "OnMessageDrop"))
			if panics {
				assert.Contains(t, f.logs.String(), "panic in Discarded")
			}
			checkNoLoss(t, f.core)
		})
	}
}
