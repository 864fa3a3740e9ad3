package mqtthooks

import (
	"context"
	"net/netip"
	"strconv"
)

// Requests and events are built by the core and passed by pointer. They are
// read-only: a hook must not modify them or keep them, or any slice in them,
// after it returns (as with io.Writer's p). Copy what you need.

// RegisterRequest is what AuthOnRegister and AuthOnRegisterM5 receive.
type RegisterRequest struct {
	// SubscriberID is the session the CONNECT asks for: the listener's
	// mountpoint and the client id after the client-id rules, so a generated
	// id is already in place.
	SubscriberID SubscriberID
	// Connect is the CONNECT as the client sent it, with its username,
	// password, clean start flag, Will and (v5) properties.
	Connect *ConnectRequest
	// Conn describes the network connection.
	Conn *ConnInfo
	// EnhancedAuth is set for a v5 CONNECT that completed enhanced
	// authentication, and nil otherwise.
	EnhancedAuth *EnhancedAuth
}

// EnhancedAuth records a completed MQTT 5 enhanced authentication.
type EnhancedAuth struct {
	// Method is the client's Authentication Method.
	Method string
	// Plugin is the name of the plugin that answered AuthSuccess.
	Plugin string
	// Identity is what that plugin passed to AuthSuccess.
	Identity any
}

// AuthStep says which step of an enhanced authentication an AuthRequest is.
type AuthStep uint8

// The steps of an enhanced authentication.
const (
	// AuthStepStart is the CONNECT that carries an Authentication Method.
	AuthStepStart AuthStep = iota + 1
	// AuthStepContinue is an AUTH 0x18 from the client, answering a Continue.
	AuthStepContinue
	// AuthStepReauth is an AUTH 0x19 from a connected client.
	AuthStepReauth
)

// String returns "start", "continue" or "reauth".
func (s AuthStep) String() string {
	switch s {
	case AuthStepStart:
		return "start"
	case AuthStepContinue:
		return "continue"
	case AuthStepReauth:
		return "reauth"
	}
	return "AuthStep(" + strconv.Itoa(int(s)) + ")"
}

// AuthRequest is what OnAuthM5 receives at each step of an exchange.
type AuthRequest struct {
	Step AuthStep
	// Method is the client's Authentication Method. The core echoes it in every
	// AUTH and in the CONNACK; a plugin never names it.
	Method string
	// Data is the client's Authentication Data for this step.
	Data []byte
	// UserProperties are those of the client's AUTH packet (nil at Start: the
	// CONNECT's are in Connect.Properties).
	UserProperties []UserProperty
	// SubscriberID is the listener's mountpoint and the client id after the
	// client-id rules.
	SubscriberID SubscriberID
	// Username is the CONNECT's, as sent.
	Username    string
	HasUsername bool
	// Connect is the CONNECT that started the connection, at every step.
	Connect *ConnectRequest
	Conn    *ConnInfo
	// State is what this plugin returned with its last AuthContinue in this
	// exchange, and nil at the first step.
	State any
}

// Reason says why a session event happened.
type Reason uint8

// The reasons of a SessionEvent. ReasonNone is for events that do not end a
// connection: OnClientWakeup and OnRegister.
const (
	ReasonNone Reason = iota
	// ReasonClientDisconnect: the client sent DISCONNECT.
	ReasonClientDisconnect
	// ReasonKeepAlive: the client was silent past its keep-alive.
	ReasonKeepAlive
	// ReasonNetworkError: the connection was lost.
	ReasonNetworkError
	// ReasonProtocolError: the client broke the protocol.
	ReasonProtocolError
	// ReasonTakenOver: another connection took the session over.
	ReasonTakenOver
	// ReasonAdmin: an administrative disconnect.
	ReasonAdmin
	// ReasonShutdown: the core shut down.
	ReasonShutdown
	// ReasonCleanStart: a clean CONNECT discarded the session.
	ReasonCleanStart
	// ReasonExpired: the offline session's expiry interval passed.
	ReasonExpired
	// ReasonAuthFailed: a re-authentication was rejected.
	ReasonAuthFailed
	// ReasonRestart: the process stopped, without a Shutdown, while the
	// connection was attached; the Core that restored the session from its
	// store reports the connection's end when it starts.
	ReasonRestart
	// ReasonNodeDown: the node of a cluster that held the connection died
	// or lost the cluster; another node reports the connection's end, once,
	// before the session attaches a new connection.
	ReasonNodeDown
)

var reasonNames = [...]string{
	ReasonNone:             "none",
	ReasonClientDisconnect: "client-disconnect",
	ReasonKeepAlive:        "keep-alive",
	ReasonNetworkError:     "network-error",
	ReasonProtocolError:    "protocol-error",
	ReasonTakenOver:        "taken-over",
	ReasonAdmin:            "admin",
	ReasonShutdown:         "shutdown",
	ReasonCleanStart:       "clean-start",
	ReasonExpired:          "expired",
	ReasonAuthFailed:       "auth-failed",
	ReasonRestart:          "restart",
	ReasonNodeDown:         "node-down",
}

// String returns the reason's name, such as "taken-over".
func (r Reason) String() string {
	if int(r) < len(reasonNames) {
		return reasonNames[r]
	}
	return "Reason(" + strconv.Itoa(int(r)) + ")"
}

// SessionEvent is what the lifecycle notification hooks receive.
type SessionEvent struct {
	SubscriberID SubscriberID
	// Generation is the same for every event of one session life on one
	// node and differs between lives. A session that moves to another node of
	// a cluster (Options.Cluster) goes on there under a new Generation, with
	// SessionPresent set in its OnRegister.
	Generation uint64
	// ConnID, Username, Peer and ProtocolVersion are those of the connection
	// the event is about; for an event with no live connection (expiry, for
	// instance) they are those of the session's last connection.
	ConnID          uint64
	Username        string
	HasUsername     bool
	Peer            netip.AddrPort
	ProtocolVersion ProtocolVersion
	Reason          Reason
	// Code is the reason code of the v5 DISCONNECT that ended the connection,
	// whichever side sent it; HasCode says whether there was one.
	Code    ReasonCode
	HasCode bool
}

// RegisterEvent is what OnRegister and OnRegisterM5 receive: the session after
// registration, with the SubscriberID and username after modifiers.
type RegisterEvent struct {
	SessionEvent
	// SessionPresent is the Session Present flag the CONNACK will carry.
	SessionPresent bool
	Conn           *ConnInfo
	// Connack holds the properties of the CONNACK as it will be sent (v5 only;
	// nil for OnRegister).
	Connack *ConnackProperties
}

// DropReason says why a message was dropped.
type DropReason uint8

// The reasons of a DropEvent.
const (
	// DropQueueFull: the session's queue was at its limit.
	DropQueueFull DropReason = iota + 1
	// DropExpired: the message's v5 Message Expiry Interval passed.
	DropExpired
	// DropTooLarge: the message exceeds what the client accepts.
	DropTooLarge
)

// String returns "queue-full", "expired" or "too-large".
func (r DropReason) String() string {
	switch r {
	case DropQueueFull:
		return "queue-full"
	case DropExpired:
		return "expired"
	case DropTooLarge:
		return "too-large"
	}
	return "DropReason(" + strconv.Itoa(int(r)) + ")"
}

// DropEvent is what OnMessageDrop receives.
type DropEvent struct {
	SubscriberID SubscriberID
	Reason       DropReason
	Message      *Message
}

// AuthOnRegister decides whether an MQTT 3.1 or 3.1.1 client may connect. It
// runs for every v3 CONNECT that passed the client-id rules, also for clients
// without a username.
type AuthOnRegister interface {
	AuthOnRegister(ctx context.Context, req *RegisterRequest) RegisterResult
}

// AuthOnRegisterFunc adapts a function to AuthOnRegister.
type AuthOnRegisterFunc func(ctx context.Context, req *RegisterRequest) RegisterResult

// AuthOnRegister calls f(ctx, req).
func (f AuthOnRegisterFunc) AuthOnRegister(ctx context.Context, req *RegisterRequest) RegisterResult {
	return f(ctx, req)
}

// AuthOnRegisterM5 decides whether an MQTT 5 client may connect. It runs after
// enhanced authentication, if any, and sees every CONNECT property.
type AuthOnRegisterM5 interface {
	AuthOnRegisterM5(ctx context.Context, req *RegisterRequest) RegisterResult
}

// AuthOnRegisterM5Func adapts a function to AuthOnRegisterM5.
type AuthOnRegisterM5Func func(ctx context.Context, req *RegisterRequest) RegisterResult

// AuthOnRegisterM5 calls f(ctx, req).
func (f AuthOnRegisterM5Func) AuthOnRegisterM5(ctx context.Context, req *RegisterRequest) RegisterResult {
	return f(ctx, req)
}

// AuthOnRegisterBothFunc adapts one function to AuthOnRegister and
// AuthOnRegisterM5, so that a plugin decides once for MQTT 3 and MQTT 5
// clients alike; req.Connect.ProtocolVersion tells them apart. A plugin that
// implements only one of the two never sees the other version's clients.
type AuthOnRegisterBothFunc func(ctx context.Context, req *RegisterRequest) RegisterResult

// AuthOnRegister calls f(ctx, req).
func (f AuthOnRegisterBothFunc) AuthOnRegister(ctx context.Context, req *RegisterRequest) RegisterResult {
	return f(ctx, req)
}

// AuthOnRegisterM5 calls f(ctx, req).
func (f AuthOnRegisterBothFunc) AuthOnRegisterM5(ctx context.Context, req *RegisterRequest) RegisterResult {
	return f(ctx, req)
}

// OnAuthM5 runs each step of an MQTT 5 enhanced authentication and
// re-authentication. The plugin that answers AuthContinue owns the exchange:
// later steps go to it alone.
type OnAuthM5 interface {
	OnAuthM5(ctx context.Context, req *AuthRequest) AuthResult
}

// OnAuthM5Func adapts a function to OnAuthM5.
type OnAuthM5Func func(ctx context.Context, req *AuthRequest) AuthResult

// OnAuthM5 calls f(ctx, req).
func (f OnAuthM5Func) OnAuthM5(ctx context.Context, req *AuthRequest) AuthResult {
	return f(ctx, req)
}

// OnRegister is told that a v3 client registered: after OnClientWakeup and
// before the CONNACK decision.
type OnRegister interface {
	OnRegister(ctx context.Context, ev *RegisterEvent)
}

// OnRegisterFunc adapts a function to OnRegister.
type OnRegisterFunc func(ctx context.Context, ev *RegisterEvent)

// OnRegister calls f(ctx, ev).
func (f OnRegisterFunc) OnRegister(ctx context.Context, ev *RegisterEvent) { f(ctx, ev) }

// OnRegisterM5 is told that a v5 client registered: after OnClientWakeup and
// before the CONNACK decision, with the CONNACK's properties.
type OnRegisterM5 interface {
	OnRegisterM5(ctx context.Context, ev *RegisterEvent)
}

// OnRegisterM5Func adapts a function to OnRegisterM5.
type OnRegisterM5Func func(ctx context.Context, ev *RegisterEvent)

// OnRegisterM5 calls f(ctx, ev).
func (f OnRegisterM5Func) OnRegisterM5(ctx context.Context, ev *RegisterEvent) { f(ctx, ev) }

// OnRegisterBothFunc adapts one function to OnRegister and OnRegisterM5, so
// that a plugin learns of MQTT 3 and MQTT 5 registrations alike; ev.Connack
// is nil for MQTT 3.
type OnRegisterBothFunc func(ctx context.Context, ev *RegisterEvent)

// OnRegister calls f(ctx, ev).
func (f OnRegisterBothFunc) OnRegister(ctx context.Context, ev *RegisterEvent) { f(ctx, ev) }

// OnRegisterM5 calls f(ctx, ev).
func (f OnRegisterBothFunc) OnRegisterM5(ctx context.Context, ev *RegisterEvent) { f(ctx, ev) }

// OnClientWakeup is told that a connection attached to its session: older
// connections are gone and pending messages are ready.
type OnClientWakeup interface {
	OnClientWakeup(ctx context.Context, ev *SessionEvent)
}

// OnClientWakeupFunc adapts a function to OnClientWakeup.
type OnClientWakeupFunc func(ctx context.Context, ev *SessionEvent)

// OnClientWakeup calls f(ctx, ev).
func (f OnClientWakeupFunc) OnClientWakeup(ctx context.Context, ev *SessionEvent) { f(ctx, ev) }

// OnClientOffline is told that the last connection of a persistent session
// ended; the session stays.
type OnClientOffline interface {
	OnClientOffline(ctx context.Context, ev *SessionEvent)
}

// OnClientOfflineFunc adapts a function to OnClientOffline.
type OnClientOfflineFunc func(ctx context.Context, ev *SessionEvent)

// OnClientOffline calls f(ctx, ev).
func (f OnClientOfflineFunc) OnClientOffline(ctx context.Context, ev *SessionEvent) { f(ctx, ev) }

// OnClientGone is told that a session ended: its clean connection ended, or a
// clean start, an admin cleanup or a takeover discarded it.
type OnClientGone interface {
	OnClientGone(ctx context.Context, ev *SessionEvent)
}

// OnClientGoneFunc adapts a function to OnClientGone.
type OnClientGoneFunc func(ctx context.Context, ev *SessionEvent)

// OnClientGone calls f(ctx, ev).
func (f OnClientGoneFunc) OnClientGone(ctx context.Context, ev *SessionEvent) { f(ctx, ev) }

// OnSessionExpired is told that an offline persistent session expired.
// OnClientGone does not fire for it.
type OnSessionExpired interface {
	OnSessionExpired(ctx context.Context, ev *SessionEvent)
}

// OnSessionExpiredFunc adapts a function to OnSessionExpired.
type OnSessionExpiredFunc func(ctx context.Context, ev *SessionEvent)

// OnSessionExpired calls f(ctx, ev).
func (f OnSessionExpiredFunc) OnSessionExpired(ctx context.Context, ev *SessionEvent) { f(ctx, ev) }

// OnMessageDrop is told that a message for a session was dropped, and why.
type OnMessageDrop interface {
	OnMessageDrop(ctx context.Context, ev *DropEvent)
}

// OnMessageDropFunc adapts a function to OnMessageDrop.
type OnMessageDropFunc func(ctx context.Context, ev *DropEvent)

// OnMessageDrop calls f(ctx, ev).
func (f OnMessageDropFunc) OnMessageDrop(ctx context.Context, ev *DropEvent) { f(ctx, ev) }
