// Command hostile measures what hostile or careless clients cost the
// example broker and Mosquitto, each run as a process on this machine, on
// the cases of issue 13. Run it from the repository root:
//
//	go run ./bench/cmd/hostile
//
// The cases:
//   - churn: rounds of clients that each subscribe a reply filter of their
//     own and leave (request/response); the broker's resident memory after
//     the first round and after the last.
//   - retained: 20,000 retained messages, then one SUBSCRIBE of 1,000
//     filters matching 200,000 of them; the broker's CPU time until the last
//     has arrived.
//   - connect: 200 connections at once, each sending a 1 MiB CONNECT of
//     empty User Properties; the broker's peak resident memory.
//
// Memory and CPU come from /proc (Linux). The load generator shares the
// cores with the broker.
package main

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/mqtthooks/mqtthooks/bench/internal/procs"
	"github.com/mqtthooks/mqtthooks/bench/internal/rawmqtt"
)

func main() {
	rounds := flag.Int("rounds", 4, "churn: rounds")
	perRound := flag.Int("per-round", 20000, "churn: clients per round")
	flag.Parse()
	if err := run(*rounds, *perRound); err != nil {
		fmt.Fprintln(os.Stderr, "hostile:", err)
		os.Exit(1)
	}
}

type broker struct {
	name  string
	start func(addr string) (*exec.Cmd, error)
}

func run(rounds, perRound int) error {
	dir, err := os.MkdirTemp("", "hostile")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	bin, err := procs.BuildBroker(dir)
	if err != nil {
		return err
	}
	brokers := []broker{{"examples/broker", func(addr string) (*exec.Cmd, error) {
		return exec.Command(bin, "-addr", addr, "-max-queued", "-1", "-sys-interval", "0"), nil
	}}}
	if mosq, err := exec.LookPath("mosquitto"); err == nil {
		brokers = append(brokers, broker{"mosquitto", func(addr string) (*exec.Cmd, error) {
			_, port, _ := net.SplitHostPort(addr)
			conf := filepath.Join(dir, "mosquitto.conf")
			cfg := fmt.Sprintf("listener %s 127.0.0.1\nallow_anonymous true\npersistence false\nuser root\n"+
				"max_queued_messages 0\nmax_inflight_messages 0\n", port)
			if err := os.WriteFile(conf, []byte(cfg), 0o600); err != nil {
				return nil, err
			}
			return exec.Command(mosq, "-c", conf), nil
		}})
	} else {
		fmt.Println("no mosquitto binary (Debian package mosquitto): measuring examples/broker alone")
	}
	fmt.Printf("hostile: %s/%s, %d cores, %s; the load generator shares the cores\n\n",
		runtime.GOOS, runtime.GOARCH, runtime.NumCPU(), runtime.Version())
	for _, b := range brokers {
		for _, c := range []struct {
			name string
			fn   func(addr string, pid int) (string, error)
		}{
			{"churn", func(addr string, pid int) (string, error) { return churn(addr, pid, rounds, perRound) }},
			{"retained", retained},
			{"connect", connectBombs},
		} {
			addr, err := procs.FreeAddr()
			if err != nil {
				return err
			}
			cmd, err := b.start(addr)
			if err != nil {
				return err
			}
			if err := cmd.Start(); err != nil {
				return err
			}
			if err := procs.WaitListening(addr); err != nil {
				_ = cmd.Process.Kill()
				_ = cmd.Wait()
				return err
			}
			out, err := c.fn(addr, cmd.Process.Pid)
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
			if err != nil {
				return fmt.Errorf("%s, %s: %w", b.name, c.name, err)
			}
			fmt.Printf("%-16s %-9s %s\n", b.name, c.name, out)
		}
	}
	return nil
}

// churn: clients that each subscribe a filter of their own, then leave.
func churn(addr string, pid, rounds, perRound int) (string, error) {
	var after []int64
	for k := range rounds {
		for i := range perRound {
			c, err := rawmqtt.Dial(addr, 5, packets.ConnectParams{ClientIdentifier: fmt.Sprintf("req-%d-%d", k, i),
				Clean: true, Keepalive: 30}, packets.Properties{})
			if err != nil {
				return "", err
			}
			if err := c.Write(&packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1},
				PacketID: 1, Filters: packets.Subscriptions{{Filter: fmt.Sprintf("replies/%d-%d/status", k, i), Qos: 1}}}); err != nil {
				return "", err
			}
			if _, err := c.Read(5 * time.Second); err != nil { // SUBACK
				return "", err
			}
			c.Close(true)
		}
		rss, _, err := memory(pid)
		if err != nil {
			return "", err
		}
		after = append(after, rss)
	}
	return fmt.Sprintf("%d rounds of %d clients: RSS after round 1 %s, after round %d %s (%.2fx)", rounds, perRound,
		mib(after[0]), rounds, mib(after[len(after)-1]), float64(after[len(after)-1])/float64(after[0])), nil
}

// retained: one SUBSCRIBE of 1,000 filters against 20,000 retained messages.
func retained(addr string, pid int) (string, error) {
	pub, err := rawmqtt.Dial(addr, 4, packets.ConnectParams{ClientIdentifier: "pub", Clean: true, Keepalive: 30},
		packets.Properties{})
	if err != nil {
		return "", err
	}
	defer pub.Close(true)
	for i := range 20_000 {
		if err := pub.Write(&packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Retain: true},
			TopicName: fmt.Sprintf("site/%d/device/%d/temp", i%100, i), Payload: []byte("21.5")}); err != nil {
			return "", err
		}
	}
	// A PINGREQ's answer would do; a QoS 1 PUBLISH's PUBACK says the broker read all before it.
	if err := pub.Write(&packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1},
		TopicName: "sync", Payload: []byte("x"), PacketID: 1}); err != nil {
		return "", err
	}
	if _, err := pub.Read(30 * time.Second); err != nil {
		return "", err
	}
	sub, err := rawmqtt.Dial(addr, 4, packets.ConnectParams{ClientIdentifier: "sub", Clean: true, Keepalive: 60},
		packets.Properties{})
	if err != nil {
		return "", err
	}
	defer sub.Close(true)
	var filters packets.Subscriptions
	for i := range 1000 {
		f := fmt.Sprintf("site/%d/device/+/temp", i%100)
		if i%10 == 0 {
			f = fmt.Sprintf("site/%d/#", i%100)
		}
		filters = append(filters, packets.Subscription{Filter: f})
	}
	cpu0, err := cpuTime(pid)
	if err != nil {
		return "", err
	}
	start := time.Now()
	if err := sub.Write(&packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1},
		PacketID: 1, Filters: filters}); err != nil {
		return "", err
	}
	got := 0
	for got < 200_000 {
		pk, err := sub.Read(60 * time.Second)
		if err != nil {
			return "", fmt.Errorf("after %d retained messages: %w", got, err)
		}
		if pk.FixedHeader.Type == packets.Publish {
			got++
		}
	}
	took := time.Since(start)
	cpu1, err := cpuTime(pid)
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("1,000 filters x 20,000 retained, %d delivered: broker CPU %v, wall %v", got,
		(cpu1 - cpu0).Round(time.Millisecond), took.Round(time.Millisecond)), nil
}

// connectBombs: 200 connections at once, each a 1 MiB CONNECT of empty User
// Properties.
func connectBombs(addr string, pid int) (string, error) {
	_, base, err := memory(pid)
	if err != nil {
		return "", err
	}
	bomb := propertyBomb(1 << 20)
	var wg sync.WaitGroup
	for range 200 {
		wg.Go(func() {
			nc, err := net.DialTimeout("tcp", addr, 10*time.Second)
			if err != nil {
				return
			}
			defer nc.Close()
			_ = nc.SetDeadline(time.Now().Add(30 * time.Second))
			_, _ = nc.Write(bomb)
			_, _ = nc.Read(make([]byte, 64)) // the answer, or the close
		})
	}
	wg.Wait()
	_, peak, err := memory(pid)
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("200 x 1 MiB CONNECT of empty User Properties: peak RSS %s (before %s)", mib(peak), mib(base)), nil
}

// propertyBomb is an MQTT 5 CONNECT of about size bytes of empty User
// Properties.
func propertyBomb(size int) []byte {
	n := size / 5
	props := make([]byte, 0, n*5)
	for range n {
		props = append(props, 0x26, 0, 0, 0, 0)
	}
	body := []byte{0, 4, 'M', 'Q', 'T', 'T', 5, 0x02, 0, 30}
	body = append(body, varint(len(props))...)
	body = append(body, props...)
	body = append(body, 0, 4, 'b', 'o', 'm', 'b')
	return append(append([]byte{0x10}, varint(len(body))...), body...)
}

func varint(n int) []byte {
	var out []byte
	for {
		b := byte(n % 128)
		n /= 128
		if n > 0 {
			b |= 0x80
		}
		out = append(out, b)
		if n == 0 {
			return out
		}
	}
}

// memory returns a process's resident and peak resident memory.
func memory(pid int) (rss, peak int64, err error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 2 {
			continue
		}
		kb, _ := strconv.ParseInt(fields[1], 10, 64)
		switch fields[0] {
		case "VmRSS:":
			rss = kb << 10
		case "VmHWM:":
			peak = kb << 10
		}
	}
	if rss == 0 {
		return 0, 0, errors.New("no VmRSS in /proc")
	}
	return rss, peak, sc.Err()
}

// cpuTime returns a process's user and system CPU time.
func cpuTime(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	s := string(b)
	fields := strings.Fields(s[strings.LastIndexByte(s, ')')+2:]) // after the command name
	utime, _ := strconv.ParseInt(fields[11], 10, 64)
	stime, _ := strconv.ParseInt(fields[12], 10, 64)
	const ticks = 100 // USER_HZ on Linux
	return time.Duration(utime+stime) * time.Second / ticks, nil
}

func mib(b int64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }
