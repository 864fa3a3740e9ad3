package mqtthooks

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// errAuthProtocol is the error of a client that breaks the enhanced
// authentication protocol: CONNACK 0x82.
var errAuthProtocol = &RejectError{Code: CodeProtocolError, Reason: "unexpected packet during authentication"}

// startAuth runs the first step of an MQTT 5 enhanced authentication.
func (h *Handshake) startAuth(ctx context.Context) Step {
	req := h.connect
	return h.authStep(ctx, &AuthRequest{Step: AuthStepStart, Method: req.Properties.AuthenticationMethod,
		Data: req.Properties.AuthenticationData}, "")
}

// Auth hands the client's AUTH packet to the exchange and returns the next
// step. An AUTH other than 0x18 with the CONNECT's method, or one when no
// exchange runs, ends the CONNECT with CONNACK 0x82.
func (h *Handshake) Auth(ctx context.Context, in *AuthPacket) Step {
	switch {
	case h.finished:
		return Step{Kind: CloseConnection, Err: fmt.Errorf("%w: the CONNECT is over", ErrInvalidArgument)}
	case ctx == nil || in == nil:
		return h.reject(fmt.Errorf("%w: Auth needs a context and a packet", ErrInvalidArgument))
	case in.ReasonCode != CodeContinueAuthentication || in.Method != h.connect.Properties.AuthenticationMethod:
		return h.Unexpected()
	case !time.Now().Before(h.deadline):
		return h.Timeout()
	}
	return h.authStep(ctx, &AuthRequest{Step: AuthStepContinue, Method: in.Method, Data: in.Data,
		UserProperties: in.UserProperties, State: h.state}, h.owner)
}

// Timeout ends an exchange whose client did not answer by Deadline: CONNACK
// 0x87.
func (h *Handshake) Timeout() Step {
	if h.finished {
		return Step{Kind: CloseConnection, Err: fmt.Errorf("%w: the CONNECT is over", ErrInvalidArgument)}
	}
	return h.reject(&RejectError{Code: CodeNotAuthorized, Reason: "authentication timed out"})
}

// Unexpected ends an exchange whose client sent a packet other than AUTH or
// DISCONNECT: CONNACK 0x82.
func (h *Handshake) Unexpected() Step {
	if h.finished {
		return Step{Kind: CloseConnection, Err: fmt.Errorf("%w: the CONNECT is over", ErrInvalidArgument)}
	}
	return h.reject(errAuthProtocol)
}

// Abort ends the CONNECT without a reply: the client sent DISCONNECT or the
// connection was lost during the exchange. No hook runs and no session is
// touched.
func (h *Handshake) Abort() Step {
	if h.finished {
		return Step{Kind: CloseConnection}
	}
	return h.abandon(context.Canceled)
}

// authStep runs one OnAuthM5 step: the chain at the start, the owner after.
func (h *Handshake) authStep(ctx context.Context, req *AuthRequest, owner string) Step {
	c := h.core
	req.SubscriberID, req.Username, req.HasUsername = h.id, h.connect.Username, h.connect.HasUsername
	req.Connect, req.Conn = h.connect, h.ci
	var d Decision[AuthResult]
	h.spend(ctx, func(cctx context.Context) {
		if owner == "" {
			d = h.snap.OnAuthM5(cctx, req)
		} else {
			d = h.snap.OnAuthM5Plugin(cctx, owner, req)
		}
	})
	if err := ctx.Err(); err != nil {
		return h.abandon(err)
	}
	switch {
	case errors.Is(d.Err, context.Canceled):
		return h.abandon(d.Err)
	case d.Err == nil && d.Result.Verdict() == AuthVerdictContinue:
		h.owner, h.state = d.Plugin, d.Result.State()
		return Step{Kind: SendAuth, Auth: &AuthPacket{ReasonCode: CodeContinueAuthentication,
			Method: req.Method, Data: d.Result.Data()}}
	case d.Err == nil:
		h.enhanced = &EnhancedAuth{Method: req.Method, Plugin: d.Plugin, Identity: d.Result.Identity()}
		h.authData = d.Result.Data()
		h.owner, h.state = "", nil
		return h.authorize(ctx)
	case owner == "" && (errors.Is(d.Err, ErrChainExhausted) || errors.Is(d.Err, ErrNoPlugin)):
		return h.reject(fmt.Errorf("%w: %w", &RejectError{Code: CodeBadAuthenticationMethod}, d.Err))
	case owner != "" && errors.Is(d.Err, ErrChainExhausted):
		return h.reject(fmt.Errorf("%w: the plugin owning the exchange answered Next", ErrRejected))
	}
	if d.Result.Verdict() == AuthVerdictReject {
		var re *RejectError
		if errors.As(d.Err, &re) {
			return h.reject(re)
		}
	}
	c.logger.Warn("mqtthooks: enhanced authentication failed", "plugin", d.Plugin, "err", d.Err)
	return h.reject(d.Err)
}
