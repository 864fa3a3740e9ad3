package pebble_test

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mqtthooks/mqtthooks"
	store "github.com/mqtthooks/mqtthooks/stores/pebble"
)

// entriesOf loads the store and returns, per client id, the message ids of
// its entries in Seq order.
func entriesOf(t *testing.T, s *store.Store) map[string][]uint64 {
	t.Helper()
	out := map[string][]uint64{}
	for ss, err := range s.Load(t.Context()) {
		require.NoError(t, err)
		ids := []uint64{}
		for _, e := range ss.Entries {
			require.NotNil(t, e.Message, "an entry without its message")
			ids = append(ids, e.MessageID)
		}
		out[ss.Record.ID.ClientID] = ids
	}
	return out
}

// Commits that do not wait for each other: an acknowledgement still in the
// write group when the session is dropped, and a new life reusing the old
// life's sequence numbers, keep the messages other sessions refer to (found
// by review: the drop read the session's entries from Pebble alone).
func TestPipelinedCommits(t *testing.T) {
	for _, policy := range []store.SyncPolicy{store.Always, store.None} {
		dir := t.TempDir()
		s, err := store.Open(dir, store.Options{Sync: policy})
		require.NoError(t, err)
		x, y := mqtthooks.SubscriberID{ClientID: "x"}, mqtthooks.SubscriberID{ClientID: "y"}
		gx, gy := s.NextGeneration(), s.NextGeneration()
		wait := func(b mqtthooks.StoreBatch) {
			done := make(chan error, 1)
			b.Commit(func(err error) { done <- err })
			require.NoError(t, <-done)
		}
		b := s.Batch()
		b.CreateSession(&mqtthooks.SessionRecord{ID: x, Generation: gx})
		b.CreateSession(&mqtthooks.SessionRecord{ID: y, Generation: gy})
		b.PutMessage(10, &mqtthooks.Message{Topic: "t", Payload: []byte("ten"), QoS: 1})
		b.PutMessage(11, &mqtthooks.Message{Topic: "t", Payload: []byte("eleven"), QoS: 1})
		for _, id := range []mqtthooks.SubscriberID{x, y} {
			g := map[string]uint64{"x": gx, "y": gy}[id.ClientID]
			b.PutEntry(id, g, &mqtthooks.StoredEntry{Seq: 1, MessageID: 10, QoS: 1})
			b.PutEntry(id, g, &mqtthooks.StoredEntry{Seq: 2, MessageID: 11, QoS: 1})
		}
		b.ReleaseMessage(10)
		b.ReleaseMessage(11)
		wait(b)

		// x acknowledges seq 1 and goes, without waiting in between.
		ack := s.Batch()
		ack.DeleteEntry(x, gx, 1, 10)
		ack.Commit(nil)
		drop := s.Batch()
		drop.DeleteSession(x, gx)
		wait(drop)

		// y's new life reuses seq 2 for message 10, in the batch that creates it.
		gy2 := s.NextGeneration()
		again := s.Batch()
		again.CreateSession(&mqtthooks.SessionRecord{ID: y, Generation: gy2})
		again.PutEntry(y, gy2, &mqtthooks.StoredEntry{Seq: 2, MessageID: 10, QoS: 1})
		wait(again)
		require.NoError(t, s.Close())

		s, err = store.Open(dir, store.Options{Sync: policy})
		require.NoError(t, err)
		assert.Equal(t, map[string][]uint64{"y": {10}}, entriesOf(t, s), "message 10 is kept for y's new life")
		require.NoError(t, s.Close())
	}
}
