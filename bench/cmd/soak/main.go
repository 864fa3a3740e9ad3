// Command soak runs examples/broker under random load for a while and checks
// that nothing was lost and nothing leaked:
//
//	go run ./bench/cmd/soak -duration 10m
//
// Clients connect (MQTT 3.1.1 and 5, clean and persistent), take each other's
// sessions over, subscribe, publish at QoS 0, 1 and 2, disconnect politely
// and drop their sockets. At the end every persistent subscriber reconnects
// and drains its session, and the soak checks:
//
//   - every QoS 1 and 2 message published to a "keeper" (a persistent session
//     that only ever resumes, with no queue limit) was received by it;
//   - the core's counters balance: Routed = Delivered + Dropped +
//     NotStoredQoS0 + Discarded, with nothing left pending or in flight;
//   - the broker's goroutines and heap are back to their starting values.
//
// It exits non-zero when a check fails. It is not part of CI.
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/mqtthooks/mqtthooks"
	"github.com/mqtthooks/mqtthooks/bench/internal/procs"
	"github.com/mqtthooks/mqtthooks/bench/internal/rawmqtt"
)

func main() {
	duration := flag.Duration("duration", 10*time.Minute, "how long to load the broker")
	workers := flag.Int("workers", 16, "concurrent random clients")
	keepers := flag.Int("keepers", 8, "persistent subscribers whose every QoS 1/2 message must arrive")
	flag.Parse()
	if err := run(*duration, *workers, *keepers); err != nil {
		fmt.Fprintln(os.Stderr, "soak:", err)
		os.Exit(1)
	}
}

// stats is what the broker serves at /stats.
type stats struct {
	Core       mqtthooks.Stats
	Goroutines int
	HeapAlloc  uint64
}

func fetch(debug string, gc bool) (stats, error) {
	url := "http://" + debug + "/stats"
	if gc {
		url += "?gc=1"
	}
	resp, err := http.Get(url) //nolint:noctx // a local debug endpoint of our own broker
	if err != nil {
		return stats{}, err
	}
	defer resp.Body.Close()
	var s stats
	return s, json.NewDecoder(resp.Body).Decode(&s)
}

func run(duration time.Duration, workers, keepers int) error {
	dir, err := os.MkdirTemp("", "soak")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	bin, err := procs.BuildBroker(dir)
	if err != nil {
		return err
	}
	addr, err := procs.FreeAddr()
	if err != nil {
		return err
	}
	debug, err := procs.FreeAddr()
	if err != nil {
		return err
	}
	broker := exec.Command(bin, "-addr", addr, "-debug-addr", debug, "-max-queued", "-1", "-allow-anonymous")
	if err := broker.Start(); err != nil {
		return err
	}
	defer func() { _ = broker.Process.Kill(); _ = broker.Wait() }()
	var start stats
	for deadline := time.Now().Add(30 * time.Second); ; {
		if start, err = fetch(debug, true); err == nil {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the broker did not come up: %w", err)
		}
		time.Sleep(50 * time.Millisecond) // waiting for a process we started
	}
	fmt.Printf("soak: %v, %d workers, %d keepers; broker at start: %d goroutines, %d KiB heap\n",
		duration, workers, keepers, start.Goroutines, start.HeapAlloc/1024)

	s := &soak{addr: addr, keepers: keepers, published: map[string]map[string]bool{}, received: map[string]map[string]bool{}}
	// The keepers subscribe once, persistently, and go offline; they come back now and then.
	for k := range keepers {
		c, err := s.connect(keeperID(k), false, 5)
		if err != nil {
			return err
		}
		if err := c.subscribe("keep/"+keeperID(k), 1); err != nil {
			return err
		}
		c.drain(s, keeperID(k), 200*time.Millisecond)
		c.Close(true)
	}
	stop := time.Now().Add(duration)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() { s.worker(uint64(w), stop) })
	}
	wg.Wait()
	fmt.Printf("load done: %d operations, %d QoS>0 messages to keepers, %d errors tolerated (takeovers, drops)\n",
		s.ops.Load(), s.sent.Load(), s.soft.Load())

	// Drain every session: the random clients' persistent ones hold messages too.
	for i := range 24 {
		if c, err := s.connect(fmt.Sprintf("rand-%d", i), false, 5); err == nil {
			c.drain(nil, "", time.Second)
			c.Close(true)
		}
	}
	for k := range keepers {
		for range 3 {
			c, err := s.connect(keeperID(k), false, 5)
			if err != nil {
				return err
			}
			c.drain(s, keeperID(k), time.Second)
			c.Close(true)
		}
	}
	var failures []string
	s.mu.Lock()
	for id, msgs := range s.published {
		missing := 0
		for m := range msgs {
			if !s.received[id][m] {
				missing++
				how, _ := s.how.Load(m)
				fmt.Printf("missing %s → %s: %v\n", m, id, how)
			}
		}
		if missing > 0 {
			failures = append(failures, fmt.Sprintf("%s: %d of %d messages never arrived", id, missing, len(msgs)))
		}
	}
	s.mu.Unlock()

	time.Sleep(2 * time.Second) // let the last connections' goroutines end before measuring
	end, err := fetch(debug, true)
	if err != nil {
		return err
	}
	c := end.Core
	held := int64(c.Routed) - int64(c.Delivered+c.Dropped+c.NotStoredQoS0+c.Discarded)
	fmt.Printf("core: routed %d = delivered %d + dropped %d + not stored %d + discarded %d + held %d; sessions %d, connections %d\n",
		c.Routed, c.Delivered, c.Dropped, c.NotStoredQoS0, c.Discarded, held, c.Sessions, c.Connections)
	fmt.Printf("broker at end: %d goroutines (start %d), %d KiB heap (start %d KiB)\n",
		end.Goroutines, start.Goroutines, end.HeapAlloc/1024, start.HeapAlloc/1024)
	if held != 0 {
		failures = append(failures, fmt.Sprintf("%d messages still held after draining", held))
	}
	if c.Connections != 0 {
		failures = append(failures, fmt.Sprintf("%d connections still attached", c.Connections))
	}
	if end.Goroutines > start.Goroutines+2 {
		failures = append(failures, fmt.Sprintf("goroutines grew from %d to %d", start.Goroutines, end.Goroutines))
	}
	// The sessions that stay (the keepers, offline persistent sessions of the
	// random clients) cost memory; what is left beyond them is a leak.
	if limit := start.HeapAlloc + uint64(c.Sessions)*4096 + 8<<20; end.HeapAlloc > limit {
		failures = append(failures, fmt.Sprintf("heap grew from %d KiB to %d KiB for %d sessions", start.HeapAlloc/1024,
			end.HeapAlloc/1024, c.Sessions))
	}
	if len(failures) > 0 {
		return errors.New(strings.Join(failures, "; "))
	}
	fmt.Println("PASS: nothing lost, nothing leaked")
	return nil
}

func keeperID(k int) string { return fmt.Sprintf("keeper-%d", k) }

// soak holds the shared book of what was sent to the keepers and what they got.
type soak struct {
	addr      string
	keepers   int
	mu        sync.Mutex
	published map[string]map[string]bool // keeper → payloads sent at QoS > 0
	how       sync.Map                   // payload → how it was published, for the report
	received  map[string]map[string]bool
	ops, sent atomic.Int64
	soft      atomic.Int64
	seq       atomic.Int64
}

func (s *soak) record(book map[string]map[string]bool, id, payload string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if book[id] == nil {
		book[id] = map[string]bool{}
	}
	book[id][payload] = true
}

// worker does random things until stop.
func (s *soak) worker(seed uint64, stop time.Time) {
	rng := rand.New(rand.NewPCG(seed, 42))
	for time.Now().Before(stop) {
		s.ops.Add(1)
		id := fmt.Sprintf("rand-%d", rng.IntN(24))
		version := byte(4 + rng.IntN(2))
		clean := rng.IntN(3) == 0
		c, err := s.connect(id, clean, version)
		if err != nil {
			s.soft.Add(1) // e.g. refused while another CONNECT of the id took over
			continue
		}
		if rng.IntN(2) == 0 {
			_ = c.subscribe("soak/"+id, byte(rng.IntN(3)))
		}
		for range rng.IntN(20) {
			qos := byte(rng.IntN(3))
			payload := strconv.FormatInt(s.seq.Add(1), 10)
			topic := "soak/" + fmt.Sprintf("rand-%d", rng.IntN(24))
			toKeeper := rng.IntN(2) == 0 && qos > 0
			if toKeeper && qos == 2 && !clean {
				// A persistent session that dropped a QoS 2 flow keeps its packet id until the
				// PUBREL this simple client never resends; a new message on that id is a
				// duplicate to the broker, rightly. Clean sessions start with no ids in use.
				qos = 1
			}
			if toKeeper {
				k := keeperID(rng.IntN(s.keepers))
				topic = "keep/" + k
				s.record(s.published, k, payload)
				s.how.Store(payload, fmt.Sprintf("QoS %d from %s v%d clean=%v", qos, id, version, clean))
				s.sent.Add(1)
			}
			if err := c.publish(topic, payload, qos); err != nil {
				if toKeeper { // not acknowledged: the broker may not have it; it is not owed
					s.mu.Lock()
					delete(s.published[strings.TrimPrefix(topic, "keep/")], payload)
					s.mu.Unlock()
				}
				s.soft.Add(1)
				break
			}
		}
		c.drain(nil, "", 20*time.Millisecond)
		c.Close(rng.IntN(2) == 0) // politely or by dropping the socket
		if rng.IntN(8) == 0 {     // a keeper wakes up for a moment
			k := rng.IntN(s.keepers)
			if kc, err := s.connect(keeperID(k), false, 5); err == nil {
				kc.drain(s, keeperID(k), 50*time.Millisecond)
				kc.Close(rng.IntN(2) == 0)
			}
		}
	}
}

// conn is a bench client with the bookkeeping of the soak.
type conn struct {
	*rawmqtt.Conn
	nextID uint16
}

func (s *soak) connect(id string, clean bool, version byte) (*conn, error) {
	var props packets.Properties
	if version == 5 && !clean {
		props.SessionExpiryInterval, props.SessionExpiryIntervalFlag = 3600, true
	}
	rc, err := rawmqtt.Dial(s.addr, version, packets.ConnectParams{ClientIdentifier: id, Clean: clean, Keepalive: 30}, props)
	if err != nil {
		return nil, err
	}
	return &conn{Conn: rc}, nil
}

func (c *conn) id() uint16 {
	c.nextID++
	if c.nextID == 0 {
		c.nextID = 1
	}
	return c.nextID
}

func (c *conn) subscribe(filter string, qos byte) error {
	if err := c.Write(&packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, PacketID: c.id(),
		Filters: packets.Subscriptions{{Filter: filter, Qos: qos}}}); err != nil {
		return err
	}
	return c.await(packets.Suback, nil, "")
}

// publish sends one message and waits for its acknowledgement (QoS 1: PUBACK;
// QoS 2: PUBREC, PUBREL, PUBCOMP), answering deliveries meanwhile.
func (c *conn) publish(topic, payload string, qos byte) error {
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: qos}, TopicName: topic,
		Payload: []byte(payload)}
	if qos > 0 {
		pk.PacketID = c.id()
	}
	if err := c.Write(&pk); err != nil {
		return err
	}
	switch qos {
	case 1:
		return c.await(packets.Puback, nil, "")
	case 2:
		if err := c.await(packets.Pubrec, nil, ""); err != nil {
			return err
		}
		if err := c.Write(&packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pubrel, Qos: 1},
			PacketID: pk.PacketID}); err != nil {
			return err
		}
		return c.await(packets.Pubcomp, nil, "")
	}
	return nil
}

// await reads until a packet of type want, acknowledging deliveries (and
// recording them for keeper id when s is set).
func (c *conn) await(want byte, s *soak, id string) error {
	for {
		pk, err := c.Read(5 * time.Second)
		if err != nil {
			return err
		}
		if pk.FixedHeader.Type == want {
			return nil
		}
		if err := c.answer(&pk, s, id); err != nil {
			return err
		}
	}
}

// answer acknowledges a delivery, a PUBREL, or reports a DISCONNECT.
func (c *conn) answer(pk *packets.Packet, s *soak, id string) error {
	switch pk.FixedHeader.Type {
	case packets.Publish:
		if s != nil {
			s.record(s.received, id, string(pk.Payload))
		}
		switch pk.FixedHeader.Qos {
		case 1:
			return c.Write(&packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}, PacketID: pk.PacketID})
		case 2:
			return c.Write(&packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pubrec}, PacketID: pk.PacketID})
		}
	case packets.Pubrel:
		return c.Write(&packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pubcomp}, PacketID: pk.PacketID})
	case packets.Disconnect:
		return fmt.Errorf("DISCONNECT 0x%02x", pk.ReasonCode)
	}
	return nil
}

// drain answers deliveries until the connection is quiet for idle.
func (c *conn) drain(s *soak, id string, idle time.Duration) {
	for {
		pk, err := c.Read(idle)
		if err != nil {
			return
		}
		if c.answer(&pk, s, id) != nil {
			return
		}
	}
}
