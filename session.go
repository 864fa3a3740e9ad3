package mqtthooks

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Conn is the broker's side of one network connection, as the Core sees it.
type Conn interface {
	// Notify tells the broker that the session has something for it to Pull:
	// deliveries, or the error that ends the connection. It must not block; a
	// channel with a buffer of one is the usual way. The Core never calls it
	// before Session.Start.
	Notify()
	// Disconnect asks the broker to send an MQTT 5 DISCONNECT with code (an
	// MQTT 3 connection is just closed) and to close the connection. It may
	// block: the Core calls it on a goroutine of its own and does not wait.
	// The Core has already ended the connection on its side; later calls on
	// its Session report the end.
	Disconnect(code ReasonCode)
}

// EndedError is the error of a connection the Core ended: Session.Pull
// returns it, and the broker sends an MQTT 5 DISCONNECT with Code (an MQTT 3
// connection is just closed).
type EndedError struct {
	Code   ReasonCode
	Reason Reason
}

func (e *EndedError) Error() string { return "mqtthooks: connection ended: " + e.Reason.String() }

// The ends of a connection that the Core decides. Compare with errors.Is, or
// use errors.As with *EndedError for the code.
var (
	// ErrTakenOver: another connection took the session over (0x8E).
	ErrTakenOver error = errTakenOver
	// ErrAdminDisconnect: an administrator disconnected the session (0x98).
	ErrAdminDisconnect error = errAdminDisconnect
	// ErrServerShutdown: the Core shut down (0x8B).
	ErrServerShutdown error = errServerShutdown
)

var (
	errTakenOver       = &EndedError{Code: CodeSessionTakenOver, Reason: ReasonTakenOver}
	errAdminDisconnect = &EndedError{Code: CodeAdministrativeAction, Reason: ReasonAdmin}
	errServerShutdown  = &EndedError{Code: CodeServerShuttingDown, Reason: ReasonShutdown}
)

// Errors of Session's methods.
var (
	// ErrNotStarted: Pull was called before Start.
	ErrNotStarted = errors.New("mqtthooks: session not started")
	// ErrAlreadyStarted: Start was called twice.
	ErrAlreadyStarted = errors.New("mqtthooks: session already started")
	// ErrSessionEnded: the connection has already ended.
	ErrSessionEnded = errors.New("mqtthooks: connection already ended")
	// ErrKeepAlive is what a broker passes to Session.Lost when the client was
	// silent past its keep-alive.
	ErrKeepAlive = errors.New("mqtthooks: keep-alive timeout")
)

// ProtocolError is a protocol violation: the broker passes one to Session.Lost
// after sending an MQTT 5 DISCONNECT with Code, and Session.Disconnect returns
// one when the client's DISCONNECT breaks the protocol, for the broker to send.
type ProtocolError struct {
	Code ReasonCode
	Msg  string
}

func (e *ProtocolError) Error() string {
	return "mqtthooks: protocol error " + e.Code.String() + ": " + e.Msg
}

// Delivery is a message handed to the broker for one connection.
type Delivery struct {
	PacketID uint16
	QoS      byte
	Dup      bool
	Message  *Message
}

// Limits are what a session's modifiers and the broker's capabilities allow
// the client, for the broker to enforce.
type Limits struct {
	// MaxMessageSize is the largest packet the client may send; 0 means no
	// limit.
	MaxMessageSize uint32
	// MaxMessageRate is how many PUBLISHes per second the client may send; 0
	// means no limit.
	MaxMessageRate uint32
	// UpgradeQoS delivers at the subscription's QoS.
	UpgradeQoS                      bool
	MaximumQoS                      byte
	RetainAvailable                 bool
	WildcardSubscriptionAvailable   bool
	SubscriptionIdentifierAvailable bool
	SharedSubscriptionAvailable     bool
	// TopicAliasMaximum the client may use; 0 means none.
	TopicAliasMaximum uint16
	// ReceiveMaximum is how many QoS 1 and 2 PUBLISHes the client may have
	// unacknowledged; 0 means 65535.
	ReceiveMaximum uint16
	// KeepAlive is the keep-alive in force, in seconds: the Server Keep Alive
	// modifier's, or the client's.
	KeepAlive uint16
}

// Session is one connection's handle on its session, from an accepted
// CONNACK to the end of the connection. Its methods are safe for concurrent
// use.
type Session struct {
	core *Core
	id   SubscriberID
	conn Conn

	connID         uint64
	version        ProtocolVersion
	username       string
	hasUsername    bool
	peer           netip.AddrPort
	generation     uint64
	sessionPresent bool
	limits         Limits
	will           *Will

	mu       sync.Mutex
	started  bool
	attached bool  // still attached to its session, as the Core sees it
	endErr   error // why the connection ended, for Pull
	sei      uint32
	cleanup  bool // cleanup on disconnect
	expiry   time.Duration

	// The end of the connection runs once, as an operation kept here so that
	// it allocates nothing.
	ending   atomic.Bool
	endOp    op
	cause    endCause
	endEvent SessionEvent
}

// ID returns the session's SubscriberID, after modifiers.
func (s *Session) ID() SubscriberID { return s.id }

// Generation returns the session's life, as in its SessionEvents.
func (s *Session) Generation() uint64 { return s.generation }

// SessionPresent reports the Session Present flag of the CONNACK.
func (s *Session) SessionPresent() bool { return s.sessionPresent }

// Limits returns what the client is allowed, for the broker to enforce.
func (s *Session) Limits() Limits { return s.limits }

// Username returns the session's username after modifiers.
func (s *Session) Username() (name string, ok bool) { return s.username, s.hasUsername }

// Start tells the Core that the broker has sent the CONNACK: from now on the
// Core may call Conn.Notify and Pull hands out deliveries. A second Start
// returns ErrAlreadyStarted.
func (s *Session) Start() error {
	s.mu.Lock()
	if s.started {
		s.mu.Unlock()
		return ErrAlreadyStarted
	}
	s.started = true
	ended := s.endErr != nil
	s.mu.Unlock()
	if ended {
		s.conn.Notify() // the broker pulls the end and sends its DISCONNECT
	}
	return nil
}

// Pull fills buf with ready deliveries and returns how many. Before Start it
// returns ErrNotStarted; once the Core has ended the connection (a takeover,
// an admin disconnect, shutdown) it returns an *EndedError such as
// ErrTakenOver, whose code the broker sends in a DISCONNECT.
func (s *Session) Pull(buf []Delivery) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case !s.started:
		return 0, ErrNotStarted
	case s.endErr != nil:
		return 0, s.endErr
	}
	return 0, nil
}

// Disconnect reports the client's DISCONNECT with its reason code (MQTT 3:
// CodeNormalDisconnection) and, for MQTT 5, its Session Expiry Interval if it
// carried one. A DISCONNECT other than 0x00 makes the Will due. Raising the
// interval from 0 is a protocol error: the session ends as after any, and
// Disconnect returns a *ProtocolError with code 0x82 for the broker to send.
// Disconnect waits for the session's hooks, except with a hook's context.
func (s *Session) Disconnect(ctx context.Context, code ReasonCode, sei Opt[uint32]) error {
	if ctx == nil {
		return fmt.Errorf("%w: nil context", ErrInvalidArgument)
	}
	cause := endCause{reason: ReasonClientDisconnect, code: code, hasCode: s.version.IsV5(), will: code != CodeNormalDisconnection}
	var perr error
	if s.version.IsV5() && sei.Set {
		s.mu.Lock()
		switch {
		case s.sei == 0 && sei.V != 0:
			perr = &ProtocolError{Code: CodeProtocolError, Msg: "DISCONNECT raised the Session Expiry Interval from 0"}
			cause = endCause{reason: ReasonProtocolError, code: CodeProtocolError, hasCode: true, will: true}
		default:
			s.sei = sei.V
			s.cleanup = sei.V == 0
			s.expiry = seiDuration(sei.V)
		}
		s.mu.Unlock()
	}
	if !s.version.IsV5() {
		cause.will = false
	}
	if err := s.end(ctx, cause); err != nil {
		return err
	}
	return perr
}

// Lost reports that the connection ended without a DISCONNECT from the
// client: err is ErrKeepAlive, a *ProtocolError (after the broker sent its
// DISCONNECT), or any other error for a network failure. The Will is due.
// Lost waits for the session's hooks, except with a hook's context; calling it
// for a connection that already ended does nothing.
func (s *Session) Lost(ctx context.Context, err error) {
	if ctx == nil {
		ctx = context.Background()
	}
	cause := endCause{reason: ReasonNetworkError, will: true}
	var pe *ProtocolError
	switch {
	case errors.Is(err, ErrKeepAlive):
		cause.reason = ReasonKeepAlive
		cause.code, cause.hasCode = CodeKeepAliveTimeout, s.version.IsV5()
	case errors.As(err, &pe):
		cause.reason = ReasonProtocolError
		cause.code, cause.hasCode = pe.Code, s.version.IsV5()
	}
	_ = s.end(ctx, cause)
}

// end ends the connection as a lifecycle operation of its session. Only the
// first call does anything: the broker reports an end once, and a second
// report (a DISCONNECT racing a read error, say) is the same end.
func (s *Session) end(ctx context.Context, cause endCause) error {
	if !s.ending.CompareAndSwap(false, true) {
		return nil
	}
	s.cause = cause
	s.endOp.runner = s
	return s.core.reg.do(ctx, s.id, &s.endOp)
}

func (s *Session) runOp(ctx context.Context, e *entry) {
	if st := e.state; st != nil {
		s.core.endConnection(ctx, e, st, s, s.cause)
	}
}

// Subscribe stores subs in the session, replacing a subscription with the
// same filter, and tells the Router. It fails with ErrInvalidArgument for an
// empty or malformed filter or an out-of-range QoS or Retain Handling, and
// with ErrSessionEnded after the connection ended; nothing is stored then.
func (s *Session) Subscribe(ctx context.Context, subs ...Subscription) error {
	if ctx == nil {
		return fmt.Errorf("%w: nil context", ErrInvalidArgument)
	}
	for i, sub := range subs {
		if problem := checkSubscription(sub); problem != "" {
			return fmt.Errorf("%w: subscription %d (%q): %s", ErrInvalidArgument, i, sub.Filter, problem)
		}
	}
	var err error
	derr := s.core.reg.do(ctx, s.id, newOp(func(_ context.Context, e *entry) {
		st := e.state
		if st == nil || !st.has(s) {
			err = ErrSessionEnded
			return
		}
		added := make([]Subscription, len(subs))
		for i, sub := range subs {
			sub.Filter = cloneString(sub.Filter)
			added[i] = sub
		}
		st.mu.Lock()
		for _, sub := range added {
			if i := slices.IndexFunc(st.rec.Subscriptions, func(x Subscription) bool { return x.Filter == sub.Filter }); i >= 0 {
				st.rec.Subscriptions[i] = sub
			} else {
				st.rec.Subscriptions = append(st.rec.Subscriptions, sub)
			}
		}
		st.mu.Unlock()
		for _, sub := range added {
			s.core.router.Add(s.id, sub)
		}
	}))
	return errors.Join(derr, err)
}

// Unsubscribe removes the subscriptions with these filters and tells the
// Router of each that existed. existed[i] reports whether filters[i] did.
func (s *Session) Unsubscribe(ctx context.Context, filters ...string) (existed []bool, err error) {
	if ctx == nil {
		return nil, fmt.Errorf("%w: nil context", ErrInvalidArgument)
	}
	existed = make([]bool, len(filters))
	derr := s.core.reg.do(ctx, s.id, newOp(func(_ context.Context, e *entry) {
		st := e.state
		if st == nil || !st.has(s) {
			err = ErrSessionEnded
			return
		}
		st.mu.Lock()
		for i, f := range filters {
			if j := slices.IndexFunc(st.rec.Subscriptions, func(x Subscription) bool { return x.Filter == f }); j >= 0 {
				st.rec.Subscriptions = slices.Delete(st.rec.Subscriptions, j, j+1)
				existed[i] = true
			}
		}
		st.mu.Unlock()
		for i, f := range filters {
			if existed[i] {
				s.core.router.Remove(s.id, f)
			}
		}
	}))
	return existed, errors.Join(derr, err)
}

func checkSubscription(sub Subscription) string {
	switch {
	case sub.Filter == "":
		return "empty filter"
	case sub.QoS > 2:
		return "QoS above 2"
	case sub.RetainHandling > 2:
		return "Retain Handling above 2"
	}
	return checkMQTTString(sub.Filter)
}

// event returns the SessionEvent of this connection.
func (s *Session) event(reason Reason) SessionEvent {
	return SessionEvent{SubscriberID: s.id, Generation: s.generation, ConnID: s.connID,
		Username: s.username, HasUsername: s.hasUsername, Peer: s.peer, ProtocolVersion: s.version, Reason: reason}
}

// sessionState is the Core's state of one session. Lifecycle operations of its
// SubscriberID own it; mu guards what Lookup and Range read meanwhile.
type sessionState struct {
	mu       sync.Mutex
	rec      SessionRecord
	conns    []*Session
	connsBuf [1]*Session // conns' backing array while there is one connection
	multi    bool        // the session allows multiple connections

	expiryItem, willItem *timerItem
}

func (st *sessionState) has(s *Session) bool {
	st.mu.Lock()
	defer st.mu.Unlock()
	return slices.Contains(st.conns, s)
}

func (st *sessionState) online() bool {
	st.mu.Lock()
	defer st.mu.Unlock()
	return len(st.conns) > 0
}

func (st *sessionState) info() SessionInfo {
	st.mu.Lock()
	defer st.mu.Unlock()
	r := &st.rec
	return SessionInfo{ID: r.ID, Generation: r.Generation, Connections: len(st.conns), Username: r.Username,
		HasUsername: r.HasUsername, Subscriptions: slices.Clone(r.Subscriptions), ExpiresAt: r.ExpiresAt}
}

// offlineEvent returns a SessionEvent for the session from its last connection.
func (st *sessionState) offlineEvent(reason Reason) SessionEvent {
	st.mu.Lock()
	defer st.mu.Unlock()
	r := &st.rec
	return SessionEvent{SubscriberID: r.ID, Generation: r.Generation, ConnID: r.ConnID, Username: r.Username,
		HasUsername: r.HasUsername, Peer: r.Peer, ProtocolVersion: r.ProtocolVersion, Reason: reason}
}

func (st *sessionState) snapshotConns() []*Session {
	st.mu.Lock()
	defer st.mu.Unlock()
	return slices.Clone(st.conns)
}

// seiDuration is the offline lifetime for a v5 Session Expiry Interval; 0
// means never (0xFFFFFFFF), and for an interval of 0 the session does not go
// offline at all.
func seiDuration(sei uint32) time.Duration {
	if sei == 0xFFFFFFFF {
		return 0
	}
	return time.Duration(sei) * time.Second
}

// reset begins a new life of the session with the record rec.
func (st *sessionState) reset(rec *SessionRecord) {
	st.mu.Lock()
	defer st.mu.Unlock()
	st.rec = *rec
	st.conns = st.connsBuf[:0]
	st.multi = false
	st.expiryItem, st.willItem = nil, nil
}
