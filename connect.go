package mqtthooks

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"strings"
	"time"
)

// StepKind says what the broker does next with a CONNECT.
type StepKind uint8

// The steps of a CONNECT.
const (
	// SendConnack: send Step.Connack. With Step.Session set the client is
	// connected; otherwise close the connection after the CONNACK.
	SendConnack StepKind = iota + 1
	// SendAuth: send Step.Auth (MQTT 5 enhanced authentication) and hand the
	// client's answer to the Handshake.
	SendAuth
	// CloseConnection: close the connection without sending anything.
	CloseConnection
)

// String returns "send-connack", "send-auth" or "close".
func (k StepKind) String() string {
	switch k {
	case SendConnack:
		return "send-connack"
	case SendAuth:
		return "send-auth"
	case CloseConnection:
		return "close"
	}
	return fmt.Sprintf("StepKind(%d)", uint8(k))
}

// Step is what the broker does next with a CONNECT. It can only send the
// CONNACK the Core decided.
type Step struct {
	Kind    StepKind
	Connack *Connack    // for SendConnack
	Auth    *AuthPacket // for SendAuth
	// Session is the connected client's session, for an accepted CONNACK.
	// Call its Start once the CONNACK is sent.
	Session *Session
	// Plugin names, for a refusal a plugin decided, the plugin; "" when the
	// core refused (a protocol error, a limit, no plugin deciding).
	Plugin string
	// Err says why the CONNECT failed or was abandoned; nil when accepted or
	// while the exchange goes on.
	Err error
}

// Connack is a CONNACK as the broker sends it.
type Connack struct {
	SessionPresent bool
	// ReturnCode is for MQTT 3, ReasonCode for MQTT 5.
	ReturnCode ReturnCode
	ReasonCode ReasonCode
	// Properties are the MQTT 5 properties; zero for MQTT 3.
	Properties ConnackProperties
}

// AuthPacket is an MQTT 5 AUTH packet, in either direction.
type AuthPacket struct {
	ReasonCode     ReasonCode
	Method         string
	Data           []byte
	ReasonString   string
	UserProperties []UserProperty
}

// Handshake is a CONNECT in progress. For a CONNECT with MQTT 5 enhanced
// authentication it carries the exchange: the broker hands it the client's
// AUTH packets until a step is not SendAuth. A Handshake is used by one
// goroutine at a time.
type Handshake struct {
	core    *Core
	ci      *ConnInfo
	connect *ConnectRequest
	conn    Conn
	lst     ListenerOptions
	snap    *Snapshot
	id      SubscriberID // after the client-id rules

	budget   time.Duration // what is left of ConnectTimeout
	deadline time.Time     // the end of the enhanced-auth exchange
	enhanced *EnhancedAuth
	authData []byte // Authentication Data for the success CONNACK
	owner    string // the plugin that owns a running exchange
	state    any
	finished bool
	claimed  bool // this node claimed the session from the cluster
	// claimStored: the store held the claimed session, or may have (it
	// could not be read)
	claimStored bool

	// What one CONNECT needs, kept here so that a CONNECT allocates little:
	// the context of its conditional hooks, its requests and events, its
	// registration operation and its reply.
	stepCtx opCtx
	steps   int
	rreq    RegisterRequest
	plan    plan
	regOp   op
	regCtx  context.Context
	step    Step
	connack Connack
	resume  ResumeRequest
	reg     RegisterEvent
}

// Deadline returns when an enhanced-authentication exchange must be over:
// the broker waits for the client's AUTH until then, and calls Timeout after.
func (h *Handshake) Deadline() time.Time { return h.deadline }

// Connect starts a CONNECT: the client-id rules, enhanced authentication,
// AuthOnRegister or AuthOnRegisterM5, the Will checks, then registration with
// OnClientWakeup and OnRegister. It never touches the network: the returned
// Step says what the broker sends. When ctx is canceled (the client went
// away) the CONNECT is abandoned: CloseConnection, and no session is touched.
//
// The Core keeps copies of what it needs from ci and req; the broker may
// reuse them once the CONNECT is over.
func (c *Core) Connect(ctx context.Context, ci *ConnInfo, req *ConnectRequest, conn Conn) (*Handshake, Step) {
	h := &Handshake{core: c, ci: ci, connect: req, conn: conn, finished: true}
	switch {
	case ctx == nil, ci == nil, req == nil, conn == nil:
		return h, Step{Kind: CloseConnection, Err: fmt.Errorf("%w: Connect needs a context, a ConnInfo, a ConnectRequest and a Conn", ErrInvalidArgument)}
	case c.closed.Load():
		return h, h.reject(ErrShutdown)
	}
	h.budget = c.opts.ConnectTimeout
	lst, sub := c.listener(ci.Listener)
	h.lst = lst
	v := req.ProtocolVersion
	if !v.Valid() || !lst.allows(v) {
		return h, h.reject(fmt.Errorf("%w: %s on listener %q", ErrProtocolVersion, v, ci.Listener))
	}
	if problem := checkConnect(req); problem != "" {
		err := fmt.Errorf("%w: %s", ErrMalformedPacket, problem)
		if !v.IsV5() {
			c.stats.rejected.Add(1)
			return h, Step{Kind: CloseConnection, Err: err}
		}
		return h, h.reject(err)
	}
	id, err := c.clientID(ci, req)
	if err != nil {
		return h, h.reject(err)
	}
	h.id = id
	h.snap = c.chain.Snapshot().Restrict(sub)
	if v.IsV5() && req.Properties.AuthenticationMethod != "" {
		h.finished = false
		h.deadline = time.Now().Add(c.opts.AuthExchangeTimeout)
		return h, h.startAuth(ctx)
	}
	return h, h.authorize(ctx)
}

// checkConnect returns what is wrong with the strings of a CONNECT, or "".
func checkConnect(req *ConnectRequest) string {
	check := func(what, s string) string {
		if p := checkMQTTString(s); p != "" {
			return what + " " + p
		}
		return ""
	}
	props := func(what string, ps []UserProperty) string {
		for _, p := range ps {
			if problem := cmp.Or(check(what+" user property key", p.Key), check(what+" user property value", p.Value)); problem != "" {
				return problem
			}
		}
		return ""
	}
	problem := cmp.Or(check("client id", req.ClientID), check("username", req.Username),
		check("authentication method", req.Properties.AuthenticationMethod), props("CONNECT", req.Properties.UserProperties))
	if w := req.Will; w != nil && problem == "" {
		wp := &w.Properties
		problem = cmp.Or(check("Will topic", w.Topic), check("Will content type", wp.ContentType),
			check("Will response topic", wp.ResponseTopic), props("Will", wp.UserProperties))
		if problem == "" && w.Topic == "" {
			problem = "Will topic is empty"
		}
		if problem == "" && w.QoS > 2 {
			problem = "Will QoS is above 2"
		}
	}
	return problem
}

// clientID applies the client-id rules: MQTT 3.1.1 §3.1.3.1 and MQTT 5
// §3.1.3.1, with MaxClientIDLen and ClientIDGenerator.
func (c *Core) clientID(ci *ConnInfo, req *ConnectRequest) (SubscriberID, error) {
	id := SubscriberID{Mountpoint: ci.Mountpoint, ClientID: req.ClientID}
	if req.ClientID != "" {
		if len(req.ClientID) > c.opts.MaxClientIDLen {
			return id, fmt.Errorf("%w: %d bytes, above the limit of %d", ErrClientIDRejected, len(req.ClientID), c.opts.MaxClientIDLen)
		}
		return id, nil
	}
	if req.ProtocolVersion == MQTT31 || (req.ProtocolVersion == MQTT311 && !req.CleanStart) {
		return id, fmt.Errorf("%w: empty client id needs MQTT 5, or 3.1.1 with clean session", ErrClientIDRejected)
	}
	for range maxIDCollisions + 1 {
		if perr := c.guard("ClientIDGenerator", id, func() { id.ClientID = c.opts.ClientIDGenerator() }); perr != nil {
			return id, fmt.Errorf("%w: %w", ErrRegistration, perr)
		}
		if p := checkMQTTString(id.ClientID); p != "" || id.ClientID == "" || len(id.ClientID) > c.opts.MaxClientIDLen {
			err := fmt.Errorf("%w: generated client id %q breaks the client-id rules", ErrRegistration, id.ClientID)
			c.logger.Error("mqtthooks: ClientIDGenerator", "err", err)
			return id, err
		}
		if !c.exists(id) {
			return id, nil
		}
	}
	err := fmt.Errorf("%w: %d generated client ids named existing sessions", ErrRegistration, maxIDCollisions+1)
	c.logger.Error("mqtthooks: ClientIDGenerator", "err", err)
	return id, err
}

const maxIDCollisions = 8

func (c *Core) exists(id SubscriberID) bool {
	e := c.reg.lookup(id)
	if e == nil {
		return false
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.state.Load() != nil
}

// reject ends the CONNECT with the CONNACK for err.
func (h *Handshake) reject(err error) Step { return h.rejectAs(err, err) }

// rejectAs ends the CONNECT with the CONNACK for reply; the step carries err,
// which says more (a plugin's own error, say).
func (h *Handshake) rejectAs(reply, err error) Step {
	h.finished = true
	h.core.stats.rejected.Add(1)
	ack := &Connack{ReturnCode: ConnackReturnCode(reply)}
	code, replaced := ConnackReasonCode(reply)
	ack.ReasonCode = code
	if replaced {
		h.core.logger.Warn("mqtthooks: plugin reason code not valid in a CONNACK; sent 0x87", "err", err)
	}
	var re *RejectError
	if h.connect != nil && h.connect.ProtocolVersion.IsV5() && errors.As(reply, &re) && !replaced {
		ack.Properties.ReasonString = re.Reason
		ack.Properties.ServerReference = re.ServerReference
	}
	if h.connect != nil {
		h.core.countConnack(h.connect.ProtocolVersion, ack)
	}
	return Step{Kind: SendConnack, Connack: ack, Err: err}
}

// abandon ends the CONNECT without a reply.
func (h *Handshake) abandon(err error) Step {
	h.finished = true
	h.core.stats.abandoned.Add(1)
	return Step{Kind: CloseConnection, Err: err}
}

// spend runs fn with a context bounded by what is left of the CONNECT's
// deadline, and deducts the time it took. Each step gets a context of its
// own (the first one lives in the Handshake), since a step's context is done
// for good once the step is over.
func (h *Handshake) spend(ctx context.Context, fn func(ctx context.Context)) {
	budget := max(h.budget, 0)
	sctx := &h.stepCtx
	if h.steps > 0 {
		sctx = new(opCtx)
	}
	h.steps++
	sctx.startWith(ctx, budget)
	start := time.Now()
	fn(sctx)
	sctx.release()
	h.budget -= time.Since(start)
}

// authorize runs AuthOnRegister or AuthOnRegisterM5 and, when the client is
// accepted, registers it.
func (h *Handshake) authorize(ctx context.Context) Step {
	c, req := h.core, h.connect
	h.rreq = RegisterRequest{SubscriberID: h.id, Connect: req, Conn: h.ci, EnhancedAuth: h.enhanced}
	rreq := &h.rreq
	var d Decision[RegisterResult]
	h.spend(ctx, func(cctx context.Context) {
		hook := hookAuthOnRegister
		if req.ProtocolVersion.IsV5() {
			hook = hookAuthOnRegisterM5
		}
		m := &c.hookm[hook]
		start := m.start()
		if hook == hookAuthOnRegisterM5 {
			d = h.snap.AuthOnRegisterM5(cctx, rreq)
		} else {
			d = h.snap.AuthOnRegister(cctx, rreq)
		}
		m.decided(d.Err, d.passed, start)
		c.logTimeout(cctx, hook, d.Err, d.Plugin, rreq.SubscriberID)
	})
	if err := ctx.Err(); err != nil { // the client went away, not a plugin's say
		return h.abandon(err)
	}
	err := d.ReplyError()
	if err != nil && h.lst.AllowAnonymous && !req.HasUsername &&
		(errors.Is(d.Err, ErrChainExhausted) || errors.Is(d.Err, ErrNoPlugin)) {
		err = nil
	}
	if err != nil {
		step := h.rejectAs(err, d.Err)
		step.Plugin = d.Plugin
		return step
	}
	p, err := h.makePlan(d.Result.Modifiers())
	if err != nil {
		c.logger.Warn("mqtthooks: CONNECT rejected", "plugin", d.Plugin, "err", err)
		step := h.reject(err)
		step.Plugin = d.Plugin
		return step
	}
	return h.register(ctx, p)
}

// plan is a CONNECT's accepted settings, after modifiers.
type plan struct {
	id          SubscriberID
	username    string
	hasUsername bool
	cleanStart  bool
	cleanup     bool
	sei         uint32
	expiry      time.Duration
	multi       bool
	limits      Limits
	queue       QueueSettings
	connack     ConnackProperties
	will        *Will
}

// noModifiers stands for an Accept without modifiers.
var noModifiers Modifiers

// makePlan applies the modifiers m to the CONNECT and checks its Will.
func (h *Handshake) makePlan(m *Modifiers) (*plan, error) {
	c, req := h.core, h.connect
	v5 := req.ProtocolVersion.IsV5()
	if m == nil {
		m = &noModifiers
	} else if err := m.Validate(ModifierRules{ProtocolVersion: req.ProtocolVersion,
		MaxClientIDLen: c.opts.MaxClientIDLen, Capabilities: c.caps}); err != nil {
		return nil, err
	}
	caps := c.caps
	p := &h.plan
	*p = plan{
		id:          m.SubscriberID.Or(h.id),
		username:    m.Username.Or(req.Username),
		hasUsername: req.HasUsername || m.Username.Set,
		cleanStart:  req.CleanStart || m.CleanStart.V,
		multi:       m.AllowMultipleSessions.V,
	}
	p.id, p.username = cloneIdentity(p.id, p.username)
	if v5 {
		p.sei = m.SessionExpiryInterval.Or(req.Properties.SessionExpiryInterval)
		p.cleanup = p.sei == 0
		p.expiry = seiDuration(p.sei)
	} else {
		p.cleanup = req.CleanStart
		if m.Persistent.Set {
			p.cleanup = !m.Persistent.V
		}
		p.expiry = c.opts.PersistentExpiry
	}
	p.limits = Limits{
		MaximumPacketSize:               m.MaximumPacketSize.Or(caps.MaximumPacketSize),
		MaxMessageRate:                  m.MaxMessageRate.V,
		UpgradeQoS:                      m.UpgradeQoS.V,
		MaximumQoS:                      m.MaximumQoS.Or(caps.MaximumQoS),
		RetainAvailable:                 m.RetainAvailable.Or(caps.RetainAvailable),
		WildcardSubscriptionAvailable:   m.WildcardSubscriptionAvailable.Or(caps.WildcardSubscriptionAvailable),
		SubscriptionIdentifierAvailable: m.SubscriptionIdentifierAvailable.Or(caps.SubscriptionIdentifierAvailable),
		SharedSubscriptionAvailable:     m.SharedSubscriptionAvailable.Or(caps.SharedSubscriptionAvailable),
		TopicAliasMaximum:               m.TopicAliasMaximum.Or(caps.TopicAliasMaximum),
		ReceiveMaximum:                  m.ReceiveMaximum.Or(caps.ReceiveMaximum),
		KeepAlive:                       m.ServerKeepAlive.Or(req.KeepAlive),
	}
	p.queue = c.queueSettings(m, req)
	if w := req.Will; w != nil {
		if w.QoS > p.limits.MaximumQoS {
			return nil, fmt.Errorf("%w: Will QoS %d is above the maximum %d", ErrWillQoS, w.QoS, p.limits.MaximumQoS)
		}
		if w.Retain && !p.limits.RetainAvailable {
			return nil, fmt.Errorf("%w: the Will is retained", ErrWillRetain)
		}
		p.will = cloneWill(w)
	}
	if v5 {
		p.connack = h.connackProperties(m, p)
	}
	return p, nil
}

// queueSettings returns the queue limits for a CONNECT accepted with m.
func (c *Core) queueSettings(m *Modifiers, req *ConnectRequest) QueueSettings {
	o := &c.opts
	set := QueueSettings{
		MaxOnlineMessages:  m.MaxOnlineMessages.Or(o.MaxOnlineMessages.Or(1000)),
		MaxOfflineMessages: m.MaxOfflineMessages.Or(o.MaxOfflineMessages.Or(1000)),
		QueueType:          m.QueueType.Or(cmp.Or(o.QueueType, QueueFIFO)),
		DeliverMode:        m.QueueDeliverMode.Or(cmp.Or(o.DeliverMode, DeliverFanout)),
		StoreQoS0Offline:   m.StoreQoS0Offline.Or(o.StoreQoS0Offline),
		MaxInflight:        m.MaxInflightMessages.Or(o.MaxInflightMessages.Or(20)),
	}
	if rm := int(req.Properties.ReceiveMaximum); req.ProtocolVersion.IsV5() && rm > 0 &&
		(set.MaxInflight == 0 || rm < set.MaxInflight) {
		set.MaxInflight = rm
	}
	return set
}

// connackProperties returns the properties of a successful v5 CONNACK: only
// those that differ from what MQTT assumes when a property is absent.
func (h *Handshake) connackProperties(m *Modifiers, p *plan) ConnackProperties {
	req, l := h.connect, p.limits
	var props ConnackProperties
	if p.id.ClientID != req.ClientID {
		props.AssignedClientIdentifier = p.id.ClientID
	}
	if m.SessionExpiryInterval.Set && m.SessionExpiryInterval.V != req.Properties.SessionExpiryInterval {
		props.SessionExpiryInterval = m.SessionExpiryInterval
	}
	if l.MaximumQoS < 2 {
		props.MaximumQoS = Some(l.MaximumQoS)
	}
	if !l.RetainAvailable {
		props.RetainAvailable = Some(false)
	}
	props.MaximumPacketSize = l.MaximumPacketSize
	props.TopicAliasMaximum = l.TopicAliasMaximum
	if l.ReceiveMaximum != 65535 {
		props.ReceiveMaximum = l.ReceiveMaximum
	}
	if !l.WildcardSubscriptionAvailable {
		props.WildcardSubscriptionAvailable = Some(false)
	}
	if !l.SubscriptionIdentifierAvailable {
		props.SubscriptionIdentifierAvailable = Some(false)
	}
	if !l.SharedSubscriptionAvailable {
		props.SharedSubscriptionAvailable = Some(false)
	}
	props.ServerKeepAlive = m.ServerKeepAlive
	if m.ResponseInformation.Set && req.Properties.RequestResponseInformation {
		props.ResponseInformation = m.ResponseInformation.V
	}
	props.UserProperties = cloneProperties(m.UserProperties.V)
	if h.enhanced != nil {
		props.AuthenticationMethod = h.enhanced.Method
		props.AuthenticationData = h.authData
	}
	return props
}

// register runs the registration as a lifecycle operation of the
// accepted SubscriberID.
func (h *Handshake) register(ctx context.Context, p *plan) Step {
	h.regCtx = ctx
	h.regOp.runner = h
	if err := h.core.reg.do(ctx, p.id, &h.regOp); err != nil {
		return h.abandon(err)
	}
	if h.step.Kind == 0 { // the operation was cut short by a panic of the Core's own
		return h.reject(fmt.Errorf("%w: the registration did not finish", ErrRegistration))
	}
	return h.step
}

func (h *Handshake) runOp(ctx context.Context, e *entry) {
	h.step = h.attach(ctx, e, &h.plan)
	if !h.claimed {
		return
	}
	// Claimed, and refused after all: this node owns the session now.
	c := h.core
	switch st := e.state.Load(); {
	case st == nil && !h.claimStored:
		c.disown(ctx, h.plan.id) // nothing to own
	case st == nil:
		c.adoptLater(h.plan.id, time.Second) // the store may hold it: take it over once it can be read
	case !st.online():
		c.armTimers(st) // it lives here, offline
	}
}

// attach registers the connection with its session: it creates, resumes,
// takes over or discards the existing one, then fires OnClientWakeup and
// OnRegister. ctx is the operation's; h.regCtx the broker's, whose end
// abandons the CONNECT.
//
// Everything that can refuse the CONNECT (the resume policy, the session
// limit, the store's Create) is decided before the existing session is
// touched: a rejected CONNECT leaves it as it was.
func (h *Handshake) attach(ctx context.Context, e *entry, p *plan) Step {
	c := h.core
	if c.closed.Load() { // Shutdown began while this CONNECT was on its way
		return h.reject(ErrShutdown)
	}
	st := e.state.Load()
	if st != nil && !c.owned(ctx, e, st) {
		st = nil // another node took it over while this one was cut off: claim it from there
	}
	if st == nil && c.cluster != nil {
		var err error
		if st, err = h.claim(ctx, e, p); err != nil {
			return h.reject(err)
		}
	}
	existed := st != nil
	var online, joining, cleanup bool // cleanup: the last connection's, for a takeover
	if existed {
		st.mu.Lock()
		h.resume = ResumeRequest{SubscriberID: p.id, Username: p.username, HasUsername: p.hasUsername,
			PrevUsername: st.rec.Username, PrevHasUsername: st.rec.HasUsername, CleanStart: p.cleanStart, Conn: h.ci}
		online = len(st.conns) > 0
		joining = online && st.multi && p.multi
		var last *Session
		if online {
			last = st.conns[len(st.conns)-1]
		}
		st.mu.Unlock()
		if online && !joining {
			last.mu.Lock()
			cleanup = last.cleanup
			last.mu.Unlock()
		}
		ok, err := c.resumeAllowed(ctx, &h.resume)
		if err != nil {
			return h.reject(err)
		}
		if !ok {
			return h.reject(fmt.Errorf("%w: session %s belongs to another user", ErrResumeRefused, p.id))
		}
	} else if !c.reserveSession() {
		return h.reject(fmt.Errorf("%w: %d sessions", ErrSessionLimit, c.opts.MaxSessions))
	}
	var fresh *sessionState // the new life, when there is one
	if !existed || p.cleanStart || (online && !joining && cleanup) {
		var err error
		if fresh, err = c.newLife(ctx, p); err != nil {
			if !existed {
				c.stats.sessions.Add(-1) // the slot reserved above
			}
			return h.reject(err)
		}
	}

	present := false
	switch {
	case !existed:
	case p.cleanStart:
		last := c.takeOver(ctx, st, true)
		ev := st.offlineEvent(ReasonCleanStart)
		if last != nil && last.version.IsV5() {
			ev.Code, ev.HasCode = CodeSessionTakenOver, true
		}
		c.endSession(ctx, e, st, hookOnClientGone, &ev, fresh)
	case !online:
		c.cancelTimers(st)
		present = true
	case joining:
		present = true
	default:
		c.stats.takeovers.Add(1)
		last := c.takeOver(ctx, st, cleanup)
		ev := last.event(ReasonTakenOver)
		if last.version.IsV5() {
			ev.Code, ev.HasCode = CodeSessionTakenOver, true
		}
		if cleanup { // MQTT: such a session ends with its connection
			c.endSession(ctx, e, st, hookOnClientGone, &ev, fresh)
		} else {
			c.sessionHook(ctx, hookOnClientOffline, &ev)
			c.cancelTimers(st)
			present = true
		}
	}
	if fresh != nil {
		st = fresh
		e.mu.Lock()
		e.state.Store(st)
		e.mu.Unlock()
		c.stats.created.Add(1)
	} else {
		c.stats.resumed.Add(1)
	}
	s := h.newSession(st, p, present)
	st.mu.Lock()
	if len(st.conns) == 0 {
		s.q = &st.q
		s.q.adopt(s, p.queue)
	} else { // joining a multiple session: a queue of its own
		s.q = &queue{}
		s.q.adopt(s, p.queue)
		window := st.q.set.MaxInflight // the owner's client's
		st.q.set = p.queue             // the latest attach's settings apply
		st.q.set.MaxInflight = window
	}
	s.joined = st.seq
	st.conns = append(st.conns, s)
	st.multi = p.multi
	r := &st.rec
	r.Username, r.HasUsername, r.ConnID, r.Peer, r.ProtocolVersion = s.username, s.hasUsername, s.connID, s.peer, s.version
	r.Expiry, r.Queue, r.Connected, r.Cleanup = p.expiry, st.q.set, true, p.cleanup
	r.ConnectionWills = st.connectionWills()
	var unstore StoreBatch
	if st.stored && p.cleanup && c.cluster == nil {
		// A session resumed with cleanup on disconnect ends with this
		// connection, and so must not outlive a crash: it leaves the store.
		unstore = c.store.Batch()
		unstore.DeleteSession(r.ID, r.Generation)
		st.stored = false
	}
	j := st.journal()
	j.updateRecord()
	var recorded chan error
	if c.cluster != nil && j != nil {
		// Another node must find the connection in the record should this
		// node die after the CONNACK: it ends the connection for it.
		recorded = make(chan error, 1)
		j.commit(func(err error) { recorded <- err })
	} else {
		j.commit(nil)
	}
	st.mu.Unlock()
	if recorded != nil {
		if err := waitFlushed(ctx, recorded); err != nil {
			// Another node could not end this connection should this one
			// die: refuse it. The session stays here, offline, unless the
			// store says it is another node's now.
			c.logger.Error("mqtthooks: session store: recording the connection failed", "session", r.ID.String(), "err", err)
			c.stats.connections.Add(1) // detach counts it out
			c.detach(st, s)
			switch {
			case errors.Is(err, ErrStaleGeneration):
				c.forget(e, st, false)
			case fresh != nil: // a life no hook has seen: it goes as it came
				if fenced, _ := c.deleteFirst(ctx, e, st, nil); !fenced {
					c.forget(e, st, false) // a failed delete is tried again later (deleteLater)
				}
			case !st.online():
				c.armTimers(st)
			}
			return h.reject(fmt.Errorf("%w: recording the connection: %w", ErrRegistration, err))
		}
	}
	if unstore != nil {
		if err := c.commitWait(ctx, unstore, r.ID); err != nil {
			c.logger.Error("mqtthooks: session store: delete failed", "session", r.ID.String(), "err", err)
		}
	}
	c.stats.connections.Add(1)

	h.reg = RegisterEvent{SessionEvent: s.event(ReasonNone), SessionPresent: present, Conn: h.ci}
	c.sessionHook(ctx, hookOnClientWakeup, &h.reg.SessionEvent)
	snap := c.chain.Snapshot()
	hook := hookOnRegister
	if s.version.IsV5() {
		hook = hookOnRegisterM5
		h.reg.Connack = &p.connack
	}
	m := &c.hookm[hook]
	start := m.start()
	if hook == hookOnRegisterM5 {
		snap.OnRegisterM5(ctx, &h.reg)
	} else {
		snap.OnRegister(ctx, &h.reg)
	}
	m.notified(start)
	if err := h.regCtx.Err(); err != nil {
		// The client went away after registration: a lost connection, Will and all.
		c.endConnection(ctx, e, st, s, endCause{reason: ReasonNetworkError, will: true})
		return h.abandon(err)
	}
	h.finished = true
	c.stats.accepted.Add(1)
	h.connack = Connack{SessionPresent: present, ReturnCode: ConnectionAccepted, ReasonCode: CodeSuccess}
	if s.version.IsV5() {
		h.connack.Properties = p.connack
	}
	c.countConnack(s.version, &h.connack)
	return Step{Kind: SendConnack, Connack: &h.connack, Session: s}
}

// reserveSession takes one of MaxSessions' slots for a new session.
func (c *Core) reserveSession() bool {
	if c.opts.MaxSessions == 0 {
		c.stats.sessions.Add(1)
		return true
	}
	for {
		n := c.stats.sessions.Load()
		if n >= int64(c.opts.MaxSessions) {
			return false
		}
		if c.stats.sessions.CompareAndSwap(n, n+1) {
			return true
		}
	}
}

// newLife returns the state of a new life for the SubscriberID of p. A
// persistent one is stored first, and the CONNECT fails with ErrRegistration
// if the store refuses it or does not make it durable in time. The Core
// installs it once the old life, if any, has ended; the store's new life
// replaces the old one's there.
func (c *Core) newLife(ctx context.Context, p *plan) (*sessionState, error) {
	gen, err := c.nextGeneration(p.id)
	if err != nil {
		return nil, err
	}
	st := new(sessionState)
	st.reset(&SessionRecord{ID: p.id, Generation: gen, Username: p.username, HasUsername: p.hasUsername,
		Expiry: p.expiry, Queue: p.queue})
	if c.store == nil || (p.cleanup && c.cluster == nil) {
		return st, nil
	}
	st.stored = true
	st.jn = journal{c: c, st: st}
	b := c.store.Batch()
	b.CreateSession(&st.rec)
	if err := c.commitWait(ctx, b, p.id); err != nil {
		c.logger.Error("mqtthooks: session store: create failed", "session", p.id.String(), "err", err)
		return nil, fmt.Errorf("%w: %w", ErrRegistration, err)
	}
	return st, nil
}

// newSession returns the handle of a connection accepted with p.
func (h *Handshake) newSession(st *sessionState, p *plan, present bool) *Session {
	connID := h.ci.ConnID
	if connID == 0 {
		connID = h.core.connIDs.Add(1) | 1<<63 // the broker gave none: ours cannot collide with small ones
	}
	return &Session{
		core: h.core, st: st, id: p.id, conn: h.conn, connID: connID, version: h.connect.ProtocolVersion,
		username: p.username, hasUsername: p.hasUsername, peer: h.ci.Peer, generation: st.rec.Generation,
		sessionPresent: present, limits: p.limits, will: p.will, attached: true,
		sei: p.sei, cleanup: p.cleanup, expiry: p.expiry, reauth: h.newReauth(),
	}
}

// cloneIdentity copies a session's id and username out of the caller's
// buffers, in one allocation.
func cloneIdentity(id SubscriberID, username string) (SubscriberID, string) {
	m, c := len(id.Mountpoint), len(id.ClientID)
	var b strings.Builder // not +, which may hand back an operand itself
	b.Grow(m + c + len(username))
	b.WriteString(id.Mountpoint)
	b.WriteString(id.ClientID)
	b.WriteString(username)
	buf := b.String()
	return SubscriberID{Mountpoint: buf[:m], ClientID: buf[m : m+c]}, buf[m+c:]
}

func cloneWill(w *Will) *Will {
	c := *w
	c.Topic = strings.Clone(w.Topic)
	c.Payload = bytes.Clone(w.Payload)
	c.Properties.ContentType = strings.Clone(w.Properties.ContentType)
	c.Properties.ResponseTopic = strings.Clone(w.Properties.ResponseTopic)
	c.Properties.CorrelationData = bytes.Clone(w.Properties.CorrelationData)
	c.Properties.UserProperties = cloneProperties(w.Properties.UserProperties)
	return &c
}

func cloneProperties(ps []UserProperty) []UserProperty {
	if ps == nil {
		return nil
	}
	out := make([]UserProperty, len(ps))
	for i, p := range ps {
		out[i] = UserProperty{Key: strings.Clone(p.Key), Value: strings.Clone(p.Value)}
	}
	return out
}

func cloneString(s string) string { return strings.Clone(s) }
