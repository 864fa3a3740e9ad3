package mqtthooks_test

// Model-based tests of the session lifecycle (SPEC §2, §6.5, §8, §8a).
//
// TestModelRandomSequences drives a Core with random, seeded sequences of
// CONNECTs (v3/v5, clean/persistent, SEI 0/300/never, good and bad
// credentials, other users, shared sessions), DISCONNECTs (with SEI changes),
// lost connections, takeovers, admin disconnects and the passing of fake time
// (sometimes with the worker pool held up by a slow expiry hook), and checks
// after every step that the Core did what a small reference model, written
// from SPEC §2's grammar, §6.5's table, §8 and OQ5/OQ7/OQ12/OQ15, says it must:
// CONNACK codes and Session Present, the exact lifecycle hooks with Reason,
// Code and Generation, the grammar over each id's whole history, Lookup,
// Stats, what each connection's Pull and Conn.Disconnect see, and no
// overlapping hooks. TestTakeoverStorm checks the grammar under real
// concurrency: many clients take one SubscriberID over at once.

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"maps"
	"math"
	"math/rand/v2"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/mqtthooks/mqtthooks"
	"github.com/mqtthooks/mqtthooks/mqtthookstest"
)

var (
	modelSeedFlag = flag.Uint64("model.seed", 0, "TestModelRandomSequences: run only the sequence with this seed")
	modelRunsFlag = flag.Int("model.n", 2000, "TestModelRandomSequences: number of random sequences")
)

const (
	modelSteps = 30
	// modelPersistentExpiry is Options.PersistentExpiry: how long an offline
	// v3 persistent session lives.
	modelPersistentExpiry = 100 * time.Second
	// modelBadPassword makes the plugin reject with ErrInvalidCredentials;
	// modelMultiPassword makes it accept with AllowMultipleSessions (OQ12).
	modelBadPassword   = "bad"
	modelMultiPassword = "multi"
)

// modelIDs are the client ids of the sequences: few, so that operations often
// meet on the same session.
var modelIDs = []string{"c0", "c1", "c2"}

func TestModelRandomSequences(t *testing.T) {
	first, n := uint64(1), uint64(*modelRunsFlag)
	if *modelSeedFlag != 0 {
		first, n = *modelSeedFlag, 1
	}
	// tally counts the outcomes the sequences reached, to show with -v that
	// every transition of the model was exercised.
	tally := map[string]int{}
	for seed := first; seed < first+n; seed++ {
		ok := true
		synctest.Test(t, func(t *testing.T) { ok = runModelSequence(t, seed, tally) })
		if !ok {
			return // one failing sequence is enough to read
		}
	}
	keys := slices.Sorted(maps.Keys(tally))
	var b strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&b, "\n  %6d  %s", tally[k], k)
	}
	t.Logf("%d sequences of %d steps; outcomes:%s", n, modelSteps, b.String())
}

// runModelSequence runs one random sequence inside a synctest bubble, so the
// expiry timers run on the bubble's fake clock. It reports whether the Core
// kept to the model.
func runModelSequence(t *testing.T, seed uint64, tally map[string]int) bool {
	m := newModelRun(t, seed)
	m.tally = tally
	for step := 1; step <= modelSteps; step++ {
		m.want = map[string][]modelWant{}
		routerPanics := m.rng.IntN(6) == 0
		m.routerPanics.Store(routerPanics)
		desc, err := m.randomOp()
		if routerPanics {
			desc += " [the Router panics]"
		}
		m.ops = append(m.ops, desc)
		if err == nil {
			synctest.Wait() // a takeover's Conn.Disconnect runs on a goroutine of its own
			err = m.check()
		}
		for _, ws := range m.want {
			for _, w := range ws {
				m.tally[w.kind()]++
			}
		}
		for i, name := range []string{"store Create failed", "ResumePolicy panicked", "Router panicked"} {
			m.tally[name] += int(m.faults[i].Swap(0))
		}
		if err != nil {
			t.Errorf("seed %d, step %d: %v\noperations so far:\n%s"+
				"reproduce with: go test -race -run 'TestModelRandomSequences$' . -args -model.seed=%d",
				seed, step, err, m.history(), seed)
			return false
		}
	}
	return true
}

// modelConn is the model of one accepted connection.
type modelConn struct {
	client  *mqtthookstest.Client
	id      string
	v5      bool
	sei     uint32 // v5: the effective Session Expiry Interval
	cleanup bool   // cleanup on disconnect (SPEC §1)
	ended   bool
	// kickErr is what Pull must return when the Core ended the connection
	// (takeover, admin), and kickCode the code of its Conn.Disconnect; nil
	// when the client ended it or it is still attached.
	kickErr  error
	kickCode mqtthooks.ReasonCode
}

// expiry is how long the session lives offline after this connection; 0 is
// never (SPEC §8).
func (c *modelConn) expiry() time.Duration {
	switch {
	case !c.v5:
		return modelPersistentExpiry
	case c.sei == math.MaxUint32:
		return 0
	}
	return time.Duration(c.sei) * time.Second
}

// modelSession is the model of one life of a session.
type modelSession struct {
	gen  uint64
	user string
	// conns are the attached connections, in the order they attached; none
	// while offline. Only with AllowMultipleSessions are there several.
	conns      []*modelConn
	multi      bool // the latest attach allowed multiple sessions
	subscribed bool
	expiresAt  time.Time // offline only; zero means never
	// stored: the life began persistent and no connection with cleanup on
	// disconnect resumed it since, so the store keeps it.
	stored bool
	// expiry is the latest attach's offline lifetime: what the store keeps,
	// for a session lost online by a crash.
	expiry time.Duration
}

func (s *modelSession) online() bool { return len(s.conns) > 0 }

// modelCode is what a SessionEvent's Code must be; check false accepts any.
type modelCode struct {
	check, has bool
	code       mqtthooks.ReasonCode
}

var modelAnyCode = modelCode{}

// modelCodeIf is code when the connection is v5, and no code for v3.
func modelCodeIf(v5 bool, code mqtthooks.ReasonCode) modelCode {
	if !v5 {
		return modelCode{check: true}
	}
	return modelCode{check: true, has: true, code: code}
}

// modelWant is a recorded call the model expects in the current step: a
// lifecycle hook, or the Router's RemoveAll before a terminal hook (OQ11).
type modelWant struct {
	hook    string
	reason  mqtthooks.Reason
	code    modelCode
	gen     uint64
	user    string
	present bool   // OnRegister*: SessionPresent
	connID  uint64 // Wakeup and OnRegister*: the new connection; 0 skips
}

// kind names the call without its Generation, for the tally.
func (w modelWant) kind() string {
	if w.hook == "RemoveAll" {
		return w.hook
	}
	return fmt.Sprintf("%s{%s}", w.hook, w.reason)
}

func (w modelWant) String() string {
	if w.hook == "RemoveAll" {
		return w.hook
	}
	return fmt.Sprintf("%s{%s gen=%d}", w.hook, w.reason, w.gen)
}

// modelRun is one sequence: the Core under test and the reference model.
type modelRun struct {
	t           *testing.T
	seed        uint64
	rng         *rand.Rand
	f           *fixture
	maxSessions int // Options.MaxSessions; 0 is no limit
	sessions    map[string]*modelSession
	conns       []*modelConn
	// want holds, per client id, the calls expected from the current step;
	// seen how many tracked calls of the id earlier steps already checked.
	want    map[string][]modelWant
	seen    map[string]int
	options string
	ops     []string
	tally   map[string]int
	// stall, when set, is taken by the next OnSessionExpired hook, which
	// then waits until the channel is closed.
	stall   atomic.Pointer[chan struct{}]
	store   *mqtthookstest.Store            // what the Core's store holds
	carried map[string][]mqtthookstest.Call // tracked calls of the Cores before the last crash
	// Faults of the broker's callbacks for the current step: the store's
	// Create fails, the ResumePolicy panics, the Router panics (after the
	// Recorder saw the call, so that the model's expectations stand).
	createFails, policyPanics, routerPanics atomic.Bool
	faults                                  [3]atomic.Int64 // Create failures, ResumePolicy and Router panics
}

// modelRouter is the Recorder's Router, panicking after each call while the
// run says so: a panic in the broker's Router must not change the lifecycle.
type modelRouter struct {
	m     *modelRun
	inner mqtthooks.Router
}

func (r *modelRouter) Add(id mqtthooks.SubscriberID, gen uint64, sub mqtthooks.Subscription) {
	r.inner.Add(id, gen, sub)
	r.fault()
}

func (r *modelRouter) Remove(id mqtthooks.SubscriberID, gen uint64, filter string) {
	r.inner.Remove(id, gen, filter)
	r.fault()
}

func (r *modelRouter) RemoveAll(id mqtthooks.SubscriberID, gen uint64) {
	r.inner.RemoveAll(id, gen)
	r.fault()
}

func (r *modelRouter) fault() {
	if r.m.routerPanics.Load() {
		r.m.faults[2].Add(1)
		panic("model: router fault")
	}
}

func newModelRun(t *testing.T, seed uint64) *modelRun {
	m := &modelRun{t: t, seed: seed, rng: rand.New(rand.NewPCG(seed, 0x6d6f64656c)),
		sessions: map[string]*modelSession{}, seen: map[string]int{}}
	// Half the sequences limit the sessions to fewer than the ids (OQ15).
	if m.rng.IntN(2) == 0 {
		m.maxSessions = 2
	}
	m.options = fmt.Sprintf("Options{PersistentExpiry: %v, MaxSessions: %d, Workers: 1}", modelPersistentExpiry, m.maxSessions)
	m.newCore(new(mqtthookstest.Store))
	return m
}

// newCore starts the Core under test on store. One worker, so that a slow
// terminal hook holds back the other timed work, as a busy pool does in
// production (see opSleepBusyPool).
func (m *modelRun) newCore(inner *mqtthookstest.Store) {
	t := m.t
	router := &modelRouter{m: m}
	m.store = inner
	store := &faultStore{store: inner, create: func(mqtthooks.SubscriberID) error {
		if m.createFails.Load() {
			m.faults[0].Add(1)
			return errors.New("model: store fault")
		}
		return nil
	}}
	policy := func(ctx context.Context, r *mqtthooks.ResumeRequest) bool {
		if m.policyPanics.Load() {
			m.faults[1].Add(1)
			panic("model: policy fault")
		}
		return mqtthooks.SameUsername(ctx, r)
	}
	m.f = newFixture(t, mqtthooks.Options{PersistentExpiry: modelPersistentExpiry, MaxSessions: m.maxSessions, Workers: 1,
		Router: router, Store: store, ResumePolicy: policy})
	router.inner = m.f.rec.Router()
	m.f.rec.Lifecycle = func(_ context.Context, c mqtthookstest.Call) {
		if c.Hook == "OnSessionExpired" {
			if ch := m.stall.Swap(nil); ch != nil {
				<-*ch
			}
		}
	}
	// The plugin rejects the bad password, lets the "multi" password share
	// its session, and accepts everybody else; the resume policy (default
	// SameUsername) is what keeps alice and bob apart.
	auth := func(_ context.Context, req *mqtthooks.RegisterRequest) mqtthooks.RegisterResult {
		switch string(req.Connect.Password) {
		case modelBadPassword:
			return mqtthooks.Reject(mqtthooks.ErrInvalidCredentials)
		case modelMultiPassword:
			return mqtthooks.AcceptWith(&mqtthooks.Modifiers{AllowMultipleSessions: mqtthooks.Some(true)})
		}
		return mqtthooks.Accept()
	}
	m.f.rec.AuthOnRegisterFunc, m.f.rec.AuthOnRegisterM5Func = auth, auth
}

// opCrash kills the Core, as a crashed process, and starts a new one on what
// its store kept. The persistent sessions come back offline, in the same life,
// with no hook fired; a session lost online expires its interval after the
// restart. The others are gone without a trace. The old Core is then shut
// down: its connections see 0x8B, its hooks go nowhere.
func (m *modelRun) opCrash() (string, error) {
	if err := m.check(); err != nil { // what the old Core did, before its Shutdown's hooks
		return "crash", err
	}
	// Each id's history goes on in the new Core's Recorder: the grammar holds
	// across the crash.
	carried := map[string][]mqtthookstest.Call{}
	for _, id := range modelIDs {
		carried[id] = slices.Clone(m.carried[id])
	}
	for _, c := range m.f.rec.Calls() {
		if modelTracked[c.Hook] {
			carried[c.ID.ClientID] = append(carried[c.ID.ClientID], c)
		}
	}
	m.carried = carried
	after := m.store.Crash(m.t)
	if err := m.f.core.Shutdown(context.Background()); err != nil {
		return "crash", fmt.Errorf("Shutdown of the crashed Core: %w", err)
	}
	m.newCore(after)
	var kept []string
	for _, id := range modelIDs {
		s := m.sessions[id]
		if s == nil {
			continue
		}
		for _, c := range s.conns {
			m.kick(c, mqtthooks.ErrServerShutdown, mqtthooks.CodeServerShuttingDown)
		}
		if !s.stored { // its life ends with the process, without a hook
			for _, c := range s.conns {
				c.ended = true
			}
			delete(m.sessions, id)
			m.seen[id] -= len(m.carried[id])
			m.carried[id] = nil
			continue
		}
		if s.online() { // the new Core reports the end of the connection the crash took
			if s.expiry > 0 {
				s.expiresAt = time.Now().Add(s.expiry)
			}
			for _, c := range s.conns {
				c.ended = true
			}
			m.expect(id, modelWant{hook: "OnClientOffline", reason: mqtthooks.ReasonRestart, code: modelCode{check: true},
				gen: s.gen, user: s.user})
		}
		s.conns, s.multi = nil, false
		kept = append(kept, id)
	}
	m.tally["crash and restart"]++
	return fmt.Sprintf("crash: the Core restarts on its store, which kept %v", kept), nil
}

func (m *modelRun) history() string {
	var b strings.Builder
	fmt.Fprintf(&b, "  with %s\n", m.options)
	for i, op := range m.ops {
		fmt.Fprintf(&b, "  %2d. %s\n", i+1, op)
	}
	return b.String()
}

func (m *modelRun) expect(id string, w ...modelWant) { m.want[id] = append(m.want[id], w...) }

// --- operations ---------------------------------------------------------

// randomOp runs one random operation and returns its description.
func (m *modelRun) randomOp() (string, error) {
	r := m.rng.IntN(100)
	switch {
	case r < 30:
		return m.opConnect(m.randomConnect())
	case r < 42:
		if c, ok := m.randomAttached(); ok {
			a := m.randomConnect()
			a.id, a.user, a.badPassword = c.id, m.sessions[c.id].user, false
			return m.opConnect(a) // a takeover, or a join
		}
	case r < 57:
		if c, ok := m.randomAttached(); ok {
			return m.opDisconnect(c)
		}
	case r < 67:
		if c, ok := m.randomAttached(); ok {
			return m.opLost(c)
		}
	case r < 75:
		return m.opAdmin(modelIDs[m.rng.IntN(len(modelIDs))], m.rng.IntN(2) == 0)
	case r < 87:
		return m.opSleep()
	case r < 89:
		return m.opCrash()
	default:
		if c, ok := m.randomEnded(); ok {
			return m.opStale(c)
		}
	}
	return m.opConnect(m.randomConnect())
}

func (m *modelRun) randomAttached() (*modelConn, bool) {
	var attached []*modelConn
	for _, id := range modelIDs {
		if s := m.sessions[id]; s != nil {
			attached = append(attached, s.conns...)
		}
	}
	if len(attached) == 0 {
		return nil, false
	}
	return attached[m.rng.IntN(len(attached))], true
}

func (m *modelRun) randomEnded() (*modelConn, bool) {
	var ended []*modelConn
	for _, c := range m.conns {
		if c.ended {
			ended = append(ended, c)
		}
	}
	if len(ended) == 0 {
		return nil, false
	}
	return ended[m.rng.IntN(len(ended))], true
}

// modelConnect describes a CONNECT.
type modelConnect struct {
	id          string
	v5, clean   bool
	sei         uint32
	user        string
	badPassword bool
	multi       bool // AllowMultipleSessions
	willDelay   int  // -1: no Will
	subscribe   bool
	// overdue: the offline session's expiry is due but has not run yet.
	overdue bool
	// Faults: the store refuses a new life; the ResumePolicy panics.
	createFails, policyPanics bool
}

// persistent reports whether the CONNECT's session outlives its connection,
// and so is stored.
func (a modelConnect) persistent() bool {
	if a.v5 {
		return a.sei != 0
	}
	return !a.clean
}

func (a modelConnect) String() string {
	s := fmt.Sprintf("connect %s v3 clean=%v", a.id, a.clean)
	if a.v5 {
		s = fmt.Sprintf("connect %s v5 cleanStart=%v sei=%d", a.id, a.clean, a.sei)
	}
	s += " user=" + a.user
	if a.badPassword {
		s += " password=bad"
	}
	if a.multi {
		s += " multi"
	}
	if a.willDelay >= 0 {
		s += fmt.Sprintf(" will(delay=%d)", a.willDelay)
	}
	if a.subscribe {
		s += " +subscribe"
	}
	if a.createFails {
		s += " (store fails)"
	}
	if a.policyPanics {
		s += " (policy panics)"
	}
	return s
}

func (m *modelRun) randomConnect() modelConnect {
	a := modelConnect{
		id:           modelIDs[m.rng.IntN(len(modelIDs))],
		v5:           m.rng.IntN(2) == 0,
		clean:        m.rng.IntN(3) == 0,
		user:         "u",
		badPassword:  m.rng.IntN(7) == 0,
		multi:        m.rng.IntN(3) == 0,
		willDelay:    -1,
		subscribe:    m.rng.IntN(2) == 0,
		createFails:  m.rng.IntN(8) == 0,
		policyPanics: m.rng.IntN(10) == 0,
	}
	if a.v5 {
		a.sei = []uint32{0, 0, 300, 300, 300, math.MaxUint32}[m.rng.IntN(6)]
	}
	switch m.rng.IntN(7) {
	case 0:
		a.user = "alice"
	case 1:
		a.user = "bob"
	}
	if m.rng.IntN(3) == 0 {
		a.willDelay = 0
		if a.v5 && m.rng.IntN(2) == 0 {
			a.willDelay = 50
		}
	}
	return a
}

func (a modelConnect) request() *mqtthooks.ConnectRequest {
	req := mqtthookstest.V3(a.id, a.user, a.clean)
	if a.v5 {
		req = mqtthookstest.V5(a.id, a.user, a.clean, a.sei)
	}
	switch {
	case a.badPassword:
		req.Password = []byte(modelBadPassword)
	case a.multi:
		req.Password = []byte(modelMultiPassword)
	}
	if a.willDelay >= 0 {
		req.Will = &mqtthooks.Will{Message: mqtthooks.Message{Topic: "will/" + a.id, Payload: []byte("bye"), QoS: 1},
			DelayInterval: uint32(a.willDelay)}
	}
	return req
}

// opConnect runs a CONNECT and predicts its outcome from SPEC §6.4 and §6.5.
func (m *modelRun) opConnect(a modelConnect) (string, error) {
	if a.overdue {
		a.createFails = false // whether the expiry or the CONNECT runs first decides if Create is called
	}
	desc := a.String()
	c := mqtthookstest.NewClient(m.f.core)
	m.createFails.Store(a.createFails)
	m.policyPanics.Store(a.policyPanics)
	step := c.Connect(context.Background(), a.request())
	m.createFails.Store(false)
	m.policyPanics.Store(false)
	s := m.sessions[a.id]
	// A new life is created (and the store's Create called) without a
	// session, on a clean start, and when a takeover ends a session whose
	// last connection had cleanup on disconnect (§6.5).
	newLife := s == nil || a.clean || (s.online() && !(s.multi && a.multi) && s.conns[len(s.conns)-1].cleanup)
	switch {
	case a.badPassword: // §4: Reject(ErrInvalidCredentials) → 4 / 0x86, session untouched
		m.tally["CONNACK bad credentials"]++
		return desc + " → rejected", modelRejected(step, a.v5, mqtthooks.RefusedBadUsernameOrPassword, mqtthooks.CodeBadUserNameOrPassword)
	case s != nil && a.policyPanics: // a panicking ResumePolicy refuses with 3 / 0x88, untouched
		m.tally["CONNACK policy panicked"]++
		return desc + " → refused", modelRejected(step, a.v5, mqtthooks.RefusedServerUnavailable, mqtthooks.CodeServerUnavailable)
	case s != nil && s.user != a.user: // §6.4, OQ5: refused resume → 5 / 0x87, untouched
		m.tally["CONNACK resume refused"]++
		return desc + " → refused", modelRejected(step, a.v5, mqtthooks.RefusedNotAuthorized, mqtthooks.CodeNotAuthorized)
	case s == nil && m.maxSessions > 0 && len(m.sessions) >= m.maxSessions: // OQ15: only new sessions count
		m.tally["CONNACK session limit"]++
		return desc + " → session limit", modelRejected(step, a.v5, mqtthooks.RefusedServerUnavailable, mqtthooks.CodeQuotaExceeded)
	case newLife && a.createFails && a.persistent(): // §6: a failed registration touches nothing, not even on a clean start
		m.tally["CONNACK store failed"]++
		return desc + " → store failed", modelRejected(step, a.v5, mqtthooks.RefusedServerUnavailable, mqtthooks.CodeServerUnavailable)
	}
	if step.Session == nil {
		return desc, fmt.Errorf("CONNECT rejected with %+v (%v); want accepted", step.Connack, step.Err)
	}

	conn := &modelConn{client: c, id: a.id, v5: a.v5, sei: a.sei, cleanup: a.clean}
	if a.v5 {
		conn.cleanup = a.sei == 0
	}
	present := false
	switch {
	case s == nil: // no S: create
	case a.clean: // discard S, online or offline, then create (OQ7: CleanStart; OQ12: also when shared)
		m.kickAll(s, mqtthooks.ErrTakenOver, mqtthooks.CodeSessionTakenOver)
		m.endLife(a.id, "OnClientGone", mqtthooks.ReasonCleanStart, modelAnyCode)
		s = nil
	case !s.online() && a.overdue && !step.Connack.SessionPresent:
		// The session's expiry was due but had not run: expiring it first
		// is as good as resuming it (MQTT lets the server keep it).
		m.endLife(a.id, "OnSessionExpired", mqtthooks.ReasonExpired, modelAnyCode)
		s = nil
	case !s.online(): // resume the offline S
		present = true
	case s.multi && a.multi: // OQ12: join S, which both allow; SP 1
		m.tally["CONNACK joined"]++
		present = true
	default: // take over the online S; the last connection's cleanup decides
		last := s.conns[len(s.conns)-1]
		m.kickAll(s, mqtthooks.ErrTakenOver, mqtthooks.CodeSessionTakenOver)
		code := modelCodeIf(last.v5, mqtthooks.CodeSessionTakenOver)
		if last.cleanup { // case 81: S ends with its connection
			m.endLife(a.id, "OnClientGone", mqtthooks.ReasonTakenOver, code)
			s = nil
		} else {
			m.expect(a.id, modelWant{hook: "OnClientOffline", reason: mqtthooks.ReasonTakenOver, code: code, gen: s.gen, user: s.user})
			s.conns = nil
			present = true
		}
	}

	gen := step.Session.Generation()
	if s == nil {
		s = &modelSession{gen: gen, stored: a.persistent()}
		m.sessions[a.id] = s
	} else if gen != s.gen {
		return desc, fmt.Errorf("resumed session has Generation %d, want %d (the same life)", gen, s.gen)
	}
	s.user, s.multi, s.expiresAt = a.user, a.multi, time.Time{}
	if !a.persistent() {
		s.stored = false // resumed with cleanup on disconnect: it leaves the store
	}
	s.expiry = conn.expiry()
	s.conns = append(s.conns, conn)
	m.conns = append(m.conns, conn)
	register := "OnRegister"
	if a.v5 {
		register = "OnRegisterM5"
	}
	connID := c.Info.ConnID
	m.expect(a.id,
		modelWant{hook: "OnClientWakeup", gen: s.gen, user: a.user, connID: connID},
		modelWant{hook: register, gen: s.gen, user: a.user, connID: connID, present: present})
	desc += fmt.Sprintf(" → accepted SP=%v gen=%d", present, gen)
	m.tally[fmt.Sprintf("CONNACK accepted SP=%v", present)]++

	ack := step.Connack
	switch {
	case ack == nil:
		return desc, fmt.Errorf("accepted step has no CONNACK")
	case a.v5 && ack.ReasonCode != mqtthooks.CodeSuccess, !a.v5 && ack.ReturnCode != mqtthooks.ConnectionAccepted:
		return desc, fmt.Errorf("accepted CONNACK has code %d / %s", ack.ReturnCode, ack.ReasonCode)
	case ack.SessionPresent != present:
		return desc, fmt.Errorf("CONNACK Session Present %v, want %v", ack.SessionPresent, present)
	case step.Session.SessionPresent() != present:
		return desc, fmt.Errorf("Session.SessionPresent() %v, want %v", step.Session.SessionPresent(), present)
	}
	if a.subscribe {
		if err := c.Subscribe(context.Background(), "t/"+a.id); err != nil {
			return desc, fmt.Errorf("Subscribe: %w", err)
		}
		s.subscribed = true
	}
	return desc, nil
}

// modelRejected checks a CONNACK that refuses the CONNECT.
func modelRejected(step mqtthooks.Step, v5 bool, rc mqtthooks.ReturnCode, code mqtthooks.ReasonCode) error {
	ack := step.Connack
	switch {
	case step.Kind != mqtthooks.SendConnack || ack == nil:
		return fmt.Errorf("got step %s, want a CONNACK", step.Kind)
	case step.Session != nil:
		return fmt.Errorf("CONNECT accepted; want refused with %d / %s", rc, code)
	case v5 && ack.ReasonCode != code:
		return fmt.Errorf("CONNACK reason code %s, want %s (%v)", ack.ReasonCode, code, step.Err)
	case !v5 && ack.ReturnCode != rc:
		return fmt.Errorf("CONNACK return code %d, want %d (%v)", ack.ReturnCode, rc, step.Err)
	case ack.SessionPresent:
		return fmt.Errorf("failed CONNACK has Session Present 1")
	}
	return nil
}

// opDisconnect sends the client's DISCONNECT, v5 maybe with a new SEI (§8).
func (m *modelRun) opDisconnect(c *modelConn) (string, error) {
	id := c.id
	code := mqtthooks.CodeNormalDisconnection
	var sei mqtthooks.Opt[uint32]
	if c.v5 {
		if m.rng.IntN(4) == 0 {
			code = mqtthooks.CodeDisconnectWithWillMessage
		}
		if m.rng.IntN(2) == 0 {
			sei = mqtthooks.Some([]uint32{0, 60, 300}[m.rng.IntN(3)])
		}
	}
	desc := fmt.Sprintf("disconnect %s (conn %d) code=%s", id, c.client.Info.ConnID, code)
	if sei.Set {
		desc += fmt.Sprintf(" sei=%d", sei.V)
	}
	var err error
	if sei.Set {
		err = c.client.DisconnectWithExpiry(context.Background(), code, sei.V)
	} else {
		err = c.client.Disconnect(context.Background(), code)
	}
	if c.v5 && sei.Set && c.sei == 0 && sei.V != 0 {
		// Raising the SEI from 0 is a protocol error: DISCONNECT 0x82, and the
		// connection ends with cleanup on disconnect, as its SEI stays 0.
		var pe *mqtthooks.ProtocolError
		if !errors.As(err, &pe) || pe.Code != mqtthooks.CodeProtocolError {
			return desc, fmt.Errorf("Disconnect raising the SEI from 0 returned %v; want a *ProtocolError with code 0x82", err)
		}
		m.connectionEnded(c, mqtthooks.ReasonProtocolError, modelCodeIf(true, mqtthooks.CodeProtocolError))
		m.tally["DISCONNECT raised SEI from 0"]++
		return desc + " → protocol error", nil
	}
	if err != nil {
		return desc, fmt.Errorf("Disconnect: %v", err)
	}
	if sei.Set {
		c.sei, c.cleanup = sei.V, sei.V == 0
	}
	m.connectionEnded(c, mqtthooks.ReasonClientDisconnect, modelCodeIf(c.v5, code))
	return desc, nil
}

// opLost loses the connection without a DISCONNECT.
func (m *modelRun) opLost(c *modelConn) (string, error) {
	desc := fmt.Sprintf("lost %s (conn %d)", c.id, c.client.Info.ConnID)
	if m.rng.IntN(3) == 0 {
		c.client.Drop(context.Background(), mqtthooks.ErrKeepAlive)
		m.connectionEnded(c, mqtthooks.ReasonKeepAlive, modelAnyCode)
		return desc + " keep-alive", nil
	}
	c.client.Drop(context.Background(), nil)
	m.connectionEnded(c, mqtthooks.ReasonNetworkError, modelCodeIf(false, 0)) // no DISCONNECT, no code
	return desc + " network error", nil
}

// opAdmin is core.Disconnect (§8).
func (m *modelRun) opAdmin(id string, cleanup bool) (string, error) {
	desc := fmt.Sprintf("admin disconnect %s cleanup=%v", id, cleanup)
	err := m.f.core.Disconnect(context.Background(), sid(id), cleanup)
	s := m.sessions[id]
	if s == nil {
		if !errors.Is(err, mqtthooks.ErrSessionNotFound) {
			return desc, fmt.Errorf("admin Disconnect of a missing session returned %v; want ErrSessionNotFound", err)
		}
		return desc + " → not found", nil
	}
	if err != nil {
		return desc, fmt.Errorf("admin Disconnect: %v", err)
	}
	if !cleanup { // each connection ends as after any server-side close
		for _, c := range slices.Clone(s.conns) {
			m.kick(c, mqtthooks.ErrAdminDisconnect, mqtthooks.CodeAdministrativeAction)
			m.connectionEnded(c, mqtthooks.ReasonAdmin, modelCodeIf(c.v5, mqtthooks.CodeAdministrativeAction))
		}
		return desc, nil
	}
	code := modelAnyCode // an offline session: no connection, no DISCONNECT
	if s.online() {
		code = modelCodeIf(s.conns[len(s.conns)-1].v5, mqtthooks.CodeAdministrativeAction)
		m.kickAll(s, mqtthooks.ErrAdminDisconnect, mqtthooks.CodeAdministrativeAction)
	}
	m.endLife(id, "OnClientGone", mqtthooks.ReasonAdmin, code)
	return desc, nil
}

// opSleep lets fake time pass. The durations are whole seconds plus 1 ms, so
// a sleep never ends exactly on an expiry deadline (deadlines are whole
// seconds plus k ms for fewer than 1000 earlier sleeps): no tie to resolve.
func (m *modelRun) opSleep() (string, error) {
	d := []time.Duration{30 * time.Second, 99 * time.Second, 150 * time.Second, 301 * time.Second}[m.rng.IntN(4)] + time.Millisecond
	due := m.dueBy(time.Now().Add(d))
	// The busy-pool variant needs to know whose expiry hook runs first:
	// sessions that went offline at the same instant with the same expiry
	// tie, and the scheduler may take either.
	if len(due) >= 2 && m.sessions[due[0]].expiresAt.Before(m.sessions[due[1]].expiresAt) && m.rng.IntN(2) == 0 {
		return m.opSleepBusyPool(d, due)
	}
	time.Sleep(d)
	synctest.Wait()
	for _, id := range due {
		m.endLife(id, "OnSessionExpired", mqtthooks.ReasonExpired, modelAnyCode)
	}
	desc := fmt.Sprintf("sleep %v", d)
	if len(due) > 0 {
		desc += " → expired " + strings.Join(due, ",")
	}
	return desc, nil
}

// dueBy returns the offline sessions whose expiry comes by end, earliest
// first.
func (m *modelRun) dueBy(end time.Time) []string {
	var due []string
	for _, id := range modelIDs {
		s := m.sessions[id]
		if s != nil && !s.online() && !s.expiresAt.IsZero() && !s.expiresAt.After(end) {
			due = append(due, id)
		}
	}
	slices.SortFunc(due, func(a, b string) int { return m.sessions[a].expiresAt.Compare(m.sessions[b].expiresAt) })
	return due
}

// opSleepBusyPool lets time pass while the Core's one worker (Options.Workers
// is 1) is stuck in the first OnSessionExpired hook, as a busy pool of slow
// plugins would be in production. The next session due to expire, due[1],
// then waits for the worker. Meanwhile its client resumes it and loses the
// connection again, so it is offline with a fresh expiry. When the hook
// returns, due[0] and the later ones expire, but due[1] must not: its old
// expiry was cancelled by the resume (SPEC §8, ACCEPTANCE 51).
func (m *modelRun) opSleepBusyPool(d time.Duration, due []string) (string, error) {
	ch := make(chan struct{})
	m.stall.Store(&ch)
	release := sync.OnceFunc(func() {
		m.stall.Store(nil)
		close(ch)
	})
	defer release() // also on an early return, so that the bubble can end
	time.Sleep(d)
	synctest.Wait()
	desc := fmt.Sprintf("sleep %v with %s's OnSessionExpired stuck in the only worker", d, due[0])
	victim := due[1]
	a := modelConnect{id: victim, v5: m.rng.IntN(2) == 0, user: m.sessions[victim].user, willDelay: -1, overdue: true}
	if a.v5 {
		a.sei = 300
	}
	cdesc, err := m.opConnect(a)
	desc += "; then " + cdesc
	if err != nil {
		return desc, err
	}
	ldesc, _ := m.opLost(m.sessions[victim].conns[0])
	desc += "; then " + ldesc + "; then the hook returns"
	m.tally["sleep with a busy pool"]++
	release()
	synctest.Wait()
	for _, id := range due {
		if id != victim {
			m.endLife(id, "OnSessionExpired", mqtthooks.ReasonExpired, modelAnyCode)
		}
	}
	return desc + " → expired " + strings.Join(slices.DeleteFunc(slices.Clone(due), func(id string) bool { return id == victim }), ","), nil
}

// opStale ends a connection that already ended, as a broker's read loop does
// after a takeover: it must change nothing.
func (m *modelRun) opStale(c *modelConn) (string, error) {
	if m.rng.IntN(2) == 0 {
		c.client.Session.Lost(context.Background(), errors.New("late close"))
		return fmt.Sprintf("late Lost on an ended connection of %s (conn %d)", c.id, c.client.Info.ConnID), nil
	}
	_ = c.client.Session.Disconnect(context.Background(), mqtthooks.CodeNormalDisconnection)
	return fmt.Sprintf("late DISCONNECT on an ended connection of %s (conn %d)", c.id, c.client.Info.ConnID), nil
}

// --- model transitions --------------------------------------------------

// kick records that the Core ends c: Pull returns err, Conn.Disconnect gets code.
func (m *modelRun) kick(c *modelConn, err error, code mqtthooks.ReasonCode) {
	c.ended, c.kickErr, c.kickCode = true, err, code
}

func (m *modelRun) kickAll(s *modelSession, err error, code mqtthooks.ReasonCode) {
	for _, c := range s.conns {
		m.kick(c, err, code)
	}
}

// connectionEnded: connection c ended (§8). Unless it was the session's last,
// nothing fires; the last one's cleanup on disconnect decides between Gone
// and Offline, which starts the expiry clock.
func (m *modelRun) connectionEnded(c *modelConn, reason mqtthooks.Reason, code modelCode) {
	s := m.sessions[c.id]
	c.ended = true
	s.conns = slices.DeleteFunc(s.conns, func(x *modelConn) bool { return x == c })
	switch {
	case s.online():
	case c.cleanup:
		m.endLife(c.id, "OnClientGone", reason, code)
	default:
		m.expect(c.id, modelWant{hook: "OnClientOffline", reason: reason, code: code, gen: s.gen, user: s.user})
		if e := c.expiry(); e > 0 {
			s.expiresAt = time.Now().Add(e)
		}
	}
}

// endLife ends the session's life with its terminal hook, after RemoveAll
// when it held a subscription (OQ11).
func (m *modelRun) endLife(id, hook string, reason mqtthooks.Reason, code modelCode) {
	s := m.sessions[id]
	if s.subscribed {
		m.expect(id, modelWant{hook: "RemoveAll"})
	}
	m.expect(id, modelWant{hook: hook, reason: reason, code: code, gen: s.gen, user: s.user})
	for _, c := range s.conns {
		c.ended = true
	}
	delete(m.sessions, id)
}

// --- checks -------------------------------------------------------------

// modelTracked are the calls the model predicts exactly.
var modelTracked = map[string]bool{
	"OnClientWakeup": true, "OnRegister": true, "OnRegisterM5": true, "OnClientOffline": true,
	"OnClientGone": true, "OnSessionExpired": true, "RemoveAll": true,
}

// check compares the Core with the model after a step.
func (m *modelRun) check() error {
	byID := map[string][]mqtthookstest.Call{}
	for _, c := range m.f.rec.Calls() {
		if modelTracked[c.Hook] {
			byID[c.ID.ClientID] = append(byID[c.ID.ClientID], c)
		}
	}
	lifeOf := map[uint64]string{}
	for _, id := range modelIDs {
		calls := append(slices.Clone(m.carried[id]), byID[id]...)
		if err := modelCheckDelta(calls[m.seen[id]:], m.want[id]); err != nil {
			return fmt.Errorf("%s: %w", id, err)
		}
		m.seen[id] = len(calls)
		gens, err := modelCheckLives(modelLifecycleCalls(calls))
		if err != nil {
			return fmt.Errorf("%s: %w", id, err)
		}
		for _, g := range gens {
			if other, dup := lifeOf[g]; dup {
				return fmt.Errorf("Generation %d is used by two lives (%s and %s)", g, other, id)
			}
			lifeOf[g] = id
		}
		if err := m.checkLookup(id); err != nil {
			return fmt.Errorf("%s: %w", id, err)
		}
	}
	if o := m.f.rec.Overlaps(); len(o) > 0 {
		return fmt.Errorf("lifecycle hooks overlapped: %v", o)
	}
	if err := m.checkStats(); err != nil {
		return err
	}
	return m.checkConns()
}

// modelCheckDelta compares the calls of one step with the expected ones.
func modelCheckDelta(got []mqtthookstest.Call, want []modelWant) error {
	mismatch := func(why string) error {
		return fmt.Errorf("%s\n    got  %s\n    want %s", why, modelFormatCalls(got), modelFormatWants(want))
	}
	if len(got) != len(want) {
		return mismatch("wrong hooks")
	}
	for i, w := range want {
		c, ev := got[i], got[i].Event
		switch {
		case c.Hook != w.hook:
			return mismatch("wrong hooks")
		case w.hook == "RemoveAll":
		case ev.Reason != w.reason:
			return mismatch(fmt.Sprintf("%s has Reason %s, want %s", c.Hook, ev.Reason, w.reason))
		case ev.Generation != w.gen:
			return mismatch(fmt.Sprintf("%s has Generation %d, want %d", c.Hook, ev.Generation, w.gen))
		case ev.Username != w.user || !ev.HasUsername:
			return mismatch(fmt.Sprintf("%s has Username %q (%v), want %q", c.Hook, ev.Username, ev.HasUsername, w.user))
		case w.code.check && (ev.HasCode != w.code.has || (w.code.has && ev.Code != w.code.code)):
			return mismatch(fmt.Sprintf("%s has Code %s (HasCode %v), want %s (HasCode %v)", c.Hook, ev.Code, ev.HasCode, w.code.code, w.code.has))
		case w.connID != 0 && ev.ConnID != w.connID:
			return mismatch(fmt.Sprintf("%s has ConnID %d, want %d", c.Hook, ev.ConnID, w.connID))
		case strings.HasPrefix(w.hook, "OnRegister") && c.SessionPresent != w.present:
			return mismatch(fmt.Sprintf("%s has SessionPresent %v, want %v", c.Hook, c.SessionPresent, w.present))
		}
	}
	return nil
}

func modelFormatCalls(calls []mqtthookstest.Call) string {
	if len(calls) == 0 {
		return "(nothing)"
	}
	parts := make([]string, len(calls))
	for i, c := range calls {
		parts[i] = c.Hook
		if c.Hook != "RemoveAll" {
			code := "-"
			if c.Event.HasCode {
				code = c.Event.Code.String()
			}
			parts[i] += fmt.Sprintf("{%s gen=%d code=%s}", c.Event.Reason, c.Event.Generation, code)
		}
	}
	return strings.Join(parts, " → ")
}

func modelFormatWants(want []modelWant) string {
	if len(want) == 0 {
		return "(nothing)"
	}
	parts := make([]string, len(want))
	for i, w := range want {
		parts[i] = w.String()
	}
	return strings.Join(parts, " → ")
}

// modelLifecycleCalls keeps only the lifecycle hooks: the grammar ignores auth
// hooks, Router calls and PublishWill.
func modelLifecycleCalls(calls []mqtthookstest.Call) []mqtthookstest.Call {
	return slices.DeleteFunc(slices.Clone(calls), func(c mqtthookstest.Call) bool { return modelLetters[c.Hook] == 0 })
}

// The grammar of SPEC §2 over one letter per hook: W = OnClientWakeup, R =
// OnRegister or OnRegisterM5, O = OnClientOffline, G = OnClientGone, E =
// OnSessionExpired; attach = WR. A history is complete lives followed by the
// prefix of the running life.
var modelGrammar = regexp.MustCompile(`^(?:(?:WR)+(?:O(?:WR)+)*(?:G|OG|OE))*(?:(?:WR)+(?:O(?:WR)+)*O?)?$`)

// modelFirstBad returns the index of the first letter after which the history
// can no longer be completed into a valid one.
func modelFirstBad(letters []byte) int {
	for i := range letters {
		p := letters[:i+1]
		if !modelGrammar.Match(p) && !modelGrammar.Match(append(slices.Clone(p), 'R')) {
			return i
		}
	}
	return len(letters) - 1
}

var modelLetters = map[string]byte{
	"OnClientWakeup": 'W', "OnRegister": 'R', "OnRegisterM5": 'R',
	"OnClientOffline": 'O', "OnClientGone": 'G', "OnSessionExpired": 'E',
}

// modelCheckLives checks the lifecycle history of one SubscriberID against
// the grammar, and that every event of a life carries the life's Generation
// and different lives different ones. It returns the Generation of each life.
func modelCheckLives(calls []mqtthookstest.Call) ([]uint64, error) {
	letters := make([]byte, len(calls))
	for i, c := range calls {
		letters[i] = modelLetters[c.Hook]
	}
	if !modelGrammar.Match(letters) {
		bad := modelFirstBad(letters)
		from := max(0, bad-8)
		return nil, fmt.Errorf("lifecycle hooks break the grammar of SPEC §2 at hook %d: %s\n    around it: … %s",
			bad+1, letters, modelFormatCalls(calls[from:bad+1]))
	}
	var gens []uint64
	start := true
	for _, c := range calls {
		g := c.Event.Generation
		if start {
			if slices.Contains(gens, g) {
				return nil, fmt.Errorf("a new life reuses Generation %d: %s", g, modelFormatCalls(calls))
			}
			gens = append(gens, g)
			start = false
		} else if g != gens[len(gens)-1] {
			return nil, fmt.Errorf("one life has Generations %d and %d: %s", gens[len(gens)-1], g, modelFormatCalls(calls))
		}
		start = c.Hook == "OnClientGone" || c.Hook == "OnSessionExpired"
	}
	return gens, nil
}

// checkLookup compares core.Lookup with the model.
func (m *modelRun) checkLookup(id string) error {
	info, ok := m.f.core.Lookup(sid(id))
	s := m.sessions[id]
	if ok != (s != nil) {
		return fmt.Errorf("Lookup found a session: %v, want %v (%+v)", ok, s != nil, info)
	}
	if s == nil {
		return nil
	}
	conns := len(s.conns)
	switch {
	case info.Generation != s.gen:
		return fmt.Errorf("Lookup Generation %d, want %d", info.Generation, s.gen)
	case info.Connections != conns:
		return fmt.Errorf("Lookup Connections %d, want %d", info.Connections, conns)
	case info.Username != s.user || !info.HasUsername:
		return fmt.Errorf("Lookup Username %q, want %q", info.Username, s.user)
	case !info.ExpiresAt.Equal(s.expiresAt):
		return fmt.Errorf("Lookup ExpiresAt %v, want %v", info.ExpiresAt, s.expiresAt)
	case (len(info.Subscriptions) > 0) != s.subscribed:
		return fmt.Errorf("Lookup Subscriptions %v, want subscribed=%v", info.Subscriptions, s.subscribed)
	}
	return nil
}

func (m *modelRun) checkStats() error {
	online := 0
	for _, s := range m.sessions {
		online += len(s.conns)
	}
	st := m.f.core.Stats()
	if st.Sessions != int64(len(m.sessions)) || st.Connections != int64(online) {
		return fmt.Errorf("Stats: %d sessions, %d connections; want %d, %d", st.Sessions, st.Connections, len(m.sessions), online)
	}
	return nil
}

// checkConns checks what every accepted connection sees: an attached one
// pulls without error; one the Core ended pulls its *EndedError and got
// Conn.Disconnect with its code; one the client ended got no Conn.Disconnect.
func (m *modelRun) checkConns() error {
	buf := make([]mqtthooks.Delivery, 8)
	for _, c := range m.conns {
		_, err := c.client.Session.Pull(buf)
		disc := c.client.Conn.Disconnects()
		who := fmt.Sprintf("connection %d of %s", c.client.Info.ConnID, c.id)
		switch {
		case !c.ended && err != nil:
			return fmt.Errorf("%s is attached, but Pull returned %v", who, err)
		case !c.ended && len(disc) > 0:
			return fmt.Errorf("%s is attached, but got Conn.Disconnect %v", who, disc)
		case c.ended && c.kickErr != nil && !errors.Is(err, c.kickErr):
			return fmt.Errorf("%s: Pull returned %v, want %v", who, err, c.kickErr)
		case c.ended && c.kickErr != nil && !slices.Equal(disc, []mqtthooks.ReasonCode{c.kickCode}):
			return fmt.Errorf("%s: Conn.Disconnect calls %v, want [%s]", who, disc, c.kickCode)
		case c.ended && c.kickErr == nil && err == nil:
			return fmt.Errorf("%s ended, but Pull returned no error", who)
		case c.ended && c.kickErr == nil && len(disc) > 0:
			return fmt.Errorf("%s was ended by its client, but got Conn.Disconnect %v", who, disc)
		}
	}
	return nil
}

// --- takeover storm -----------------------------------------------------

// TestTakeoverStorm connects 100 clients with one SubscriberID at once, with
// the real clock: in the end exactly one is attached, every other one was
// taken over, and the lifecycle hooks still follow SPEC §2, one at a time.
func TestTakeoverStorm(t *testing.T) {
	const rounds, clients = 20, 100
	f := newFixture(t, mqtthooks.Options{})
	var survivors, takenOver []*mqtthookstest.Client
	for round := range rounds {
		id := fmt.Sprintf("storm%d", round)
		cs := stormConnect(f.core, id, clients, uint64(round))
		survivor := checkStorm(t, f, id, cs)
		for _, c := range cs {
			if c != survivor {
				takenOver = append(takenOver, c)
			}
		}
		survivors = append(survivors, survivor)
	}
	if o := f.rec.Overlaps(); len(o) > 0 {
		t.Errorf("lifecycle hooks overlapped: %v", o)
	}

	// After Shutdown no Conn.Disconnect is in flight: a connection taken over
	// after Start got DISCONNECT 0x8E, one taken over before Start none (its
	// Pull reports the takeover); the survivors got 0x8B from Shutdown.
	if err := f.core.Shutdown(context.Background()); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	for _, c := range takenOver {
		if d := c.Conn.Disconnects(); len(d) > 1 || (len(d) == 1 && d[0] != mqtthooks.CodeSessionTakenOver) {
			t.Errorf("taken-over connection %d got Conn.Disconnect %v, want [] or [0x8E]", c.Info.ConnID, d)
		}
	}
	for _, c := range survivors {
		if c == nil {
			continue
		}
		if d := c.Conn.Disconnects(); !slices.Equal(d, []mqtthooks.ReasonCode{mqtthooks.CodeServerShuttingDown}) {
			t.Errorf("surviving connection %d got Conn.Disconnect %v at Shutdown, want [0x8B]", c.Info.ConnID, d)
		}
	}
}

// stormConnect connects n clients with id at once: a mix of v3 and v5, clean
// and persistent, all with user "u". Like a broker, a client that finds itself
// taken over right away closes its connection and reports it with Lost, which
// must not disturb the session its successor holds.
func stormConnect(core *mqtthooks.Core, id string, n int, seed uint64) []*mqtthookstest.Client {
	rng := rand.New(rand.NewPCG(seed, 0x73746f726d))
	cs := make([]*mqtthookstest.Client, n)
	reqs := make([]*mqtthooks.ConnectRequest, n)
	for i := range n {
		cs[i] = mqtthookstest.NewClient(core)
		clean := rng.IntN(2) == 0
		if rng.IntN(2) == 0 {
			reqs[i] = mqtthookstest.V3(id, "u", clean)
		} else {
			reqs[i] = mqtthookstest.V5(id, "u", clean, []uint32{0, 300}[rng.IntN(2)])
		}
	}
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			<-start
			c := cs[i]
			c.Connect(context.Background(), reqs[i])
			if c.Session == nil {
				return
			}
			if _, err := c.Session.Pull(nil); errors.Is(err, mqtthooks.ErrTakenOver) {
				c.Session.Lost(context.Background(), errors.New("closed after takeover"))
			}
		})
	}
	close(start)
	wg.Wait()
	return cs
}

// checkStorm checks the outcome of one storm and returns the surviving client.
func checkStorm(t *testing.T, f *fixture, id string, cs []*mqtthookstest.Client) *mqtthookstest.Client {
	t.Helper()
	var survivor *mqtthookstest.Client
	accepted := 0
	buf := make([]mqtthooks.Delivery, 8)
	for _, c := range cs {
		if !c.Accepted() {
			// Nothing in SPEC rejects these CONNECTs; a rejection must at
			// least be a proper failed CONNACK.
			ack := c.Connack()
			t.Errorf("%s: connection %d rejected: %+v (%v)", id, c.Info.ConnID, ack, c.Step.Err)
			continue
		}
		accepted++
		_, err := c.Session.Pull(buf)
		switch {
		case err == nil && survivor != nil:
			t.Errorf("%s: connections %d and %d both still attached", id, survivor.Info.ConnID, c.Info.ConnID)
		case err == nil:
			survivor = c
		case !errors.Is(err, mqtthooks.ErrTakenOver):
			t.Errorf("%s: connection %d: Pull returned %v, want ErrTakenOver", id, c.Info.ConnID, err)
		}
	}
	info, ok := f.core.Lookup(sid(id))
	if !ok || info.Connections != 1 {
		t.Errorf("%s: Lookup = %+v, %v; want one connection attached", id, info, ok)
	}
	if survivor == nil {
		t.Errorf("%s: no connection is attached", id)
		return nil
	}
	if info.Generation != survivor.Session.Generation() {
		t.Errorf("%s: Lookup Generation %d, survivor's %d", id, info.Generation, survivor.Session.Generation())
	}

	calls := modelLifecycleCalls(f.rec.CallsFor(sid(id)))
	if _, err := modelCheckLives(calls); err != nil {
		t.Errorf("%s: %v", id, err)
	}
	// Every accepted connection attached once, and the survivor last.
	var wakeups []uint64
	for _, c := range calls {
		if c.Hook == "OnClientWakeup" {
			wakeups = append(wakeups, c.Event.ConnID)
		}
	}
	if len(wakeups) != accepted {
		t.Errorf("%s: %d OnClientWakeup for %d accepted connections", id, len(wakeups), accepted)
	}
	if len(wakeups) > 0 && wakeups[len(wakeups)-1] != survivor.Info.ConnID {
		t.Errorf("%s: last OnClientWakeup is for connection %d, but connection %d is attached", id,
			wakeups[len(wakeups)-1], survivor.Info.ConnID)
	}
	return survivor
}
