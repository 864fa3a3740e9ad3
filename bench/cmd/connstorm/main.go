// Command connstorm measures brokers side by side on this machine: the
// example broker of mqtthooks (with plugins/passwd and a $7$ password file), a
// mochi-mqtt server started in process with the same password check in its
// auth hook, and Mosquitto when its binary is installed (same file).
//
//	go run ./bench/cmd/connstorm                   # CONNECT → CONNACK → DISCONNECT storm
//	go run ./bench/cmd/connstorm -mode publish     # QoS 1 publish throughput, one subscriber
//	go run ./bench/cmd/connstorm -mode durable     # the same, persistent subscriber, examples/broker
//	                                               # in memory, -data-dir -sync 100ms, -data-dir -sync always
//
// The load generator runs on the same cores as the broker under test, which
// the output says; compare ratios from one run, not figures across machines.
package main

import (
	"bytes"
	"cmp"
	"context"
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha512"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/mqtthooks/mqtthooks"
	"github.com/mqtthooks/mqtthooks/bench/internal/procs"
	"github.com/mqtthooks/mqtthooks/bench/internal/rawmqtt"
	"github.com/mqtthooks/mqtthooks/plugins/passwd"
	"github.com/mqtthooks/mqtthooks/stores/pebble"
)

const (
	user     = "bench"
	password = "bench-password"
)

func main() {
	mode := flag.String("mode", "connect", "connect: CONNECT storm; publish: QoS 1 throughput; "+
		"durable: QoS 1 throughput of examples/broker with and without -data-dir")
	n := flag.Int("n", 5000, "connections to make (connect mode)")
	c := flag.Int("c", 50, "concurrent connections (connect mode)")
	messages := flag.Int("messages", 20000, "messages to publish (publish mode)")
	addr := flag.String("addr", "", "measure only the broker already listening here (user bench, password bench-password)")
	subAddr := flag.String("sub-addr", "", "with -addr, publish modes: the subscriber connects here (another node of a cluster)")
	flag.Parse()
	if *addr != "" {
		r, err := measure(*mode, *addr, cmp.Or(*subAddr, *addr), *n, *c, *messages)
		if err != nil {
			fmt.Fprintln(os.Stderr, "connstorm:", err)
			os.Exit(1)
		}
		r.name = *addr
		report(*mode, []result{r})
		return
	}
	if *mode == "durable" {
		if err := runDurable(*messages); err != nil {
			fmt.Fprintln(os.Stderr, "connstorm:", err)
			os.Exit(1)
		}
		return
	}
	if err := run(*mode, *n, *c, *messages); err != nil {
		fmt.Fprintln(os.Stderr, "connstorm:", err)
		os.Exit(1)
	}
}

// result is one broker's figures.
type result struct {
	name     string
	rate     float64 // connects/s or messages/s
	p50, p99 time.Duration
	skipped  string
	errors   int
}

func run(mode string, n, c, messages int) error {
	dir, err := os.MkdirTemp("", "connstorm")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	file := filepath.Join(dir, "passwd")
	if err := writePasswd(file); err != nil {
		return err
	}
	fmt.Printf("connstorm %s: %s/%s, %d cores, %s; the load generator shares the cores with the broker\n",
		mode, runtime.GOOS, runtime.GOARCH, runtime.NumCPU(), runtime.Version())
	var results []result
	for _, t := range []struct {
		name  string
		start func(addr string) (stop func(), err error)
	}{
		{"mqtthooks (examples/broker)", func(addr string) (func(), error) { return startOurs(dir, addr, file) }},
		{"mochi-mqtt v2.7.9 (in process)", func(addr string) (func(), error) { return startMochi(addr, file) }},
		{"mosquitto", func(addr string) (func(), error) { return startMosquitto(dir, addr, file) }},
	} {
		addr, err := procs.FreeAddr()
		if err != nil {
			return err
		}
		stop, err := t.start(addr)
		if err != nil {
			results = append(results, result{name: t.name, skipped: err.Error()})
			continue
		}
		r, err := measure(mode, addr, addr, n, c, messages)
		stop()
		if err != nil {
			return fmt.Errorf("%s: %w", t.name, err)
		}
		r.name = t.name
		results = append(results, r)
	}
	report(mode, results)
	return nil
}

func measure(mode, addr, subAddr string, n, c, messages int) (result, error) {
	switch mode {
	case "publish":
		return publishThroughputTo(addr, subAddr, messages, false)
	case "durable":
		return publishThroughputTo(addr, subAddr, messages, true)
	}
	return connectStorm(addr, n, c)
}

func report(mode string, rs []result) {
	unit := "connects/s"
	if mode == "publish" || mode == "durable" {
		unit = "messages/s"
	}
	fmt.Printf("\n%-32s %14s %10s %10s %8s %s\n", "broker", unit, "p50", "p99", "errors", "vs mqtthooks")
	base := rs[0].rate
	for _, r := range rs {
		if r.skipped != "" {
			fmt.Printf("%-32s skipped: %s\n", r.name, r.skipped)
			continue
		}
		ratio := ""
		if base > 0 && r.rate > 0 {
			ratio = fmt.Sprintf("mqtthooks/this = %.2f×", base/r.rate)
		}
		p50, p99 := "-", "-" // no latencies in publish mode
		if r.p50 > 0 {
			p50, p99 = r.p50.Round(time.Microsecond).String(), r.p99.Round(time.Microsecond).String()
		}
		fmt.Printf("%-32s %14.0f %10s %10s %8d %s\n", r.name, r.rate, p50, p99, r.errors, ratio)
	}
}

// writePasswd writes a Mosquitto $7$ password file (PBKDF2-HMAC-SHA512, 101
// iterations, mosquitto_passwd's default) for the bench user.
func writePasswd(file string) error {
	salt := make([]byte, 12)
	_, _ = rand.Read(salt)
	key, err := pbkdf2.Key(sha512.New, password, salt, 101, 64)
	if err != nil {
		return err
	}
	b := base64.StdEncoding
	line := fmt.Sprintf("%s:$7$101$%s$%s\n", user, b.EncodeToString(salt), b.EncodeToString(key))
	return os.WriteFile(file, []byte(line), 0o600)
}

// startOurs builds and runs examples/broker.
func startOurs(dir, addr, file string) (func(), error) {
	bin, err := procs.BuildBroker(dir)
	if err != nil {
		return nil, err
	}
	// No queue limit, as for the others: the throughput run must not drop.
	return startProcess(exec.Command(bin, "-addr", addr, "-passwd", file, "-max-queued", "-1"), addr)
}

// startMosquitto runs the mosquitto binary, if there is one.
func startMosquitto(dir, addr, file string) (func(), error) {
	bin, err := exec.LookPath("mosquitto")
	if err != nil {
		return nil, errors.New("no mosquitto binary (Debian package mosquitto)")
	}
	_, port, _ := net.SplitHostPort(addr)
	conf := filepath.Join(dir, "mosquitto.conf")
	cfg := fmt.Sprintf("listener %s 127.0.0.1\nallow_anonymous false\npassword_file %s\npersistence false\nuser root\nmax_queued_messages 0\n", port, file) // "user": as root it would switch to a user who cannot read our temp files
	if err := os.WriteFile(conf, []byte(cfg), 0o600); err != nil {
		return nil, err
	}
	return startProcess(exec.Command(bin, "-c", conf), addr)
}

func startProcess(cmd *exec.Cmd, addr string) (func(), error) {
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	stop := func() {
		_ = cmd.Process.Signal(os.Interrupt)
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	}
	if err := procs.WaitListening(addr); err != nil {
		stop()
		return nil, err
	}
	return stop, nil
}

// mochiAuth checks passwords for mochi with the same plugin and file as ours.
type mochiAuth struct {
	mqtt.HookBase
	p *passwd.Plugin
}

func (h *mochiAuth) ID() string { return "passwd" }

func (h *mochiAuth) Provides(b byte) bool {
	return b == mqtt.OnConnectAuthenticate || b == mqtt.OnACLCheck
}

func (h *mochiAuth) OnConnectAuthenticate(_ *mqtt.Client, pk packets.Packet) bool {
	c := &pk.Connect
	r := h.p.AuthOnRegister(context.Background(), &mqtthooks.RegisterRequest{Connect: &mqtthooks.ConnectRequest{
		Username: string(c.Username), HasUsername: c.UsernameFlag, Password: c.Password, HasPassword: c.PasswordFlag}})
	return r.Verdict() == mqtthooks.VerdictAccept
}

func (h *mochiAuth) OnACLCheck(*mqtt.Client, string, bool) bool { return true }

func startMochi(addr, file string) (func(), error) {
	p, err := passwd.Open(file)
	if err != nil {
		return nil, err
	}
	server := mqtt.New(&mqtt.Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err := server.AddHook(&mochiAuth{p: p}, nil); err != nil {
		return nil, err
	}
	if err := server.AddListener(listeners.NewTCP(listeners.Config{ID: "tcp", Address: addr})); err != nil {
		return nil, err
	}
	go func() { _ = server.Serve() }()
	if err := procs.WaitListening(addr); err != nil {
		return nil, err
	}
	return func() { _ = server.Close() }, nil
}

// dial connects a bench client and measures the time to its CONNACK.
func dial(addr, id string, clean bool) (*rawmqtt.Conn, time.Duration, error) {
	start := time.Now()
	c, err := rawmqtt.Dial(addr, 4, packets.ConnectParams{ClientIdentifier: id, Clean: clean, Keepalive: 60,
		UsernameFlag: true, Username: []byte(user), PasswordFlag: true, Password: []byte(password)}, packets.Properties{})
	return c, time.Since(start), err
}

// connectStorm makes n connections, c at a time: CONNECT with credentials,
// CONNACK, DISCONNECT.
func connectStorm(addr string, n, c int) (result, error) {
	var (
		next    atomic.Int64
		errs    atomic.Int64
		mu      sync.Mutex
		latency = make([]time.Duration, 0, n)
		wg      sync.WaitGroup
	)
	start := time.Now()
	for w := range c {
		wg.Go(func() {
			var mine []time.Duration
			for i := next.Add(1); i <= int64(n); i = next.Add(1) {
				cl, d, err := dial(addr, fmt.Sprintf("storm-%d-%d", w, i), true)
				if err != nil {
					errs.Add(1)
					continue
				}
				mine = append(mine, d)
				cl.Close(true)
			}
			mu.Lock()
			latency = append(latency, mine...)
			mu.Unlock()
		})
	}
	wg.Wait()
	took := time.Since(start)
	if len(latency) == 0 {
		return result{}, errors.New("no connection succeeded")
	}
	slices.Sort(latency)
	return result{rate: float64(len(latency)) / took.Seconds(), p50: latency[len(latency)/2],
		p99: latency[len(latency)*99/100], errors: int(errs.Load())}, nil
}

// publishThroughput publishes messages at QoS 1 (a window of 64 unacknowledged)
// to one QoS 1 subscriber, and measures until the subscriber has them all.
// A persistent subscriber has a session a store keeps.
func publishThroughput(addr string, messages int, persistent bool) (result, error) {
	return publishThroughputTo(addr, addr, messages, persistent)
}

// publishThroughputTo is publishThroughput with the subscriber on subAddr,
// another node of a cluster.
func publishThroughputTo(addr, subAddr string, messages int, persistent bool) (result, error) {
	sub, _, err := dial(subAddr, "bench-sub", !persistent)
	if err != nil {
		return result{}, err
	}
	defer sub.Close(true)
	if err := sub.Write(&packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, ProtocolVersion: 4,
		PacketID: 1, Filters: packets.Subscriptions{{Filter: "bench/t", Qos: 1}}}); err != nil {
		return result{}, err
	}
	if ack, err := sub.Read(0); err != nil || ack.FixedHeader.Type != packets.Suback {
		return result{}, fmt.Errorf("SUBACK: %v", err)
	}
	pub, _, err := dial(addr, "bench-pub", true)
	if err != nil {
		return result{}, err
	}
	defer pub.Close(true)

	received := make(chan error, 1)
	go func() {
		for got := 0; got < messages; {
			pk, err := sub.Read(30 * time.Second)
			if err != nil {
				received <- fmt.Errorf("subscriber after %d messages: %w", got, err)
				return
			}
			if pk.FixedHeader.Type != packets.Publish {
				continue
			}
			got++
			if pk.FixedHeader.Qos > 0 {
				_ = sub.Write(&packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}, ProtocolVersion: 4,
					PacketID: pk.PacketID})
			}
		}
		received <- nil
	}()
	window := make(chan struct{}, 64)
	acked := make(chan error, 1)
	go func() {
		for range messages {
			if _, err := pub.Read(0); err != nil {
				acked <- err
				return
			}
			<-window
		}
		acked <- nil
	}()
	payload := bytes.Repeat([]byte("x"), 64)
	start := time.Now()
	for i := range messages {
		window <- struct{}{}
		if err := pub.Write(&packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1},
			ProtocolVersion: 4, TopicName: "bench/t", Payload: payload, PacketID: uint16(i%65000 + 1)}); err != nil {
			return result{}, err
		}
	}
	if err := <-acked; err != nil {
		return result{}, fmt.Errorf("publisher: %w", err)
	}
	if err := <-received; err != nil {
		return result{}, err
	}
	return result{rate: float64(messages) / time.Since(start).Seconds()}, nil
}

// runDurable measures the QoS 1 throughput of examples/broker to a
// persistent subscriber, in memory and with -data-dir under two sync
// policies, and the store's fsyncs, from the broker's /stats.
func runDurable(messages int) error {
	dir, err := os.MkdirTemp("", "connstorm")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	file := filepath.Join(dir, "passwd")
	if err := writePasswd(file); err != nil {
		return err
	}
	bin, err := procs.BuildBroker(dir)
	if err != nil {
		return err
	}
	fmt.Printf("connstorm durable: %s/%s, %d cores, %s; %d QoS 1 messages, window 64, one persistent subscriber; "+
		"the load generator shares the cores with the broker\n",
		runtime.GOOS, runtime.GOARCH, runtime.NumCPU(), runtime.Version(), messages)
	fmt.Printf("\n%-36s %12s %10s %10s %12s %12s\n", "examples/broker", "messages/s", "vs memory", "fsyncs/s",
		"msgs/fsync", "commits/msg")
	var base float64
	for i, args := range [][]string{nil, {"-data-dir", filepath.Join(dir, "interval"), "-sync", "100ms"},
		{"-data-dir", filepath.Join(dir, "always"), "-sync", "always"}} {
		addr, err := procs.FreeAddr()
		if err != nil {
			return err
		}
		debug, err := procs.FreeAddr()
		if err != nil {
			return err
		}
		cmd := exec.Command(bin, append([]string{"-addr", addr, "-debug-addr", debug, "-passwd", file, "-max-queued", "-1"},
			args...)...)
		stop, err := startProcess(cmd, addr)
		if err != nil {
			return err
		}
		before, err := storeStats(debug)
		if err != nil {
			stop()
			return err
		}
		start := time.Now()
		r, err := publishThroughput(addr, messages, true)
		took := time.Since(start)
		after, serr := storeStats(debug)
		stop()
		if err != nil || serr != nil {
			return errors.Join(err, serr)
		}
		name := "in memory"
		if args != nil {
			name = strings.Join(args[2:], " ") + " (-data-dir)"
		}
		if i == 0 {
			base = r.rate
		}
		syncs, commits := after.Syncs-before.Syncs, after.Commits-before.Commits
		perSync, perSec := "-", "-"
		if syncs > 0 {
			perSync = fmt.Sprintf("%.1f", float64(messages)/float64(syncs))
			perSec = fmt.Sprintf("%.0f", float64(syncs)/took.Seconds())
		}
		fmt.Printf("%-36s %12.0f %9.0f%% %10s %12s %12.1f\n", name, r.rate, 100*r.rate/base, perSec, perSync,
			float64(commits)/float64(messages))
	}
	return nil
}

// storeStats reads the store's counters from the broker's /stats.
func storeStats(debug string) (pebble.Stats, error) {
	resp, err := http.Get("http://" + debug + "/stats")
	if err != nil {
		return pebble.Stats{}, err
	}
	defer resp.Body.Close()
	var v struct{ Store *pebble.Stats }
	if err := json.NewDecoder(resp.Body).Decode(&v); err != nil {
		return pebble.Stats{}, err
	}
	if v.Store == nil {
		return pebble.Stats{}, nil
	}
	return *v.Store, nil
}
