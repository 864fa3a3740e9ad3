package pebble_test

import (
	"context"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/mqtthooks/mqtthooks"
	"github.com/mqtthooks/mqtthooks/mqtthookstest"
	store "github.com/mqtthooks/mqtthooks/stores/pebble"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// memHarness runs the store on Pebble's crashable in-memory file system:
// Crash keeps exactly what was synced, as a power loss would.
func memHarness(policy store.SyncPolicy) mqtthookstest.StoreHarness {
	type opened struct {
		s  *store.Store
		fs *vfs.MemFS
	}
	var stores = map[mqtthooks.SessionStore]opened{}
	open := func(t *testing.T, fs *vfs.MemFS) mqtthooks.SessionStore {
		s, err := store.Open("db", store.Options{Sync: policy, Pebble: &pebble.Options{FS: fs}})
		require.NoError(t, err)
		t.Cleanup(func() { _ = s.Close() })
		stores[s] = opened{s, fs}
		return s
	}
	return mqtthookstest.StoreHarness{
		Open: func(t *testing.T) mqtthooks.SessionStore { return open(t, vfs.NewCrashableMem()) },
		Reopen: func(t *testing.T, s mqtthooks.SessionStore) mqtthooks.SessionStore {
			o := stores[s]
			require.NoError(t, o.s.Close())
			return open(t, o.fs)
		},
		Crash: func(t *testing.T, s mqtthooks.SessionStore) mqtthooks.SessionStore {
			o := stores[s]
			crashed := o.fs.CrashClone(vfs.CrashCloneCfg{}) // what was synced, nothing else
			_ = o.s.Close()
			return open(t, crashed)
		},
		Synced: policy == store.Always,
	}
}

// The Pebble store passes the store contract with each sync policy; with
// Always a crash loses nothing reported done.
func TestContract(t *testing.T) {
	t.Run("Always", func(t *testing.T) { mqtthookstest.TestSessionStore(t, memHarness(store.Always)) })
	t.Run("Interval", func(t *testing.T) { mqtthookstest.TestSessionStore(t, memHarness(store.Interval(time.Hour))) })
	t.Run("None", func(t *testing.T) { mqtthookstest.TestSessionStore(t, memHarness(store.None)) })
}

// On real directories, as a broker runs it.
func TestContractOnDisk(t *testing.T) {
	dirs := map[mqtthooks.SessionStore]string{}
	open := func(t *testing.T, dir string) mqtthooks.SessionStore {
		s, err := store.Open(dir, store.Options{})
		require.NoError(t, err)
		t.Cleanup(func() { _ = s.Close() })
		dirs[s] = dir
		return s
	}
	mqtthookstest.TestSessionStore(t, mqtthookstest.StoreHarness{
		Open: func(t *testing.T) mqtthooks.SessionStore { return open(t, t.TempDir()) },
		Reopen: func(t *testing.T, s mqtthooks.SessionStore) mqtthooks.SessionStore {
			require.NoError(t, s.(*store.Store).Close())
			return open(t, dirs[s])
		},
		Synced: true,
	})
}

// A Core on the Pebble store, restarted: the offline session comes back with
// its subscription and its queue (ACCEPTANCE D1 on this store); and after a
// power loss with Always, every message whose Deliver was reported durable is
// there (D2).
func TestCoreRestart(t *testing.T) {
	chain := mqtthooks.NewChain(mqtthooks.ChainOptions{})
	require.NoError(t, chain.Register("all", mqtthooks.AuthOnRegisterBothFunc(
		func(context.Context, *mqtthooks.RegisterRequest) mqtthooks.RegisterResult { return mqtthooks.Accept() })))
	fs := vfs.NewCrashableMem()
	s, err := store.Open("db", store.Options{Pebble: &pebble.Options{FS: fs}})
	require.NoError(t, err)
	core, err := mqtthooks.NewCore(chain, mqtthooks.Options{Store: s})
	require.NoError(t, err)
	ctx := t.Context()
	c := mqtthookstest.ConnectV5(ctx, core, "s", "", false, 3600)
	require.True(t, c.Accepted())
	require.NoError(t, c.Subscribe(ctx, "t/#"))
	c.Drop(ctx, nil)
	var wg sync.WaitGroup
	for i := range 20 {
		wg.Add(1)
		r := mqtthooks.NewReceipt(func(err error) { assert.NoError(t, err); wg.Done() })
		msg := &mqtthooks.Message{Topic: "t/x", Payload: []byte(strconv.Itoa(i)), QoS: 1}
		require.NoError(t, core.Deliver(c.Session.ID(), msg, mqtthooks.DeliverOptions{QoS: 1, Receipt: r}))
		r.Close()
	}
	wg.Wait() // every copy reported durable
	crashed := fs.CrashClone(vfs.CrashCloneCfg{})
	require.NoError(t, core.Shutdown(ctx))
	require.NoError(t, s.Close())

	s2, err := store.Open("db", store.Options{Pebble: &pebble.Options{FS: crashed}})
	require.NoError(t, err)
	defer s2.Close()
	core2, err := mqtthooks.NewCore(chain, mqtthooks.Options{Store: s2})
	require.NoError(t, err)
	defer core2.Shutdown(context.Background())
	info, ok := core2.Lookup(c.Session.ID())
	require.True(t, ok)
	assert.Len(t, info.Subscriptions, 1)
	assert.Equal(t, 20, info.Pending)
	c2 := mqtthookstest.ConnectV5(ctx, core2, "s", "", false, 3600)
	got, err := c2.Receive()
	require.NoError(t, err)
	require.Len(t, got, 20)
	for i, d := range got {
		assert.Equal(t, strconv.Itoa(i), string(d.Message.Payload))
	}
	st := s.Stats()
	assert.Less(t, st.Syncs, st.Commits, "commits share fsyncs")
}
