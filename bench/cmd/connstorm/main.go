// Command connstorm measures brokers side by side on this machine: the
// example broker of mqtthooks (with plugins/passwd and a $7$ password file), a
// mochi-mqtt server with the same password check in its auth hook (connstorm
// itself, run again as a process of its own), and Mosquitto when its binary
// is installed (same file).
//
//	go run ./bench/cmd/connstorm                   # CONNECT → CONNACK → DISCONNECT storm
//	go run ./bench/cmd/connstorm -anonymous        # the same, no credentials, brokers accept anybody
//	go run ./bench/cmd/connstorm -mode publish     # QoS 1 publish throughput, one subscriber
//	go run ./bench/cmd/connstorm -mode publish -qos 0
//	go run ./bench/cmd/connstorm -mode durable     # the same, persistent subscriber, examples/broker
//	                                               # in memory, -data-dir -sync 100ms, -data-dir -sync always
//	go run ./bench/cmd/connstorm -addr HOST:PORT [-pid PID]   # one broker already running
//
// Next to the rate it reports what each broker spends: the CPU time (utime +
// stime from /proc/PID/stat) of the broker's process over the measured
// phase, divided by the operations completed. The load generator runs on the
// same cores as the broker under test, which the output says; compare ratios
// from one run, not figures across machines.
package main

import (
	"bytes"
	"cmp"
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha512"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
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

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/mqtthooks/mqtthooks/bench/internal/procs"
	"github.com/mqtthooks/mqtthooks/bench/internal/rawmqtt"
	"github.com/mqtthooks/mqtthooks/stores/pebble"
)

const (
	user     = "bench"
	password = "bench-password"
	window   = 64 // messages in flight in the publish modes
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == serveMochiFlag {
		if err := serveMochi(os.Args[2:]); err != nil {
			fmt.Fprintln(os.Stderr, "connstorm "+serveMochiFlag+":", err)
			os.Exit(1)
		}
		return
	}
	mode := flag.String("mode", "connect", "connect: CONNECT storm; publish: throughput of -qos messages; "+
		"durable: QoS 1 throughput of examples/broker with and without -data-dir")
	n := flag.Int("n", 5000, "connections to make (connect mode)")
	c := flag.Int("c", 50, "concurrent connections (connect mode)")
	messages := flag.Int("messages", 20000, "messages to publish (publish mode)")
	qos := flag.Int("qos", 1, "publish mode: QoS of the messages and of the subscription, 0 or 1")
	anonymous := flag.Bool("anonymous", false, "clients send no credentials and the brokers accept anybody "+
		"(examples/broker -allow-anonymous, mochi's AllowHook, Mosquitto allow_anonymous true); "+
		"default: user bench, password bench-password, checked against a $7$ password file")
	addr := flag.String("addr", "", "measure only the broker already listening here (user bench, password bench-password, "+
		"or -anonymous)")
	pid := flag.Int("pid", 0, "with -addr: the broker's process, whose CPU time is read from /proc/PID/stat")
	subAddr := flag.String("sub-addr", "", "with -addr, publish modes: the subscriber connects here (another node of a cluster)")
	flag.Parse()
	if *qos != 0 && *qos != 1 {
		fmt.Fprintln(os.Stderr, "connstorm: -qos must be 0 or 1")
		os.Exit(2)
	}
	l := load{mode: *mode, n: *n, c: *c, messages: *messages, qos: byte(*qos), anonymous: *anonymous}
	if *addr != "" {
		fmt.Println(l.describe())
		m := &meter{pid: *pid}
		r, err := measure(l, *addr, cmp.Or(*subAddr, *addr), m)
		if err != nil {
			fmt.Fprintln(os.Stderr, "connstorm:", err)
			os.Exit(1)
		}
		r.name = *addr
		report(l, []result{r})
		return
	}
	if *mode == "durable" {
		if err := runDurable(*messages, *anonymous); err != nil {
			fmt.Fprintln(os.Stderr, "connstorm:", err)
			os.Exit(1)
		}
		return
	}
	if err := run(l); err != nil {
		fmt.Fprintln(os.Stderr, "connstorm:", err)
		os.Exit(1)
	}
}

// load is what the bench clients do.
type load struct {
	mode      string
	n, c      int  // connect: connections, concurrent
	messages  int  // publish
	qos       byte // publish: of the messages and the subscription
	anonymous bool // no credentials
}

func (l load) describe() string {
	creds := "user/password ($7$ file, PBKDF2-HMAC-SHA512, 101 iterations)"
	if l.anonymous {
		creds = "anonymous (no credentials)"
	}
	switch l.mode {
	case "publish":
		how := fmt.Sprintf("a window of %d unacknowledged by the broker", window)
		if l.qos == 0 {
			how = fmt.Sprintf("at most %d published and not yet received by the subscriber", window)
		}
		return fmt.Sprintf("load: %d QoS %d messages of 64 bytes, %s, to one QoS %d subscriber; clients %s",
			l.messages, l.qos, how, l.qos, creds)
	case "durable":
		return fmt.Sprintf("load: %d QoS 1 messages, window %d, one persistent subscriber; clients %s", l.messages, window, creds)
	}
	return fmt.Sprintf("load: %d CONNECT → CONNACK → DISCONNECT cycles (MQTT 3.1.1, clean), %d at a time; clients %s",
		l.n, l.c, creds)
}

// result is one broker's figures.
type result struct {
	name     string
	rate     float64 // connects/s or messages/s
	p50, p99 time.Duration
	skipped  string
	errors   int
	cpu      cpu
}

// brokerProc is a broker process connstorm started.
type brokerProc struct {
	cmd *exec.Cmd
	pid int
}

func run(l load) error {
	dir, err := os.MkdirTemp("", "connstorm")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	file := filepath.Join(dir, "passwd")
	if err := writePasswd(file); err != nil {
		return err
	}
	if l.anonymous {
		file = ""
	}
	fmt.Printf("connstorm %s: %s/%s, %d cores, %s; the load generator shares the cores with the broker\n",
		l.mode, runtime.GOOS, runtime.GOARCH, runtime.NumCPU(), runtime.Version())
	fmt.Println(l.describe())
	var results []result
	for _, t := range []struct {
		name  string
		start func(addr string) (*brokerProc, error)
	}{
		{"mqtthooks (examples/broker)", func(addr string) (*brokerProc, error) { return startOurs(dir, addr, file) }},
		{"mochi-mqtt v2.7.9 (own process)", func(addr string) (*brokerProc, error) { return startMochi(addr, file) }},
		{"mosquitto", func(addr string) (*brokerProc, error) { return startMosquitto(dir, addr, file) }},
	} {
		addr, err := procs.FreeAddr()
		if err != nil {
			return err
		}
		b, err := t.start(addr)
		if err != nil {
			results = append(results, result{name: t.name, skipped: err.Error()})
			continue
		}
		r, err := measure(l, addr, addr, &meter{pid: b.pid})
		b.stop()
		if err != nil {
			return fmt.Errorf("%s: %w", t.name, err)
		}
		r.name = t.name
		results = append(results, r)
	}
	report(l, results)
	return nil
}

func measure(l load, addr, subAddr string, m *meter) (result, error) {
	switch l.mode {
	case "publish":
		return publishThroughputTo(addr, subAddr, l.messages, false, l.qos, l.anonymous, m)
	case "durable":
		return publishThroughputTo(addr, subAddr, l.messages, true, 1, l.anonymous, m)
	}
	return connectStorm(addr, l.n, l.c, l.anonymous, m)
}

func report(l load, rs []result) {
	unit, per := "connects/s", "connect"
	if l.mode == "publish" || l.mode == "durable" {
		unit, per = "messages/s", "message"
	}
	var mosq *result
	for i := range rs {
		if rs[i].name == "mosquitto" && rs[i].skipped == "" && rs[i].cpu.known {
			mosq = &rs[i]
		}
	}
	fmt.Printf("\n%-32s %14s %10s %10s %8s %11s %10s %10s %6s %11s %7s %s\n", "broker", unit, "p50", "p99", "errors",
		"CPU µs/op", "sys µs/op", "CPU/mosq", "cores", "gen µs/op", "others", "vs mqtthooks")
	base := rs[0].rate
	ops := 0
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
		perOp, sys, vsMosq, cores, gen, others := "-", "-", "-", "-", "-", "-"
		if c := r.cpu; c.ops > 0 {
			ops = max(ops, c.ops)
			gen = fmt.Sprintf("%.2f", c.clientPerOp())
			if c.known {
				perOp, sys, cores = fmt.Sprintf("%.2f", c.perOp()), fmt.Sprintf("%.2f", c.sysPerOp()),
					fmt.Sprintf("%.2f", c.cores())
				others = fmt.Sprintf("%.2f", c.others())
				if mosq != nil {
					vsMosq = fmt.Sprintf("%.2f×", c.perOp()/mosq.cpu.perOp())
				}
			}
		}
		fmt.Printf("%-32s %14.0f %10s %10s %8d %11s %10s %10s %6s %11s %7s %s\n", r.name, r.rate, p50, p99, r.errors,
			perOp, sys, vsMosq, cores, gen, others, ratio)
	}
	if ops > 0 && !slices.ContainsFunc(rs, func(r result) bool { return r.cpu.known }) {
		fmt.Println("\nThe broker's process is not known (-pid with -addr): no CPU figures but the load generator's.")
	} else if ops > 0 {
		fmt.Printf("\nCPU µs/op: utime+stime of the broker's process (/proc/PID/stat, every thread) from just before "+
			"the first %s to %v after the last, divided by the %ss completed; resolution one tick, %v "+
			"(CLK_TCK %d), ±%.3f µs/op at %d. sys µs/op: the stime part of it, the kernel's work for the broker "+
			"(on loopback that includes the TCP work of delivering what it sends). CPU/mosq: this broker's CPU µs/op over Mosquitto's. cores: the "+
			"broker's CPU time over the phase's wall time. gen µs/op: the same for the load generator (this "+
			"process), which shares the %d cores with the broker. others: cores used meanwhile by every other "+
			"process (/proc/stat), 0.00 on a quiet machine.\n",
			per, settle, per, tick(), clockTicks, us(tick())/float64(ops), ops, runtime.NumCPU())
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

// startOurs builds and runs examples/broker, checking passwords against
// file, or accepting anybody when file is "".
func startOurs(dir, addr, file string) (*brokerProc, error) {
	bin, err := procs.BuildBroker(dir)
	if err != nil {
		return nil, err
	}
	// No queue limit, as for the others: the throughput run must not drop.
	args := []string{"-addr", addr, "-max-queued", "-1"}
	if file != "" {
		args = append(args, "-passwd", file)
	} else {
		args = append(args, "-allow-anonymous")
	}
	return startProcess(exec.Command(bin, args...), addr)
}

// startMosquitto runs the mosquitto binary, if there is one, with the
// password file, or accepting anybody when file is "".
func startMosquitto(dir, addr, file string) (*brokerProc, error) {
	bin, err := exec.LookPath("mosquitto")
	if err != nil {
		return nil, errors.New("no mosquitto binary (Debian package mosquitto)")
	}
	_, port, _ := net.SplitHostPort(addr)
	conf := filepath.Join(dir, "mosquitto.conf")
	auth := "allow_anonymous true\n"
	if file != "" {
		auth = fmt.Sprintf("allow_anonymous false\npassword_file %s\n", file)
	}
	cfg := fmt.Sprintf("listener %s 127.0.0.1\n%spersistence false\nuser root\nmax_queued_messages 0\n", port, auth) // "user": as root it would switch to a user who cannot read our temp files
	if err := os.WriteFile(conf, []byte(cfg), 0o600); err != nil {
		return nil, err
	}
	return startProcess(exec.Command(bin, "-c", conf), addr)
}

func startProcess(cmd *exec.Cmd, addr string) (*brokerProc, error) {
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	b := &brokerProc{cmd: cmd, pid: cmd.Process.Pid}
	if err := procs.WaitListening(addr); err != nil {
		b.stop()
		return nil, err
	}
	return b, nil
}

// stop interrupts the broker and waits for it, killing it after 10 s.
func (b *brokerProc) stop() {
	_ = b.cmd.Process.Signal(os.Interrupt)
	done := make(chan struct{})
	go func() { _ = b.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = b.cmd.Process.Kill()
		<-done
	}
}

// dial connects a bench client, with the bench user's credentials unless
// anonymous, and measures the time to its CONNACK.
func dial(addr, id string, clean, anonymous bool) (*rawmqtt.Conn, time.Duration, error) {
	p := packets.ConnectParams{ClientIdentifier: id, Clean: clean, Keepalive: 60}
	if !anonymous {
		p.UsernameFlag, p.Username, p.PasswordFlag, p.Password = true, []byte(user), true, []byte(password)
	}
	start := time.Now()
	c, err := rawmqtt.Dial(addr, 4, p, packets.Properties{})
	return c, time.Since(start), err
}

// connectStorm makes n connections, c at a time: CONNECT (with credentials
// unless anonymous), CONNACK, DISCONNECT. m measures the storm.
func connectStorm(addr string, n, c int, anonymous bool, m *meter) (result, error) {
	var (
		next    atomic.Int64
		errs    atomic.Int64
		mu      sync.Mutex
		latency = make([]time.Duration, 0, n)
		wg      sync.WaitGroup
	)
	m.begin()
	start := time.Now()
	for w := range c {
		wg.Go(func() {
			var mine []time.Duration
			for i := next.Add(1); i <= int64(n); i = next.Add(1) {
				cl, d, err := dial(addr, fmt.Sprintf("storm-%d-%d", w, i), true, anonymous)
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
	m.end()
	if len(latency) == 0 {
		return result{}, errors.New("no connection succeeded")
	}
	slices.Sort(latency)
	return result{rate: float64(len(latency)) / took.Seconds(), p50: latency[len(latency)/2],
		p99: latency[len(latency)*99/100], errors: int(errs.Load()), cpu: m.result(len(latency))}, nil
}

// publishThroughput publishes messages at QoS 1 (a window of 64 unacknowledged)
// to one QoS 1 subscriber, and measures until the subscriber has them all.
// A persistent subscriber has a session a store keeps.
func publishThroughput(addr string, messages int, persistent, anonymous bool, m *meter) (result, error) {
	return publishThroughputTo(addr, addr, messages, persistent, 1, anonymous, m)
}

// publishThroughputTo publishes messages at qos to one subscriber (at qos
// too) on subAddr, another node of a cluster or addr, and measures, with m,
// from the first PUBLISH until the subscriber has them all (and, at QoS 1,
// the publisher all its PUBACKs). At QoS 1 at most window messages wait for
// the broker's PUBACK; at QoS 0, which has no acknowledgement and which a
// broker may drop when a subscriber falls behind, at most window messages
// are published and not yet received.
func publishThroughputTo(addr, subAddr string, messages int, persistent bool, qos byte, anonymous bool,
	m *meter) (result, error) {
	sub, _, err := dial(subAddr, "bench-sub", !persistent, anonymous)
	if err != nil {
		return result{}, err
	}
	defer sub.Close(true)
	if err := sub.Write(&packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, ProtocolVersion: 4,
		PacketID: 1, Filters: packets.Subscriptions{{Filter: "bench/t", Qos: qos}}}); err != nil {
		return result{}, err
	}
	if ack, err := sub.Read(0); err != nil || ack.FixedHeader.Type != packets.Suback {
		return result{}, fmt.Errorf("SUBACK: %v", err)
	}
	pub, _, err := dial(addr, "bench-pub", true, anonymous)
	if err != nil {
		return result{}, err
	}
	defer pub.Close(true)

	slots := make(chan struct{}, window)
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
			if qos == 0 {
				select { // a slot for the next message (none taken for a retained one)
				case <-slots:
				default:
				}
			}
		}
		received <- nil
	}()
	acked := make(chan error, 1)
	if qos > 0 {
		go func() {
			for range messages {
				if _, err := pub.Read(0); err != nil {
					acked <- err
					return
				}
				<-slots
			}
			acked <- nil
		}()
	} else {
		acked <- nil
	}
	payload := bytes.Repeat([]byte("x"), 64)
	m.begin()
	start := time.Now()
	for i := range messages {
		select {
		case slots <- struct{}{}:
		case err := <-received: // the subscriber stopped early
			return result{}, err
		}
		pk := &packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: qos},
			ProtocolVersion: 4, TopicName: "bench/t", Payload: payload}
		if qos > 0 {
			pk.PacketID = uint16(i%65000 + 1)
		}
		if err := pub.Write(pk); err != nil {
			return result{}, err
		}
	}
	if err := <-acked; err != nil {
		return result{}, fmt.Errorf("publisher: %w", err)
	}
	if err := <-received; err != nil {
		return result{}, err
	}
	took := time.Since(start)
	m.end()
	return result{rate: float64(messages) / took.Seconds(), cpu: m.result(messages)}, nil
}

// runDurable measures the QoS 1 throughput of examples/broker to a
// persistent subscriber, in memory and with -data-dir under two sync
// policies, the store's fsyncs, from the broker's /stats, and the broker's
// CPU time per message.
func runDurable(messages int, anonymous bool) error {
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
	fmt.Printf("connstorm durable: %s/%s, %d cores, %s; %d QoS 1 messages, window %d, one persistent subscriber; "+
		"the load generator shares the cores with the broker\n",
		runtime.GOOS, runtime.GOARCH, runtime.NumCPU(), runtime.Version(), messages, window)
	fmt.Printf("\n%-36s %12s %10s %10s %12s %12s %10s\n", "examples/broker", "messages/s", "vs memory", "fsyncs/s",
		"msgs/fsync", "commits/msg", "CPU µs/op")
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
		auth := []string{"-passwd", file}
		if anonymous {
			auth = []string{"-allow-anonymous"}
		}
		cmd := exec.Command(bin, slices.Concat([]string{"-addr", addr, "-debug-addr", debug, "-max-queued", "-1"},
			auth, args)...)
		b, err := startProcess(cmd, addr)
		if err != nil {
			return err
		}
		before, err := storeStats(debug)
		if err != nil {
			b.stop()
			return err
		}
		start := time.Now()
		m := &meter{pid: b.pid}
		r, err := publishThroughput(addr, messages, true, anonymous, m)
		took := time.Since(start) - settle // the meter waits that long after the last message
		after, serr := storeStats(debug)
		b.stop()
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
		perOp := "-"
		if r.cpu.known {
			perOp = fmt.Sprintf("%.2f", r.cpu.perOp())
		}
		fmt.Printf("%-36s %12.0f %9.0f%% %10s %12s %12.1f %10s\n", name, r.rate, 100*r.rate/base, perSec, perSync,
			float64(commits)/float64(messages), perOp)
	}
	fmt.Printf("\nCPU µs/op: utime+stime of the broker's process (/proc/PID/stat) over the publishing, divided by the "+
		"messages; resolution one tick, %v (CLK_TCK %d).\n", tick(), clockTicks)
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
