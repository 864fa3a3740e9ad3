package mqtthooks

import (
	"cmp"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"
)

// QueueType is the order in which a session's queue keeps and hands out
// messages.
type QueueType uint8

// The queue types.
const (
	// QueueFIFO keeps the oldest messages when full and delivers in arrival order,
	// as MQTT requires.
	QueueFIFO QueueType = iota + 1
	// QueueLIFO drops the oldest message when full and delivers newest first. It
	// breaks MQTT's ordering guarantee: an opt-in, not conformant.
	QueueLIFO
)

// String returns "fifo" or "lifo".
func (t QueueType) String() string {
	switch t {
	case QueueFIFO:
		return "fifo"
	case QueueLIFO:
		return "lifo"
	}
	return "QueueType(" + strconv.Itoa(int(t)) + ")"
}

// DeliverMode is how a session with several connections shares its messages.
type DeliverMode uint8

// The deliver modes of multiple sessions.
const (
	// DeliverFanout gives every connection a copy.
	DeliverFanout DeliverMode = iota + 1
	// DeliverBalance gives each message to one connection.
	DeliverBalance
)

// String returns "fanout" or "balance".
func (m DeliverMode) String() string {
	switch m {
	case DeliverFanout:
		return "fanout"
	case DeliverBalance:
		return "balance"
	}
	return "DeliverMode(" + strconv.Itoa(int(m)) + ")"
}

// Modifiers change how an accepted client connects (AcceptWith). Only fields
// whose Set flag is true change anything, so a zero value is never mistaken
// for "unset". Fields marked v5 are invalid on a v3 connection, Persistent is
// invalid on v5; the core rejects invalid modifiers with ErrInvalidModifiers.
type Modifiers struct {
	// Applied by the core.

	// SubscriberID replaces the session key: mountpoint and client id. The
	// client id must be non-empty, valid UTF-8 and within MaxClientIDLen.
	SubscriberID Opt[SubscriberID]
	// Username replaces the username, also when the CONNECT had none.
	Username Opt[string]
	// CleanStart true makes the CONNECT start clean; false changes nothing: a
	// modifier never turns a clean CONNECT into a resume.
	CleanStart Opt[bool]
	// Persistent (v3 only) decides whether the session survives the
	// connection: true keeps it, false cleans it up on disconnect.
	Persistent Opt[bool]
	// SessionExpiryInterval (v5 only) replaces the CONNECT's, in seconds, for
	// cleanup and expiry; 0xFFFFFFFF never expires.
	SessionExpiryInterval Opt[uint32]
	// MaxOnlineMessages and MaxOfflineMessages bound the queue while a
	// connection is attached and while none is: -1 unlimited, 0 none.
	MaxOnlineMessages  Opt[int]
	MaxOfflineMessages Opt[int]
	QueueType          Opt[QueueType]
	QueueDeliverMode   Opt[DeliverMode]
	// AllowMultipleSessions lets several connections share the session. It
	// breaks MQTT's takeover rule: an opt-in, not conformant.
	AllowMultipleSessions Opt[bool]
	// StoreQoS0Offline keeps QoS 0 messages for an offline session.
	StoreQoS0Offline Opt[bool]
	// MaxInflightMessages bounds unacknowledged deliveries (0 to 65535; 0
	// leaves only the client's Receive Maximum), capped by Receive Maximum.
	MaxInflightMessages Opt[int]

	// Carried for the broker (Session.Limits) and, where MQTT has a property,
	// sent in the v5 CONNACK.

	// MaximumPacketSize is the largest packet the broker accepts from the
	// client, sent as the CONNACK's Maximum Packet Size (VerneMQ's
	// max_message_size); at least 1, at most the capability.
	MaximumPacketSize Opt[uint32]
	// MaxMessageRate is how many PUBLISHes per second the client may send.
	MaxMessageRate Opt[uint32]
	// UpgradeQoS delivers at the subscription's QoS rather than the message's.
	// Not conformant: an opt-in.
	UpgradeQoS Opt[bool]
	// MaximumQoS is 0 or 1 (a broker with QoS 2 sends no property).
	MaximumQoS                      Opt[byte]
	RetainAvailable                 Opt[bool]
	WildcardSubscriptionAvailable   Opt[bool]
	SubscriptionIdentifierAvailable Opt[bool]
	SharedSubscriptionAvailable     Opt[bool]
	// ServerKeepAlive (v5) replaces the client's keep-alive, in seconds.
	ServerKeepAlive Opt[uint16]
	// TopicAliasMaximum (v5) the broker accepts from the client.
	TopicAliasMaximum Opt[uint16]
	// ReceiveMaximum (v5), 1 to 65535, that the broker accepts from the client.
	ReceiveMaximum Opt[uint16]
	// ResponseInformation (v5) is sent only when the client requested it.
	ResponseInformation Opt[string]
	// UserProperties (v5) are added to the CONNACK.
	UserProperties Opt[[]UserProperty]
}

// ModifierRules is what Modifiers are checked against: the connection's
// protocol level and the core's limits.
type ModifierRules struct {
	ProtocolVersion ProtocolVersion
	// MaxClientIDLen bounds a SubscriberID's client id, in bytes; 0 means
	// the default, 100.
	MaxClientIDLen int
	// Capabilities bound the capability modifiers: they may only lower them.
	Capabilities Capabilities
}

// DefaultMaxClientIDLen is the default limit of a client id, in bytes.
const DefaultMaxClientIDLen = 100

// ModifierError says which modifier is invalid and why. It matches
// ErrInvalidModifiers with errors.Is.
type ModifierError struct {
	// Field is the name of the Modifiers field, such as "MaxOfflineMessages".
	Field string
	// Problem says what is wrong with its value.
	Problem string
}

func (e *ModifierError) Error() string {
	return "mqtthooks: invalid modifier " + e.Field + ": " + e.Problem
}

// Is reports whether target is ErrInvalidModifiers.
func (e *ModifierError) Is(target error) bool { return target == ErrInvalidModifiers }

// Validate checks m against r and returns nil, a *ModifierError, or when
// several fields are invalid one *ModifierError per field joined with
// errors.Join, in field order. A nil m is valid.
func (m *Modifiers) Validate(r ModifierRules) error {
	if m == nil {
		return nil
	}
	var v validator
	v5 := r.ProtocolVersion.IsV5()
	caps := r.Capabilities

	if id := m.SubscriberID; id.Set {
		v.utf8("SubscriberID", "mountpoint", id.V.Mountpoint)
		switch {
		case id.V.ClientID == "":
			v.fail("SubscriberID", "client id is empty")
		case len(id.V.ClientID) > cmp.Or(r.MaxClientIDLen, DefaultMaxClientIDLen):
			v.fail("SubscriberID", fmt.Sprintf("client id is %d bytes, above the limit of %d",
				len(id.V.ClientID), cmp.Or(r.MaxClientIDLen, DefaultMaxClientIDLen)))
		default:
			v.utf8("SubscriberID", "client id", id.V.ClientID)
		}
	}
	if m.Username.Set {
		v.utf8("Username", "username", m.Username.V)
	}
	if m.Persistent.Set && v5 {
		v.fail("Persistent", "is for MQTT 3 only; MQTT 5 uses SessionExpiryInterval")
	}
	v.v5Only(v5, "SessionExpiryInterval", m.SessionExpiryInterval.Set)
	v.queueLimit("MaxOnlineMessages", m.MaxOnlineMessages)
	v.queueLimit("MaxOfflineMessages", m.MaxOfflineMessages)
	if t := m.QueueType; t.Set && t.V != QueueFIFO && t.V != QueueLIFO {
		v.fail("QueueType", "is "+t.V.String()+", not QueueFIFO or QueueLIFO")
	}
	if d := m.QueueDeliverMode; d.Set && d.V != DeliverFanout && d.V != DeliverBalance {
		v.fail("QueueDeliverMode", "is "+d.V.String()+", not DeliverFanout or DeliverBalance")
	}
	if n := m.MaxInflightMessages; n.Set && (n.V < 0 || n.V > 65535) {
		v.fail("MaxInflightMessages", strconv.Itoa(n.V)+" is outside 0 to 65535")
	}

	if s := m.MaximumPacketSize; s.Set {
		switch {
		case s.V == 0:
			v.fail("MaximumPacketSize", "is 0; it must be at least 1")
		case caps.MaximumPacketSize != 0 && s.V > caps.MaximumPacketSize:
			v.fail("MaximumPacketSize", fmt.Sprintf("%d is above the broker's %d", s.V, caps.MaximumPacketSize))
		}
	}
	if q := m.MaximumQoS; q.Set {
		switch {
		case q.V > 1:
			v.fail("MaximumQoS", strconv.Itoa(int(q.V))+" is not 0 or 1")
		case q.V > caps.MaximumQoS:
			v.fail("MaximumQoS", fmt.Sprintf("%d is above the broker's %d", q.V, caps.MaximumQoS))
		}
	}
	v.lowerOnly("RetainAvailable", m.RetainAvailable, caps.RetainAvailable)
	v.lowerOnly("WildcardSubscriptionAvailable", m.WildcardSubscriptionAvailable, caps.WildcardSubscriptionAvailable)
	v.lowerOnly("SubscriptionIdentifierAvailable", m.SubscriptionIdentifierAvailable, caps.SubscriptionIdentifierAvailable)
	v.lowerOnly("SharedSubscriptionAvailable", m.SharedSubscriptionAvailable, caps.SharedSubscriptionAvailable)

	v.v5Only(v5, "ServerKeepAlive", m.ServerKeepAlive.Set)
	if v.v5Only(v5, "TopicAliasMaximum", m.TopicAliasMaximum.Set) && m.TopicAliasMaximum.V > caps.TopicAliasMaximum {
		v.fail("TopicAliasMaximum", fmt.Sprintf("%d is above the broker's %d", m.TopicAliasMaximum.V, caps.TopicAliasMaximum))
	}
	if rm := m.ReceiveMaximum; v.v5Only(v5, "ReceiveMaximum", rm.Set) {
		switch {
		case rm.V == 0:
			v.fail("ReceiveMaximum", "is 0; it must be 1 to 65535")
		case caps.ReceiveMaximum != 0 && rm.V > caps.ReceiveMaximum:
			v.fail("ReceiveMaximum", fmt.Sprintf("%d is above the broker's %d", rm.V, caps.ReceiveMaximum))
		}
	}
	if v.v5Only(v5, "ResponseInformation", m.ResponseInformation.Set) {
		v.utf8("ResponseInformation", "response information", m.ResponseInformation.V)
	}
	if v.v5Only(v5, "UserProperties", m.UserProperties.Set) {
		for i, p := range m.UserProperties.V {
			v.utf8("UserProperties", "key of property "+strconv.Itoa(i), p.Key)
			v.utf8("UserProperties", "value of property "+strconv.Itoa(i), p.Value)
		}
	}
	return v.err()
}

// validator collects the problems of one Validate call.
type validator struct{ errs []error }

func (v *validator) fail(field, problem string) {
	v.errs = append(v.errs, &ModifierError{Field: field, Problem: problem})
}

func (v *validator) err() error {
	if len(v.errs) == 1 {
		return v.errs[0]
	}
	return errors.Join(v.errs...)
}

// utf8 checks what MQTT requires of a UTF-8 string: well-formed, no U+0000,
// at most 65535 bytes.
func (v *validator) utf8(field, what, s string) {
	if problem := checkMQTTString(s); problem != "" {
		v.fail(field, what+" "+problem)
	}
}

// v5Only reports whether a set field may be used; it records a problem when the
// field is set on a v3 connection.
func (v *validator) v5Only(isV5 bool, field string, set bool) bool {
	if set && !isV5 {
		v.fail(field, "is for MQTT 5 only")
		return false
	}
	return set
}

func (v *validator) queueLimit(field string, n Opt[int]) {
	if n.Set && n.V < -1 {
		v.fail(field, strconv.Itoa(n.V)+" is below -1 (-1 is unlimited)")
	}
}

// lowerOnly checks a capability flag that a modifier may turn off but not on.
func (v *validator) lowerOnly(field string, o Opt[bool], capability bool) {
	if o.Set && o.V && !capability {
		v.fail(field, "is true, but the broker's capability is false")
	}
}

// checkMQTTString returns what is wrong with s as an MQTT UTF-8 encoded
// string, or "" when nothing is.
func checkMQTTString(s string) string {
	switch {
	case len(s) > 65535:
		return "is longer than 65535 bytes"
	case !utf8.ValidString(s):
		return "is not valid UTF-8"
	case strings.IndexByte(s, 0) >= 0:
		return "contains U+0000"
	}
	return ""
}
