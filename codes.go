package mqtthooks

import (
	"errors"
	"strconv"
)

// ReasonCode is an MQTT 5 reason code.
type ReasonCode byte

// The MQTT 5 reason codes, with their values from the OASIS specification.
// Where one value has several names, the one used in CONNACK, DISCONNECT or AUTH
// is given.
const (
	CodeSuccess                             ReasonCode = 0x00
	CodeNormalDisconnection                 ReasonCode = 0x00
	CodeGrantedQoS1                         ReasonCode = 0x01
	CodeGrantedQoS2                         ReasonCode = 0x02
	CodeDisconnectWithWillMessage           ReasonCode = 0x04
	CodeNoMatchingSubscribers               ReasonCode = 0x10
	CodeNoSubscriptionExisted               ReasonCode = 0x11
	CodeContinueAuthentication              ReasonCode = 0x18
	CodeReAuthenticate                      ReasonCode = 0x19
	CodeUnspecifiedError                    ReasonCode = 0x80
	CodeMalformedPacket                     ReasonCode = 0x81
	CodeProtocolError                       ReasonCode = 0x82
	CodeImplementationSpecificError         ReasonCode = 0x83
	CodeUnsupportedProtocolVersion          ReasonCode = 0x84
	CodeClientIdentifierNotValid            ReasonCode = 0x85
	CodeBadUserNameOrPassword               ReasonCode = 0x86
	CodeNotAuthorized                       ReasonCode = 0x87
	CodeServerUnavailable                   ReasonCode = 0x88
	CodeServerBusy                          ReasonCode = 0x89
	CodeBanned                              ReasonCode = 0x8A
	CodeServerShuttingDown                  ReasonCode = 0x8B
	CodeBadAuthenticationMethod             ReasonCode = 0x8C
	CodeKeepAliveTimeout                    ReasonCode = 0x8D
	CodeSessionTakenOver                    ReasonCode = 0x8E
	CodeTopicFilterInvalid                  ReasonCode = 0x8F
	CodeTopicNameInvalid                    ReasonCode = 0x90
	CodePacketIdentifierInUse               ReasonCode = 0x91
	CodePacketIdentifierNotFound            ReasonCode = 0x92
	CodeReceiveMaximumExceeded              ReasonCode = 0x93
	CodeTopicAliasInvalid                   ReasonCode = 0x94
	CodePacketTooLarge                      ReasonCode = 0x95
	CodeMessageRateTooHigh                  ReasonCode = 0x96
	CodeQuotaExceeded                       ReasonCode = 0x97
	CodeAdministrativeAction                ReasonCode = 0x98
	CodePayloadFormatInvalid                ReasonCode = 0x99
	CodeRetainNotSupported                  ReasonCode = 0x9A
	CodeQoSNotSupported                     ReasonCode = 0x9B
	CodeUseAnotherServer                    ReasonCode = 0x9C
	CodeServerMoved                         ReasonCode = 0x9D
	CodeSharedSubscriptionsNotSupported     ReasonCode = 0x9E
	CodeConnectionRateExceeded              ReasonCode = 0x9F
	CodeMaximumConnectTime                  ReasonCode = 0xA0
	CodeSubscriptionIdentifiersNotSupported ReasonCode = 0xA1
	CodeWildcardSubscriptionsNotSupported   ReasonCode = 0xA2
)

var reasonCodeNames = map[ReasonCode]string{
	CodeSuccess: "success", CodeGrantedQoS1: "granted QoS 1", CodeGrantedQoS2: "granted QoS 2",
	CodeDisconnectWithWillMessage: "disconnect with Will message", CodeNoMatchingSubscribers: "no matching subscribers",
	CodeNoSubscriptionExisted: "no subscription existed", CodeContinueAuthentication: "continue authentication",
	CodeReAuthenticate: "re-authenticate", CodeUnspecifiedError: "unspecified error", CodeMalformedPacket: "malformed packet",
	CodeProtocolError: "protocol error", CodeImplementationSpecificError: "implementation specific error",
	CodeUnsupportedProtocolVersion: "unsupported protocol version", CodeClientIdentifierNotValid: "client identifier not valid",
	CodeBadUserNameOrPassword: "bad user name or password", CodeNotAuthorized: "not authorized",
	CodeServerUnavailable: "server unavailable", CodeServerBusy: "server busy", CodeBanned: "banned",
	CodeServerShuttingDown: "server shutting down", CodeBadAuthenticationMethod: "bad authentication method",
	CodeKeepAliveTimeout: "keep alive timeout", CodeSessionTakenOver: "session taken over",
	CodeTopicFilterInvalid: "topic filter invalid", CodeTopicNameInvalid: "topic name invalid",
	CodePacketIdentifierInUse: "packet identifier in use", CodePacketIdentifierNotFound: "packet identifier not found",
	CodeReceiveMaximumExceeded: "receive maximum exceeded", CodeTopicAliasInvalid: "topic alias invalid",
	CodePacketTooLarge: "packet too large", CodeMessageRateTooHigh: "message rate too high", CodeQuotaExceeded: "quota exceeded",
	CodeAdministrativeAction: "administrative action", CodePayloadFormatInvalid: "payload format invalid",
	CodeRetainNotSupported: "retain not supported", CodeQoSNotSupported: "QoS not supported",
	CodeUseAnotherServer: "use another server", CodeServerMoved: "server moved",
	CodeSharedSubscriptionsNotSupported: "shared subscriptions not supported",
	CodeConnectionRateExceeded:          "connection rate exceeded", CodeMaximumConnectTime: "maximum connect time",
	CodeSubscriptionIdentifiersNotSupported: "subscription identifiers not supported",
	CodeWildcardSubscriptionsNotSupported:   "wildcard subscriptions not supported",
}

// String returns the code in hex with its MQTT name, such as "0x87 (not
// authorized)".
func (c ReasonCode) String() string {
	hex := "0x" + strconv.FormatUint(uint64(c)>>4, 16) + strconv.FormatUint(uint64(c)&0xF, 16)
	if name, ok := reasonCodeNames[c]; ok {
		return hex + " (" + name + ")"
	}
	return hex
}

// Packet names the packets whose reason codes the core chooses.
type Packet uint8

// The packets a plugin's reason code can end up in.
const (
	// PacketConnack is a CONNACK.
	PacketConnack Packet = iota + 1
	// PacketDisconnect is a DISCONNECT sent by the server.
	PacketDisconnect
	// PacketAuth is an AUTH.
	PacketAuth
	// PacketClientDisconnect is a DISCONNECT sent by a client.
	PacketClientDisconnect
)

// String returns "CONNACK", "DISCONNECT" or "AUTH".
func (p Packet) String() string {
	switch p {
	case PacketConnack:
		return "CONNACK"
	case PacketDisconnect:
		return "DISCONNECT"
	case PacketAuth:
		return "AUTH"
	case PacketClientDisconnect:
		return "client DISCONNECT"
	}
	return "Packet(" + strconv.Itoa(int(p)) + ")"
}

// codeSet is a set of reason codes, one bit per value.
type codeSet [4]uint64

func (s *codeSet) add(codes ...ReasonCode) {
	for _, c := range codes {
		s[c>>6] |= 1 << (c & 63)
	}
}

func (s *codeSet) addRange(lo, hi ReasonCode) {
	for c := int(lo); c <= int(hi); c++ {
		s.add(ReasonCode(c))
	}
}

func (s *codeSet) has(c ReasonCode) bool { return s[c>>6]&(1<<(c&63)) != 0 }

// The codes a server may put in each packet (MQTT 5 §3.2.2.2,
// §3.14.2.1 and §3.15.2.1).
var validCodes = func() (sets [PacketClientDisconnect + 1]codeSet) {
	connack := &sets[PacketConnack]
	connack.add(CodeSuccess)
	connack.addRange(CodeUnspecifiedError, CodeBanned)
	connack.add(CodeBadAuthenticationMethod, CodeTopicNameInvalid, CodePacketTooLarge, CodeQuotaExceeded)
	connack.addRange(CodePayloadFormatInvalid, CodeServerMoved)
	connack.add(CodeConnectionRateExceeded)

	disconnect := &sets[PacketDisconnect]
	disconnect.add(CodeNormalDisconnection, CodeNotAuthorized, CodeServerBusy, CodeServerShuttingDown)
	disconnect.addRange(CodeUnspecifiedError, CodeImplementationSpecificError)
	disconnect.addRange(CodeKeepAliveTimeout, CodeTopicNameInvalid)
	disconnect.addRange(CodeReceiveMaximumExceeded, CodeWildcardSubscriptionsNotSupported)

	sets[PacketAuth].add(CodeSuccess, CodeContinueAuthentication, CodeReAuthenticate)

	client := &sets[PacketClientDisconnect] // MQTT 5 §3.14.2.1, the codes a client may send
	client.add(CodeNormalDisconnection, CodeDisconnectWithWillMessage, CodeTopicNameInvalid, CodePayloadFormatInvalid)
	client.addRange(CodeUnspecifiedError, CodeImplementationSpecificError)
	client.addRange(CodeReceiveMaximumExceeded, CodeQuotaExceeded)
	return sets
}()

// ValidIn reports whether a server may send c in packet p.
func (c ReasonCode) ValidIn(p Packet) bool {
	if p < PacketConnack || p > PacketClientDisconnect {
		return false
	}
	return validCodes[p].has(c)
}

// IsFailure reports whether c is 0x80 or above, the MQTT 5 failure codes.
func (c ReasonCode) IsFailure() bool { return c >= 0x80 }

// RejectCodeFor returns the code a plugin's rejection puts into packet p: c
// itself when it is a failure code valid in p, and CodeNotAuthorized (0x87)
// otherwise, with replaced true so the caller can log it. A plugin's code never
// becomes an acceptance.
func RejectCodeFor(c ReasonCode, p Packet) (code ReasonCode, replaced bool) {
	if c.IsFailure() && c.ValidIn(p) {
		return c, false
	}
	return CodeNotAuthorized, true
}

// ReturnCode is an MQTT 3.1 / 3.1.1 CONNACK return code.
type ReturnCode byte

// The MQTT 3 CONNACK return codes.
const (
	ConnectionAccepted           ReturnCode = 0
	RefusedProtocolVersion       ReturnCode = 1
	RefusedIdentifierRejected    ReturnCode = 2
	RefusedServerUnavailable     ReturnCode = 3
	RefusedBadUsernameOrPassword ReturnCode = 4
	RefusedNotAuthorized         ReturnCode = 5
)

// String returns the code's number and meaning, such as "5 (not authorized)".
func (c ReturnCode) String() string {
	names := [...]string{"accepted", "unacceptable protocol version", "identifier rejected",
		"server unavailable", "bad user name or password", "not authorized"}
	if int(c) < len(names) {
		return strconv.Itoa(int(c)) + " (" + names[c] + ")"
	}
	return strconv.Itoa(int(c))
}

// Errors a chain's Decision carries. Compare with errors.Is.
var (
	// ErrChainExhausted: every plugin implementing the hook answered Next.
	ErrChainExhausted = errors.New("mqtthooks: every plugin answered Next")
	// ErrNoPlugin: no plugin implements the hook (within the subset, if any).
	ErrNoPlugin = errors.New("mqtthooks: no plugin implements the hook")
	// ErrPluginPanic: a plugin panicked. The error is a *PanicError.
	ErrPluginPanic = errors.New("mqtthooks: plugin panicked")
	// ErrHookTimeout: the chain returned after its context's deadline.
	ErrHookTimeout = errors.New("mqtthooks: hook deadline exceeded")
	// ErrInvalidResult: a plugin returned a result not built by a constructor,
	// such as the zero RegisterResult.
	ErrInvalidResult = errors.New("mqtthooks: plugin returned an invalid result")
	// ErrInvalidCredentials is the error a plugin rejects with when the
	// username or password is wrong: v3 return code 4, v5 0x86.
	ErrInvalidCredentials = errors.New("mqtthooks: bad username or password")
	// ErrRejected stands for Reject(nil): a rejection without a reason.
	ErrRejected = errors.New("mqtthooks: rejected")
	// ErrInvalidModifiers: the Modifiers of an AcceptWith are invalid. The error
	// is a *ModifierError naming the field, or several joined.
	ErrInvalidModifiers = errors.New("mqtthooks: invalid modifiers")
	// ErrInvalidArgument: a caller passed a nil or malformed argument to the
	// package. The error says which.
	ErrInvalidArgument = errors.New("mqtthooks: invalid argument")
)

// Errors of the CONNECT sequence, mapped to reply codes by ConnackReturnCode and
// ConnackReasonCode.
var (
	// ErrProtocolVersion: the listener does not allow the CONNECT's protocol
	// level (v3 1, v5 0x84). A plugin may reject with it.
	ErrProtocolVersion = errors.New("mqtthooks: protocol version not allowed")
	// ErrClientIDRejected: the client id breaks the client-id rules (v3 2, v5
	// 0x85). A plugin may reject with it.
	ErrClientIDRejected = errors.New("mqtthooks: client identifier rejected")
	// ErrSessionLimit: a new session would exceed the core's MaxSessions (v3
	// 3, v5 0x97). A plugin may reject with it.
	ErrSessionLimit = errors.New("mqtthooks: session limit reached")
	// ErrWillQoS: the Will's QoS is above the effective Maximum QoS (v3 5, v5
	// 0x9B). A plugin may reject with it.
	ErrWillQoS = errors.New("mqtthooks: Will QoS not supported")
	// ErrWillRetain: the Will is retained and retained messages are not
	// available (v3 5, v5 0x9A). A plugin may reject with it.
	ErrWillRetain = errors.New("mqtthooks: Will retain not supported")
	// ErrResumeRefused: the resume policy refused to hand an existing session
	// to this CONNECT.
	ErrResumeRefused = errors.New("mqtthooks: session resume refused")
	// ErrRegistration: the session could not be registered: the store failed,
	// or a callback of the broker's (ResumePolicy, ClientIDGenerator, the
	// store) panicked (v3 3, v5 0x88).
	ErrRegistration = errors.New("mqtthooks: session registration failed")
	// ErrMalformedPacket: a packet breaks the rules of MQTT, such as a string
	// that is not well-formed UTF-8 (v5 0x81; an MQTT 3 connection is closed).
	ErrMalformedPacket = errors.New("mqtthooks: malformed packet")
)

// RejectError is the error of a rejection that names its reason code: the
// Err of RejectCode and AuthReject results.
type RejectError struct {
	Code ReasonCode
	// Reason is sent as the Reason String; ServerReference as the Server
	// Reference (CONNACK only).
	Reason          string
	ServerReference string
}

func (e *RejectError) Error() string {
	s := "mqtthooks: rejected with " + e.Code.String()
	if e.Reason != "" {
		s += ": " + e.Reason
	}
	return s
}

// ConnackReturnCode returns the MQTT 3 CONNACK return code for the outcome of a
// CONNECT: 0 for a nil err, otherwise the code of the table below.
// For a chain's outcome pass Decision.ReplyError. A CONNECT whose context was
// canceled is abandoned: it gets no CONNACK at all, so its error
// (context.Canceled) has no code of its own here.
//
//	ErrProtocolVersion                                         1
//	ErrClientIDRejected                                        2
//	ErrInvalidCredentials                                      4
//	ErrPluginPanic, ErrHookTimeout, ErrInvalidResult,
//	ErrInvalidModifiers, ErrRegistration, ErrSessionLimit      3
//	*RejectError with 0x84 / 0x85 / 0x86                       1 / 2 / 4
//	*RejectError with 0x88, 0x89, 0x97, 0x9C, 0x9D or 0x9F     3
//	anything else                                              5
func ConnackReturnCode(err error) ReturnCode {
	if err == nil {
		return ConnectionAccepted
	}
	if code, ok := sentinelCode(err); ok {
		return v3Code(code)
	}
	var re *RejectError
	if errors.As(err, &re) {
		return v3Code(re.Code)
	}
	return RefusedNotAuthorized
}

// ConnackReasonCode returns the MQTT 5 CONNACK reason code for the outcome of a
// CONNECT, like ConnackReturnCode: CodeSuccess for a nil err, 0x84 ErrProtocolVersion, 0x85
// ErrClientIDRejected, 0x86 ErrInvalidCredentials, 0x88 plugin faults
// (ErrPluginPanic, ErrHookTimeout, ErrInvalidResult, ErrInvalidModifiers) and
// ErrRegistration, 0x97 ErrSessionLimit, 0x9B ErrWillQoS, 0x9A ErrWillRetain,
// the code of a *RejectError, and 0x87 for anything else (other rejections,
// ErrChainExhausted, ErrNoPlugin, ErrResumeRefused). A RejectError code that is
// not a failure code valid in a CONNACK becomes 0x87 with replaced true, so the
// caller can log the plugin's mistake.
func ConnackReasonCode(err error) (code ReasonCode, replaced bool) {
	if err == nil {
		return CodeSuccess, false
	}
	if code, ok := sentinelCode(err); ok {
		return code, false
	}
	var re *RejectError
	if errors.As(err, &re) {
		return RejectCodeFor(re.Code, PacketConnack)
	}
	return CodeNotAuthorized, false
}

// sentinelCode maps the package's own errors to their v5 CONNACK codes.
func sentinelCode(err error) (ReasonCode, bool) {
	for _, m := range sentinelCodes {
		if errors.Is(err, m.err) {
			return m.code, true
		}
	}
	return 0, false
}

var sentinelCodes = [...]struct {
	err  error
	code ReasonCode
}{
	{ErrInvalidCredentials, CodeBadUserNameOrPassword},
	{ErrProtocolVersion, CodeUnsupportedProtocolVersion},
	{ErrClientIDRejected, CodeClientIdentifierNotValid},
	{ErrPluginPanic, CodeServerUnavailable},
	{ErrHookTimeout, CodeServerUnavailable},
	{ErrInvalidResult, CodeServerUnavailable},
	{ErrInvalidModifiers, CodeServerUnavailable},
	{ErrRegistration, CodeServerUnavailable},
	{ErrSessionLimit, CodeQuotaExceeded},
	{ErrWillQoS, CodeQoSNotSupported},
	{ErrWillRetain, CodeRetainNotSupported},
	{ErrMalformedPacket, CodeMalformedPacket},
	{ErrShutdown, CodeServerUnavailable},
}

// v3Code maps a v5 CONNACK code to the MQTT 3 return code: the nearest of
// the five that MQTT 3.1.1 §3.2.2.3 has.
func v3Code(c ReasonCode) ReturnCode {
	switch c {
	case CodeUnsupportedProtocolVersion:
		return RefusedProtocolVersion
	case CodeClientIdentifierNotValid:
		return RefusedIdentifierRejected
	case CodeBadUserNameOrPassword:
		return RefusedBadUsernameOrPassword
	case CodeServerUnavailable, CodeServerBusy, CodeQuotaExceeded, CodeUseAnotherServer, CodeServerMoved, CodeConnectionRateExceeded:
		return RefusedServerUnavailable
	}
	return RefusedNotAuthorized
}
