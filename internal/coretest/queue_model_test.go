package mqtthooks_test

// Model-based tests of the message side of sessions (SPEC §9, §11; OQ6,
// OQ13): nothing routed to a persistent session is lost.
//
// TestNoLossRandomized drives a Core with random, seeded sequences over two
// or three persistent sessions (v3 clean_session 0; v5 with SEI 300 and a
// Receive Maximum chosen per connection; optionally a v3 session with a LIFO
// queue), interleaving Deliver at QoS 0/1/2 (some with a v5 Message Expiry),
// partial Pulls, PUBACK/PUBREC/PUBCOMP (also early, and wrong ones), inbound
// QoS 2 identifiers, DISCONNECT, lost connections, takeovers, reconnects, the
// old connections' late calls, and the passing of fake time. A small model of
// every session's queue (pending, in flight with packet identifiers, PUBRELs
// owed) predicts exactly what each Pull returns; after every step the test
// checks the Stats equation, Lookup, the OnMessageDrop calls, and that the
// broker was notified whenever work waits. At the end every session is
// reconnected and drained, and every QoS 1/2 message must have been received
// by a client or dropped with an OnMessageDrop.
//
// TestTakeoverStormWhilePublishing checks the same promise under real
// concurrency: 100 connections take one persistent session over at once
// while a publisher delivers 2000 QoS 1 messages to it.

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"maps"
	"math/rand/v2"
	"reflect"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/mqtthooks/mqtthooks"
	"github.com/mqtthooks/mqtthooks/mqtthookstest"
)

var (
	nlSeedFlag = flag.Uint64("noloss.seed", 0, "TestNoLossRandomized: run only the sequence with this seed")
	nlRunsFlag = flag.Int("noloss.n", 1200, "TestNoLossRandomized: number of random sequences")
)

const nlSteps = 40

func TestNoLossRandomized(t *testing.T) {
	first, n := uint64(1), uint64(*nlRunsFlag)
	if *nlSeedFlag != 0 {
		first, n = *nlSeedFlag, 1
	}
	// tally counts what the sequences exercised; shown with -v.
	tally := map[string]int{}
	for seed := first; seed < first+n; seed++ {
		ok := true
		synctest.Test(t, func(t *testing.T) { ok = nlRunSequence(t, seed, tally) })
		if !ok {
			return // one failing sequence is enough to read
		}
	}
	var b strings.Builder
	for _, k := range slices.Sorted(maps.Keys(tally)) {
		fmt.Fprintf(&b, "\n  %7d  %s", tally[k], k)
	}
	t.Logf("%d sequences of %d steps; exercised:%s", n, nlSteps, b.String())
}

// nlRunSequence runs one sequence in a synctest bubble (so that Message
// Expiry runs on a fake clock) and reports whether the Core kept to the model.
func nlRunSequence(t *testing.T, seed uint64, tally map[string]int) bool {
	r := newNLRun(t, seed, tally)
	fail := func(step string, err error) bool {
		t.Errorf("seed %d, %s: %v\noperations:\n%s\nmodel:\n%s"+
			"reproduce with: go test -race -run 'TestNoLossRandomized$' . -args -noloss.seed=%d",
			seed, step, err, strings.Join(r.log, "\n"), r.dump(), seed)
		return false
	}
	if err := r.start(); err != nil {
		return fail("start", err)
	}
	for step := 1; step <= nlSteps; step++ {
		if err := r.randomOp(); err != nil {
			return fail(fmt.Sprintf("step %d", step), err)
		}
		if err := r.check(); err != nil {
			return fail(fmt.Sprintf("step %d", step), err)
		}
	}
	if err := r.drain(); err != nil {
		return fail("final drain", err)
	}
	return true
}

// nlState is where the model has a message.
type nlState uint8

const (
	nlQueued    nlState = iota
	nlInflight          // handed out, not settled
	nlSettled           // PUBACK or PUBCOMP (QoS 0: handed out)
	nlDropped           // OnMessageDrop
	nlNotStored         // QoS 0 for an offline session (OQ6)
)

func (s nlState) String() string {
	return [...]string{"queued", "in flight", "settled", "dropped", "not stored"}[s]
}

// nlMsg is one message routed to one session.
type nlMsg struct {
	n        int
	sess     *nlSession
	qos      byte
	msg      *mqtthooks.Message
	expires  time.Time // zero: no Message Expiry
	state    nlState
	received bool // a client got its PUBLISH at least once
}

func (m *nlMsg) payload() string { return string(m.msg.Payload) }

// nlFlight is a delivery in flight, as the model sees it.
type nlFlight struct {
	m        *nlMsg
	pid      uint16
	released bool // PUBREC came: a PUBREL is owed
	resend   bool // to be offered again (DUP or PUBREL) to the current connection
	seen     bool // the current connection has it, so its client may settle it
}

// nlConn is one accepted connection.
type nlConn struct {
	client    *mqtthookstest.Client
	name      string
	takenOver bool
	started   bool
	lost      bool // the broker reported the end of a taken-over connection
	// notified: a Notify came since the last Pull that returned fewer than
	// the buffer (the broker pulls until then, SPEC §11).
	notified bool
}

// nlSession is the model of one persistent session.
type nlSession struct {
	name     string
	id       mqtthooks.SubscriberID
	v5, lifo bool
	window   int // in-flight window of the current connection
	pending  []*nlMsg
	inflight []*nlFlight
	inbound  map[uint16]bool // inbound QoS 2 ids awaiting PUBREL
	cur      *nlConn
	old      []*nlConn
	nconns   int
	drops    []string // expected OnMessageDrop calls: "payload/reason"
	firsts   []int    // message numbers of first deliveries, in order
}

// outstanding counts the deliveries the current connection holds unsettled:
// in flight and not waiting to be offered again.
func (s *nlSession) outstanding() int {
	n := 0
	for _, f := range s.inflight {
		if !f.resend {
			n++
		}
	}
	return n
}

type nlRun struct {
	t     *testing.T
	rng   *rand.Rand
	f     *fixture
	ctx   context.Context
	tally map[string]int
	log   []string

	maxOnline, maxOffline, maxInflight int

	// hookMsg is delivered by the next OnRegister (N15).
	hookMsg *nlMsg
	hookRan bool
	hookErr error

	sessions                                        []*nlSession
	msgs                                            []*nlMsg
	routed, delivered, dropped, notStored, restored uint64
	store                                           *mqtthookstest.Store
}

func newNLRun(t *testing.T, seed uint64, tally map[string]int) *nlRun {
	rng := rand.New(rand.NewPCG(seed, 0x6e6f6c6f7373))
	r := &nlRun{t: t, rng: rng, ctx: context.Background(), tally: tally}
	r.maxInflight = []int{1, 2, 3, 5}[rng.IntN(4)]
	r.maxOnline = []int{-1, 3, 6}[rng.IntN(3)]
	r.maxOffline = []int{-1, 0, 2, 4, 4}[rng.IntN(5)]
	r.store = new(mqtthookstest.Store)
	r.newCore(r.store)
	r.sessions = []*nlSession{{name: "a"}, {name: "b", v5: true}}
	if rng.IntN(2) == 0 {
		r.sessions = append(r.sessions, &nlSession{name: "c", lifo: true})
	}
	for _, s := range r.sessions {
		s.id = sid(s.name)
		s.inbound = map[uint16]bool{}
	}
	r.logf("options: MaxInflight %d, MaxOnline %d, MaxOffline %d, sessions %d",
		r.maxInflight, r.maxOnline, r.maxOffline, len(r.sessions))
	return r
}

// newCore starts the Core under test on store.
func (r *nlRun) newCore(store mqtthooks.SessionStore) {
	r.f = newFixture(r.t, mqtthooks.Options{
		MaxInflightMessages: mqtthooks.Some(r.maxInflight),
		MaxOnlineMessages:   mqtthooks.Some(r.maxOnline),
		MaxOfflineMessages:  mqtthooks.Some(r.maxOffline),
		Store:               store,
	})
	lifo := mqtthooks.AcceptWith(&mqtthooks.Modifiers{QueueType: mqtthooks.Some(mqtthooks.QueueLIFO)})
	r.f.rec.Lifecycle = func(_ context.Context, call mqtthookstest.Call) {
		if (call.Hook == "OnRegister" || call.Hook == "OnRegisterM5") && r.hookMsg != nil {
			m := r.hookMsg
			r.hookMsg, r.hookRan = nil, true
			r.hookErr = r.f.core.Deliver(m.sess.id, m.msg, mqtthooks.DeliverOptions{QoS: m.qos})
		}
	}
	r.f.rec.AuthOnRegisterFunc = func(_ context.Context, req *mqtthooks.RegisterRequest) mqtthooks.RegisterResult {
		if req.SubscriberID.ClientID == "c" {
			return lifo
		}
		return mqtthooks.Accept()
	}
}

// opRestart stops the Core, by Shutdown or by a crash, and starts a new one
// on what its store kept: every session comes back offline with its QoS 1 and
// 2 messages, pending and in flight (their ids, their PUBRELs), and its
// inbound QoS 2 identifiers; QoS 0 messages are not stored. The new Core's
// counters start over, with the stored messages Restored.
func (r *nlRun) opRestart(crash bool) error {
	if err := r.check(); err != nil { // the old Core's counters and drops, one last time
		return err
	}
	store := r.store
	if crash {
		store = r.store.Crash(r.t)
	}
	if err := r.f.core.Shutdown(r.ctx); err != nil {
		return fmt.Errorf("Shutdown: %v", err)
	}
	r.store = store
	r.newCore(store)
	r.routed, r.delivered, r.dropped, r.notStored, r.restored = 0, 0, 0, 0, 0
	for _, s := range r.sessions {
		s.cur, s.old, s.drops = nil, nil, nil
		for _, f := range s.inflight {
			f.resend, f.seen = true, false
		}
		kept := s.pending[:0]
		for _, m := range s.pending {
			if m.qos == 0 {
				m.state = nlNotStored // at most once: a restart loses it
				continue
			}
			kept = append(kept, m)
		}
		s.pending = kept
		r.restored += uint64(len(s.pending) + len(s.inflight))
	}
	r.logf("%s: the Core restarts on its store", map[bool]string{true: "crash", false: "shutdown"}[crash])
	r.tally[map[bool]string{true: "crash and restart", false: "shutdown and restart"}[crash]]++
	return nil
}

func (r *nlRun) logf(format string, args ...any) {
	r.log = append(r.log, "  "+fmt.Sprintf(format, args...))
}

// start connects every session for the first time.
func (r *nlRun) start() error {
	for _, s := range r.sessions {
		if err := r.connect(s, false, false); err != nil {
			return err
		}
	}
	return r.check()
}

// randomOp runs one random operation that applies in the current state.
func (r *nlRun) randomOp() error {
	for {
		s := r.sessions[r.rng.IntN(len(r.sessions))]
		switch k := r.rng.IntN(100); {
		case k < 28:
			return r.opDeliver(s)
		case k < 48:
			if s.cur != nil {
				return r.opPull(s, 1+r.rng.IntN(4))
			}
		case k < 62:
			if f := r.pickFlight(s, func(f *nlFlight) bool { return f.seen }); f != nil {
				return r.opSettle(s, f, "settle")
			}
		case k < 64:
			if f := r.pickFlight(s, func(f *nlFlight) bool { return f.resend }); f != nil {
				return r.opSettle(s, f, "early settle")
			}
		case k < 66:
			if s.cur != nil {
				return r.opWrongAck(s)
			}
		case k < 69:
			if s.cur != nil {
				return r.opInbound(s)
			}
		case k < 73:
			if s.cur != nil {
				return r.opEnd(s, false)
			}
		case k < 77:
			if s.cur != nil {
				return r.opEnd(s, true)
			}
		case k < 83:
			if s.cur != nil {
				return r.opConnect(s, "takeover")
			}
		case k < 92:
			if s.cur == nil {
				return r.opConnect(s, "reconnect")
			}
		case k < 96:
			if len(s.old) > 0 {
				return r.opStale(s, s.old[r.rng.IntN(len(s.old))])
			}
		case k < 98:
			return r.opRestart(r.rng.IntN(2) == 0)
		default:
			return r.opSleep()
		}
	}
}

func (r *nlRun) pickFlight(s *nlSession, ok func(*nlFlight) bool) *nlFlight {
	if s.cur == nil {
		return nil
	}
	var fs []*nlFlight
	for _, f := range s.inflight {
		if ok(f) {
			fs = append(fs, f)
		}
	}
	if len(fs) == 0 {
		return nil
	}
	return fs[r.rng.IntN(len(fs))]
}

// --- operations -------------------------------------------------------------

func (r *nlRun) opDeliver(s *nlSession) error {
	m := r.newMsg(s)
	r.logf("deliver %s", m)
	if err := r.f.core.Deliver(s.id, m.msg, mqtthooks.DeliverOptions{QoS: m.qos}); err != nil {
		return fmt.Errorf("Deliver %s: %v", m.payload(), err)
	}
	r.enqueue(s, m)
	return nil
}

// newMsg makes the next message for s: QoS 1 or 2, sometimes 0, sometimes
// with a Message Expiry Interval.
func (r *nlRun) newMsg(s *nlSession) *nlMsg {
	qos := byte(1 + r.rng.IntN(2))
	if r.rng.IntN(10) == 0 {
		qos = 0
	}
	m := &nlMsg{n: len(r.msgs), sess: s, qos: qos}
	m.msg = &mqtthooks.Message{Topic: "t/" + s.name, QoS: qos,
		Payload: []byte(s.name + "-" + strconv.Itoa(m.n))}
	if r.rng.IntN(4) == 0 {
		exp := uint32(1 + r.rng.IntN(8))
		m.msg.Properties.MessageExpiryInterval = mqtthooks.Some(exp)
		m.expires = time.Now().Add(time.Duration(exp) * time.Second)
	}
	r.msgs = append(r.msgs, m)
	return m
}

func (m *nlMsg) String() string {
	s := fmt.Sprintf("%s QoS %d to %s", m.payload(), m.qos, m.sess.name)
	if exp := m.msg.Properties.MessageExpiryInterval; exp.Set {
		s += fmt.Sprintf(" expiry %ds", exp.V)
	}
	return s
}

// enqueue is what the model does with a message the Core accepted for s:
// QoS 0 is not stored offline (OQ6); a full queue drops the incoming message
// (FIFO) or the oldest (LIFO) with OnMessageDrop.
func (r *nlRun) enqueue(s *nlSession, m *nlMsg) {
	r.routed++
	online := s.cur != nil
	if m.qos == 0 && !online {
		m.state = nlNotStored
		r.notStored++
		r.tally["QoS 0 not stored offline"]++
		return
	}
	limit := r.maxOffline
	if online {
		limit = r.maxOnline
	}
	if limit >= 0 && len(s.pending) >= limit {
		victim := m
		if limit > 0 && s.lifo {
			victim = s.pending[0]
			s.pending = s.pending[1:]
			r.tally["drop queue-full (LIFO, oldest)"]++
		} else {
			r.tally["drop queue-full (incoming)"]++
		}
		r.drop(victim, mqtthooks.DropQueueFull)
		if victim == m {
			return
		}
	}
	s.pending = append(s.pending, m)
	r.tally["deliver"]++
}

func (r *nlRun) drop(m *nlMsg, reason mqtthooks.DropReason) {
	m.state = nlDropped
	r.dropped++
	m.sess.drops = append(m.sess.drops, m.payload()+"/"+reason.String())
}

// drainNotify records a Notify that came for c.
func drainNotify(c *nlConn) {
	select {
	case <-c.client.Conn.Notified():
		c.notified = true
	default:
	}
}

// opPull pulls up to k deliveries and compares them with the model's
// prediction: first the resends (DUP, same packet id) and PUBRELs owed, in
// the order they were first sent, then pending messages in queue order
// (newest first for LIFO) as far as the in-flight window allows; expired ones
// are dropped on the way.
func (r *nlRun) opPull(s *nlSession, k int) error {
	c := s.cur
	drainNotify(c)
	buf := make([]mqtthooks.Delivery, k)
	n, err := c.client.Session.Pull(buf)
	if err != nil {
		return fmt.Errorf("%s: Pull: %v", c.name, err)
	}
	got := buf[:n]
	var desc []string
	for _, d := range got {
		desc = append(desc, nlDescribe(d))
	}
	r.logf("pull %s buf %d → [%s]", c.name, k, strings.Join(desc, ", "))
	now := time.Now()
	i := 0
	next := func(what string) (mqtthooks.Delivery, error) {
		if i >= n {
			return mqtthooks.Delivery{}, fmt.Errorf("%s: Pull returned %d deliveries; the model expects %s next", c.name, n, what)
		}
		i++
		return got[i-1], nil
	}
	out := s.outstanding()
	for _, f := range s.inflight {
		if i == k {
			break
		}
		if !f.resend {
			continue
		}
		if out >= s.window { // a smaller Receive Maximum than before: a window at a time
			r.tally["resend held by the window"]++
			break
		}
		out++
		f.resend, f.seen = false, true
		if f.released {
			d, err := next(fmt.Sprintf("the PUBREL of %d (%s)", f.pid, f.m.payload()))
			if err != nil {
				return err
			}
			if want := (mqtthooks.Delivery{PacketID: f.pid, QoS: 2, Pubrel: true}); !reflect.DeepEqual(d, want) {
				return fmt.Errorf("%s: delivery %d is %s; want the PUBREL of %d owed for %s", c.name, i, nlDescribe(d), f.pid, f.m.payload())
			}
			r.tally["PUBREL offered again"]++
			continue
		}
		d, err := next(fmt.Sprintf("the resend of %s with id %d", f.m.payload(), f.pid))
		if err != nil {
			return err
		}
		if d.Pubrel || d.Message != f.m.msg || d.PacketID != f.pid || !d.Dup || d.QoS != f.m.qos {
			return fmt.Errorf("%s: delivery %d is %s; want %s again with DUP and its id %d (redeliveries come first, in order)",
				c.name, i, nlDescribe(d), f.m.payload(), f.pid)
		}
		if err := nlCheckExpiry(d, f.m, now); err != nil {
			return fmt.Errorf("%s: %v", c.name, err)
		}
		r.tally[fmt.Sprintf("QoS %d resent with DUP", f.m.qos)]++
	}
	for i < k && len(s.pending) > 0 {
		var m *nlMsg
		if s.lifo {
			m = s.pending[len(s.pending)-1]
			s.pending = s.pending[:len(s.pending)-1]
		} else {
			m = s.pending[0]
			s.pending = s.pending[1:]
		}
		if !m.expires.IsZero() && !now.Before(m.expires) {
			r.drop(m, mqtthooks.DropExpired)
			r.tally["drop expired"]++
			continue
		}
		if m.qos > 0 && len(s.inflight) >= s.window {
			if s.lifo {
				s.pending = append(s.pending, m)
			} else {
				s.pending = slices.Insert(s.pending, 0, m)
			}
			r.tally["window full"]++
			break
		}
		d, err := next(fmt.Sprintf("%s (QoS %d)", m.payload(), m.qos))
		if err != nil {
			return err
		}
		if d.Pubrel || d.Dup || d.Message != m.msg || d.QoS != m.qos {
			return fmt.Errorf("%s: delivery %d is %s; want %s at QoS %d without DUP", c.name, i, nlDescribe(d), m.payload(), m.qos)
		}
		if err := nlCheckExpiry(d, m, now); err != nil {
			return fmt.Errorf("%s: %v", c.name, err)
		}
		m.received = true
		s.firsts = append(s.firsts, m.n)
		if m.qos == 0 {
			if d.PacketID != 0 {
				return fmt.Errorf("%s: QoS 0 %s has packet id %d", c.name, m.payload(), d.PacketID)
			}
			m.state = nlSettled
			r.delivered++
			r.tally["QoS 0 handed out"]++
			continue
		}
		if d.PacketID == 0 {
			return fmt.Errorf("%s: %s at QoS %d has packet id 0", c.name, m.payload(), m.qos)
		}
		for _, f := range s.inflight {
			if f.pid == d.PacketID {
				return fmt.Errorf("%s: %s got packet id %d, which %s still holds in flight", c.name, m.payload(), d.PacketID, f.m.payload())
			}
		}
		m.state = nlInflight
		s.inflight = append(s.inflight, &nlFlight{m: m, pid: d.PacketID, seen: true})
		r.tally[fmt.Sprintf("QoS %d first delivery", m.qos)]++
	}
	if n > i {
		return fmt.Errorf("%s: Pull returned %d deliveries; the model expects only %d (extra: %s)", c.name, n, i, nlDescribe(got[i]))
	}
	if n < k {
		c.notified = false // the broker saw the queue empty; the next work must notify
	}
	return nil
}

// nlCheckExpiry checks the remaining Message Expiry Interval handed out.
func nlCheckExpiry(d mqtthooks.Delivery, m *nlMsg, now time.Time) error {
	if m.expires.IsZero() {
		if d.MessageExpiry != 0 {
			return fmt.Errorf("%s has no Message Expiry, but the delivery carries %d", m.payload(), d.MessageExpiry)
		}
		return nil
	}
	left := m.expires.Sub(now)
	if left <= 0 { // an in-flight message resent after its expiry: it does not expire
		if d.MessageExpiry < 1 {
			return fmt.Errorf("%s resent after its expiry carries Message Expiry %+v; want at least 1", m.payload(), d.MessageExpiry)
		}
		return nil
	}
	want := uint32((left + time.Second - 1) / time.Second)
	if d.MessageExpiry != want {
		return fmt.Errorf("%s carries Message Expiry %+v; want %d s left", m.payload(), d.MessageExpiry, want)
	}
	return nil
}

func nlDescribe(d mqtthooks.Delivery) string {
	switch {
	case d.Pubrel:
		return fmt.Sprintf("PUBREL(%d)", d.PacketID)
	case d.Message == nil:
		return fmt.Sprintf("PUBLISH(id %d, no message)", d.PacketID)
	}
	dup := ""
	if d.Dup {
		dup = ",dup"
	}
	return fmt.Sprintf("%s(q%d,id %d%s)", d.Message.Payload, d.QoS, d.PacketID, dup)
}

// opSettle sends the client's answer to f: PUBACK for QoS 1, PUBREC then
// (another step) PUBCOMP for QoS 2. Early answers go to deliveries the
// resumed connection has not been offered again yet.
func (r *nlRun) opSettle(s *nlSession, f *nlFlight, what string) error {
	sess := s.cur.client.Session
	var err error
	var kind string
	switch {
	case f.m.qos == 1:
		kind, err = "PUBACK", sess.Puback(f.pid)
	case !f.released:
		kind, err = "PUBREC", sess.Pubrec(f.pid, nil)
	default:
		kind, err = "PUBCOMP", sess.Pubcomp(f.pid)
	}
	r.logf("%s %s: %s %d (%s) → %v", what, s.cur.name, kind, f.pid, f.m.payload(), err)
	if err != nil {
		return fmt.Errorf("%s %d of %s on %s: %v", kind, f.pid, f.m.payload(), s.cur.name, err)
	}
	r.tally[what+" "+kind]++
	if kind == "PUBREC" {
		f.released = true
		f.m.received = true // the client has the message (maybe from an earlier connection)
		return nil
	}
	f.m.received = true
	f.m.state = nlSettled
	r.delivered++
	s.inflight = slices.DeleteFunc(s.inflight, func(x *nlFlight) bool { return x == f })
	return nil
}

// opWrongAck sends an acknowledgement that matches no delivery in that state:
// it fails with ErrPacketIDNotFound and changes nothing.
func (r *nlRun) opWrongAck(s *nlSession) error {
	sess := s.cur.client.Session
	unused := uint16(1)
	for slices.ContainsFunc(s.inflight, func(f *nlFlight) bool { return f.pid == unused }) {
		unused++
	}
	type try struct {
		what string
		fn   func() error
	}
	tries := []try{
		{fmt.Sprintf("PUBACK %d (unknown)", unused), func() error { return sess.Puback(unused) }},
		{fmt.Sprintf("PUBCOMP %d (unknown)", unused), func() error { return sess.Pubcomp(unused) }},
		{fmt.Sprintf("PUBREC %d (unknown)", unused), func() error { return sess.Pubrec(unused, nil) }},
	}
	for _, f := range s.inflight {
		switch {
		case f.m.qos == 1:
			tries = append(tries, try{fmt.Sprintf("PUBREC %d of QoS 1", f.pid), func() error { return sess.Pubrec(f.pid, nil) }},
				try{fmt.Sprintf("PUBCOMP %d of QoS 1", f.pid), func() error { return sess.Pubcomp(f.pid) }})
		case !f.released:
			tries = append(tries, try{fmt.Sprintf("PUBACK %d of QoS 2", f.pid), func() error { return sess.Puback(f.pid) }},
				try{fmt.Sprintf("PUBCOMP %d before PUBREC", f.pid), func() error { return sess.Pubcomp(f.pid) }})
		default:
			tries = append(tries, try{fmt.Sprintf("PUBACK %d of QoS 2", f.pid), func() error { return sess.Puback(f.pid) }})
		}
	}
	tr := tries[r.rng.IntN(len(tries))]
	err := tr.fn()
	r.logf("wrong ack %s: %s → %v", s.cur.name, tr.what, err)
	if !errors.Is(err, mqtthooks.ErrPacketIDNotFound) {
		return fmt.Errorf("%s on %s returned %v; want ErrPacketIDNotFound", tr.what, s.cur.name, err)
	}
	r.tally["wrong ack refused"]++
	return nil
}

// opInbound sends an inbound QoS 2 PUBLISH id or its PUBREL; the ids awaiting
// PUBREL belong to the session, across connections.
func (r *nlRun) opInbound(s *nlSession) error {
	id := uint16(1 + r.rng.IntN(3))
	sess := s.cur.client.Session
	if r.rng.IntN(2) == 0 {
		first, err := sess.InboundPublish(id, nil)
		r.logf("inbound %s: PUBLISH id %d → first %v, %v", s.cur.name, id, first, err)
		if err != nil || first == s.inbound[id] {
			return fmt.Errorf("InboundPublish(%d) on %s = %v, %v; want first=%v", id, s.cur.name, first, err, !s.inbound[id])
		}
		s.inbound[id] = true
		return nil
	}
	known, err := sess.InboundPubrel(id, nil)
	r.logf("inbound %s: PUBREL id %d → known %v, %v", s.cur.name, id, known, err)
	if err != nil || known != s.inbound[id] {
		return fmt.Errorf("InboundPubrel(%d) on %s = %v, %v; want known=%v", id, s.cur.name, known, err, s.inbound[id])
	}
	if known {
		r.tally["inbound QoS 2 id released"]++
	}
	delete(s.inbound, id)
	return nil
}

// opEnd ends the current connection: the client's DISCONNECT, or a lost
// connection. The session goes offline with everything it holds.
func (r *nlRun) opEnd(s *nlSession, lost bool) error {
	c := s.cur
	if lost {
		c.client.Drop(r.ctx, nil)
		r.logf("lost %s", c.name)
	} else {
		err := c.client.Disconnect(r.ctx, mqtthooks.CodeNormalDisconnection)
		r.logf("disconnect %s → %v", c.name, err)
		if err != nil {
			return fmt.Errorf("DISCONNECT of %s: %v", c.name, err)
		}
	}
	r.tally[map[bool]string{false: "disconnect", true: "lost"}[lost]]++
	s.old = append(s.old, c)
	s.cur = nil
	for _, f := range s.inflight {
		f.resend, f.seen = true, false
	}
	return nil
}

// opConnect connects a new client to s with clean_session 0 / Clean Start 0:
// a reconnect of an offline session, or a takeover of an online one.
func (r *nlRun) opConnect(s *nlSession, what string) error {
	if err := r.connect(s, true, true); err != nil {
		return err
	}
	r.tally[what]++
	return nil
}

// connect attaches a new connection to s; present is the Session Present the
// CONNACK must carry. With extras, the connection may start late (OQ13: no
// Notify and Pull fails before Start), be taken over before its Start (N16),
// or see a message delivered by OnRegister (N15: after what was queued).
func (r *nlRun) connect(s *nlSession, present, extras bool) error {
	s.nconns++
	c := &nlConn{client: mqtthookstest.NewClient(r.f.core), name: fmt.Sprintf("%s#%d", s.name, s.nconns)}
	var req *mqtthooks.ConnectRequest
	window := r.maxInflight
	rm := ""
	if s.v5 {
		req = mqtthookstest.V5(s.name, "u", false, 300)
		if v := uint16([]int{0, 0, 1, 2, 4}[r.rng.IntN(5)]); v > 0 {
			req.Properties.ReceiveMaximum = v
			window = min(window, int(v))
			rm = fmt.Sprintf(", Receive Maximum %d", v)
		}
	} else {
		req = mqtthookstest.V3(s.name, "u", false)
	}
	var hookMsg *nlMsg
	if extras && r.rng.IntN(5) == 0 {
		hookMsg = r.newMsg(s)
		r.hookMsg, r.hookRan, r.hookErr = hookMsg, false, nil
	}
	manual := extras && r.rng.IntN(4) == 0
	c.client.ManualStart = manual
	c.client.Connect(r.ctx, req)
	r.hookMsg = nil
	old := s.cur
	action := "reconnect"
	switch {
	case old != nil:
		action = "takeover by"
	case !present:
		action = "connect"
	}
	r.logf("%s %s (window %d%s, manual Start %v)", action, c.name, window, rm, manual)
	if !c.client.Accepted() {
		return fmt.Errorf("CONNECT of %s rejected: %+v (%v)", c.name, c.client.Connack(), c.client.Step.Err)
	}
	if got := c.client.Connack().SessionPresent; got != present {
		return fmt.Errorf("CONNACK of %s has Session Present %v; want %v", c.name, got, present)
	}
	if old != nil {
		for _, f := range s.inflight {
			f.resend, f.seen = true, false
		}
		old.takenOver = true
		s.old = append(s.old, old)
	}
	s.cur, s.window = c, window
	if hookMsg != nil {
		switch {
		case !r.hookRan:
			return fmt.Errorf("no OnRegister for %s", c.name)
		case r.hookErr != nil:
			return fmt.Errorf("Deliver %s from OnRegister: %v", hookMsg.payload(), r.hookErr)
		}
		r.logf("deliver %s from OnRegister of %s", hookMsg, c.name)
		r.enqueue(s, hookMsg)
		r.tally["deliver from OnRegister"]++
	}
	if old != nil {
		synctest.Wait() // the Core calls Conn.Disconnect on a goroutine of its own
		var want []mqtthooks.ReasonCode
		if old.started {
			want = []mqtthooks.ReasonCode{mqtthooks.CodeSessionTakenOver}
		}
		if d := old.client.Conn.Disconnects(); !slices.Equal(d, want) {
			return fmt.Errorf("taken-over %s got Conn.Disconnect %v; want %v", old.name, d, want)
		}
	}
	if !manual {
		c.started = true
		return nil
	}
	if _, err := c.client.Session.Pull(make([]mqtthooks.Delivery, 4)); !errors.Is(err, mqtthooks.ErrNotStarted) {
		return fmt.Errorf("%s: Pull before Start returned %v; want ErrNotStarted", c.name, err)
	}
	if n := c.client.Conn.NotifyCount(); n != 0 {
		return fmt.Errorf("%s: %d Notify before Start", c.name, n)
	}
	if r.rng.IntN(3) == 0 {
		r.logf("%s is taken over before its Start", c.name)
		if err := r.connect(s, true, false); err != nil {
			return err
		}
		err := c.client.Session.Start()
		_, perr := c.client.Session.Pull(make([]mqtthooks.Delivery, 4))
		r.logf("%s: Start → %v, Pull → %v", c.name, err, perr)
		switch {
		case err != nil:
			return fmt.Errorf("%s: Start after its takeover: %v", c.name, err)
		case c.client.Conn.NotifyCount() == 0:
			return fmt.Errorf("%s: taken over before Start, but Start did not Notify the end", c.name)
		case !errors.Is(perr, mqtthooks.ErrTakenOver):
			return fmt.Errorf("%s: first Pull after Start returned %v; want ErrTakenOver (N16)", c.name, perr)
		}
		c.started = true
		r.tally["taken over before Start"]++
		return nil
	}
	if err := c.client.Session.Start(); err != nil {
		return fmt.Errorf("%s: Start: %v", c.name, err)
	}
	if err := c.client.Session.Start(); !errors.Is(err, mqtthooks.ErrAlreadyStarted) {
		return fmt.Errorf("%s: second Start returned %v; want ErrAlreadyStarted", c.name, err)
	}
	c.started = true
	r.tally["manual Start"]++
	return nil
}

// opStale makes an ended connection act late: its Pull and its
// acknowledgements fail (ErrTakenOver after a takeover, ErrSessionEnded after
// the client's own end) and change nothing; the broker may report the end of
// a taken-over connection with Lost, which must not touch its successor.
func (r *nlRun) opStale(s *nlSession, c *nlConn) error {
	want := mqtthooks.ErrSessionEnded
	if c.takenOver {
		want = mqtthooks.ErrTakenOver
	}
	sess := c.client.Session
	pid := uint16(1 + r.rng.IntN(4))
	if len(s.inflight) > 0 {
		pid = s.inflight[r.rng.IntN(len(s.inflight))].pid
	}
	_, perr := sess.Pull(make([]mqtthooks.Delivery, 4))
	var aerr error
	what := ""
	switch r.rng.IntN(4) {
	case 0:
		what, aerr = "PUBACK", sess.Puback(pid)
	case 1:
		what, aerr = "PUBREC", sess.Pubrec(pid, nil)
	case 2:
		what, aerr = "PUBCOMP", sess.Pubcomp(pid)
	default:
		what = "inbound PUBLISH"
		_, aerr = sess.InboundPublish(pid, nil)
	}
	r.logf("stale %s: Pull → %v; %s %d → %v", c.name, perr, what, pid, aerr)
	if c.lost { // the broker reported the end: any error will do
		if perr == nil || aerr == nil {
			return fmt.Errorf("%s after its end was reported: Pull → %v, %s → %v; want errors", c.name, perr, what, aerr)
		}
	} else {
		if !errors.Is(perr, want) {
			return fmt.Errorf("%s: Pull returned %v; want %v", c.name, perr, want)
		}
		if !errors.Is(aerr, want) {
			return fmt.Errorf("%s: %s %d returned %v; want %v", c.name, what, pid, aerr, want)
		}
	}
	r.tally["stale connection refused"]++
	if c.takenOver && !c.lost && r.rng.IntN(2) == 0 {
		c.client.Session.Lost(r.ctx, errors.New("closed after takeover"))
		c.lost = true
		r.logf("lost %s (reported after its takeover)", c.name)
		r.tally["late Lost of a taken-over connection"]++
	}
	return nil
}

func (r *nlRun) opSleep() error {
	d := time.Duration(1+r.rng.IntN(4)) * time.Second
	time.Sleep(d)
	r.logf("sleep %v", d)
	r.tally["sleep"]++
	return nil
}

// --- checks -----------------------------------------------------------------

// check compares the Core with the model after a step.
func (r *nlRun) check() error {
	core := r.f.core
	st := core.Stats()
	held := 0
	for i := range core.Sessions() {
		held += i.Pending + i.Inflight
	}
	if st.Routed+st.Restored != st.Delivered+st.Dropped+st.NotStoredQoS0+st.Discarded+uint64(held) {
		return fmt.Errorf("Stats: Routed %d ≠ Delivered %d + Dropped %d + NotStoredQoS0 %d + Discarded %d + held %d",
			st.Routed, st.Delivered, st.Dropped, st.NotStoredQoS0, st.Discarded, held)
	}
	if st.Routed != r.routed || st.Delivered != r.delivered || st.Dropped != r.dropped ||
		st.NotStoredQoS0 != r.notStored || st.Discarded != 0 || st.Restored != r.restored {
		return fmt.Errorf("Stats: Routed %d, Delivered %d, Dropped %d, NotStoredQoS0 %d, Discarded %d, Restored %d; "+
			"the model has %d, %d, %d, %d, 0, %d", st.Routed, st.Delivered, st.Dropped, st.NotStoredQoS0, st.Discarded,
			st.Restored, r.routed, r.delivered, r.dropped, r.notStored, r.restored)
	}
	drops := map[string][]string{}
	for _, c := range r.f.rec.Calls() {
		if c.Hook == "OnMessageDrop" {
			drops[c.ID.ClientID] = append(drops[c.ID.ClientID], string(c.Drop.Message.Payload)+"/"+c.Drop.Reason.String())
		}
	}
	for _, s := range r.sessions {
		info, ok := core.Lookup(s.id)
		if !ok {
			return fmt.Errorf("session %s is gone", s.name)
		}
		conns := 0
		if s.cur != nil {
			conns = 1
		}
		if info.Pending != len(s.pending) || info.Inflight != len(s.inflight) || info.Connections != conns {
			return fmt.Errorf("Lookup(%s): %d pending, %d in flight, %d connections; the model has %d, %d, %d",
				s.name, info.Pending, info.Inflight, info.Connections, len(s.pending), len(s.inflight), conns)
		}
		if got := drops[s.name]; !slices.Equal(slices.Sorted(slices.Values(got)), slices.Sorted(slices.Values(s.drops))) {
			return fmt.Errorf("OnMessageDrop for %s: %v; the model dropped %v", s.name, got, s.drops)
		}
		if err := r.checkNotified(s); err != nil {
			return err
		}
		if err := r.checkFIFO(s); err != nil {
			return err
		}
	}
	return nil
}

// checkNotified checks that the broker was told of waiting work: deliveries
// to offer again, or pending messages with room in the window.
func (r *nlRun) checkNotified(s *nlSession) error {
	c := s.cur
	if c == nil {
		return nil
	}
	drainNotify(c)
	resend := slices.ContainsFunc(s.inflight, func(f *nlFlight) bool { return f.resend }) && s.outstanding() < s.window
	if (resend || (len(s.pending) > 0 && len(s.inflight) < s.window)) && !c.notified {
		return fmt.Errorf("%s: work waits (resend %v, %d pending, %d of %d in flight) but Conn.Notify was not called since the last short Pull",
			c.name, resend, len(s.pending), len(s.inflight), s.window)
	}
	return nil
}

// checkFIFO checks that first deliveries of a FIFO session follow routing
// order.
func (r *nlRun) checkFIFO(s *nlSession) error {
	if !s.lifo && !slices.IsSorted(s.firsts) {
		return fmt.Errorf("first deliveries to %s out of order: %v", s.name, s.firsts)
	}
	return nil
}

// drain reconnects every session and pulls and settles everything; then
// every message must be accounted for.
func (r *nlRun) drain() error {
	r.logf("--- drain")
	for _, s := range r.sessions {
		if s.cur == nil {
			if err := r.connect(s, true, false); err != nil {
				return err
			}
		}
		for round := 0; len(s.pending) > 0 || len(s.inflight) > 0; round++ {
			if round > 100 {
				return fmt.Errorf("%s does not drain: %d pending, %d in flight", s.name, len(s.pending), len(s.inflight))
			}
			if err := r.opPull(s, 8); err != nil {
				return err
			}
			for _, f := range slices.Clone(s.inflight) {
				if !f.seen {
					continue
				}
				if err := r.opSettle(s, f, "drain"); err != nil {
					return err
				}
				if f.m.qos == 2 && f.m.state != nlSettled {
					if err := r.opSettle(s, f, "drain"); err != nil {
						return err
					}
				}
			}
			if err := r.check(); err != nil {
				return err
			}
		}
	}
	if err := r.check(); err != nil {
		return err
	}
	for _, m := range r.msgs {
		switch {
		case m.state == nlSettled && (m.received || m.qos == 0):
		case m.state == nlDropped, m.state == nlNotStored && m.qos == 0:
		default:
			return fmt.Errorf("%s (QoS %d) ends %s, received %v: lost", m.payload(), m.qos, m.state, m.received)
		}
		r.tally["message accounted for: "+m.state.String()]++
	}
	return nil
}

func (r *nlRun) dump() string {
	var b strings.Builder
	for _, s := range r.sessions {
		cur := "offline"
		if s.cur != nil {
			cur = s.cur.name
		}
		fmt.Fprintf(&b, "  %s (%s, window %d): pending [", s.name, cur, s.window)
		for _, m := range s.pending {
			fmt.Fprintf(&b, " %s", m.payload())
		}
		b.WriteString(" ], in flight [")
		for _, f := range s.inflight {
			fmt.Fprintf(&b, " %s:%d", f.m.payload(), f.pid)
			if f.released {
				b.WriteString(":rel")
			}
			if f.resend {
				b.WriteString(":resend")
			}
		}
		fmt.Fprintf(&b, " ], drops %v\n", s.drops)
	}
	return b.String()
}

// --- takeover storm while publishing ------------------------------------------

// stormPubReceipt is one PUBLISH a client got.
type stormPubReceipt struct {
	n   int
	pid uint16
	dup bool
}

// stormPubResult is what one connection of the storm saw.
type stormPubResult struct {
	conn     uint64
	accepted bool
	present  bool
	receipts []stormPubReceipt
	end      error // what Pull returned at the end
	stuck    bool
}

// stormPubLoop is a broker's write loop for one connection: on Notify (or
// the Core's Disconnect) it pulls until Pull returns fewer than the buffer,
// and acknowledges what it got, pulling again after each acknowledgement,
// until Pull fails. Now and then it is slow to acknowledge, so that takeovers
// find deliveries in flight. With poll, it also polls Pull while it waits, as
// a broker that checks its connection between reads would; that is what
// catches a Pull at the moment of a takeover.
func stormPubLoop(c *mqtthookstest.Client, res *stormPubResult, seed uint64, poll bool) {
	rng := rand.New(rand.NewPCG(seed, 0x61636b73))
	buf := make([]mqtthooks.Delivery, 8)
	end := func(err error) {
		res.end = err
		c.Session.Lost(context.Background(), errors.New("closed after takeover"))
	}
	for {
		deadline := time.Now().Add(10 * time.Second)
	wait:
		for {
			select {
			case <-c.Conn.Notified():
				break wait
			case <-c.Conn.Disconnected():
				break wait
			default:
			}
			if time.Now().After(deadline) {
				res.stuck = true
				return
			}
			if !poll {
				select {
				case <-c.Conn.Notified():
					break wait
				case <-c.Conn.Disconnected():
					break wait
				case <-time.After(time.Until(deadline)):
					continue
				}
			}
			if _, err := c.Session.Pull(nil); err != nil {
				end(err)
				return
			}
			runtime.Gosched()
		}
		for {
			n, err := c.Session.Pull(buf)
			for _, d := range buf[:n] {
				p, _ := strconv.Atoi(string(d.Message.Payload))
				res.receipts = append(res.receipts, stormPubReceipt{n: p, pid: d.PacketID, dup: d.Dup})
			}
			if err != nil {
				end(err)
				return
			}
			if rng.IntN(4) == 0 {
				time.Sleep(time.Duration(rng.IntN(200)) * time.Microsecond)
			}
			for _, d := range buf[:n] {
				_ = c.Session.Puback(d.PacketID) // fails once taken over: the successor gets it again
				if _, err := c.Session.Pull(nil); err != nil {
					end(err)
					return
				}
			}
			if n < len(buf) {
				break
			}
		}
	}
}

// TestTakeoverStormWhilePublishing: in each round, 100 connections of one
// persistent SubscriberID (v3 clean_session 0 or v5 SEI 300, same user)
// connect at once while a publisher delivers 2000 QoS 1 messages to it; each
// connection pulls and acknowledges until its Pull reports the takeover. One
// more connection then drains the session. Every message must have been
// received (once without DUP, redeliveries with DUP and the same packet id) or
// dropped with OnMessageDrop, and the Stats equation must hold.
func TestTakeoverStormWhilePublishing(t *testing.T) {
	const rounds = 16
	f := newFixture(t, mqtthooks.Options{MaxOnlineMessages: mqtthooks.Some(100), MaxOfflineMessages: mqtthooks.Some(100)})
	var total stormPubTotals
	for round := range rounds {
		// Even rounds wait for Notify only (a lost wake-up shows as a stuck
		// connection); odd ones also poll.
		stormPubRound(t, f, fmt.Sprintf("storm-pub-%d", round), uint64(round), round%2 == 1, &total)
	}
	checkNoLoss(t, f.core)
	if o := f.rec.Overlaps(); len(o) > 0 {
		t.Errorf("lifecycle hooks overlapped: %v", o)
	}
	t.Logf("%d rounds: %d messages, %d dropped (queue full), %d redeliveries with DUP, %d takeovers",
		rounds, total.messages, total.dropped, total.redelivered, f.core.Stats().Takeovers)
}

type stormPubTotals struct{ messages, dropped, redelivered int }

func stormPubRound(t *testing.T, f *fixture, name string, seed uint64, poll bool, total *stormPubTotals) {
	const clients, messages = 100, 2000
	id := sid(name)
	rng := rand.New(rand.NewPCG(seed, 0x73746f726d))
	before := f.core.Stats()

	first := f.v3(name, false)
	requireAccepted(t, first)
	results := make([]stormPubResult, clients+1)
	reqs := make([]*mqtthooks.ConnectRequest, clients)
	for i := range reqs {
		if rng.IntN(2) == 0 {
			reqs[i] = mqtthookstest.V3(name, "u", false)
		} else {
			reqs[i] = mqtthookstest.V5(name, "u", false, 300)
		}
	}

	var loops, connects sync.WaitGroup
	start := make(chan struct{})
	results[0] = stormPubResult{conn: first.Info.ConnID, accepted: true}
	loops.Go(func() { stormPubLoop(first, &results[0], seed<<8, poll) })
	for i := range clients {
		connects.Add(1)
		loops.Go(func() {
			<-start
			c := mqtthookstest.NewClient(f.core)
			c.Connect(context.Background(), reqs[i])
			res := &results[i+1]
			res.conn, res.accepted = c.Info.ConnID, c.Accepted()
			connects.Done()
			if !res.accepted {
				return
			}
			res.present = c.Connack().SessionPresent
			stormPubLoop(c, res, seed<<8+uint64(i)+1, poll)
		})
	}
	var deliverErrs []error
	var publisher sync.WaitGroup
	publisher.Go(func() {
		<-start
		for i := range messages {
			msg := &mqtthooks.Message{Topic: "t", Payload: []byte(strconv.Itoa(i)), QoS: 1}
			if err := f.core.Deliver(id, msg, mqtthooks.DeliverOptions{QoS: 1}); err != nil {
				deliverErrs = append(deliverErrs, fmt.Errorf("message %d: %w", i, err))
			}
			if i%8 == 0 {
				time.Sleep(time.Microsecond)
			}
		}
	})
	close(start)
	publisher.Wait()
	connects.Wait()

	// The storm is over: the connection that survived it drains the session
	// by itself, woken by Notify alone.
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(time.Millisecond) {
		info, ok := f.core.Lookup(id)
		if ok && info.Pending == 0 && info.Inflight == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("%s: 5 s after the storm the surviving connection has not drained the session (Lookup %+v, %v): a lost Notify?",
				name, info, ok)
			break
		}
	}

	// One more connection takes the survivor over and drains the session.
	last := f.v3(name, false)
	requireAccepted(t, last)
	if !last.Connack().SessionPresent {
		t.Errorf("%s: the last CONNECT got Session Present 0", name)
	}
	loops.Wait()
	drained, err := last.Receive()
	if err != nil {
		t.Fatalf("%s: draining: %v", name, err)
	}

	for _, err := range deliverErrs {
		t.Errorf("%s: Deliver: %v", name, err)
	}
	receipts := map[int][]stormPubReceipt{}
	for i := range results {
		res := &results[i]
		switch {
		case !res.accepted:
			t.Errorf("%s: connection %d was rejected", name, res.conn)
			continue
		case i > 0 && !res.present:
			t.Errorf("%s: connection %d got Session Present 0", name, res.conn)
		case res.stuck:
			t.Errorf("%s: connection %d waited 10 s for a Notify or a Disconnect that never came", name, res.conn)
		case !errors.Is(res.end, mqtthooks.ErrTakenOver):
			t.Errorf("%s: connection %d: its Pull ended with %v; want ErrTakenOver (SPEC §11, Session.Pull)", name, res.conn, res.end)
		}
		for _, r := range res.receipts {
			receipts[r.n] = append(receipts[r.n], r)
		}
	}
	for _, d := range drained {
		p, _ := strconv.Atoi(string(d.Message.Payload))
		receipts[p] = append(receipts[p], stormPubReceipt{n: p, pid: d.PacketID, dup: d.Dup})
	}
	dropped := map[int]mqtthooks.DropReason{}
	for _, c := range f.rec.CallsFor(id) {
		if c.Hook == "OnMessageDrop" {
			p, _ := strconv.Atoi(string(c.Drop.Message.Payload))
			if _, twice := dropped[p]; twice {
				t.Errorf("%s: message %d dropped twice", name, p)
			}
			dropped[p] = c.Drop.Reason
		}
	}

	redelivered := 0
	for i := range messages {
		rs, reason := receipts[i], dropped[i]
		switch {
		case len(rs) == 0 && reason == 0:
			t.Errorf("%s: message %d lost: never received and not dropped", name, i)
			continue
		case len(rs) > 0 && reason != 0:
			t.Errorf("%s: message %d received %d times and also dropped (%v)", name, i, len(rs), reason)
		case len(rs) == 0:
			continue
		}
		fresh := 0
		for _, r := range rs {
			if !r.dup {
				fresh++
			}
			if r.pid != rs[0].pid {
				t.Errorf("%s: message %d delivered with packet ids %d and %d", name, i, rs[0].pid, r.pid)
			}
		}
		if fresh != 1 {
			t.Errorf("%s: message %d received %d times, %d of them without DUP; want exactly one first delivery", name, i, len(rs), fresh)
		}
		redelivered += len(rs) - 1
	}

	st := f.core.Stats()
	info, ok := f.core.Lookup(id)
	if !ok || info.Pending != 0 || info.Inflight != 0 || info.Connections != 1 {
		t.Errorf("%s: after the drain Lookup = %+v, %v; want 1 connection, nothing pending or in flight", name, info, ok)
	}
	routed, delivered, nDropped := st.Routed-before.Routed, st.Delivered-before.Delivered, st.Dropped-before.Dropped
	if routed != messages || delivered+nDropped != messages || nDropped != uint64(len(dropped)) {
		t.Errorf("%s: Stats: Routed %d, Delivered %d, Dropped %d (%d OnMessageDrop); want Routed %d = Delivered + Dropped",
			name, routed, delivered, nDropped, len(dropped), messages)
	}
	checkNoLoss(t, f.core)
	total.messages += messages
	total.dropped += len(dropped)
	total.redelivered += redelivered
	t.Logf("%s (poll %v): %d dropped, %d redelivered", name, poll, len(dropped), redelivered)
}
