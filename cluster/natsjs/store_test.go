package natsjs_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mqtthooks/mqtthooks"
	"github.com/mqtthooks/mqtthooks/cluster/natsjs"
	"github.com/mqtthooks/mqtthooks/cluster/natsjs/internal/natstest"
	"github.com/mqtthooks/mqtthooks/mqtthookstest"
)

// openStore opens the Store of a node on the default stream, with three
// replicas on a cluster; t.Cleanup closes it.
func openStore(t testing.TB, nc *nats.Conn, logger *slog.Logger) *natsjs.Store {
	t.Helper()
	replicas := 1
	if nc.ConnectedClusterName() != "" {
		replicas = 3
	}
	s, err := natsjs.Open(context.Background(), nc, natsjs.Options{Replicas: replicas, Logger: logger})
	require.NoError(t, err)
	t.Cleanup(func() { _ = s.Close() })
	return s
}

var streams atomic.Int64

// harness opens each new store on a stream of its own, on the servers in
// turn: a store reopened after a restart or a crash talks to another node
// of a cluster than the one before.
func harness(servers []*server.Server, replicas int) mqtthookstest.StoreHarness {
	var mu sync.Mutex
	streamOf := map[mqtthooks.SessionStore]string{}
	var next int
	open := func(t *testing.T, stream string) mqtthooks.SessionStore {
		mu.Lock()
		srv := servers[next%len(servers)]
		next++
		mu.Unlock()
		nc := natstest.Connect(t, srv)
		s, err := natsjs.Open(context.Background(), nc, natsjs.Options{Stream: stream, Replicas: replicas})
		require.NoError(t, err)
		t.Cleanup(func() { _ = s.Close() })
		mu.Lock()
		streamOf[s] = stream
		mu.Unlock()
		return s
	}
	stream := func(s mqtthooks.SessionStore) string {
		mu.Lock()
		defer mu.Unlock()
		return streamOf[s]
	}
	return mqtthookstest.StoreHarness{
		Open: func(t *testing.T) mqtthooks.SessionStore {
			return open(t, fmt.Sprintf("T%d", streams.Add(1)))
		},
		Reopen: func(t *testing.T, s mqtthooks.SessionStore) mqtthooks.SessionStore {
			require.NoError(t, s.(*natsjs.Store).Close())
			return open(t, stream(s))
		},
		// The process dies, not the server: what JetStream acknowledged
		// stays, and done is called only after the acknowledgement.
		Crash: func(t *testing.T, s mqtthooks.SessionStore) mqtthooks.SessionStore {
			return open(t, stream(s))
		},
		Synced: true,
	}
}

// The Store passes the store contract on one server.
func TestContract(t *testing.T) {
	srv := natstest.StartServer(t)
	mqtthookstest.TestSessionStore(t, harness([]*server.Server{srv}, 1))
}

// And on a cluster of three, with three replicas, each store reopened on
// another node.
func TestContractCluster(t *testing.T) {
	servers := natstest.StartCluster(t, 3)
	mqtthookstest.TestSessionStore(t, harness(servers, 3))
}

func commit(t *testing.T, b mqtthooks.StoreBatch) error {
	t.Helper()
	ch := make(chan error, 1)
	b.Commit(func(err error) { ch <- err })
	select {
	case err := <-ch:
		return err
	case <-time.After(20 * time.Second):
		require.FailNow(t, "Commit never called done")
		return nil
	}
}

func record(id mqtthooks.SubscriberID, gen uint64) *mqtthooks.SessionRecord {
	return &mqtthooks.SessionRecord{ID: id, Generation: gen, ProtocolVersion: mqtthooks.MQTT5, Expiry: time.Hour}
}

func entry(seq, msgID uint64) *mqtthooks.StoredEntry {
	return &mqtthooks.StoredEntry{Seq: seq, MessageID: msgID, QoS: 1}
}

func payloadsOf(ss *mqtthooks.StoredSession) []string {
	var out []string
	for _, e := range ss.Entries {
		out = append(out, string(e.Message.Payload))
	}
	return out
}

// A session moves from the node of store A to the node of store B: B reads
// it and renews its life. From then on A's writes, which name the old life,
// are refused by JetStream (A's own memory still holds the old life) and
// change nothing; B's go on.
func TestFencingAcrossNodes(t *testing.T) {
	servers := natstest.StartCluster(t, 3)
	ctx := context.Background()
	a := openStore(t, natstest.Connect(t, servers[0]), nil)
	b := openStore(t, natstest.Connect(t, servers[1]), nil)
	id := mqtthooks.SubscriberID{Mountpoint: "m", ClientID: "moving"}

	old := record(id, a.NextGeneration())
	batch := a.Batch()
	batch.CreateSession(old)
	batch.PutSubscription(id, old.Generation, mqtthooks.Subscription{Filter: "t/#", QoS: 1})
	batch.PutMessage(1, &mqtthooks.Message{Topic: "t/1", Payload: []byte("one"), QoS: 1})
	batch.PutEntry(id, old.Generation, entry(1, 1))
	batch.ReleaseMessage(1)
	require.NoError(t, commit(t, batch))

	ss, err := b.LoadSession(ctx, id)
	require.NoError(t, err)
	require.NotNil(t, ss)
	assert.Equal(t, old.Generation, ss.Record.Generation)
	assert.Equal(t, []string{"one"}, payloadsOf(ss))
	gen := b.NextGeneration()
	require.Greater(t, gen, old.Generation)
	batch = b.Batch()
	batch.RenewSession(id, old.Generation, gen)
	require.NoError(t, commit(t, batch))

	for name, write := range map[string]func(mqtthooks.StoreBatch){
		"PutEntry": func(w mqtthooks.StoreBatch) {
			w.PutMessage(2, &mqtthooks.Message{Topic: "t/2", Payload: []byte("late"), QoS: 1})
			w.PutEntry(id, old.Generation, entry(2, 2))
			w.ReleaseMessage(2)
		},
		"DeleteEntry":   func(w mqtthooks.StoreBatch) { w.DeleteEntry(id, old.Generation, 1, 1) },
		"UpdateSession": func(w mqtthooks.StoreBatch) { w.UpdateSession(old) },
		"DeleteSession": func(w mqtthooks.StoreBatch) { w.DeleteSession(id, old.Generation) },
		"RenewSession":  func(w mqtthooks.StoreBatch) { w.RenewSession(id, old.Generation, gen+1) },
	} {
		batch := a.Batch()
		write(batch)
		assert.ErrorIs(t, commit(t, batch), mqtthooks.ErrStaleGeneration, name)
	}

	ss, err = b.LoadSession(ctx, id)
	require.NoError(t, err)
	require.NotNil(t, ss, "the stale writes dropped the session")
	assert.Equal(t, gen, ss.Record.Generation)
	assert.Equal(t, []string{"one"}, payloadsOf(ss))
	assert.Len(t, ss.Subscriptions, 1)

	batch = b.Batch()
	batch.PutMessage(3, &mqtthooks.Message{Topic: "t/3", Payload: []byte("three"), QoS: 1})
	batch.PutEntry(id, gen, entry(3, 3))
	batch.ReleaseMessage(3)
	require.NoError(t, commit(t, batch), "the new owner writes on")
	ss, err = a.LoadSession(ctx, id)
	require.NoError(t, err)
	require.NotNil(t, ss)
	assert.Equal(t, []string{"one", "three"}, payloadsOf(ss), "A reads what B wrote")

	// The session comes back to A, which renews the life B stored: A's
	// memory of it is older, but the stored life decides.
	batch = b.Batch()
	batch.PutSubscription(id, gen, mqtthooks.Subscription{Filter: "b"})
	require.NoError(t, commit(t, batch))
	back := a.NextGeneration()
	batch = a.Batch()
	batch.RenewSession(id, gen, back)
	batch.DeleteSubscription(id, back, "b")
	require.NoError(t, commit(t, batch))
	ss, err = b.LoadSession(ctx, id)
	require.NoError(t, err)
	require.NotNil(t, ss)
	assert.Equal(t, back, ss.Record.Generation)
	assert.Equal(t, []mqtthooks.Subscription{{Filter: "t/#", QoS: 1}}, ss.Subscriptions)
}

// A batch that changes two sessions, one of which another node took over
// unknown to this one, is refused by JetStream as a whole: the other
// session does not change either.
func TestAtomicAcrossNodes(t *testing.T) {
	servers := natstest.StartCluster(t, 3)
	ctx := context.Background()
	a := openStore(t, natstest.Connect(t, servers[0]), nil)
	b := openStore(t, natstest.Connect(t, servers[1]), nil)
	x, y := mqtthooks.SubscriberID{ClientID: "x"}, mqtthooks.SubscriberID{ClientID: "y"}
	rx, ry := record(x, a.NextGeneration()), record(y, a.NextGeneration())
	batch := a.Batch()
	batch.CreateSession(rx)
	batch.CreateSession(ry)
	require.NoError(t, commit(t, batch))

	_, err := b.LoadSession(ctx, x)
	require.NoError(t, err)
	batch = b.Batch()
	batch.RenewSession(x, rx.Generation, b.NextGeneration())
	require.NoError(t, commit(t, batch))

	batch = a.Batch()
	batch.PutSubscription(y, ry.Generation, mqtthooks.Subscription{Filter: "y"})
	batch.PutSubscription(x, rx.Generation, mqtthooks.Subscription{Filter: "x"})
	require.ErrorIs(t, commit(t, batch), mqtthooks.ErrStaleGeneration)
	for _, id := range []mqtthooks.SubscriberID{x, y} {
		ss, err := b.LoadSession(ctx, id)
		require.NoError(t, err)
		require.NotNil(t, ss)
		assert.Empty(t, ss.Subscriptions, "%s", id)
	}

	// Without x, the batch goes through.
	batch = a.Batch()
	batch.PutSubscription(y, ry.Generation, mqtthooks.Subscription{Filter: "y"})
	require.NoError(t, commit(t, batch))
}

// A session's log is rolled up as it grows: many small writes leave a few
// messages in the stream, and the session reads back whole.
func TestLogCompaction(t *testing.T) {
	srv := natstest.StartServer(t)
	nc := natstest.Connect(t, srv)
	s := openStore(t, nc, nil)
	ctx := context.Background()
	id := mqtthooks.SubscriberID{ClientID: "busy"}
	rec := record(id, s.NextGeneration())
	batch := s.Batch()
	batch.CreateSession(rec)
	require.NoError(t, commit(t, batch))
	const writes = 200
	for i := range writes {
		batch := s.Batch()
		batch.PutInbound(id, rec.Generation, uint16(i+1))
		if i > 0 {
			batch.DeleteInbound(id, rec.Generation, uint16(i))
		}
		require.NoError(t, commit(t, batch))
	}
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	stream, err := js.Stream(ctx, "MQTTHOOKS")
	require.NoError(t, err)
	info, err := stream.Info(ctx, jetstream.WithSubjectFilter("MQTTHOOKS.l.>"))
	require.NoError(t, err)
	require.Len(t, info.State.Subjects, 1)
	for _, n := range info.State.Subjects {
		assert.Less(t, n, uint64(20), "messages left in the log of %d writes", writes)
	}
	ss, err := openStore(t, natstest.Connect(t, srv), nil).LoadSession(ctx, id)
	require.NoError(t, err)
	require.NotNil(t, ss)
	assert.Equal(t, []uint16{writes}, ss.Inbound)
}

// Two nodes write the same session at once, as an owner cut off from the
// cluster and the node that took it over: JetStream takes the writes of one
// life only.
func TestConcurrentOwners(t *testing.T) {
	servers := natstest.StartCluster(t, 3)
	ctx := context.Background()
	a := openStore(t, natstest.Connect(t, servers[0]), nil)
	b := openStore(t, natstest.Connect(t, servers[2]), nil)
	id := mqtthooks.SubscriberID{ClientID: "contested"}
	old := record(id, a.NextGeneration())
	batch := a.Batch()
	batch.CreateSession(old)
	require.NoError(t, commit(t, batch))
	_, err := b.LoadSession(ctx, id)
	require.NoError(t, err)

	gen := b.NextGeneration()
	const writes = 20
	var wg sync.WaitGroup
	errs := make(chan error, writes)
	for i := range writes {
		wg.Add(1)
		batch := a.Batch()
		batch.PutSubscription(id, old.Generation, mqtthooks.Subscription{Filter: fmt.Sprintf("old/%d", i)})
		batch.Commit(func(err error) { errs <- err; wg.Done() })
	}
	batch = b.Batch()
	batch.RenewSession(id, old.Generation, gen)
	batch.PutSubscription(id, gen, mqtthooks.Subscription{Filter: "new"})
	require.NoError(t, commit(t, batch))
	wg.Wait()
	close(errs)
	accepted := 0
	for err := range errs {
		if err == nil {
			accepted++
		} else {
			require.ErrorIs(t, err, mqtthooks.ErrStaleGeneration)
		}
	}
	ss, err := b.LoadSession(ctx, id)
	require.NoError(t, err)
	require.NotNil(t, ss)
	assert.Equal(t, gen, ss.Record.Generation)
	var filters []string
	for _, sub := range ss.Subscriptions {
		filters = append(filters, sub.Filter)
	}
	assert.Len(t, filters, accepted+1, "every write of the old life that was accepted is there, and no other: %v", filters)
	assert.Contains(t, filters, "new")
}

// A write reported done survives the loss of a node, the stream's leader:
// another node reads it, and takes new writes, with two of three replicas.
func TestSurvivesNodeLoss(t *testing.T) {
	servers := natstest.StartCluster(t, 3)
	ctx := context.Background()
	var stores []*natsjs.Store
	for _, srv := range servers {
		stores = append(stores, openStore(t, natstest.Connect(t, srv), nil))
	}
	id := mqtthooks.SubscriberID{ClientID: "durable"}
	leader := -1
	for i, srv := range servers {
		if srv.JetStreamIsStreamLeader(server.DEFAULT_GLOBAL_ACCOUNT, "MQTTHOOKS") {
			leader = i
		}
	}
	require.NotEqual(t, -1, leader, "the stream has a leader")
	w := stores[leader]
	rec := record(id, w.NextGeneration())
	batch := w.Batch()
	batch.CreateSession(rec)
	for i := uint64(1); i <= 5; i++ {
		batch.PutMessage(i, &mqtthooks.Message{Topic: "t", Payload: fmt.Appendf(nil, "m%d", i), QoS: 1})
		batch.PutEntry(id, rec.Generation, entry(i, i))
		batch.ReleaseMessage(i)
	}
	require.NoError(t, commit(t, batch))

	servers[leader].Shutdown()
	other := stores[(leader+1)%3]
	ss, err := other.LoadSession(ctx, id)
	require.NoError(t, err)
	require.NotNil(t, ss)
	assert.Equal(t, []string{"m1", "m2", "m3", "m4", "m5"}, payloadsOf(ss))

	gen := other.NextGeneration()
	batch = other.Batch()
	batch.RenewSession(id, rec.Generation, gen)
	batch.DeleteEntry(id, gen, 1, 1)
	require.NoError(t, commit(t, batch))
	ss, err = stores[(leader+2)%3].LoadSession(ctx, id)
	require.NoError(t, err)
	require.NotNil(t, ss)
	assert.Equal(t, gen, ss.Record.Generation)
	assert.Equal(t, []string{"m2", "m3", "m4", "m5"}, payloadsOf(ss))
}

// A session larger than a NATS message is written in several messages of
// one atomic batch, and read back whole; so is a batch that changes several
// sessions.
func TestLargeSession(t *testing.T) {
	srv := natstest.StartServer(t)
	nc := natstest.Connect(t, srv)
	s := openStore(t, nc, nil)
	ctx := context.Background()
	id := mqtthooks.SubscriberID{ClientID: "large"}
	other := mqtthooks.SubscriberID{ClientID: "other"}
	rec, rec2 := record(id, s.NextGeneration()), record(other, s.NextGeneration())
	big := int(nc.MaxPayload()) * 2 / 3
	batch := s.Batch()
	batch.CreateSession(rec)
	batch.CreateSession(rec2)
	var want []string
	for i := uint64(1); i <= 4; i++ {
		p := strings.Repeat(string(rune('a'+i)), big)
		want = append(want, p)
		batch.PutMessage(i, &mqtthooks.Message{Topic: "t", Payload: []byte(p), QoS: 1})
		batch.PutEntry(id, rec.Generation, entry(i, i))
		batch.PutEntry(other, rec2.Generation, entry(i, i))
		batch.ReleaseMessage(i)
	}
	require.NoError(t, commit(t, batch))
	for _, sid := range []mqtthooks.SubscriberID{id, other} {
		ss, err := s.LoadSession(ctx, sid)
		require.NoError(t, err)
		require.NotNil(t, ss)
		assert.Equal(t, want, payloadsOf(ss))
	}

	// Small writes after the large one, past compaction.
	for i := uint64(1); i <= 40; i++ {
		batch := s.Batch()
		batch.PutSubscription(id, rec.Generation, mqtthooks.Subscription{Filter: fmt.Sprint(i)})
		require.NoError(t, commit(t, batch))
	}
	s2 := openStore(t, natstest.Connect(t, srv), nil)
	n := 0
	for ss, err := range s2.Load(ctx) {
		require.NoError(t, err)
		n++
		assert.Equal(t, want, payloadsOf(ss))
		if ss.Record.ID == id {
			assert.Len(t, ss.Subscriptions, 40)
		}
	}
	assert.Equal(t, 2, n)
}

// A Store refuses commits once closed, and Open checks its options.
func TestClosedAndOptions(t *testing.T) {
	srv := natstest.StartServer(t)
	nc := natstest.Connect(t, srv)
	s := openStore(t, nc, nil)
	require.NoError(t, s.Close())
	b := s.Batch()
	b.CreateSession(record(mqtthooks.SubscriberID{ClientID: "x"}, 1))
	assert.True(t, errors.Is(commit(t, b), natsjs.ErrClosed))

	for _, o := range []natsjs.Options{{Stream: "a.b"}, {Prefix: "x.*"}, {Prefix: "x."}} {
		_, err := natsjs.Open(context.Background(), nc, o)
		assert.Error(t, err, "%+v", o)
	}
	_, err := natsjs.Open(context.Background(), nil, natsjs.Options{})
	assert.Error(t, err)
}
