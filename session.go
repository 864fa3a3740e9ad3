package mqtthooks

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
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

// Is reports whether target is an *EndedError of the same Reason, whatever
// its code: an administrator's disconnect matches ErrAdminDisconnect with
// any code DisconnectWith was given.
func (e *EndedError) Is(target error) bool {
	t, ok := target.(*EndedError)
	return ok && t.Reason == e.Reason
}

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

// Delivery is what Session.Pull hands the broker for one connection: a
// PUBLISH to send or, with Pubrel, a PUBREL to send again.
type Delivery struct {
	// PacketID is 0 for QoS 0.
	PacketID uint16
	QoS      byte
	// Dup is set for a PUBLISH sent before, to an earlier connection or this
	// one.
	Dup bool
	// Pubrel asks for a PUBREL of PacketID (QoS 2 after PUBREC); the other
	// fields are zero.
	Pubrel bool
	Retain bool
	// SubscriptionIdentifiers of the matching subscriptions (v5).
	SubscriptionIdentifiers []uint32
	// MessageExpiry is what is left of the Message Expiry Interval (v5),
	// rounded up to a second; 0 for a message that does not expire.
	MessageExpiry uint32
	Message       *Message
}

// Limits are what a session's modifiers and the broker's capabilities allow
// the client, for the broker to enforce.
type Limits struct {
	// MaximumPacketSize is the largest packet the client may send; 0 means
	// no limit.
	MaximumPacketSize uint32
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

	st *sessionState // the session's state; q is its queue for this connection
	q  *queue
	// joined is the session's count of routed messages when this connection
	// attached: a fanout gave it copies of the later ones only.
	joined uint64

	started  atomic.Bool
	mu       sync.Mutex
	attached bool  // still attached to its session, as the Core sees it
	endErr   error // why the connection ended, for Pull
	sei      uint32
	cleanup  bool // cleanup on disconnect
	expiry   time.Duration

	// reauth is set for a connection that used enhanced authentication.
	reauth *reauth

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
	if !s.started.CompareAndSwap(false, true) {
		s.mu.Unlock()
		return ErrAlreadyStarted
	}
	ended := s.endErr != nil
	s.mu.Unlock()
	notify := ended
	if !ended {
		s.st.mu.Lock()
		notify = s.q.owner == s && s.q.wantsNotify()
		s.st.mu.Unlock()
	}
	if notify {
		s.conn.Notify() // deliveries wait, or the end: the broker pulls
	}
	return nil
}

// Pull fills buf with what is ready for the connection and returns how many:
// first the deliveries a resumed session had in flight (DUP set, original
// packet identifiers) and the PUBRELs it owes, then pending messages in queue
// order, as far as the in-flight window (the smaller of MaxInflightMessages
// and the client's Receive Maximum) allows. Expired messages are dropped on
// the way. A broker pulls after Conn.Notify until Pull returns fewer than
// len(buf), and after each acknowledgement.
//
// Before Start, Pull returns ErrNotStarted; once the Core has ended the
// connection (a takeover, an admin disconnect, shutdown) it returns an
// *EndedError such as ErrTakenOver, whose code the broker sends in a
// DISCONNECT; after the broker reported the end, ErrSessionEnded.
func (s *Session) Pull(buf []Delivery) (int, error) {
	if err := s.usable(); err != nil {
		return 0, err
	}
	st := s.st
	st.mu.Lock()
	if s.q.owner != s {
		st.mu.Unlock()
		return 0, s.endError()
	}
	j := st.journal()
	n, delivered, expired := s.q.pull(buf, nowNano, j)
	if j != nil {
		j.commit(nil)
	}
	st.mu.Unlock()
	c := s.core
	c.stats.delivered.Add(uint64(delivered))
	for _, m := range expired {
		c.dropped(s.id, DropExpired, m.msg)
	}
	return n, nil
}

// usable returns why the connection cannot pull or acknowledge, or nil.
func (s *Session) usable() error {
	if !s.started.Load() {
		return ErrNotStarted
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.endErr
}

func (s *Session) endError() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.endErr != nil {
		return s.endErr
	}
	return ErrSessionEnded
}

// The client's acknowledgements of the deliveries Pull handed out: Puback,
// Pubrec and Pubcomp, named after the packet the client sent. Each fails with
// ErrPacketIDNotFound for an identifier with no delivery in that state (v5
// 0x92), and with the connection's end once it has ended.

// Puback reports the client's PUBACK of the QoS 1 delivery id.
func (s *Session) Puback(id uint16) error { return s.settle(id, 1, false) }

// Pubrec reports the client's PUBREC of the QoS 2 delivery id: the broker
// sends PUBREL, and a resumed session offers that PUBREL again until
// Pubcomp. With a store, r, if not nil, learns when the PUBREC is durable:
// the broker sends its PUBREL only then. A client forgets the packet
// identifier at PUBREL [MQTT-4.3.3-13], so a PUBREL sent before a crash that
// loses the PUBREC would have the restarted broker send the PUBLISH again,
// and the client deliver it twice.
func (s *Session) Pubrec(id uint16, r *Receipt) error {
	return s.withQueueDone(func(q *queue, j *journal) error { return q.rec(id, j) }, r.completion())
}

// Pubcomp reports the client's PUBCOMP of the QoS 2 delivery id.
func (s *Session) Pubcomp(id uint16) error { return s.settle(id, 2, true) }

// settle finishes an in-flight delivery; the window it frees may let pending
// messages go, so the broker is notified.
func (s *Session) settle(id uint16, qos byte, released bool) error {
	notify := false
	err := s.withQueue(func(q *queue, j *journal) error {
		if err := q.ack(id, qos, released, j); err != nil {
			return err
		}
		notify = q.wantsNotify()
		return nil
	})
	if err == nil {
		s.core.stats.delivered.Add(1)
	}
	if notify {
		s.conn.Notify()
	}
	return err
}

// Discard reports that the broker will not send d, a PUBLISH delivery as Pull
// returned it, because it exceeds the client's Maximum Packet Size: MQTT 5
// §3.1.2.11.4 has it discarded as if it had been sent. A QoS 1 or 2 delivery
// leaves the in-flight window and frees its packet identifier. The message
// counts as dropped instead of delivered, and OnMessageDrop fires with
// DropTooLarge before Discard returns. A PUBREL or a delivery without a
// message gives ErrInvalidArgument; a QoS 1 or 2 delivery no longer in flight
// gives ErrPacketIDNotFound.
func (s *Session) Discard(d Delivery) error {
	if d.Pubrel || d.Message == nil || d.QoS > 2 {
		return fmt.Errorf("%w: Discard takes a PUBLISH delivery", ErrInvalidArgument)
	}
	c := s.core
	if d.QoS == 0 {
		if err := s.usable(); err != nil {
			return err
		}
		c.stats.delivered.Add(^uint64(0)) // Pull counted it delivered; it was not
		c.dropped(s.id, DropTooLarge, d.Message)
		return nil
	}
	// settle's shape, not shared with it: the extra closure cost the PUBACK
	// path about 5 ns (BenchmarkPullAck).
	var m queued
	notify := false
	err := s.withQueue(func(q *queue, j *journal) (err error) {
		if m, err = q.take(d.PacketID, d.QoS, j); err == nil {
			notify = q.wantsNotify()
		}
		return err
	})
	if err != nil {
		return err
	}
	c.dropped(s.id, DropTooLarge, m.msg)
	if notify {
		s.conn.Notify()
	}
	return nil
}

// withQueue runs fn on the connection's queue under the session's lock, if
// the connection still owns it, and commits what fn changed in the store
// (j is nil for a session that is not stored).
func (s *Session) withQueue(fn func(q *queue, j *journal) error) error {
	st := s.st
	st.mu.Lock()
	q := s.q // under the lock: a multiple session's connection that leaves hands queues over
	if q == nil || q.owner != s {
		st.mu.Unlock()
		return s.endError()
	}
	j := st.journal()
	err := fn(q, j)
	if j != nil {
		j.commit(nil)
	}
	st.mu.Unlock()
	return err
}

// withQueueDone is withQueue whose commit calls done once durable.
func (s *Session) withQueueDone(fn func(q *queue, j *journal) error, done func(error)) error {
	st := s.st
	st.mu.Lock()
	q := s.q // under the lock: a multiple session's connection that leaves hands queues over
	if q == nil || q.owner != s {
		st.mu.Unlock()
		err := s.endError()
		if done != nil {
			done(err)
		}
		return err
	}
	j := st.journal()
	err := fn(q, j)
	j.commit(done)
	st.mu.Unlock()
	return err
}

// The client's own QoS 2 PUBLISHes: InboundPublish and InboundPubrel keep
// their packet identifiers in the session, so that a PUBLISH sent again
// (DUP) after a reconnect is not routed twice [MQTT-4.3.3-10].

// InboundPublish records the packet identifier of the client's QoS 2
// PUBLISH. It reports whether this is its first arrival: a repeat must not be
// routed again. The identifier is kept, across connections of a persistent
// session (and, with a store, across restarts), until InboundPubrel. With a
// store, r, if not nil, learns when the identifier is durable: the broker
// sends its PUBREC only then, or a client that sends the PUBLISH again after
// a crash would have it routed twice. The identifier is written after every
// other write joined to r is durable: a node that dies having stored only
// some copies leaves no identifier, so the client's resend is routed again
// (a copy may arrive twice rather than not at all).
//
// A PUBLISH whose Receipt fails (a write failed, or Receipt.Fail) was not
// taken: its identifier is forgotten, so that the client's resend is routed
// as a first arrival (on this node; a session handed over to another node
// meanwhile leaves without the identifiers whose Receipts had not settled,
// see ClusterNode.Yield). A repeat that arrives before the first arrival's
// Receipt settled is not routed, and r settles with that Receipt: a broker
// that acknowledges on r's done never acknowledges a repeat of a PUBLISH
// that then fails.
func (s *Session) InboundPublish(id uint16, r *Receipt) (first bool, err error) {
	c := s.core
	err = s.withQueueDone(func(q *queue, j *journal) error {
		key := inboundKey{q, id}
		_, refused := c.refusedInbound.LoadAndDelete(key)
		if st := s.st; st.refusedIn[key] {
			delete(st.refusedIn, key)
			refused = true
		}
		if slices.Contains(q.inbound, id) {
			if !refused {
				if v, ok := c.inboundPending.Load(key); ok && r != nil { // a repeat of a PUBLISH still in the balance
					v.(*Receipt).onSettled(r.join())
				}
				return nil
			}
		} else {
			q.inbound = append(q.inbound, id)
		}
		first = true
		if refused && r != nil {
			r.mu.Lock()
			r.resent = true
			r.mu.Unlock()
		}
		if j != nil && q == &j.st.q {
			if r == nil {
				j.batch().PutInbound(j.st.rec.ID, j.st.rec.Generation, id)
			} else { // once the copies are durable: see the doc
				sid, gen := j.st.rec.ID, j.st.rec.Generation
				r.writeLast(func(done func(error)) {
					if v, ok := c.inboundPending.Load(key); !ok || v != r {
						done(nil) // released meanwhile, or left with a hand-over: nothing to keep
						return
					}
					b := c.store.Batch()
					b.PutInbound(sid, gen, id)
					c.commit(b, sid, done)
				})
			}
		}
		if r == nil {
			c.inboundPending.Delete(key)
			return nil
		}
		c.inboundPending.Store(key, r)
		st := s.st
		r.onSettled(func(err error) {
			if !c.inboundPending.CompareAndDelete(key, r) || err == nil {
				return // taken, or a later PUBLISH holds the identifier now
			}
			c.refusedInbound.Store(key, r) // at once: a resend may come before the goroutine runs
			go c.forgetInbound(st, key, r)
		})
		return nil
	}, r.completion())
	return first, err
}

// inboundKey names the QoS 2 identifier of a client's PUBLISH in the queue
// that keeps it.
type inboundKey struct {
	q  *queue
	id uint16
}

// forgetInbound drops the identifier of a PUBLISH whose Receipt r failed,
// from the queue and the store, unless a resend has taken it since.
func (c *Core) forgetInbound(st *sessionState, key inboundKey, r *Receipt) {
	st.mu.Lock()
	defer st.mu.Unlock()
	if v, ok := c.refusedInbound.Load(key); !ok || v != r {
		return
	}
	c.refusedInbound.Delete(key)
	q := key.q
	i := slices.Index(q.inbound, key.id)
	if i < 0 {
		return
	}
	q.inbound = slices.Delete(q.inbound, i, i+1)
	if st.refusedIn == nil { // for Receipt.Resent, with the session
		st.refusedIn = map[inboundKey]bool{}
	}
	st.refusedIn[key] = true
	if j := st.journal(); j != nil && q == &st.q && !st.ended {
		j.batch().DeleteInbound(st.rec.ID, st.rec.Generation, key.id)
		j.commit(nil)
	}
}

// dropUnsettledInbound removes from st's queue, and with j from the store,
// the identifiers whose PUBLISH's Receipt has not settled, and skips their
// writes still to come: a node that takes the session over must route their
// resends (a repeat would be lost if the Receipt then failed). st.mu is held.
func (c *Core) dropUnsettledInbound(st *sessionState, j *journal) {
	q := &st.q
	q.inbound = slices.DeleteFunc(q.inbound, func(id uint16) bool {
		key := inboundKey{q, id}
		r, pending := c.inboundPending.Load(key)
		if !pending || !c.inboundPending.CompareAndDelete(key, r) {
			return false
		}
		if j != nil {
			j.batch().DeleteInbound(st.rec.ID, st.rec.Generation, id)
		}
		return true
	})
}

// InboundPubrel reports the client's PUBREL of the identifier of one of its
// QoS 2 PUBLISHes, and whether it was known (the PUBCOMP for an unknown one
// carries 0x92 in v5).
//
// With a store, r, if not nil, learns when the release is durable: the
// broker sends its PUBCOMP only then, or after a crash the client's next
// PUBLISH with the same identifier would be taken for a repeat.
func (s *Session) InboundPubrel(id uint16, r *Receipt) (known bool, err error) {
	err = s.withQueueDone(func(q *queue, j *journal) error {
		s.core.refusedInbound.Delete(inboundKey{q, id})
		s.core.inboundPending.Delete(inboundKey{q, id})
		delete(s.st.refusedIn, inboundKey{q, id})
		if i := slices.Index(q.inbound, id); i >= 0 {
			q.inbound = slices.Delete(q.inbound, i, i+1)
			known = true
			if j != nil && q == &j.st.q {
				j.batch().DeleteInbound(j.st.rec.ID, j.st.rec.Generation, id)
			}
		}
		return nil
	}, r.completion())
	return known, err
}

// Disconnect reports the client's DISCONNECT with its reason code (MQTT 3:
// CodeNormalDisconnection), without a Session Expiry Interval. A DISCONNECT
// other than 0x00 makes the Will due. A reason code a client may not send is
// a protocol error: the session ends as after any, and Disconnect returns a
// *ProtocolError with code 0x81 for the broker to send. Disconnect waits for
// the session's hooks, except with a hook's context; only the first report of
// a connection's end (Disconnect, DisconnectWithExpiry, Lost) counts.
func (s *Session) Disconnect(ctx context.Context, code ReasonCode) error {
	return s.disconnect(ctx, code, Opt[uint32]{})
}

// DisconnectWithExpiry reports an MQTT 5 DISCONNECT that carries a Session
// Expiry Interval: the session's interval becomes sei (0 ends the session with
// the connection). Raising it from 0 is a protocol error: the session ends
// with cleanup, and DisconnectWithExpiry returns a *ProtocolError with code
// 0x82 for the broker to send [MQTT-3.14.2-2]. Otherwise it is Disconnect.
// On an MQTT 3 connection sei is ignored.
func (s *Session) DisconnectWithExpiry(ctx context.Context, code ReasonCode, sei uint32) error {
	return s.disconnect(ctx, code, Some(sei))
}

func (s *Session) disconnect(ctx context.Context, code ReasonCode, sei Opt[uint32]) error {
	if ctx == nil {
		return fmt.Errorf("%w: nil context", ErrInvalidArgument)
	}
	if !s.ending.CompareAndSwap(false, true) {
		return nil // the end was reported already
	}
	cause := endCause{reason: ReasonClientDisconnect, code: code, hasCode: s.version.IsV5(), will: code != CodeNormalDisconnection}
	var perr error
	if s.version.IsV5() && !code.ValidIn(PacketClientDisconnect) {
		perr = &ProtocolError{Code: CodeMalformedPacket, Msg: "DISCONNECT reason code " + code.String() + " is not one a client may send"}
		cause = endCause{reason: ReasonProtocolError, code: CodeMalformedPacket, hasCode: true, will: true}
	} else if s.version.IsV5() && sei.Set {
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
	if !s.ending.CompareAndSwap(false, true) {
		return // the end was reported already
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

// end ends the connection as a lifecycle operation of its session; the
// caller has claimed s.ending, so it runs once: a second report (a DISCONNECT
// racing a read error, say) is the same end. The operation runs even if ctx
// ends while it waits its turn; end then returns ctx.Err() early.
func (s *Session) end(ctx context.Context, cause endCause) error {
	s.cause = cause
	s.endOp.runner = s
	s.endOp.keep = true
	return s.core.reg.do(ctx, s.id, &s.endOp)
}

func (s *Session) runOp(ctx context.Context, e *entry) {
	if st := e.state.Load(); st != nil {
		s.core.endConnection(ctx, e, st, s, s.cause)
	}
}

// Subscribe stores subs in the session, replacing a subscription with the
// same filter, and tells the Router. With a store, it returns once the
// subscriptions of a persistent session are durable, so that a SUBACK is
// never sent for a subscription a crash could lose. It fails with
// ErrInvalidArgument for an empty or malformed filter or an out-of-range QoS
// or Retain Handling, with ErrSessionEnded after the connection ended, and
// with the store's error; nothing is stored then.
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
	derr := s.core.reg.do(ctx, s.id, newOp(func(ctx context.Context, e *entry) {
		st := e.state.Load()
		if st == nil || !st.has(s) {
			err = ErrSessionEnded
			return
		}
		added := make([]Subscription, len(subs))
		for i, sub := range subs {
			sub.Filter = cloneString(sub.Filter)
			added[i] = sub
		}
		if st.stored {
			b := s.core.store.Batch()
			for _, sub := range added {
				b.PutSubscription(st.rec.ID, st.rec.Generation, sub)
			}
			if err = s.core.commitWait(ctx, b, st.rec.ID); err != nil {
				return
			}
		}
		st.mu.Lock()
		for _, sub := range added {
			st.subscribe(sub)
		}
		st.mu.Unlock()
		for _, sub := range added {
			s.core.routerAdd(s.id, st.rec.Generation, sub)
		}
	}))
	return errors.Join(derr, err)
}

// Unsubscribe removes the subscriptions with these filters and tells the
// Router of each that existed. existed[i] reports whether filters[i] did.
// Called with a hook's context, it is queued behind that hook and returns at
// once, with existed all false.
func (s *Session) Unsubscribe(ctx context.Context, filters ...string) (existed []bool, err error) {
	if ctx == nil {
		return nil, fmt.Errorf("%w: nil context", ErrInvalidArgument)
	}
	existed = make([]bool, len(filters))
	derr := s.core.reg.do(ctx, s.id, newOp(func(ctx context.Context, e *entry) {
		st := e.state.Load()
		if st == nil || !st.has(s) {
			err = ErrSessionEnded
			return
		}
		st.mu.Lock()
		for i, f := range filters {
			existed[i] = st.unsubscribe(f)
		}
		st.mu.Unlock()
		if st.stored {
			b := s.core.store.Batch()
			for i, f := range filters {
				if existed[i] {
					b.DeleteSubscription(st.rec.ID, st.rec.Generation, f)
				}
			}
			if werr := s.core.commitWait(ctx, b, st.rec.ID); werr != nil {
				s.core.logger.Error("mqtthooks: session store: unsubscribe not stored", "session", st.rec.ID.String(), "err", werr)
			}
		}
		for i, f := range filters {
			if existed[i] {
				s.core.routerRemove(s.id, st.rec.Generation, f)
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
	ended    bool        // the life is over; deliveries find no session
	leaving  bool        // with ended: another node owns the session, or is about to (Deliver: ErrNotOwner)
	// refusedIn: the identifiers forgotten because their PUBLISH was
	// refused, until the resend (see Receipt.Resent); nil for none.
	refusedIn map[inboundKey]bool
	q         queue          // the session's queue: offline, or its first connection's
	balance   int            // round-robin position of DeliverBalance
	seq       uint64         // messages routed to this life, numbering them
	subs      []Subscription // one per filter, in no particular order
	subIndex  map[string]int // filter → position in subs, for many subscriptions
	stored    bool           // the life is kept in the Core's store: it began persistent
	jn        journal        // the store changes of the operation under way
	// durable is the highest seq whose stored QoS 2 copy is durable (or
	// whose write failed): a QoS 2 copy is handed out only then (see
	// queue.pull), and wake are the connections to notify when durable
	// moves past the copy their Pull stopped at.
	durable atomic.Uint64
	wakeMu  sync.Mutex // after mu, if both
	wake    []*Session

	expiryItem, willItem *timerItem
	// moving: the session is being handed over to another node of the
	// cluster; its end here does not end this node's claim. Written by the
	// running operation.
	moving bool
}

// written records that the write of the copy seq has finished; the
// connection whose Pull waits for it is notified.
func (st *sessionState) written(seq uint64) {
	for {
		d := st.durable.Load()
		if seq <= d || st.durable.CompareAndSwap(d, seq) {
			break
		}
	}
	st.wakeMu.Lock()
	wake := st.wake
	st.wake = nil
	st.wakeMu.Unlock()
	for _, s := range wake {
		s.conn.Notify()
	}
}

// writtenFunc returns a commit's done that records the copies up to seq
// written; nil for none.
func (st *sessionState) writtenFunc(seq uint64) func(error) {
	if seq == 0 {
		return nil
	}
	return func(error) { st.written(seq) }
}

// handOut reports whether the QoS 2 copy seq may be sent to its client: a
// client that acknowledged a copy the store then lost (its node died before
// the write was durable) would get the same message again, under another
// packet identifier, when its publisher sends it again. Otherwise owner
// is notified once it may. st.mu is held.
func (st *sessionState) handOut(seq uint64, owner *Session) bool {
	if seq <= st.durable.Load() {
		return true
	}
	st.wakeMu.Lock()
	if !slices.Contains(st.wake, owner) {
		st.wake = append(st.wake, owner)
	}
	st.wakeMu.Unlock()
	// Written meanwhile, its notification perhaps gone before owner was
	// added: the Pull goes on (owner may get a Notify it does not need).
	return seq <= st.durable.Load()
}

func (st *sessionState) has(s *Session) bool {
	st.mu.Lock()
	defer st.mu.Unlock()
	return slices.Contains(st.conns, s)
}

// connectionWills returns the Wills of the attached connections, for the
// record. st.mu is held.
func (st *sessionState) connectionWills() []*Will {
	var ws []*Will
	for _, s := range st.conns {
		if s.will != nil {
			ws = append(ws, s.will)
		}
	}
	return ws
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
	info := SessionInfo{ID: r.ID, Generation: r.Generation, Connections: len(st.conns), Username: r.Username,
		HasUsername: r.HasUsername, Subscriptions: slices.Clone(st.subs), ExpiresAt: r.ExpiresAt}
	slices.SortFunc(info.Subscriptions, func(a, b Subscription) int { return strings.Compare(a.Filter, b.Filter) })
	info.Pending, info.Inflight = st.q.count()
	for _, s := range st.conns {
		if s.q != &st.q {
			p, i := s.q.count()
			info.Pending, info.Inflight = info.Pending+p, info.Inflight+i
		}
	}
	return info
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
	st.multi, st.ended, st.leaving, st.balance = false, false, false, 0
	st.q = queue{}
	st.expiryItem, st.willItem = nil, nil
	st.subs, st.subIndex = nil, nil
	st.seq, st.stored = 0, false
	st.durable.Store(0)
	st.refusedIn = nil
}
