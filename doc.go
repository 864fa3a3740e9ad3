// Package mqtthooks gives Go MQTT brokers VerneMQ-style session-lifecycle hooks.
//
// A broker keeps its sockets, topic matching, retained messages and keep-alive
// timers. Plugins, written against the small interfaces of this package, decide
// who may connect and learn when sessions wake up, go offline or are gone.
//
// # Hooks
//
// Every hook is a one-method interface with a func adapter, in the manner of
// [net/http.Handler] and [net/http.HandlerFunc]:
//
//   - conditional hooks, which decide: [AuthOnRegister] (MQTT 3.1 and 3.1.1),
//     [AuthOnRegisterM5] (MQTT 5) and [OnAuthM5] (MQTT 5 enhanced
//     authentication);
//   - notification hooks, which observe: [OnRegister], [OnRegisterM5],
//     [OnClientWakeup], [OnClientOffline], [OnClientGone], [OnSessionExpired]
//     and [OnMessageDrop].
//
// A plugin is any value that implements at least one hook. Its hooks are found
// by type assertion once, when it is registered with a [Chain].
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
// # The session core
//
// A [Core] owns every MQTT session of a broker: its existence, subscriptions,
// Will, expiry, queue and in-flight deliveries with their packet identifiers.
// It fires the hooks at the points of the lifecycle, in an order it
// guarantees per client id, and never holds a lock while calling out. The
// broker talks to it through a small step API: [Core.Connect] returns the
// [Step] to take (an AUTH to send, or the only CONNACK the broker may send);
// [Session.Start] lets deliveries flow; the broker's router hands messages to
// [Core.Deliver], and the connection pulls them with [Session.Pull] when its
// [Conn] is notified, and reports the client's acknowledgements, DISCONNECT or
// the connection's loss. Sessions are kept through a [SessionStore].
//
// Package mqtthookstest has test doubles, in the spirit of net/http/httptest:
// a Recorder plugin and fake connections and clients.
//
// # Reply codes
//
// [ConnackReturnCode] and [ConnackReasonCode] turn the outcome of a CONNECT into
// the MQTT 3 return code and the MQTT 5 reason code a broker sends.
package mqtthooks
