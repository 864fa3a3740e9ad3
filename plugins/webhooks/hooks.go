package webhooks

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"

	"github.com/mqtthooks/mqtthooks"
)

// The request bodies, field for field and in VerneMQ's order.

// clientFields open every register body; embedded, their keys come first,
// in this order.
type clientFields struct {
	PeerAddr   *string `json:"peer_addr"`
	PeerPort   int     `json:"peer_port"`
	Mountpoint string  `json:"mountpoint"`
	ClientID   string  `json:"client_id"`
	Username   *string `json:"username"`
}

type registerBody struct {
	clientFields
	Password     *string `json:"password"`
	CleanSession bool    `json:"clean_session"`
}

type registerM5Body struct {
	clientFields
	Password   *string        `json:"password"`
	CleanStart bool           `json:"clean_start"`
	Properties map[string]any `json:"properties"`
}

type onRegisterM5Body struct {
	clientFields
	Properties map[string]any `json:"properties"` // always sent, as VerneMQ does
}

type sessionBody struct {
	Mountpoint string `json:"mountpoint"`
	ClientID   string `json:"client_id"`
}

type userProperty struct {
	Key string `json:"key"` // base64, as VerneMQ sends them
	Val string `json:"val"`
}

func peer(ap netip.AddrPort) (*string, int) {
	if !ap.IsValid() {
		return nil, 0
	}
	s := ap.Addr().Unmap().String()
	return &s, int(ap.Port())
}

func connPeer(ci *mqtthooks.ConnInfo) (*string, int) {
	if ci == nil {
		return nil, 0
	}
	return peer(ci.Peer)
}

func optional(s string, set bool) *string {
	if !set {
		return nil
	}
	return &s
}

// connectProperties encodes a v5 CONNECT's properties as VerneMQ does.
func connectProperties(p *mqtthooks.ConnectProperties) map[string]any {
	m := map[string]any{}
	if p.SessionExpiryInterval > 0 {
		m["p_session_expiry_interval"] = p.SessionExpiryInterval
	}
	if p.ReceiveMaximum > 0 {
		m["p_receive_max"] = p.ReceiveMaximum
	}
	if p.TopicAliasMaximum > 0 {
		m["p_topic_alias_max"] = p.TopicAliasMaximum
	}
	if p.MaximumPacketSize > 0 {
		m["p_max_packet_size"] = p.MaximumPacketSize
	}
	if p.RequestResponseInformation {
		m["p_request_response_info"] = true
	}
	if p.RequestProblemInformation.Set {
		m["p_request_problem_info"] = p.RequestProblemInformation.V
	}
	if len(p.UserProperties) > 0 {
		ups := make([]userProperty, len(p.UserProperties))
		for i, u := range p.UserProperties {
			ups[i] = userProperty{b64(u.Key), b64(u.Value)}
		}
		m["p_user_property"] = ups
	}
	if p.AuthenticationMethod != "" {
		m["p_authentication_method"] = p.AuthenticationMethod
	}
	if len(p.AuthenticationData) > 0 {
		m["p_authentication_data"] = base64.StdEncoding.EncodeToString(p.AuthenticationData)
	}
	return m
}

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

// AuthOnRegister calls the auth_on_register endpoints.
func (p *Plugin) AuthOnRegister(ctx context.Context, r *mqtthooks.RegisterRequest) mqtthooks.RegisterResult {
	c := r.Connect
	addr, port := connPeer(r.Conn)
	body := &registerBody{clientFields{PeerAddr: addr, Mountpoint: r.SubscriberID.Mountpoint,
		ClientID: r.SubscriberID.ClientID, Username: optional(c.Username, c.HasUsername)},
		optional(string(c.Password), c.HasPassword), c.CleanStart}
	return p.decide(ctx, HookAuthOnRegister, false, body, &body.PeerPort, port)
}

// AuthOnRegisterM5 calls the auth_on_register_m5 endpoints.
func (p *Plugin) AuthOnRegisterM5(ctx context.Context, r *mqtthooks.RegisterRequest) mqtthooks.RegisterResult {
	c := r.Connect
	addr, port := connPeer(r.Conn)
	body := &registerM5Body{clientFields{PeerAddr: addr, Mountpoint: r.SubscriberID.Mountpoint,
		ClientID: r.SubscriberID.ClientID, Username: optional(c.Username, c.HasUsername)},
		optional(string(c.Password), c.HasPassword), c.CleanStart, connectProperties(&c.Properties)}
	return p.decide(ctx, HookAuthOnRegisterM5, true, body, &body.PeerPort, port)
}

// decide calls the endpoints of an auth hook in order until one decides.
// body is encoded once: with its peer port (*port) 0 for the cache's key,
// then with port for the requests.
func (p *Plugin) decide(ctx context.Context, hook string, v5 bool, body any, port *int, peerPort int) mqtthooks.RegisterResult {
	eps := p.hooks[hook]
	if len(eps) == 0 {
		return mqtthooks.Next()
	}
	var keyBody, data []byte
	if p.cache != nil {
		keyBody, _ = json.Marshal(body) // the port is 0 still: a reconnecting client comes from a new one
	}
	for _, e := range eps {
		var key string
		var a answer
		var err error
		if keyBody != nil {
			key = cacheKey(e.URL, hook, keyBody)
			if mods, ok := p.cache.get(key); ok {
				a.Result, a.Modifiers = "ok", mods
				goto decided
			}
		}
		if data == nil { // the request, encoded once for all endpoints, and only if one is called
			*port = peerPort
			if data, err = json.Marshal(body); err != nil {
				return reject(v5, err)
			}
		}
		a, err = p.post(ctx, hook, e, data, true)
	decided:
		switch {
		case err != nil && ctx.Err() != nil: // the client went away (or the hook's deadline passed)
			p.logger.DebugContext(ctx, "webhooks: call abandoned", "hook", hook, "url", e.URL, "err", err)
			return reject(v5, err)
		case errors.Is(err, ErrTransport) && e.OnTransportFailure == Next:
			p.logger.WarnContext(ctx, "webhooks: endpoint failed, next", "hook", hook, "url", e.URL, "err", err)
			continue
		case errors.Is(err, ErrTransport):
			p.logger.WarnContext(ctx, "webhooks: endpoint failed", "hook", hook, "url", e.URL, "err", err)
			return reject(v5, err)
		case err != nil:
			p.logger.WarnContext(ctx, "webhooks: invalid answer", "hook", hook, "url", e.URL, "err", err)
			return reject(v5, err)
		case a.Error != nil:
			if a.Code != nil {
				return mqtthooks.RejectCode(mqtthooks.ReasonCode(*a.Code), string(a.Error), "")
			}
			return reject(v5, fmt.Errorf("%w: %s", errEndpointRejected, a.Error))
		case a.Result == "next":
			continue
		}
		m, err := modifiers(a.Modifiers, v5)
		if err != nil {
			p.logger.WarnContext(ctx, "webhooks: invalid modifiers", "hook", hook, "url", e.URL, "err", err)
			return reject(v5, err)
		}
		if key != "" && a.MaxAge > 0 { // only an "ok" the modifiers of which hold
			p.cache.put(key, a.Modifiers, a.MaxAge)
		}
		if m == nil {
			return mqtthooks.Accept()
		}
		return mqtthooks.AcceptWith(m)
	}
	return mqtthooks.Next()
}

var errEndpointRejected = errors.New("webhooks: rejected by the endpoint")

// reject is the answer to a client an endpoint refused, or that the
// endpoints could not decide: MQTT 3 return code 5 (not authorized), MQTT 5
// 0x86 (bad user name or password), as VerneMQ answers an endpoint's error.
func reject(v5 bool, err error) mqtthooks.RegisterResult {
	if v5 {
		return mqtthooks.RejectCode(mqtthooks.CodeBadUserNameOrPassword, "", "")
	}
	return mqtthooks.Reject(err)
}

// notify calls the endpoints of a notification hook; answers are ignored,
// failures logged.
func (p *Plugin) notify(ctx context.Context, hook string, body any) {
	eps := p.hooks[hook]
	if len(eps) == 0 {
		return
	}
	data, err := json.Marshal(body)
	if err != nil {
		p.logger.ErrorContext(ctx, "webhooks: encoding a notification", "hook", hook, "err", err)
		return
	}
	for _, e := range eps {
		if _, err := p.post(ctx, hook, e, data, false); err != nil {
			p.logger.WarnContext(ctx, "webhooks: notification failed", "hook", hook, "url", e.URL, "err", err)
		}
	}
}

// OnRegister calls the on_register endpoints.
func (p *Plugin) OnRegister(ctx context.Context, ev *mqtthooks.RegisterEvent) {
	addr, port := peer(ev.Peer)
	p.notify(ctx, HookOnRegister, &clientFields{PeerAddr: addr, PeerPort: port,
		Mountpoint: ev.SubscriberID.Mountpoint, ClientID: ev.SubscriberID.ClientID,
		Username: optional(ev.Username, ev.HasUsername)})
}

// OnRegisterM5 calls the on_register_m5 endpoints.
func (p *Plugin) OnRegisterM5(ctx context.Context, ev *mqtthooks.RegisterEvent) {
	addr, port := peer(ev.Peer)
	props := map[string]any{}
	if ev.Connack != nil && ev.Connack.SessionExpiryInterval.Set {
		props["p_session_expiry_interval"] = ev.Connack.SessionExpiryInterval.V
	}
	p.notify(ctx, HookOnRegisterM5, &onRegisterM5Body{clientFields{PeerAddr: addr, PeerPort: port,
		Mountpoint: ev.SubscriberID.Mountpoint, ClientID: ev.SubscriberID.ClientID,
		Username: optional(ev.Username, ev.HasUsername)}, props})
}

func (p *Plugin) session(ctx context.Context, hook string, ev *mqtthooks.SessionEvent) {
	p.notify(ctx, hook, &sessionBody{Mountpoint: ev.SubscriberID.Mountpoint, ClientID: ev.SubscriberID.ClientID})
}

// OnClientWakeup calls the on_client_wakeup endpoints.
func (p *Plugin) OnClientWakeup(ctx context.Context, ev *mqtthooks.SessionEvent) {
	p.session(ctx, HookOnClientWakeup, ev)
}

// OnClientOffline calls the on_client_offline endpoints.
func (p *Plugin) OnClientOffline(ctx context.Context, ev *mqtthooks.SessionEvent) {
	p.session(ctx, HookOnClientOffline, ev)
}

// OnClientGone calls the on_client_gone endpoints.
func (p *Plugin) OnClientGone(ctx context.Context, ev *mqtthooks.SessionEvent) {
	p.session(ctx, HookOnClientGone, ev)
}

// OnSessionExpired calls the on_session_expired endpoints.
func (p *Plugin) OnSessionExpired(ctx context.Context, ev *mqtthooks.SessionEvent) {
	p.session(ctx, HookOnSessionExpired, ev)
}
