package natsjs

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mqtthooks/mqtthooks"
	"github.com/mqtthooks/mqtthooks/cluster/natsjs/internal/natstest"
)

func commitWait(t *testing.T, b mqtthooks.StoreBatch) error {
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

// The Store's memory follows what it writes: a message is indexed while it
// is held or an entry of a known session names it, and a session it no
// longer needs is dropped.
func TestMemory(t *testing.T) {
	srv := natstest.StartServer(t)
	s, err := Open(context.Background(), natstest.Connect(t, srv), Options{})
	require.NoError(t, err)
	defer s.Close()
	indexed := func() map[uint64]int {
		s.mu.Lock()
		defer s.mu.Unlock()
		out := map[uint64]int{}
		for id, h := range s.index {
			out[id] = h.refs
		}
		return out
	}
	a, b := mqtthooks.SubscriberID{ClientID: "a"}, mqtthooks.SubscriberID{ClientID: "b"}
	ga, gb := s.NextGeneration(), s.NextGeneration()
	batch := s.Batch()
	batch.CreateSession(&mqtthooks.SessionRecord{ID: a, Generation: ga})
	batch.CreateSession(&mqtthooks.SessionRecord{ID: b, Generation: gb})
	batch.PutMessage(1, &mqtthooks.Message{Topic: "t", Payload: []byte("1")})
	batch.PutEntry(a, ga, &mqtthooks.StoredEntry{Seq: 1, MessageID: 1})
	batch.PutEntry(a, ga, &mqtthooks.StoredEntry{Seq: 2, MessageID: 1})
	batch.PutEntry(b, gb, &mqtthooks.StoredEntry{Seq: 1, MessageID: 1})
	require.NoError(t, commitWait(t, batch))
	assert.Equal(t, map[uint64]int{1: 3}, indexed(), "held, and in two sessions")

	batch = s.Batch()
	batch.ReleaseMessage(1)
	batch.DeleteEntry(a, ga, 1, 1)
	require.NoError(t, commitWait(t, batch))
	assert.Equal(t, map[uint64]int{1: 2}, indexed(), "a's second entry names it still")
	batch = s.Batch()
	batch.DeleteEntry(a, ga, 2, 1)
	require.NoError(t, commitWait(t, batch))
	assert.Equal(t, map[uint64]int{1: 1}, indexed())

	s.Forget(b)
	assert.Empty(t, indexed())
	batch = s.Batch()
	batch.DeleteSession(b, gb) // read again to be written
	batch.DeleteSession(a, ga)
	require.NoError(t, commitWait(t, batch))
	assert.Empty(t, indexed())
	s.mu.Lock()
	assert.Empty(t, s.sessions, "deleted sessions are not kept")
	s.mu.Unlock()

	ss, err := s.LoadSession(context.Background(), b)
	require.NoError(t, err)
	assert.Nil(t, ss)
}
