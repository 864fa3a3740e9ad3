package mqtthookstest_test

import (
	"testing"

	"github.com/mqtthooks/mqtthooks"
	"github.com/mqtthooks/mqtthooks/mqtthookstest"
)

// MemoryStore passes the store contract: a restart or a crash of the Core
// keeps what it holds, since it lives in memory.
func TestMemoryStoreContract(t *testing.T) {
	same := func(_ *testing.T, s mqtthooks.SessionStore) mqtthooks.SessionStore { return s }
	mqtthookstest.TestSessionStore(t, mqtthookstest.StoreHarness{
		Open:   func(*testing.T) mqtthooks.SessionStore { return new(mqtthooks.MemoryStore) },
		Reopen: same,
		Crash:  same,
		Synced: true,
	})
}

// The Store double passes it too, its Crash keeping what was committed.
func TestStoreDoubleContract(t *testing.T) {
	mqtthookstest.TestSessionStore(t, mqtthookstest.StoreHarness{
		Open: func(*testing.T) mqtthooks.SessionStore { return new(mqtthookstest.Store) },
		Reopen: func(t *testing.T, s mqtthooks.SessionStore) mqtthooks.SessionStore {
			return s.(*mqtthookstest.Store).Crash(t)
		},
		Crash: func(t *testing.T, s mqtthooks.SessionStore) mqtthooks.SessionStore {
			return s.(*mqtthookstest.Store).Crash(t)
		},
		Synced: true,
	})
}
