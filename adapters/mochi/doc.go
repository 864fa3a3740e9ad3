// Package mochi runs an mqtthooks plugin Chain inside an unmodified
// mochi-mqtt v2 server (github.com/mochi-mqtt/server/v2), so that a broker
// built on mochi can use this library's plugins without changing broker:
//
//	server := mqtt.New(&mqtt.Options{InlineClient: true})
//	hook, err := mochi.New(server, mochi.Options{Chain: chain})
//	if err != nil { … }
//	_ = server.AddHook(hook, nil) // the only hook that authenticates
//
// mochi owns the sessions, queues and in-flight messages; the Hook runs the
// chain at mochi's events:
//
//	AuthOnRegister, AuthOnRegisterM5   OnConnect, before mochi's own checks of
//	                                   the session; a refusal is a CONNACK with
//	                                   the chain's reason code (MQTT 3: the
//	                                   return code mqtthooks maps it to)
//	OnClientWakeup, OnRegister(M5)     OnSessionEstablish, before the CONNACK;
//	                                   Session Present as mochi will send it
//	OnClientOffline, OnClientGone      OnDisconnect, or at the takeover
//	OnSessionExpired                   OnClientExpired (mochi checks once a second)
//	OnMessageDrop                      OnQosDropped (expiry), OnPublishDropped
//	                                   (the client's outbound buffer full)
//
// The resume policy of the core (mqtthooks.SameUsername by default) is
// applied in OnConnect: mochi itself lets any client take over any session.
//
// # Limits
//
// What mochi cannot express is refused or left out, and said here rather than
// faked:
//
//   - No enhanced authentication before the CONNACK: mochi reads no AUTH
//     packet until it has sent the CONNACK, so OnAuthM5 never runs and a
//     CONNECT with an Authentication Method is decided by AuthOnRegisterM5
//     alone, without EnhancedAuth.
//   - Modifiers: only SubscriberID (a client id; mochi has no mountpoints),
//     Username, SessionExpiryInterval and ServerKeepAlive are applied. Any
//     other modifier (queue limits, multiple sessions, capabilities, …) rejects
//     the CONNECT with mqtthooks.ErrInvalidModifiers naming it (v3 3, v5 0x88).
//   - Takeovers: the old session's OnClientOffline or OnClientGone fires when
//     the new connection registers, before its OnClientWakeup, as the
//     lifecycle grammar wants; mochi ends the old connection a moment later,
//     so a plugin may see the new session's hooks while the old socket is
//     still closing. mochi keeps an MQTT 5 session whose Session Expiry
//     Interval is 0 when a persistent CONNECT takes it over (MQTT says it
//     ends): the Hook reports what mochi does, OnClientOffline.
//   - Events carry no Will (mochi publishes it) and the reason code of a
//     client's DISCONNECT only for 0x00 and 0x04.
//   - Drops: a message mochi discards with its session (a clean start, an
//     expiry) is not a drop, as in the core; a QoS 2 delivery the client
//     refused with a PUBREC or PUBREL error code fires nothing.
//   - Generations are numbered by the Hook, from 1 in each process.
//   - mochi v2.7.9's Server.Close can deadlock when a client connects or a
//     clean session ends while it runs (a recursive read lock in
//     Clients.GetByListener, mochi-mqtt/server#488); nothing a hook does
//     prevents it.
package mochi
