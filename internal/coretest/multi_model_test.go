package mqtthooks_test

// TestMultipleSessionsRandomized drives one SubscriberID whose CONNECTs all
// allow multiple sessions (fanout or balance, per sequence) with seeded
// random sequences: connections with different Receive Maximums join and
// leave, messages at QoS 0, 1 and 2 arrive, connections pull part of what
// waits and settle part of what they hold (PUBACK, PUBREC, PUBCOMP). After
// every step it checks that no connection was handed the same message twice
// (fanout gives each connection its own copy; balance moves a leaver's share
// to the others), that no connection holds more unacknowledged deliveries
// than its window, and the Stats equation. At the end one connection drains
// the session, and every QoS 1 and 2 message must have reached a client.

import (
	"context"
	"flag"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"testing"

	"github.com/mqtthooks/mqtthooks"
	"github.com/mqtthooks/mqtthooks/mqtthookstest"
)

var multiRunsFlag = flag.Int("multi.n", 400, "TestMultipleSessionsRandomized: number of random sequences")

const multiSteps = 60

func TestMultipleSessionsRandomized(t *testing.T) {
	for seed := uint64(1); seed <= uint64(*multiRunsFlag); seed++ {
		r := newMultiRun(t, seed)
		if err := r.run(); err != nil {
			t.Fatalf("seed %d: %v\nsteps:\n%s", seed, err, strings.Join(r.log, "\n"))
		}
	}
}

// multiConn is one connection of the shared session, as the test sees it.
type multiConn struct {
	name   string
	client *mqtthookstest.Client
	window int
	seen   map[string]bool           // payloads handed to this connection
	held   map[uint16]*multiDelivery // unacknowledged, by packet id
	order  []uint16                  // packet ids in the order they came
}

type multiDelivery struct {
	payload  string
	qos      byte
	released bool // PUBREC sent: a PUBREL is owed, or the delivery was a PUBREL
}

type multiRun struct {
	t     *testing.T
	rng   *rand.Rand
	f     *fixture
	mode  mqtthooks.DeliverMode
	conns []*multiConn
	n     int             // messages routed
	qos   map[string]byte // payload → QoS
	got   map[string]bool // payloads some client received
	log   []string
	next  int
}

func newMultiRun(t *testing.T, seed uint64) *multiRun {
	r := &multiRun{t: t, rng: rand.New(rand.NewPCG(seed, 0x6d756c7469)), qos: map[string]byte{}, got: map[string]bool{}}
	r.mode = []mqtthooks.DeliverMode{mqtthooks.DeliverFanout, mqtthooks.DeliverBalance}[r.rng.IntN(2)]
	r.f = newFixture(t, mqtthooks.Options{MaxInflightMessages: mqtthooks.Some(3),
		MaxOnlineMessages: mqtthooks.Some(-1), MaxOfflineMessages: mqtthooks.Some(-1), StoreQoS0Offline: true})
	r.f.rec.AuthOnRegisterM5Func = multi(r.mode)
	r.logf("mode %v", r.mode)
	return r
}

func (r *multiRun) logf(format string, args ...any) {
	r.log = append(r.log, "  "+fmt.Sprintf(format, args...))
}

func (r *multiRun) run() error {
	defer func() {
		for _, c := range r.conns {
			c.client.Drop(context.Background(), nil)
		}
	}()
	if err := r.join(); err != nil {
		return err
	}
	for range multiSteps {
		var err error
		switch k := r.rng.IntN(100); {
		case k < 12 && len(r.conns) < 3:
			err = r.join()
		case k < 22 && len(r.conns) > 0:
			err = r.leave(r.pick())
		case k < 50:
			err = r.deliver()
		case k < 75 && len(r.conns) > 0:
			err = r.pull(r.pick(), 1+r.rng.IntN(4))
		case len(r.conns) > 0:
			err = r.settle(r.pick())
		}
		if err == nil {
			err = r.check()
		}
		if err != nil {
			return err
		}
	}
	return r.drain()
}

func (r *multiRun) pick() *multiConn { return r.conns[r.rng.IntN(len(r.conns))] }

func (r *multiRun) join() error {
	rm := []uint16{1, 2, 5}[r.rng.IntN(3)]
	r.next++
	c := &multiConn{name: "c" + strconv.Itoa(r.next), window: min(3, int(rm)),
		seen: map[string]bool{}, held: map[uint16]*multiDelivery{}}
	c.client = mqtthookstest.NewClient(r.f.core)
	c.client.Connect(context.Background(), receiveMax(mqtthookstest.V5("m", "u", false, 300), rm))
	if !c.client.Accepted() {
		return fmt.Errorf("join %s: rejected: %v", c.name, c.client.Step.Err)
	}
	r.conns = append(r.conns, c)
	r.logf("join %s (window %d)", c.name, c.window)
	return nil
}

func (r *multiRun) leave(c *multiConn) error {
	c.client.Drop(context.Background(), nil)
	for i, x := range r.conns {
		if x == c {
			r.conns = append(r.conns[:i], r.conns[i+1:]...)
			break
		}
	}
	r.logf("leave %s (holding %d)", c.name, len(c.held))
	return nil
}

func (r *multiRun) deliver() error {
	r.n++
	p := strconv.Itoa(r.n)
	q := byte(r.rng.IntN(3))
	r.qos[p] = q
	msg := &mqtthooks.Message{Topic: "t", Payload: []byte(p), QoS: q}
	r.logf("deliver %s QoS %d", p, q)
	return r.f.core.Deliver(sid("m"), msg, mqtthooks.DeliverOptions{QoS: q})
}

func (r *multiRun) pull(c *multiConn, k int) error {
	buf := make([]mqtthooks.Delivery, k)
	n, err := c.client.Session.Pull(buf)
	if err != nil {
		return fmt.Errorf("%s: Pull: %v", c.name, err)
	}
	var desc []string
	for _, d := range buf[:n] {
		if d.Pubrel {
			desc = append(desc, fmt.Sprintf("PUBREL %d", d.PacketID))
			c.held[d.PacketID] = &multiDelivery{qos: 2, released: true}
			c.order = append(c.order, d.PacketID)
			continue
		}
		p := string(d.Message.Payload)
		desc = append(desc, fmt.Sprintf("%s/%d", p, d.PacketID))
		if c.seen[p] {
			return fmt.Errorf("%s was handed message %s a second time (%s)", c.name, p, strings.Join(desc, ", "))
		}
		c.seen[p] = true
		r.got[p] = true
		if d.QoS > 0 {
			c.held[d.PacketID] = &multiDelivery{payload: p, qos: d.QoS}
			c.order = append(c.order, d.PacketID)
		}
	}
	r.logf("pull %s buf %d → [%s]", c.name, k, strings.Join(desc, ", "))
	if len(c.held) > c.window {
		return fmt.Errorf("%s holds %d unacknowledged deliveries; its window is %d", c.name, len(c.held), c.window)
	}
	return nil
}

func (r *multiRun) settle(c *multiConn) error {
	if len(c.order) == 0 {
		return nil
	}
	i := r.rng.IntN(len(c.order))
	id := c.order[i]
	d := c.held[id]
	var err error
	switch {
	case d.qos == 1:
		err = c.client.Session.Puback(id)
	case !d.released:
		err = c.client.Session.Pubrec(id, nil)
		d.released = true
		r.logf("%s PUBREC %d", c.name, id)
		if err != nil {
			return fmt.Errorf("%s: PUBREC %d: %v", c.name, id, err)
		}
		return nil
	default:
		err = c.client.Session.Pubcomp(id)
	}
	r.logf("%s settles %d (%s)", c.name, id, d.payload)
	if err != nil {
		return fmt.Errorf("%s: settle %d: %v", c.name, id, err)
	}
	delete(c.held, id)
	c.order = append(c.order[:i], c.order[i+1:]...)
	return nil
}

func (r *multiRun) check() error {
	st := r.f.core.Stats()
	info, _ := r.f.core.Lookup(sid("m"))
	held := uint64(info.Pending + info.Inflight)
	if st.Routed+st.Restored != st.Delivered+st.Dropped+st.NotStoredQoS0+st.Discarded+held {
		return fmt.Errorf("Stats: routed %d ≠ delivered %d + dropped %d + not stored %d + discarded %d + held %d",
			st.Routed, st.Delivered, st.Dropped, st.NotStoredQoS0, st.Discarded, held)
	}
	return nil
}

// drain ends every connection, then one connection takes what the session
// kept and settles all of it.
func (r *multiRun) drain() error {
	for len(r.conns) > 0 {
		if err := r.leave(r.conns[0]); err != nil {
			return err
		}
	}
	if err := r.join(); err != nil {
		return err
	}
	c := r.conns[0]
	for range 10000 {
		ds, err := c.client.PullAll()
		if err != nil {
			return fmt.Errorf("drain: %v", err)
		}
		if len(ds) == 0 {
			break
		}
		for _, d := range ds {
			if d.Message != nil {
				r.got[string(d.Message.Payload)] = true
			}
			if err := c.client.Settle(d); err != nil {
				return fmt.Errorf("drain: settle: %v", err)
			}
		}
	}
	if err := r.check(); err != nil {
		return err
	}
	for p, q := range r.qos {
		if q > 0 && !r.got[p] {
			return fmt.Errorf("QoS %d message %s reached no client", q, p)
		}
	}
	return nil
}
