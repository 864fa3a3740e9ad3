// Command restart measures what durable sessions cost at rest and at a
// restart, on the Pebble store (stores/pebble):
//
//	go run ./bench/cmd/restart -sessions 100000
//	go run ./bench/cmd/restart -sessions 1000000
//	go run ./bench/cmd/restart -fanout 10000
//
// The first form fills a store through a Core with offline persistent
// sessions, each with 2 subscriptions and -queued distinct QoS 1 messages,
// shuts the Core down, and times a new Core's start on the same directory:
// opening the store, loading it and restoring every session, until NewCore
// returns. It reports the bytes on disk and checks that every session and
// message came back.
//
// With -fanout N it creates N offline sessions, then routes one message to
// all of them with one Receipt, as a broker does with one PUBLISH, and
// reports the bytes the store's write-ahead log wrote for it.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"sync"
	"time"

	"github.com/mqtthooks/mqtthooks"
	"github.com/mqtthooks/mqtthooks/mqtthookstest"
	"github.com/mqtthooks/mqtthooks/stores/pebble"
)

func main() {
	sessions := flag.Int("sessions", 100_000, "offline sessions to store")
	queued := flag.Int("queued", 10, "QoS 1 messages queued for each session")
	payload := flag.Int("payload", 32, "bytes of each message's payload")
	fanout := flag.Int("fanout", 0, "instead: sessions one message is routed to; reports the bytes written")
	dir := flag.String("dir", "", "data directory (default: a new temporary one, removed at the end)")
	fill := flag.Bool("fill", true, "fill -dir first; -fill=false restarts on what an earlier run left there")
	cpuprofile := flag.String("cpuprofile", "", "write a CPU profile of the restart to this file")
	flag.Parse()
	if *cpuprofile != "" {
		profile = *cpuprofile
	}
	skipFill = !*fill
	var err error
	if *fanout > 0 {
		err = runFanout(*fanout, *dir)
	} else {
		err = runRestart(*sessions, *queued, *payload, *dir)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "restart:", err)
		os.Exit(1)
	}
}

var (
	profile  string
	skipFill bool
)

type accept struct{}

func (accept) AuthOnRegister(context.Context, *mqtthooks.RegisterRequest) mqtthooks.RegisterResult {
	return mqtthooks.Accept()
}

func (accept) AuthOnRegisterM5(context.Context, *mqtthooks.RegisterRequest) mqtthooks.RegisterResult {
	return mqtthooks.Accept()
}

func newCore(store mqtthooks.SessionStore) (*mqtthooks.Core, error) {
	chain := mqtthooks.NewChain(mqtthooks.ChainOptions{})
	if err := chain.Register("accept", accept{}); err != nil {
		return nil, err
	}
	return mqtthooks.NewCore(chain, mqtthooks.Options{Store: store, MaxOfflineMessages: mqtthooks.Some(-1),
		MaxOnlineMessages: mqtthooks.Some(-1)})
}

func tempDir(dir string) (string, func(), error) {
	if dir != "" {
		return dir, func() {}, nil
	}
	d, err := os.MkdirTemp("", "mqtthooks-restart-")
	return d, func() { _ = os.RemoveAll(d) }, err
}

func id(i int) mqtthooks.SubscriberID {
	return mqtthooks.SubscriberID{ClientID: fmt.Sprintf("client-%07d", i)}
}

// createOffline makes sessions [from, to) offline persistent sessions with 2
// subscriptions each.
func createOffline(ctx context.Context, core *mqtthooks.Core, from, to int) error {
	ci := &mqtthooks.ConnInfo{Listener: "default", Transport: "tcp"}
	for i := from; i < to; i++ {
		req := &mqtthooks.ConnectRequest{ProtocolVersion: mqtthooks.MQTT5, ClientID: id(i).ClientID,
			Properties: mqtthooks.ConnectProperties{SessionExpiryInterval: 30 * 24 * 3600}}
		_, step := core.Connect(ctx, ci, req, mqtthookstest.NewConn())
		if step.Session == nil {
			return fmt.Errorf("connect %d: %v", i, step.Err)
		}
		s := step.Session
		if err := s.Start(); err != nil {
			return err
		}
		if err := s.Subscribe(ctx, mqtthooks.Subscription{Filter: fmt.Sprintf("devices/%d/cmd", i), QoS: 1},
			mqtthooks.Subscription{Filter: "broadcast/#", QoS: 1}); err != nil {
			return err
		}
		if err := s.Disconnect(ctx, mqtthooks.CodeNormalDisconnection); err != nil {
			return err
		}
	}
	return nil
}

// parallel runs fn on [0, n) split among GOMAXPROCS goroutines.
func parallel(n int, fn func(from, to int) error) error {
	workers := runtime.GOMAXPROCS(0)
	errs := make([]error, workers)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() { errs[w] = fn(n*w/workers, n*(w+1)/workers) })
	}
	wg.Wait()
	return errors.Join(errs...)
}

func runRestart(sessions, queued, payload int, dir string) error {
	ctx := context.Background()
	dir, cleanup, err := tempDir(dir)
	if err != nil {
		return err
	}
	defer cleanup()
	fmt.Printf("%d sessions, 2 subscriptions and %d queued %d-byte QoS 1 messages each, GOMAXPROCS %d\n",
		sessions, queued, payload, runtime.GOMAXPROCS(0))

	if !skipFill {
		if err := fillStore(ctx, dir, sessions, queued, payload); err != nil {
			return err
		}
	}

	runtime.GC()
	if profile != "" {
		f, err := os.Create(profile)
		if err != nil {
			return err
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	start := time.Now()
	store, err := pebble.Open(dir, pebble.Options{})
	if err != nil {
		return err
	}
	opened := time.Since(start)
	core, err := newCore(store)
	if err != nil {
		return err
	}
	took := time.Since(start)
	st := core.Stats()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	pprof.StopCPUProfile()
	fmt.Printf("restart: %v (store open %v), %d sessions, %d messages restored; heap %d MiB\n",
		took.Round(time.Millisecond), opened.Round(time.Millisecond), st.Sessions, st.Restored, ms.HeapAlloc>>20)
	var problems []error
	if st.Sessions != int64(sessions) {
		problems = append(problems, fmt.Errorf("%d sessions restored, want %d", st.Sessions, sessions))
	}
	if st.Restored != uint64(sessions*queued) {
		problems = append(problems, fmt.Errorf("%d messages restored, want %d", st.Restored, sessions*queued))
	}
	if info, ok := core.Lookup(id(sessions - 1)); !ok || info.Pending != queued || len(info.Subscriptions) != 2 {
		problems = append(problems, fmt.Errorf("the last session came back as %+v", info))
	}
	if err := core.Shutdown(ctx); err != nil {
		problems = append(problems, err)
	}
	return errors.Join(append(problems, store.Close())...)
}

// fillStore fills dir through a Core.
func fillStore(ctx context.Context, dir string, sessions, queued, payload int) error {
	began := time.Now()
	store, err := pebble.Open(dir, pebble.Options{Sync: pebble.None}) // filling: nothing waits for a sync
	if err != nil {
		return err
	}
	core, err := newCore(store)
	if err != nil {
		return err
	}
	body := make([]byte, payload)
	err = parallel(sessions, func(from, to int) error {
		if err := createOffline(ctx, core, from, to); err != nil {
			return err
		}
		for i := from; i < to; i++ {
			for k := range queued {
				msg := &mqtthooks.Message{Topic: fmt.Sprintf("devices/%d/cmd", i), QoS: 1,
					Payload: append([]byte(nil), body...)}
				msg.Payload[0] = byte(k)
				if err := core.Deliver(id(i), msg, mqtthooks.DeliverOptions{QoS: 1}); err != nil {
					return err
				}
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	if err := core.Shutdown(ctx); err != nil {
		return err
	}
	if err := store.Close(); err != nil {
		return err
	}
	size, err := du(dir)
	if err != nil {
		return err
	}
	fmt.Printf("filled in %v; on disk %d bytes (%.0f bytes per session, %.0f per queued message)\n",
		time.Since(began).Round(time.Millisecond), size, float64(size)/float64(sessions),
		float64(size)/float64(sessions*queued))
	return nil
}

func runFanout(n int, dir string) error {
	ctx := context.Background()
	dir, cleanup, err := tempDir(dir)
	if err != nil {
		return err
	}
	defer cleanup()
	store, err := pebble.Open(dir, pebble.Options{})
	if err != nil {
		return err
	}
	defer store.Close()
	core, err := newCore(store)
	if err != nil {
		return err
	}
	defer core.Shutdown(ctx)
	if err := parallel(n, func(from, to int) error { return createOffline(ctx, core, from, to) }); err != nil {
		return err
	}
	before := store.Stats()
	done := make(chan error, 1)
	r := mqtthooks.NewReceipt(func(err error) { done <- err })
	msg := &mqtthooks.Message{Topic: "broadcast/all", Payload: make([]byte, 1024), QoS: 1}
	start := time.Now()
	for i := range n {
		if err := core.Deliver(id(i), msg, mqtthooks.DeliverOptions{QoS: 1, Receipt: r}); err != nil {
			return err
		}
	}
	r.Close()
	if err := <-done; err != nil {
		return err
	}
	took := time.Since(start)
	after := store.Stats()
	wal := after.WALBytes - before.WALBytes
	fmt.Printf("one 1024-byte QoS 1 message to %d offline sessions: %d commits, %d syncs, %d WAL bytes "+
		"(%.1f per session), durable after %v\n", n, after.Commits-before.Commits, after.Syncs-before.Syncs, wal,
		float64(wal)/float64(n), took.Round(time.Microsecond))
	return nil
}

func du(dir string) (int64, error) {
	var n int64
	err := filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		fi, err := d.Info()
		if err == nil {
			n += fi.Size()
		}
		return err
	})
	return n, err
}
