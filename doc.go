// Package mqtthooks gives Go MQTT brokers VerneMQ-style session-lifecycle hooks.
//
// A broker keeps its sockets, topic matching, retained messages and keep-alive
// timers. Plugins, written against the small interfaces of this package, decide
// who may connect and learn when sessions wake up, go offline or are gone. There
// is one way in for each of the two.
//
// # Writing a plugin
//
// A plugin is any value that implements one or more hooks. Every hook is a
// one-method interface with a func adapter, in the manner of
// [net/http.Handler] and [net/http.HandlerFunc]:
//
//   - conditional hooks decide, and answer with a result built by a
//     constructor: [AuthOnRegister] (MQTT 3.1 and 3.1.1) and [AuthOnRegisterM5]
//     (MQTT 5) answer [Accept], [AcceptWith] (with [Modifiers]), [Next],
//     [Reject] or [RejectCode]; [OnAuthM5] (MQTT 5 enhanced authentication)
//     answers [AuthSuccess], [AuthContinue], [AuthNext] or [AuthReject].
//     [AuthOnRegisterBothFunc] decides once for both protocol versions;
//   - notification hooks observe: [OnRegister], [OnRegisterM5],
//     [OnClientWakeup], [OnClientOffline], [OnClientGone], [OnSessionExpired]
//     and [OnMessageDrop], each with a [SessionEvent] or [DropEvent].
//
// Register it with a [Chain] under a name. Test it with package
// mqtthookstest, in the spirit of net/http/httptest: its Recorder records every
// hook call in order, and its fake Client drives a real [Core] through a
// CONNECT, its acknowledgements and its end, without a network.
//
// # Embedding the core in a broker
//
// A [Core] owns every MQTT session of a broker: its existence, subscriptions,
// Will, expiry, queue and in-flight deliveries with their packet identifiers.
// It fires the hooks at the points of the lifecycle, in an order it guarantees
// per client id, and never holds a lock while calling out. The broker talks to
// it through a step API and keeps these duties:
//
//   - hand each CONNECT to [Core.Connect] and send what the [Step] says: an
//     AUTH (then pass the client's answer to [Handshake.Auth]), or the CONNACK,
//     the only one the broker may send;
//   - call [Session.Start] only once that CONNACK is written, and
//     [Session.Lost] if writing it failed;
//   - route each PUBLISH with [Core.Deliver], naming the Generation the
//     [Router] was given with the subscription;
//   - when its [Conn] is notified, call [Session.Pull] until it returns fewer
//     deliveries than asked, write them, and report the client's [Session.Puback],
//     [Session.Pubrec] and [Session.Pubcomp];
//   - enforce [Session.Limits] (packet size, QoS, topic aliases, keep-alive);
//   - report the end of every connection once: [Session.Disconnect],
//     [Session.DisconnectWithExpiry] or [Session.Lost].
//
// Sessions are kept through a [SessionStore]; without one (the default) they
// live in the Core and end with the process.
//
// # Several brokers, one set of sessions
//
// With Options.Cluster, the Cores of several brokers share their sessions
// through one store that every node reads ([SessionLoader]). A session is
// owned by one node at a time; a CONNECT on another node claims it, and the
// owner ends its connection there with the hooks of a takeover before the
// new node's [OnClientWakeup] runs. A node that dies has its sessions adopted
// by a surviving node, which reports each connection it lost once, with
// ReasonNodeDown. [Cluster] is the seam; module cluster/natsjs implements it
// on NATS JetStream, and mqtthookstest.Cluster for tests in one process.
//
// # The conditional chain
//
// A [Chain] holds named plugins in a fixed order. A conditional hook runs the
// plugins that implement it one after another: the first [Accept] or [Reject]
// decides, [Next] asks the next plugin, and a chain where everybody says Next,
// or nobody implements the hook, rejects. A plugin that panics, returns the zero
// result, or returns after its context's deadline rejects too: the chain fails
// closed. Dispatch takes no lock and allocates nothing; plugins can be added and
// removed while calls are in flight, each call using one immutable [Snapshot].
//
// # Reply codes
//
// [ConnackReturnCode] and [ConnackReasonCode] turn the outcome of a CONNECT into
// the MQTT 3 return code and the MQTT 5 reason code a broker sends.
package mqtthooks
