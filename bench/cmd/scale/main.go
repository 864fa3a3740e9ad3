// Command scale holds a million offline persistent sessions in one process and
// reports what they cost: bytes per session, peak heap and goroutines while
// creating them, the wall time to reconnect 100,000 of them through the core
// API (fake conns, no network), and peak heap and goroutines while they all
// expire.
//
//	GOMAXPROCS=2 go run ./bench/cmd/scale            # 1,000,000 sessions, about two minutes
//	go run ./bench/cmd/scale -sessions 100000 -expiry 20s
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"runtime"
	"runtime/metrics"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mqtthooks/mqtthooks"
	"github.com/mqtthooks/mqtthooks/mqtthookstest"
)

func main() {
	sessions := flag.Int("sessions", 1_000_000, "offline sessions to hold")
	reconnect := flag.Int("reconnect", 100_000, "sessions to reconnect")
	expiry := flag.Duration("expiry", 60*time.Second, "session expiry interval (whole seconds); the run waits for it")
	flag.Parse()
	if err := run(*sessions, *reconnect, *expiry); err != nil {
		fmt.Fprintln(os.Stderr, "scale:", err)
		os.Exit(1)
	}
}

// accept lets everybody in and counts the expiries.
type accept struct{ expired atomic.Int64 }

func (*accept) AuthOnRegisterM5(context.Context, *mqtthooks.RegisterRequest) mqtthooks.RegisterResult {
	return mqtthooks.Accept()
}

func (a *accept) OnSessionExpired(context.Context, *mqtthooks.SessionEvent) { a.expired.Add(1) }

// peaks samples the heap and the goroutine count until stopped.
type peaks struct {
	heap, goroutines atomic.Uint64
	stop             chan struct{}
	wg               sync.WaitGroup
}

func watch() *peaks {
	p := &peaks{stop: make(chan struct{})}
	samples := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}, {Name: "/sched/goroutines:goroutines"}}
	p.wg.Go(func() {
		t := time.NewTicker(5 * time.Millisecond)
		defer t.Stop()
		for {
			metrics.Read(samples)
			if h := samples[0].Value.Uint64(); h > p.heap.Load() {
				p.heap.Store(h)
			}
			if g := samples[1].Value.Uint64(); g > p.goroutines.Load() {
				p.goroutines.Store(g)
			}
			select {
			case <-p.stop:
				return
			case <-t.C:
			}
		}
	})
	return p
}

func (p *peaks) done() (heapMiB float64, goroutines uint64) {
	close(p.stop)
	p.wg.Wait()
	return float64(p.heap.Load()) / (1 << 20), p.goroutines.Load()
}

func heapInUse() uint64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

func run(n, reconnect int, expiry time.Duration) error {
	plugin := new(accept)
	chain := mqtthooks.NewChain(mqtthooks.ChainOptions{})
	if err := chain.Register("accept", plugin); err != nil {
		return err
	}
	core, err := mqtthooks.NewCore(chain, mqtthooks.Options{})
	if err != nil {
		return err
	}
	defer core.Shutdown(context.Background())
	ctx := context.Background()
	ci := &mqtthooks.ConnInfo{Listener: "scale", Transport: "tcp"}
	sei := uint32(expiry / time.Second)
	connect := func(i int, clean bool) (*mqtthooks.Session, error) {
		req := &mqtthooks.ConnectRequest{ProtocolVersion: mqtthooks.MQTT5, ClientID: fmt.Sprintf("client-%07d", i),
			CleanStart: clean, Username: "user", HasUsername: true,
			Properties: mqtthooks.ConnectProperties{SessionExpiryInterval: sei}}
		_, step := core.Connect(ctx, ci, req, mqtthookstest.NewConn())
		if step.Session == nil {
			return nil, fmt.Errorf("CONNECT %d: %v", i, step.Err)
		}
		return step.Session, step.Session.Start()
	}

	fmt.Printf("machine: %s/%s, GOMAXPROCS=%d, %s\n", runtime.GOOS, runtime.GOARCH, runtime.GOMAXPROCS(0), runtime.Version())
	before := heapInUse()
	p := watch()
	start := time.Now()
	for i := range n {
		s, err := connect(i, true)
		if err != nil {
			return err
		}
		if err := s.Subscribe(ctx, mqtthooks.Subscription{Filter: fmt.Sprintf("devices/%07d/cmd", i), QoS: 1},
			mqtthooks.Subscription{Filter: "broadcast/#", QoS: 1}); err != nil {
			return err
		}
		s.Lost(ctx, nil)
	}
	created := time.Since(start)
	heap, gs := p.done()
	after := heapInUse()
	fmt.Printf("created %d offline sessions (v5, SEI %v, 2 subscriptions) in %v\n", n, expiry, created.Round(time.Millisecond))
	fmt.Printf("  %.0f B/session; peak heap %.0f MiB; peak goroutines %d\n", float64(after-before)/float64(n), heap, gs)

	p = watch()
	start = time.Now()
	for i := range reconnect {
		s, err := connect(i, false)
		if err != nil {
			return err
		}
		if !s.SessionPresent() {
			return fmt.Errorf("session %d was not resumed", i)
		}
		s.Lost(ctx, nil)
	}
	took := time.Since(start)
	heap, gs = p.done()
	fmt.Printf("reconnected %d sessions (resume, then offline again) in %v; peak heap %.0f MiB; peak goroutines %d\n",
		reconnect, took.Round(time.Millisecond), heap, gs)

	p = watch()
	start = time.Now()
	for plugin.expired.Load() < int64(n) {
		if time.Since(start) > 2*expiry+time.Minute {
			return fmt.Errorf("only %d of %d sessions expired", plugin.expired.Load(), n)
		}
		time.Sleep(50 * time.Millisecond) // a progress poll in a command, not a test
	}
	heap, gs = p.done()
	fmt.Printf("expired all %d sessions (the last %v after this phase began); peak heap %.0f MiB; peak goroutines %d\n",
		n, time.Since(start).Round(time.Millisecond), heap, gs)
	fmt.Printf("sessions left: %d\n", core.Stats().Sessions)
	return nil
}
