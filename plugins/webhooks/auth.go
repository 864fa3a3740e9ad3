package webhooks

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"

	"github.com/mqtthooks/mqtthooks"
)

type authBody struct {
	Username   *string        `json:"username"`
	Mountpoint string         `json:"mountpoint"`
	ClientID   string         `json:"client_id"`
	Properties map[string]any `json:"properties"`
}

// exchange is the state an enhanced-authentication exchange carries from
// step to step: the endpoint that answered the first, which answers the
// rest.
type exchange struct {
	endpoint *endpoint
	reauth   bool // a re-authentication: the client is known by its id and name
}

// OnAuthM5 calls the on_auth_m5 endpoints for a step of an MQTT 5 enhanced
// authentication, during a CONNECT or a re-authentication, as VerneMQ does:
// the client id is "undefined" before the CONNACK, and the Authentication
// Data goes in base64 both ways. An endpoint's
// {"result":"ok","modifiers":{"properties":{"p_authentication_data": …},
// "reason_code": 24}} continues the exchange, reason_code 0 (or none)
// completes it; "next" passes; an error rejects with its reason_code, or
// 0x87. Later steps go to the endpoint that answered the first.
func (p *Plugin) OnAuthM5(ctx context.Context, r *mqtthooks.AuthRequest) mqtthooks.AuthResult {
	st, _ := r.State.(exchange)
	reauth := r.Step == mqtthooks.AuthStepReauth || st.reauth
	clientID, username := r.SubscriberID.ClientID, optional(r.Username, r.HasUsername)
	if !reauth { // before the CONNACK, as VerneMQ sends them
		clientID, username = "undefined", nil
	}
	props := map[string]any{"p_authentication_method": r.Method}
	if len(r.Data) > 0 {
		props["p_authentication_data"] = base64.StdEncoding.EncodeToString(r.Data)
	}
	body := &authBody{Username: username, Mountpoint: r.SubscriberID.Mountpoint, ClientID: clientID, Properties: props}
	eps := p.hooks[HookOnAuthM5]
	if st.endpoint != nil {
		eps = []*endpoint{st.endpoint}
	}
	data, err := json.Marshal(body)
	if err != nil {
		return mqtthooks.AuthReject(mqtthooks.CodeNotAuthorized, "")
	}
	for _, e := range eps {
		a, err := p.post(ctx, HookOnAuthM5, e, data, true)
		switch {
		case err != nil && ctx.Err() != nil:
			return mqtthooks.AuthReject(mqtthooks.CodeNotAuthorized, "")
		case errors.Is(err, ErrTransport) && e.OnTransportFailure == Next:
			p.logger.WarnContext(ctx, "webhooks: endpoint failed, next", "hook", HookOnAuthM5, "url", e.URL, "err", err)
			continue
		case err != nil:
			p.logger.WarnContext(ctx, "webhooks: endpoint failed", "hook", HookOnAuthM5, "url", e.URL, "err", err)
			return mqtthooks.AuthReject(mqtthooks.CodeNotAuthorized, "")
		case a.Error != nil:
			code := mqtthooks.CodeNotAuthorized
			if a.Code != nil {
				code = mqtthooks.ReasonCode(*a.Code)
			}
			return mqtthooks.AuthReject(code, "")
		case a.Result == "next":
			continue
		}
		var mods struct {
			Properties struct {
				Data *string `json:"p_authentication_data"`
			} `json:"properties"`
			Code *int `json:"reason_code"`
		}
		if raw, err := json.Marshal(a.Modifiers); err == nil {
			err = json.Unmarshal(raw, &mods)
			if err != nil {
				p.logger.WarnContext(ctx, "webhooks: invalid modifiers", "hook", HookOnAuthM5, "url", e.URL, "err", err)
				return mqtthooks.AuthReject(mqtthooks.CodeNotAuthorized, "")
			}
		}
		var data []byte
		if mods.Properties.Data != nil {
			d, err := base64.StdEncoding.DecodeString(*mods.Properties.Data)
			if err != nil {
				p.logger.WarnContext(ctx, "webhooks: p_authentication_data is not base64", "url", e.URL)
				return mqtthooks.AuthReject(mqtthooks.CodeNotAuthorized, "")
			}
			data = d
		}
		switch code := mods.Code; {
		case code == nil || *code == int(mqtthooks.CodeSuccess):
			return mqtthooks.AuthSuccess(data, nil)
		case *code == int(mqtthooks.CodeContinueAuthentication):
			return mqtthooks.AuthContinue(data, exchange{endpoint: e, reauth: reauth})
		default:
			return mqtthooks.AuthReject(mqtthooks.ReasonCode(*code), "")
		}
	}
	return mqtthooks.AuthNext()
}
