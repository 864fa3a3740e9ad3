package mqtthooks

import (
	"context"
	"errors"
	"math/rand/v2"
	"sync/atomic"
	"time"
)

// HookStats are the counters of one hook, as the Core called it.
type HookStats struct {
	Hook string // "AuthOnRegister", "OnClientGone", …
	// Calls counts the chain's calls of the hook, not the plugins'.
	Calls uint64
	// Panics counts plugins that panicked (or called runtime.Goexit);
	// Timeouts the calls of a conditional hook that returned after their
	// context's deadline (ErrHookTimeout).
	Panics, Timeouts uint64
	// The verdicts of a conditional hook: Accepted and Rejected count the
	// calls a plugin decided (for OnAuthM5, Accepted counts success and
	// continue), Next the plugins that passed, Exhausted the calls nobody
	// decided (ErrChainExhausted or ErrNoPlugin).
	Accepted, Rejected, Next, Exhausted uint64
	// Invalid counts the calls of a conditional hook a plugin answered with
	// a result not built by a constructor (ErrInvalidResult).
	Invalid uint64
	// Latency is how long the chain took, for one call in LatencySampling.
	Latency Histogram
}

// LatencySampling is how often a hook's latency is measured: one call in
// this many, at random. Reading the clock twice costs more than a dispatch
// of the chain; sampling keeps the hot path close to it.
const LatencySampling = 16

// Histogram is a latency distribution in fixed buckets.
type Histogram struct {
	// Bounds are the buckets' upper bounds, ascending; Counts[i] counts the
	// observations at most Bounds[i] and above Bounds[i-1], and
	// Counts[len(Bounds)] those above the last bound.
	Bounds []time.Duration
	Counts []uint64
	// Count and Sum are the number and the total of the observations.
	Count uint64
	Sum   time.Duration
}

// latencyBounds are the histogram buckets: 1 µs to 10 s.
var latencyBounds = [...]time.Duration{
	time.Microsecond, 2500 * time.Nanosecond, 5 * time.Microsecond, 10 * time.Microsecond,
	25 * time.Microsecond, 50 * time.Microsecond, 100 * time.Microsecond, 250 * time.Microsecond,
	500 * time.Microsecond, time.Millisecond, 2500 * time.Microsecond, 5 * time.Millisecond,
	10 * time.Millisecond, 25 * time.Millisecond, 50 * time.Millisecond, 100 * time.Millisecond,
	250 * time.Millisecond, 500 * time.Millisecond, time.Second, 2500 * time.Millisecond,
	5 * time.Second, 10 * time.Second,
}

// hookMetrics counts the Core's calls of one hook, in atomics: no lock and
// no allocation. The Core counts around its calls of the chain, not inside
// the chain's dispatch, which stays as cheap as it was; the chain counts
// only the panics, on their own path.
//
// A conditional hook's call adds to exactly one outcome counter, and its
// calls are their sum. A notification counts its calls.
type hookMetrics struct {
	latency
	calls                                                  atomic.Uint64
	accepted, rejected, exhausted, timeouts, invalid, next atomic.Uint64
}

// latency is a sampled latency histogram in atomics.
type latency struct {
	buckets            [len(latencyBounds) + 1]atomic.Uint64
	observed, sumNanos atomic.Uint64
}

// start returns the time to measure a call from, or the zero time when the
// call is not sampled.
func (m *latency) start() time.Time {
	if rand.Uint32()%LatencySampling != 0 { // the runtime's cheap per-thread generator: no lock, no atomic
		return time.Time{}
	}
	return time.Now()
}

// done records the latency of a sampled call.
func (m *latency) done(start time.Time) {
	if start.IsZero() {
		return
	}
	d := time.Since(start)
	m.buckets[bucketOf(d)].Add(1)
	m.observed.Add(1)
	m.sumNanos.Add(uint64(d))
}

// decided records a conditional hook's call that returned d's Err after
// passed plugins answered Next, timed from start.
func (m *hookMetrics) decided(err error, passed uint32, start time.Time) {
	switch {
	case err == nil:
		m.accepted.Add(1)
	case err == ErrHookTimeout:
		m.timeouts.Add(1)
	case err == ErrChainExhausted || err == ErrNoPlugin:
		m.exhausted.Add(1)
	case err == ErrInvalidResult: // a plugin's bug
		m.invalid.Add(1)
	case errors.Is(err, ErrPluginPanic): // counted by the chain
	default:
		m.rejected.Add(1)
	}
	if passed > 0 {
		m.next.Add(uint64(passed))
	}
	m.done(start)
}

// sessionHook calls session notification h (OnClientWakeup,
// OnClientOffline, OnClientGone or OnSessionExpired) on the chain, counted.
func (c *Core) sessionHook(ctx context.Context, h hookID, ev *SessionEvent) {
	m := &c.hookm[h]
	start := m.start()
	snap := c.chain.Snapshot()
	switch h {
	case hookOnClientWakeup:
		snap.OnClientWakeup(ctx, ev)
	case hookOnClientOffline:
		snap.OnClientOffline(ctx, ev)
	case hookOnClientGone:
		snap.OnClientGone(ctx, ev)
	case hookOnSessionExpired:
		snap.OnSessionExpired(ctx, ev)
	}
	m.notified(start)
}

// notified records a notification hook's call, timed from start.
func (m *hookMetrics) notified(start time.Time) {
	m.calls.Add(1)
	m.done(start)
}

// bucketOf returns the index of the bucket of d: the first bound d does
// not exceed, or len(latencyBounds) above them all.
func bucketOf(d time.Duration) int {
	i := 0
	for i < len(latencyBounds) && d > latencyBounds[i] {
		i++
	}
	return i
}

// read returns the histogram.
func (m *latency) read() Histogram {
	h := Histogram{Bounds: latencyBounds[:], Counts: make([]uint64, len(m.buckets)),
		Count: m.observed.Load(), Sum: time.Duration(m.sumNanos.Load())}
	for i := range m.buckets {
		h.Counts[i] = m.buckets[i].Load()
	}
	return h
}

// stats reads m; panics are the chain's count.
func (m *hookMetrics) stats(h hookID, panics uint64) HookStats {
	s := HookStats{Hook: h.String(), Calls: m.calls.Load(), Panics: panics, Timeouts: m.timeouts.Load(),
		Invalid:  m.invalid.Load(),
		Accepted: m.accepted.Load(), Rejected: m.rejected.Load(), Next: m.next.Load(), Exhausted: m.exhausted.Load(),
		Latency: m.read()}
	if h.conditional() {
		s.Calls = s.Accepted + s.Rejected + s.Exhausted + s.Timeouts + s.Invalid + s.Panics
	}
	return s
}

// hookStats returns the counters of every hook, in a fixed order.
func (c *Core) hookStats() []HookStats {
	out := make([]HookStats, numHooks)
	for h := range numHooks {
		out[h] = c.hookm[h].stats(h, c.chain.panics[h].Load())
	}
	return out
}

// ConnackCount is how many CONNACKs of one protocol version carried one
// code: the MQTT 3 return code, or the MQTT 5 reason code.
type ConnackCount struct {
	Version ProtocolVersion
	Code    byte
	Count   uint64
}

// DisconnectCount is how many times the Core ended connections with one
// reason code (an MQTT 3 connection is closed instead of sent it).
type DisconnectCount struct {
	Code  ReasonCode
	Count uint64
}

// codeCounters count CONNACKs by version and code, and DISCONNECTs by code.
type codeCounters struct {
	connacks    [3][256]atomic.Uint64 // MQTT 3.1, 3.1.1, 5
	disconnects [256]atomic.Uint64
	drops       [DropTooLarge + 1]atomic.Uint64 // by DropReason
	storeWrites storeMetrics
}

// storeMetrics count the store's commits and time them, from Commit to the
// callback that reports them durable.
type storeMetrics struct {
	commits, failed atomic.Uint64
	latency         latency
}

// StoreStats are the Core's writes to its SessionStore.
type StoreStats struct {
	// Commits counts the batches committed; Failed those the store refused
	// or failed.
	Commits, Failed uint64
	// Latency is how long a commit took to be reported done (durable under
	// the store's policy), for one commit in LatencySampling.
	Latency Histogram
}

// DropCount is how many messages were dropped for one reason.
type DropCount struct {
	Reason DropReason
	Count  uint64
}

// countConnack records the CONNACK ack for a CONNECT of version v.
func (c *Core) countConnack(v ProtocolVersion, ack *Connack) {
	switch v {
	case MQTT31, MQTT311:
		c.codes.connacks[v-MQTT31][ack.ReturnCode].Add(1)
	case MQTT5:
		c.codes.connacks[2][ack.ReasonCode].Add(1)
	}
}

// connackStats returns the CONNACK counts that are not zero, by version and
// code.
func (c *Core) connackStats() []ConnackCount {
	var out []ConnackCount
	for i, v := range []ProtocolVersion{MQTT31, MQTT311, MQTT5} {
		for code := range 256 {
			if n := c.codes.connacks[i][code].Load(); n > 0 {
				out = append(out, ConnackCount{Version: v, Code: byte(code), Count: n})
			}
		}
	}
	return out
}

// disconnectStats returns the DISCONNECT counts that are not zero, by code.
func (c *Core) disconnectStats() []DisconnectCount {
	var out []DisconnectCount
	for code := range 256 {
		if n := c.codes.disconnects[code].Load(); n > 0 {
			out = append(out, DisconnectCount{Code: ReasonCode(code), Count: n})
		}
	}
	return out
}

// logTimeout logs a conditional hook's call that ended past its deadline:
// the plugin that was deciding keeps a client waiting, which an operator
// wants to see.
func (c *Core) logTimeout(ctx context.Context, h hookID, err error, plugin string, id SubscriberID) {
	if err == ErrHookTimeout {
		c.logger.WarnContext(ctx, "mqtthooks: hook deadline exceeded", "hook", h.String(), "plugin", plugin,
			"client", id.String())
	}
}

// dropStats returns the drops by reason, every reason listed.
func (c *Core) dropStats() []DropCount {
	out := make([]DropCount, 0, DropTooLarge)
	for r := DropQueueFull; r <= DropTooLarge; r++ {
		out = append(out, DropCount{Reason: r, Count: c.codes.drops[r].Load()})
	}
	return out
}

// storeStats returns the Core's writes to its store.
func (c *Core) storeStats() StoreStats {
	w := &c.codes.storeWrites
	return StoreStats{Commits: w.commits.Load(), Failed: w.failed.Load(), Latency: w.latency.read()}
}
