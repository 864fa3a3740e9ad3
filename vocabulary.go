package mqtthooks

import (
	"crypto/tls"
	"net/netip"
	"strconv"
)

// SubscriberID is the key of a session: a mountpoint and a client identifier.
// Two clients with the same client id on different mountpoints have different
// sessions. The zero value names no session.
type SubscriberID struct {
	Mountpoint string
	ClientID   string
}

// String returns the pair as "mountpoint/clientid", or just the client id when
// the mountpoint is empty. It is meant for logs, not for parsing.
func (s SubscriberID) String() string {
	if s.Mountpoint == "" {
		return s.ClientID
	}
	return s.Mountpoint + "/" + s.ClientID
}

// ProtocolVersion is the protocol level of a CONNECT: 3 (MQTT 3.1), 4 (MQTT
// 3.1.1) or 5 (MQTT 5.0). "v3" in this package means levels 3 and 4.
type ProtocolVersion uint8

// The protocol levels the package knows.
const (
	MQTT31  ProtocolVersion = 3
	MQTT311 ProtocolVersion = 4
	MQTT5   ProtocolVersion = 5
)

// Valid reports whether v is one of MQTT31, MQTT311 and MQTT5.
func (v ProtocolVersion) Valid() bool { return v >= MQTT31 && v <= MQTT5 }

// IsV5 reports whether v is MQTT 5.
func (v ProtocolVersion) IsV5() bool { return v == MQTT5 }

// String returns "3.1", "3.1.1", "5.0", or the number for an unknown level.
func (v ProtocolVersion) String() string {
	switch v {
	case MQTT31:
		return "3.1"
	case MQTT311:
		return "3.1.1"
	case MQTT5:
		return "5.0"
	}
	return "level " + strconv.Itoa(int(v))
}

// ConnInfo describes one network connection. The broker fills it once per
// connection; the core passes the same pointer to every auth hook and to
// OnRegister and OnRegisterM5. Hooks must not modify it.
type ConnInfo struct {
	// Listener is the name of the listener that accepted the connection. It
	// selects the listener's settings in the core's options.
	Listener string
	// Mountpoint is the listener's mountpoint; it becomes the Mountpoint of the
	// session's SubscriberID unless a plugin changes it.
	Mountpoint string
	// Transport is "tcp", "tls", "ws", "wss" or "unix".
	Transport string
	// Local and Peer are the two ends of the connection (zero for "unix").
	Local, Peer netip.AddrPort
	// TLS is the state of the TLS handshake, with the client's certificates;
	// nil without TLS.
	TLS *tls.ConnectionState
	// ConnID is unique among the connections of one process.
	ConnID uint64
}

// UserProperty is an MQTT 5 User Property: a key and a value, both UTF-8. A
// list of them keeps its order and may repeat keys.
type UserProperty struct {
	Key, Value string
}

// Opt is a value with an explicit "set" flag, so that the zero value of T is
// never mistaken for "not set". Build one with [Some].
type Opt[T any] struct {
	V   T
	Set bool
}

// Some returns an Opt holding v.
func Some[T any](v T) Opt[T] { return Opt[T]{V: v, Set: true} }

// Or returns the value if it is set and def otherwise.
func (o Opt[T]) Or(def T) T {
	if o.Set {
		return o.V
	}
	return def
}

// ConnectRequest is a decoded CONNECT packet, as the broker hands it to the core.
// Optional strings carry a Has flag: an absent username is not an empty one.
type ConnectRequest struct {
	ProtocolVersion ProtocolVersion
	// ClientID is the client identifier as sent; it may be empty.
	ClientID string
	// CleanStart is the v3 Clean Session flag or the v5 Clean Start flag.
	CleanStart bool
	// KeepAlive is the keep-alive interval in seconds; 0 disables it.
	KeepAlive uint16

	Username    string
	HasUsername bool
	Password    []byte
	HasPassword bool

	// Will is the Will message, or nil when the CONNECT has none.
	Will *Will

	// Properties holds the CONNECT's MQTT 5 properties; zero for v3.
	Properties ConnectProperties
}

// ConnectProperties are the properties of an MQTT 5 CONNECT. A zero field means
// the property was absent, except where an Opt records presence because MQTT
// gives absence a meaning of its own.
type ConnectProperties struct {
	// SessionExpiryInterval in seconds; absent is 0, 0xFFFFFFFF is never.
	SessionExpiryInterval uint32
	// ReceiveMaximum; absent (0) means 65535.
	ReceiveMaximum uint16
	// MaximumPacketSize the client accepts; absent (0) means no limit.
	MaximumPacketSize uint32
	// TopicAliasMaximum the client accepts; absent is 0.
	TopicAliasMaximum          uint16
	RequestResponseInformation bool
	// RequestProblemInformation; absent means true.
	RequestProblemInformation Opt[bool]
	UserProperties            []UserProperty
	// AuthenticationMethod starts enhanced authentication when not empty.
	AuthenticationMethod string
	AuthenticationData   []byte
}

// Will is the Will of a CONNECT: the message to publish when the connection
// ends without a DISCONNECT 0x00, with its v5 Will properties (Payload Format
// Indicator, Message Expiry Interval, Content Type, Response Topic,
// Correlation Data, User Properties) in Message.Properties.
type Will struct {
	Message
	// DelayInterval is the v5 Will Delay Interval in seconds: how long after
	// the connection's end the Will waits, in case the session resumes
	// (MQTT 5 §3.1.3.2.2).
	DelayInterval uint32
}

// ConnackProperties are the properties of an MQTT 5 CONNACK. OnRegisterM5
// sees them as they will be sent. A zero field is not sent, nor an unset Opt;
// Opt marks the properties whose zero value means something.
type ConnackProperties struct {
	SessionExpiryInterval Opt[uint32]
	// ReceiveMaximum; 0 is not sent (the client assumes 65535).
	ReceiveMaximum  uint16
	MaximumQoS      Opt[byte]
	RetainAvailable Opt[bool]
	// MaximumPacketSize; 0 is not sent (no limit).
	MaximumPacketSize        uint32
	AssignedClientIdentifier string
	// TopicAliasMaximum; 0 is not sent (no topic aliases).
	TopicAliasMaximum               uint16
	ReasonString                    string
	UserProperties                  []UserProperty
	WildcardSubscriptionAvailable   Opt[bool]
	SubscriptionIdentifierAvailable Opt[bool]
	SharedSubscriptionAvailable     Opt[bool]
	ServerKeepAlive                 Opt[uint16]
	ResponseInformation             string
	ServerReference                 string
	AuthenticationMethod            string
	AuthenticationData              []byte
}

// Message is an application message as the core queues and delivers it.
type Message struct {
	Topic   string
	Payload []byte
	QoS     byte
	Retain  bool
	// Properties holds the v5 PUBLISH properties; zero for v3.
	Properties PublishProperties
}

// PublishProperties are the MQTT 5 properties of a PUBLISH that travel with a
// message from publisher to subscriber.
type PublishProperties struct {
	PayloadFormatIndicator byte
	// MessageExpiryInterval in seconds; unset means the message never expires.
	MessageExpiryInterval Opt[uint32]
	ContentType           string
	ResponseTopic         string
	CorrelationData       []byte
	UserProperties        []UserProperty
}

// Capabilities is what a broker supports. The core advertises it in the v5
// CONNACK, and a plugin's capability modifiers may only lower it.
type Capabilities struct {
	// MaximumQoS is the highest QoS the broker accepts from clients: 0, 1 or 2.
	MaximumQoS                      byte
	RetainAvailable                 bool
	WildcardSubscriptionAvailable   bool
	SubscriptionIdentifierAvailable bool
	SharedSubscriptionAvailable     bool
	// MaximumPacketSize the broker accepts; 0 means no limit.
	MaximumPacketSize uint32
	// TopicAliasMaximum the broker accepts; 0 means no topic aliases.
	TopicAliasMaximum uint16
	// ReceiveMaximum is how many QoS 1 and 2 PUBLISHes the broker processes at
	// once per connection; 0 means 65535.
	ReceiveMaximum uint16
}

// DefaultCapabilities returns MQTT's defaults, which a v5 CONNACK need not
// mention: QoS 2, retained messages, wildcard and shared subscriptions and
// subscription identifiers available, no packet size limit, no topic aliases.
// A broker that lacks a feature turns it off.
func DefaultCapabilities() Capabilities {
	return Capabilities{
		MaximumQoS:                      2,
		RetainAvailable:                 true,
		WildcardSubscriptionAvailable:   true,
		SubscriptionIdentifierAvailable: true,
		SharedSubscriptionAvailable:     true,
	}
}
