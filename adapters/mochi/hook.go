package mochi

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"reflect"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/mqtthooks/mqtthooks"
)

// Options configure a Hook.
type Options struct {
	// Chain holds the plugins the Hook runs. Required.
	Chain *mqtthooks.Chain
	// AllowAnonymous accepts a client without a username when no plugin
	// decides (every plugin answers Next, or none implements the hook); the
	// chain runs in any case, and a plugin's Reject still rejects.
	AllowAnonymous bool
	// ResumePolicy decides whether a CONNECT may take over or discard the
	// session mochi holds for its client id; default mqtthooks.SameUsername.
	// mochi itself lets any client take any session over.
	ResumePolicy mqtthooks.ResumePolicy
	// HookTimeout bounds each call of the chain; default 5 s.
	HookTimeout time.Duration
	// Logger receives what goes wrong; default slog.Default().
	Logger *slog.Logger
}

// Hook is a mochi hook that runs an mqtthooks Chain. Create it with New and
// add it with mqtt.Server.AddHook before the server serves. It must be the
// only hook of the server that authenticates: mochi accepts a client when any
// hook's OnConnectAuthenticate says so, and the Hook decides in OnConnect,
// before those run.
//
// Its methods are called by mochi and are safe for concurrent use.
type Hook struct {
	mqtt.HookBase
	server *mqtt.Server
	opts   Options
	log    *slog.Logger

	connIDs  atomic.Uint64
	mu       sync.Mutex // guards conns and sessions; never held while a hook runs
	conns    map[*mqtt.Client]*conn
	sessions map[string]*session
}

// conn is what the Hook knows of one accepted connection.
type conn struct {
	ev      mqtthooks.SessionEvent // its identity; Generation is set at registration
	info    mqtthooks.ConnInfo
	connect *mqtthooks.ConnectRequest
}

// session is what the Hook knows of one client id's session, to fire its
// events in the order of the lifecycle: one life at a time, the old
// connection's end before the new one's wake-up.
type session struct {
	mu   sync.Mutex // held while the session's hooks run
	gen  uint64
	live *mqtt.Client // the attached connection, nil while offline
	last *conn        // the latest connection, for events without one
	gone bool         // removed from the Hook: a new session takes its place
}

var generations atomic.Uint64 // one sequence, so that no two lives share one

// New returns a Hook for server that runs opts.Chain. It fails with
// mqtthooks.ErrInvalidArgument without a server or a chain.
func New(server *mqtt.Server, opts Options) (*Hook, error) {
	if server == nil || opts.Chain == nil {
		return nil, fmt.Errorf("%w: mochi.New needs a server and a chain", mqtthooks.ErrInvalidArgument)
	}
	if opts.ResumePolicy == nil {
		opts.ResumePolicy = mqtthooks.SameUsername
	}
	if opts.HookTimeout <= 0 {
		opts.HookTimeout = 5 * time.Second
	}
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	return &Hook{server: server, opts: opts, log: log,
		conns: map[*mqtt.Client]*conn{}, sessions: map[string]*session{}}, nil
}

// ID returns "mqtthooks".
func (h *Hook) ID() string { return "mqtthooks" }

// Provides reports the mochi events the Hook handles.
func (h *Hook) Provides(b byte) bool {
	switch b {
	case mqtt.OnConnect, mqtt.OnConnectAuthenticate, mqtt.OnSessionEstablish, mqtt.OnDisconnect,
		mqtt.OnClientExpired, mqtt.OnQosDropped, mqtt.OnPublishDropped:
		return true
	}
	return false
}

func (h *Hook) context() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), h.opts.HookTimeout)
}

// OnConnect runs AuthOnRegister or AuthOnRegisterM5 for the CONNECT, applies
// the modifiers mochi can carry, and checks the resume policy. A refusal is
// sent here, as a CONNACK with the reason code the chain chose (for MQTT 3
// the return code mqtthooks maps it to), and ends the connection.
func (h *Hook) OnConnect(cl *mqtt.Client, pk packets.Packet) error {
	req := ConnectRequest(&pk)
	v5 := req.ProtocolVersion.IsV5()
	info := h.connInfo(cl)
	rreq := &mqtthooks.RegisterRequest{SubscriberID: mqtthooks.SubscriberID{ClientID: cl.ID}, Connect: req, Conn: &info}
	ctx, cancel := h.context()
	var d mqtthooks.Decision[mqtthooks.RegisterResult]
	if v5 {
		d = h.opts.Chain.Snapshot().AuthOnRegisterM5(ctx, rreq)
	} else {
		d = h.opts.Chain.Snapshot().AuthOnRegister(ctx, rreq)
	}
	cancel()
	err := d.ReplyError()
	if err != nil && h.opts.AllowAnonymous && !req.HasUsername &&
		(errors.Is(d.Err, mqtthooks.ErrChainExhausted) || errors.Is(d.Err, mqtthooks.ErrNoPlugin)) {
		err = nil
	}
	if err != nil {
		return h.reject(cl, v5, err, d.Err)
	}
	if err := h.apply(cl, req, d.Result.Modifiers()); err != nil {
		h.log.Warn("mqtthooks: CONNECT rejected", "plugin", d.Plugin, "err", err)
		return h.reject(cl, v5, err, err)
	}
	if err := h.checkResume(cl, req, &info); err != nil {
		return h.reject(cl, v5, err, err)
	}
	username, hasUsername := string(cl.Properties.Username), req.HasUsername || len(cl.Properties.Username) > 0
	c := &conn{info: info, connect: req, ev: mqtthooks.SessionEvent{
		SubscriberID: mqtthooks.SubscriberID{ClientID: cl.ID}, ConnID: info.ConnID, Username: username,
		HasUsername: hasUsername, Peer: info.Peer, ProtocolVersion: req.ProtocolVersion}}
	h.mu.Lock()
	h.conns[cl] = c
	h.mu.Unlock()
	return nil
}

// apply carries out the modifiers mochi has a place for: the client id
// (without a mountpoint), the username, the v5 Session Expiry Interval and
// the Server Keep Alive. Any other modifier is refused with
// mqtthooks.ErrInvalidModifiers naming it, rather than silently ignored.
func (h *Hook) apply(cl *mqtt.Client, req *mqtthooks.ConnectRequest, m *mqtthooks.Modifiers) error {
	if m == nil {
		return nil
	}
	if err := m.Validate(mqtthooks.ModifierRules{ProtocolVersion: req.ProtocolVersion}); err != nil {
		return err
	}
	if unsupported := unsupportedModifier(m); unsupported != "" {
		return fmt.Errorf("%w: %s is not supported by the mochi adapter", mqtthooks.ErrInvalidModifiers, unsupported)
	}
	if id := m.SubscriberID; id.Set {
		if id.V.Mountpoint != "" {
			return fmt.Errorf("%w: SubscriberID: mochi has no mountpoints", mqtthooks.ErrInvalidModifiers)
		}
		cl.ID = id.V.ClientID
		if req.ClientID != cl.ID {
			cl.Properties.Props.AssignedClientID = cl.ID
		}
	}
	if u := m.Username; u.Set {
		cl.Properties.Username = []byte(u.V)
	}
	if sei := m.SessionExpiryInterval; sei.Set {
		cl.Properties.Props.SessionExpiryInterval, cl.Properties.Props.SessionExpiryIntervalFlag = sei.V, true
	}
	if ka := m.ServerKeepAlive; ka.Set {
		cl.State.Keepalive, cl.State.ServerKeepalive = ka.V, true
	}
	return nil
}

// supportedModifiers are the Modifiers fields mochi has a place for.
var supportedModifiers = map[string]bool{"SubscriberID": true, "Username": true,
	"SessionExpiryInterval": true, "ServerKeepAlive": true}

// unsupportedModifier names a field of m that is set and that mochi has no
// place for, or returns "".
func unsupportedModifier(m *mqtthooks.Modifiers) string {
	v := reflect.ValueOf(m).Elem()
	for i := range v.NumField() {
		name := v.Type().Field(i).Name
		if set := v.Field(i).FieldByName("Set"); set.IsValid() && set.Bool() && !supportedModifiers[name] {
			return name
		}
	}
	return ""
}

// checkResume applies the resume policy to a CONNECT for a client id mochi
// holds a session for, online or offline.
func (h *Hook) checkResume(cl *mqtt.Client, req *mqtthooks.ConnectRequest, info *mqtthooks.ConnInfo) error {
	existing, ok := h.server.Clients.Get(cl.ID)
	if !ok {
		return nil
	}
	prev := existing.Properties.Username
	r := &mqtthooks.ResumeRequest{SubscriberID: mqtthooks.SubscriberID{ClientID: cl.ID},
		Username: string(cl.Properties.Username), HasUsername: req.HasUsername || len(cl.Properties.Username) > 0,
		PrevUsername: string(prev), PrevHasUsername: len(prev) > 0, CleanStart: req.CleanStart, Conn: info}
	ctx, cancel := h.context()
	defer cancel()
	allowed := false
	func() {
		defer func() {
			if v := recover(); v != nil {
				h.log.Error("mqtthooks: panic in ResumePolicy", "client", cl.ID, "panic", v)
			}
		}()
		allowed = h.opts.ResumePolicy(ctx, r)
	}()
	if !allowed {
		return fmt.Errorf("%w: session %s belongs to another user", mqtthooks.ErrResumeRefused, cl.ID)
	}
	return nil
}

// reject sends the CONNACK for reply and returns the error that makes mochi
// end the connection. mochi maps only a few v5 codes to MQTT 3 return codes
// itself, and writes any other raw; the Hook chooses the return code.
func (h *Hook) reject(cl *mqtt.Client, v5 bool, reply, err error) error {
	if !v5 {
		rc := mqtthooks.ConnackReturnCode(reply)
		_ = h.server.SendConnack(cl, packets.Code{Code: byte(rc)}, false, nil)
		return fmt.Errorf("mqtthooks: CONNACK %s: %w", rc, err)
	}
	code, replaced := mqtthooks.ConnackReasonCode(reply)
	if replaced {
		h.log.Warn("mqtthooks: plugin reason code not valid in a CONNACK; sent 0x87", "err", err)
	}
	props := &packets.Properties{}
	reason := ""
	var re *mqtthooks.RejectError
	if errors.As(reply, &re) && !replaced {
		reason, props.ServerReference = re.Reason, re.ServerReference
	}
	_ = h.server.SendConnack(cl, packets.Code{Code: byte(code), Reason: reason}, false, props)
	return fmt.Errorf("mqtthooks: CONNACK %s: %w", code, err)
}

// OnConnectAuthenticate accepts the clients OnConnect accepted.
func (h *Hook) OnConnectAuthenticate(cl *mqtt.Client, _ packets.Packet) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.conns[cl] != nil
}

// OnSessionEstablish fires the lifecycle hooks of a registration, before
// mochi takes an existing session over and sends the CONNACK: first the old
// session's end, if the CONNECT takes it over or discards it (OnClientOffline
// or OnClientGone, with ReasonTakenOver or ReasonCleanStart), then
// OnClientWakeup and OnRegister or OnRegisterM5.
func (h *Hook) OnSessionEstablish(cl *mqtt.Client, pk packets.Packet) {
	h.mu.Lock()
	c := h.conns[cl]
	h.mu.Unlock()
	if c == nil {
		return
	}
	s := h.lockSession(cl.ID)
	defer s.mu.Unlock()
	snap := h.opts.Chain.Snapshot()
	ctx, cancel := h.context()
	defer cancel()

	existing, exists := h.server.Clients.Get(cl.ID)
	discard := exists && (pk.Connect.Clean || (existing.Properties.Clean && existing.Properties.ProtocolVersion < 5))
	present := exists && !discard
	if s.gen != 0 && s.last != nil {
		if s.live != nil { // online: mochi ends the old connection with 0x8E right after this hook
			ev := s.last.ev
			ev.Reason = mqtthooks.ReasonTakenOver
			if ev.ProtocolVersion.IsV5() {
				ev.Code, ev.HasCode = mqtthooks.CodeSessionTakenOver, true
			}
			s.live = nil
			if discard {
				if pk.Connect.Clean {
					ev.Reason = mqtthooks.ReasonCleanStart
				}
				snap.OnClientGone(ctx, &ev)
			} else {
				snap.OnClientOffline(ctx, &ev)
			}
		} else if discard || !exists {
			ev := s.last.ev
			ev.Reason, ev.Code, ev.HasCode = mqtthooks.ReasonCleanStart, 0, false
			if exists {
				snap.OnClientGone(ctx, &ev)
			}
		}
	}
	if s.gen == 0 || !present {
		s.gen = generations.Add(1)
	}
	c.ev.Generation = s.gen
	s.live, s.last = cl, c

	wake := c.ev
	snap.OnClientWakeup(ctx, &wake)
	reg := mqtthooks.RegisterEvent{SessionEvent: c.ev, SessionPresent: present, Conn: &c.info}
	if c.ev.ProtocolVersion.IsV5() {
		props := h.connackProperties(cl)
		reg.Connack = &props
		snap.OnRegisterM5(ctx, &reg)
	} else {
		snap.OnRegister(ctx, &reg)
	}
}

// connackProperties predicts the properties of mochi's success CONNACK.
func (h *Hook) connackProperties(cl *mqtt.Client) mqtthooks.ConnackProperties {
	caps := h.server.Options.Capabilities
	props := mqtthooks.ConnackProperties{ReceiveMaximum: caps.ReceiveMaximum,
		AssignedClientIdentifier: cl.Properties.Props.AssignedClientID}
	if caps.MaximumQos < 2 {
		props.MaximumQoS = mqtthooks.Some(caps.MaximumQos)
	}
	if cl.State.ServerKeepalive {
		props.ServerKeepAlive = mqtthooks.Some(cl.State.Keepalive)
	}
	if sei := cl.Properties.Props.SessionExpiryInterval; sei > caps.MaximumSessionExpiryInterval {
		props.SessionExpiryInterval = mqtthooks.Some(caps.MaximumSessionExpiryInterval)
	}
	return props
}

// OnDisconnect fires OnClientOffline, or OnClientGone when mochi ends the
// session with the connection, for a connection that ended on its own; the
// end of a connection taken over was reported when the new one registered.
func (h *Hook) OnDisconnect(cl *mqtt.Client, err error, expire bool) {
	h.mu.Lock()
	c := h.conns[cl]
	delete(h.conns, cl)
	h.mu.Unlock()
	if c == nil {
		return
	}
	s := h.lockSession(cl.ID)
	defer s.mu.Unlock()
	if s.live != cl {
		return
	}
	s.live = nil
	ev := c.ev
	h.endReason(&ev, cl, err)
	ctx, cancel := h.context()
	defer cancel()
	if expire {
		h.opts.Chain.Snapshot().OnClientGone(ctx, &ev)
		h.removeSession(cl.ID, s)
		return
	}
	h.opts.Chain.Snapshot().OnClientOffline(ctx, &ev)
}

// endReason fills in why the connection of cl ended, from what mochi says.
func (h *Hook) endReason(ev *mqtthooks.SessionEvent, cl *mqtt.Client, err error) {
	v5 := ev.ProtocolVersion.IsV5()
	var code packets.Code
	switch {
	case err == nil && errors.Is(cl.StopCause(), packets.CodeDisconnect):
		ev.Reason = mqtthooks.ReasonClientDisconnect
		ev.Code, ev.HasCode = mqtthooks.CodeNormalDisconnection, v5
	case errors.Is(err, packets.CodeDisconnectWillMessage):
		ev.Reason = mqtthooks.ReasonClientDisconnect
		ev.Code, ev.HasCode = mqtthooks.CodeDisconnectWithWillMessage, v5
	case errors.Is(err, os.ErrDeadlineExceeded):
		ev.Reason = mqtthooks.ReasonKeepAlive
		ev.Code, ev.HasCode = mqtthooks.CodeKeepAliveTimeout, v5
	case errors.As(err, &code) && code.Code >= packets.ErrUnspecifiedError.Code:
		ev.Reason = mqtthooks.ReasonProtocolError
		ev.Code, ev.HasCode = mqtthooks.ReasonCode(code.Code), v5
	case errors.As(cl.StopCause(), &code) && code.Code == packets.ErrServerShuttingDown.Code:
		ev.Reason = mqtthooks.ReasonShutdown
		ev.Code, ev.HasCode = mqtthooks.CodeServerShuttingDown, v5
	case errors.As(cl.StopCause(), &code) && code.Code >= packets.ErrUnspecifiedError.Code:
		ev.Reason = mqtthooks.ReasonAdmin
		ev.Code, ev.HasCode = mqtthooks.ReasonCode(code.Code), v5
	default: // io.EOF, a reset: the connection was lost
		ev.Reason = mqtthooks.ReasonNetworkError
	}
}

// OnClientExpired fires OnSessionExpired for the session mochi expired.
func (h *Hook) OnClientExpired(cl *mqtt.Client) {
	s := h.lockSession(cl.ID)
	defer s.mu.Unlock()
	if s.last == nil {
		h.removeSession(cl.ID, s)
		return // a session the Hook never saw registered
	}
	ctx, cancel := h.context()
	defer cancel()
	snap := h.opts.Chain.Snapshot()
	if s.live != nil { // mochi failed to send its CONNACK and never reported the end
		ev := s.last.ev
		ev.Reason = mqtthooks.ReasonNetworkError
		snap.OnClientOffline(ctx, &ev)
		s.live = nil
	}
	ev := s.last.ev
	ev.Reason, ev.Code, ev.HasCode = mqtthooks.ReasonExpired, 0, false
	snap.OnSessionExpired(ctx, &ev)
	h.removeSession(cl.ID, s)
}

// OnQosDropped fires OnMessageDrop with DropExpired for a QoS 1 or 2
// delivery mochi dropped because its Message Expiry Interval (or the
// server's maximum) passed. mochi also calls it for the deliveries of a
// session it discards, which are not drops, and a second time, with only the
// packet identifier, for each expired one: neither fires anything.
func (h *Hook) OnQosDropped(cl *mqtt.Client, pk packets.Packet) {
	if pk.FixedHeader.Type != packets.Publish || pk.TopicName == "" {
		return
	}
	now := time.Now().Unix()
	maxExpiry := h.server.Options.Capabilities.MaximumMessageExpiryInterval
	expired := pk.ProtocolVersion == 5 && pk.Expiry > 0 && pk.Expiry < now
	enforced := maxExpiry > 0 && now-pk.Created > maxExpiry
	if !expired && !enforced {
		return
	}
	h.dropped(cl, &pk, mqtthooks.DropExpired)
}

// OnPublishDropped fires OnMessageDrop with DropQueueFull for a message mochi
// dropped because the client's outbound buffer was full.
func (h *Hook) OnPublishDropped(cl *mqtt.Client, pk packets.Packet) {
	h.dropped(cl, &pk, mqtthooks.DropQueueFull)
}

func (h *Hook) dropped(cl *mqtt.Client, pk *packets.Packet, reason mqtthooks.DropReason) {
	ctx, cancel := h.context()
	defer cancel()
	h.opts.Chain.Snapshot().OnMessageDrop(ctx, &mqtthooks.DropEvent{
		SubscriberID: mqtthooks.SubscriberID{ClientID: cl.ID}, Reason: reason, Message: Message(pk)})
}

// lockSession returns the session of id, locked, creating it if needed.
func (h *Hook) lockSession(id string) *session {
	for {
		h.mu.Lock()
		s := h.sessions[id]
		if s == nil {
			s = &session{}
			h.sessions[id] = s
		}
		h.mu.Unlock()
		s.mu.Lock()
		if !s.gone {
			return s
		}
		s.mu.Unlock() // removed meanwhile: take the next one
	}
}

// removeSession forgets s, whose lock the caller holds.
func (h *Hook) removeSession(id string, s *session) {
	s.gone = true
	h.mu.Lock()
	if h.sessions[id] == s {
		delete(h.sessions, id)
	}
	h.mu.Unlock()
}

// connInfo describes cl's network connection.
func (h *Hook) connInfo(cl *mqtt.Client) mqtthooks.ConnInfo {
	info := mqtthooks.ConnInfo{Listener: cl.Net.Listener, Transport: "tcp", ConnID: h.connIDs.Add(1)}
	if l, ok := h.server.Listeners.Get(cl.Net.Listener); ok {
		switch l.Protocol() {
		case "ws", "wss", "unix":
			info.Transport = l.Protocol()
		}
	}
	if tc, ok := cl.Net.Conn.(*tls.Conn); ok {
		st := tc.ConnectionState()
		info.TLS = &st
		if info.Transport == "tcp" {
			info.Transport = "tls"
		}
	}
	info.Peer, _ = netip.ParseAddrPort(cl.Net.Remote)
	if cl.Net.Conn != nil {
		if a, ok := cl.Net.Conn.LocalAddr().(*net.TCPAddr); ok {
			info.Local = a.AddrPort()
		}
	}
	return info
}

var _ mqtt.Hook = (*Hook)(nil)
