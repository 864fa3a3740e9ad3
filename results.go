package mqtthooks

import "strconv"

// Verdict is what a RegisterResult says.
type Verdict uint8

// The verdicts of a RegisterResult. The zero value, VerdictInvalid, is what an
// uninitialised result says; the chain rejects it with ErrInvalidResult.
const (
	VerdictInvalid Verdict = iota
	VerdictAccept
	VerdictNext
	VerdictReject
)

// String returns "invalid", "accept", "next" or "reject".
func (v Verdict) String() string {
	switch v {
	case VerdictInvalid:
		return "invalid"
	case VerdictAccept:
		return "accept"
	case VerdictNext:
		return "next"
	case VerdictReject:
		return "reject"
	}
	return "Verdict(" + strconv.Itoa(int(v)) + ")"
}

// RegisterResult is the answer of AuthOnRegister and AuthOnRegisterM5. Build
// it with Accept, AcceptWith, Next, Reject or RejectCode; the zero value is
// invalid and rejects the CONNECT with ErrInvalidResult.
type RegisterResult struct {
	verdict Verdict
	mods    *Modifiers
	err     error
}

// Accept lets the client connect as it asked.
func Accept() RegisterResult { return RegisterResult{verdict: VerdictAccept} }

// AcceptWith lets the client connect with the changes m describes. The core
// validates m, applies it, and keeps nothing of it after the CONNECT; m must
// not change afterwards. AcceptWith(nil) is Accept().
func AcceptWith(m *Modifiers) RegisterResult {
	return RegisterResult{verdict: VerdictAccept, mods: m}
}

// Next leaves the decision to the next plugin in the chain.
func Next() RegisterResult { return RegisterResult{verdict: VerdictNext} }

// Reject refuses the client with err. An error that matches (errors.Is) one
// of these sentinels gets its code; any other is "not authorized" (v3 5, v5
// 0x87):
//
//	ErrInvalidCredentials  v3 4, v5 0x86 (bad user name or password)
//	ErrClientIDRejected    v3 2, v5 0x85 (client identifier not valid)
//	ErrProtocolVersion     v3 1, v5 0x84 (unsupported protocol version)
//	ErrSessionLimit        v3 3, v5 0x97 (quota exceeded)
//	ErrWillQoS             v3 5, v5 0x9B (QoS not supported)
//	ErrWillRetain          v3 5, v5 0x9A (retain not supported)
//
// The Core's own failures (ErrPluginPanic, ErrRegistration, ErrShutdown and
// the like) are not a plugin's to claim: they answer 0x87 here too. For any
// other code use RejectCode. Reject(nil) rejects with ErrRejected; it never
// accepts.
func Reject(err error) RegisterResult {
	if err == nil {
		err = ErrRejected
	}
	return RegisterResult{verdict: VerdictReject, err: err}
}

// RejectCode refuses a v5 client with the CONNACK reason code c, the Reason
// String reason and the Server Reference serverRef (each sent when not empty).
// A v3 client gets the return code that ConnackReturnCode maps c to. A code that
// is not a failure code valid in a CONNACK is sent as 0x87, never as an accept.
func RejectCode(c ReasonCode, reason, serverRef string) RegisterResult {
	return RegisterResult{verdict: VerdictReject,
		err: &RejectError{Code: c, Reason: reason, ServerReference: serverRef}}
}

// Verdict returns what r says.
func (r RegisterResult) Verdict() Verdict { return r.verdict }

// Modifiers returns the modifiers of an AcceptWith, and nil otherwise.
func (r RegisterResult) Modifiers() *Modifiers { return r.mods }

// Err returns the error of a rejection (a *RejectError for RejectCode), and nil
// otherwise.
func (r RegisterResult) Err() error { return r.err }

// String describes r for logs.
func (r RegisterResult) String() string {
	switch r.verdict {
	case VerdictAccept:
		if r.mods != nil {
			return "accept with modifiers"
		}
	case VerdictReject:
		return "reject: " + r.err.Error()
	}
	return r.verdict.String()
}

// AuthVerdict is what an AuthResult says.
type AuthVerdict uint8

// The verdicts of an AuthResult. The zero value, AuthVerdictInvalid, is what an
// uninitialised result says; the chain rejects it with ErrInvalidResult.
const (
	AuthVerdictInvalid AuthVerdict = iota
	AuthVerdictSuccess
	AuthVerdictContinue
	AuthVerdictNext
	AuthVerdictReject
)

// String returns "invalid", "success", "continue", "next" or "reject".
func (v AuthVerdict) String() string {
	switch v {
	case AuthVerdictInvalid:
		return "invalid"
	case AuthVerdictSuccess:
		return "success"
	case AuthVerdictContinue:
		return "continue"
	case AuthVerdictNext:
		return "next"
	case AuthVerdictReject:
		return "reject"
	}
	return "AuthVerdict(" + strconv.Itoa(int(v)) + ")"
}

// AuthResult is the answer of OnAuthM5. Build it with AuthSuccess,
// AuthContinue, AuthNext or AuthReject; the zero value is invalid and rejects
// with ErrInvalidResult.
type AuthResult struct {
	verdict AuthVerdict
	data    []byte
	value   any // the identity of a success, the state of a continue
	err     error
}

// AuthSuccess completes the exchange. data goes to the client as the
// Authentication Data of the CONNACK (or of the AUTH 0x00 ending a
// re-authentication); identity reaches AuthOnRegisterM5 as EnhancedAuth.Identity.
func AuthSuccess(data []byte, identity any) AuthResult {
	return AuthResult{verdict: AuthVerdictSuccess, data: data, value: identity}
}

// AuthContinue asks the client for another step: data goes to it in an AUTH
// 0x18, and state comes back to this plugin, and only to it, as
// AuthRequest.State with the client's answer.
func AuthContinue(data []byte, state any) AuthResult {
	return AuthResult{verdict: AuthVerdictContinue, data: data, value: state}
}

// AuthNext leaves the exchange to the next plugin. From the plugin that owns
// the exchange it counts as a rejection.
func AuthNext() AuthResult { return AuthResult{verdict: AuthVerdictNext} }

// AuthReject ends the exchange with the reason code c and the Reason String
// reason: a CONNACK during a CONNECT, a DISCONNECT during a re-authentication.
// A code that is not a failure code valid in that packet is sent as 0x87.
func AuthReject(c ReasonCode, reason string) AuthResult {
	return AuthResult{verdict: AuthVerdictReject, err: &RejectError{Code: c, Reason: reason}}
}

// Verdict returns what r says.
func (r AuthResult) Verdict() AuthVerdict { return r.verdict }

// Data returns the Authentication Data of a success or a continue.
func (r AuthResult) Data() []byte { return r.data }

// Identity returns the identity of an AuthSuccess, and nil otherwise.
func (r AuthResult) Identity() any {
	if r.verdict != AuthVerdictSuccess {
		return nil
	}
	return r.value
}

// State returns the state of an AuthContinue, and nil otherwise.
func (r AuthResult) State() any {
	if r.verdict != AuthVerdictContinue {
		return nil
	}
	return r.value
}

// Err returns the *RejectError of an AuthReject, and nil otherwise.
func (r AuthResult) Err() error { return r.err }

// String describes r for logs.
func (r AuthResult) String() string {
	if r.verdict == AuthVerdictReject {
		return "reject: " + r.err.Error()
	}
	return r.verdict.String()
}
