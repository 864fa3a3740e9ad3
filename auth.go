package mqtthooks

import (
	"bytes"
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
		m := &c.hookm[hookOnAuthM5]
		start := m.start()
		if owner == "" {
			d = h.snap.OnAuthM5(cctx, req)
		} else {
			d = h.snap.OnAuthM5Plugin(cctx, owner, req)
		}
		m.decided(d.Err, d.passed, start)
		c.logTimeout(cctx, hookOnAuthM5, d.Err, d.Plugin, req.SubscriberID)
	})
	if err := ctx.Err(); err != nil {
		return h.abandon(err)
	}
	switch {
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
			step := h.reject(re)
			step.Plugin = d.Plugin
			return step
		}
	}
	c.logger.Warn("mqtthooks: enhanced authentication failed", "plugin", d.Plugin, "err", d.Err)
	step := h.reject(d.Err)
	step.Plugin = d.Plugin
	return step
}

// reauth is what a session that connected with enhanced authentication keeps
// for re-authentication, and the state of one that is running.
type reauth struct {
	method, plugin string
	conn           ConnInfo       // a copy: the broker's may be reused
	connect        ConnectRequest // a copy, for AuthRequest.Connect

	running  bool
	state    any
	deadline time.Time
	timer    *timerItem
	round    uint64 // tells a stale timer from the current exchange
}

// newReauth keeps what re-authentication of a session connected by h needs.
func (h *Handshake) newReauth() *reauth {
	if h.enhanced == nil {
		return nil
	}
	r := &reauth{method: h.enhanced.Method, plugin: h.enhanced.Plugin, conn: *h.ci, connect: *h.connect}
	r.connect.Password = bytes.Clone(r.connect.Password)
	r.connect.Properties.AuthenticationData = nil
	if r.connect.Will != nil {
		r.connect.Will = cloneWill(r.connect.Will)
	}
	return r
}

// Reauth hands the client's AUTH packet of a re-authentication to the plugin
// that completed the CONNECT's exchange, and returns the AUTH to send: 0x18
// (continue) or 0x00 (success). Other packets keep flowing meanwhile.
//
// A re-authentication starts with AUTH 0x19 with the CONNECT's method; AUTH
// 0x18 continues it. It must end within AuthExchangeTimeout of its start,
// or the Core ends the connection (Conn.Disconnect 0x87). On failure Reauth
// returns an *EndedError whose code the broker sends in a DISCONNECT: 0x82
// for a wrong method, a session that did not use enhanced authentication, or
// an AUTH 0x18 with no exchange running; the plugin's code (0x87 when it is
// not valid in a DISCONNECT) for a rejection; 0x87 for a deadline or a plugin
// fault. The connection has then ended: its Will is due, and the session goes
// offline or is gone (Reason AuthFailed or ProtocolError). If the connection
// ends otherwise while the plugin decides (the exchange's deadline, a
// takeover, an admin), Reauth returns that end's *EndedError whatever the
// plugin said. The username and SubscriberID never change.
//
// Re-authentication is MQTT 5 only: on an MQTT 3 connection Reauth returns
// ErrInvalidArgument and the connection goes on.
func (s *Session) Reauth(ctx context.Context, in *AuthPacket) (*AuthPacket, error) {
	if ctx == nil || in == nil {
		return nil, fmt.Errorf("%w: Reauth needs a context and a packet", ErrInvalidArgument)
	}
	if !s.version.IsV5() {
		return nil, fmt.Errorf("%w: re-authentication needs MQTT 5, and this connection is %s", ErrInvalidArgument, s.version)
	}
	if err := s.usable(); err != nil {
		return nil, err
	}
	c := s.core
	s.mu.Lock()
	r := s.reauth
	var req *AuthRequest
	switch {
	case r == nil || in.Method != r.method,
		in.ReasonCode == CodeContinueAuthentication && !r.running,
		in.ReasonCode != CodeContinueAuthentication && in.ReasonCode != CodeReAuthenticate:
		s.mu.Unlock()
		return nil, s.failReauth(ctx, CodeProtocolError, ReasonProtocolError)
	case in.ReasonCode == CodeReAuthenticate:
		r.running, r.state, r.round = true, nil, r.round+1
		r.deadline = time.Now().Add(c.opts.AuthExchangeTimeout)
		round := r.round
		c.sched.cancel(r.timer)
		r.timer = c.sched.schedule(r.deadline, func() { s.reauthExpired(round) })
		req = &AuthRequest{Step: AuthStepReauth}
	default:
		if !time.Now().Before(r.deadline) {
			s.mu.Unlock()
			return nil, s.failReauth(ctx, CodeNotAuthorized, ReasonAuthFailed)
		}
		req = &AuthRequest{Step: AuthStepContinue, State: r.state}
	}
	req.Method, req.Data, req.UserProperties = in.Method, in.Data, in.UserProperties
	req.SubscriberID, req.Username, req.HasUsername = s.id, r.connect.Username, r.connect.HasUsername
	req.Connect, req.Conn = &r.connect, &r.conn
	plugin := r.plugin
	s.mu.Unlock()

	hctx, cancel := context.WithTimeout(ctx, c.opts.HookTimeout)
	m := &c.hookm[hookOnAuthM5]
	start := m.start()
	d := c.chain.Snapshot().OnAuthM5Plugin(hctx, plugin, req)
	m.decided(d.Err, d.passed, start)
	c.logTimeout(hctx, hookOnAuthM5, d.Err, d.Plugin, req.SubscriberID)
	cancel()
	if err := s.usable(); err != nil {
		// The connection ended while the plugin decided (the exchange's
		// deadline, a takeover, an admin): that end is the answer.
		return nil, err
	}
	switch {
	case d.Err == nil && d.Result.Verdict() == AuthVerdictContinue:
		s.mu.Lock()
		r.state = d.Result.State()
		s.mu.Unlock()
		return &AuthPacket{ReasonCode: CodeContinueAuthentication, Method: in.Method, Data: d.Result.Data()}, nil
	case d.Err == nil:
		s.mu.Lock()
		r.running, r.state = false, nil
		c.sched.cancel(r.timer)
		r.timer = nil
		s.mu.Unlock()
		return &AuthPacket{ReasonCode: CodeSuccess, Method: in.Method, Data: d.Result.Data()}, nil
	}
	code := CodeNotAuthorized
	var re *RejectError
	if d.Result.Verdict() == AuthVerdictReject && errors.As(d.Err, &re) {
		var replaced bool
		if code, replaced = RejectCodeFor(re.Code, PacketDisconnect); replaced {
			c.logger.Warn("mqtthooks: plugin reason code not valid in a DISCONNECT; sent 0x87", "plugin", d.Plugin, "code", re.Code)
		}
	} else {
		c.logger.Warn("mqtthooks: re-authentication failed", "plugin", d.Plugin, "err", d.Err)
	}
	return nil, s.failReauth(ctx, code, ReasonAuthFailed)
}

// failReauth ends the connection after a failed re-authentication and
// returns the error that tells the broker the DISCONNECT code.
// If the connection had already ended, its end is the answer.
func (s *Session) failReauth(ctx context.Context, code ReasonCode, reason Reason) error {
	s.stopReauth()
	var end error = &EndedError{Code: code, Reason: reason}
	s.mu.Lock()
	if s.endErr != nil {
		end = s.endErr
	} else {
		s.endErr = end
	}
	s.mu.Unlock()
	if s.ending.CompareAndSwap(false, true) {
		_ = s.end(ctx, endCause{reason: reason, code: code, hasCode: s.version.IsV5(), will: true})
	}
	return end
}

// stopReauth forgets a running re-authentication.
func (s *Session) stopReauth() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if r := s.reauth; r != nil {
		r.running, r.state = false, nil
		s.core.sched.cancel(r.timer)
		r.timer = nil
	}
}

// reauthExpired ends a connection whose re-authentication outlived
// AuthExchangeTimeout while the client was silent.
func (s *Session) reauthExpired(round uint64) {
	s.mu.Lock()
	r := s.reauth
	stale := r == nil || !r.running || r.round != round
	s.mu.Unlock()
	if stale {
		return
	}
	s.core.kick(s, &EndedError{Code: CodeNotAuthorized, Reason: ReasonAuthFailed})
	_ = s.failReauth(context.Background(), CodeNotAuthorized, ReasonAuthFailed)
}
