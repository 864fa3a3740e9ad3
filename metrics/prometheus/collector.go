// Package prometheus exports an mqtthooks Core's counters to Prometheus: a
// prometheus.Collector that reads Core.Stats at each scrape and turns it
// into constant metrics.
//
//	reg := prometheus.NewRegistry()
//	reg.MustRegister(mqttprom.New(core, mqttprom.Options{}))
//	http.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
//
// All names are under one namespace (mqtthooks_ by default); counters end in
// _total and durations are in seconds. Labels are bounded: hook, verdict,
// version, code, outcome, result; never a client id.
package prometheus

import (
	"strconv"

	prom "github.com/prometheus/client_golang/prometheus"

	"github.com/mqtthooks/mqtthooks"
)

// Source is what the collector reads: a *mqtthooks.Core.
type Source interface {
	Stats() mqtthooks.Stats
}

// Options configure a Collector. The zero value is the default.
type Options struct {
	// Namespace prefixes every metric name; default "mqtthooks".
	Namespace string
}

// Collector is a prometheus.Collector over a Source's Stats. It is safe for
// concurrent scrapes: each reads Stats once.
type Collector struct {
	src Source

	sessions, connections                   *prom.Desc
	connects, sessionEvents, wills, msgs    *prom.Desc
	connacks, disconnects                   *prom.Desc
	hookCalls, hookPanics, hookTimeouts     *prom.Desc
	hookVerdicts, hookPassed, hookDurations *prom.Desc
	drops, storeCommits, storeFailed        *prom.Desc
	storeDurations                          *prom.Desc
}

// New returns a Collector of src's counters.
func New(src Source, opts Options) *Collector {
	ns := opts.Namespace
	if ns == "" {
		ns = "mqtthooks"
	}
	d := func(name, help string, labels ...string) *prom.Desc {
		return prom.NewDesc(prom.BuildFQName(ns, "", name), help, labels, nil)
	}
	return &Collector{src: src,
		sessions:      d("sessions", "Sessions, online and offline."),
		connections:   d("connections", "Connections attached to sessions."),
		connects:      d("connects_total", "CONNECTs by result: accepted, rejected, or abandoned (no CONNACK).", "result"),
		sessionEvents: d("session_events_total", "Session events: created, resumed, taken_over, expired, gone.", "event"),
		wills:         d("wills_published_total", "Wills published."),
		msgs: d("messages_total", "Messages by outcome: routed, restored, delivered, dropped, not_stored_qos0, "+
			"discarded.", "outcome"),
		connacks:      d("connack_sent_total", "CONNACKs by protocol version (3, 4, 5) and code.", "version", "code"),
		disconnects:   d("disconnect_sent_total", "Connections the core ended, by reason code.", "code"),
		hookCalls:     d("hook_calls_total", "Calls of a hook by the core.", "hook"),
		hookPanics:    d("hook_panics_total", "Plugins that panicked in a hook.", "hook"),
		hookTimeouts:  d("hook_timeouts_total", "Calls of a conditional hook that ended past their deadline.", "hook"),
		hookVerdicts:  d("hook_verdicts_total", "Calls of a conditional hook by verdict: accept, reject, exhausted, invalid.", "hook", "verdict"),
		hookPassed:    d("hook_passed_total", "Plugins that answered Next in a conditional hook.", "hook"),
		hookDurations: d("hook_duration_seconds", "Latency of a hook's calls, one in 16 sampled.", "hook"),
		drops:         d("messages_dropped_total", "Dropped messages by reason: queue-full, expired, too-large.", "reason"),
		storeCommits:  d("store_commits_total", "Batches committed to the session store."),
		storeFailed:   d("store_commit_failures_total", "Batches the session store refused or failed."),
		storeDurations: d("store_commit_duration_seconds",
			"Time from a commit to its report as durable, one in 16 sampled."),
	}
}

// Describe sends the descriptions of every metric.
func (c *Collector) Describe(ch chan<- *prom.Desc) {
	for _, d := range []*prom.Desc{c.sessions, c.connections, c.connects, c.sessionEvents, c.wills, c.msgs,
		c.connacks, c.disconnects, c.hookCalls, c.hookPanics, c.hookTimeouts, c.hookVerdicts, c.hookPassed,
		c.hookDurations, c.drops, c.storeCommits, c.storeFailed, c.storeDurations} {
		ch <- d
	}
}

// Collect reads the Source's Stats once and sends them as metrics.
func (c *Collector) Collect(ch chan<- prom.Metric) {
	st := c.src.Stats()
	gauge := func(d *prom.Desc, v int64, labels ...string) {
		ch <- prom.MustNewConstMetric(d, prom.GaugeValue, float64(v), labels...)
	}
	counter := func(d *prom.Desc, v uint64, labels ...string) {
		ch <- prom.MustNewConstMetric(d, prom.CounterValue, float64(v), labels...)
	}
	gauge(c.sessions, st.Sessions)
	gauge(c.connections, st.Connections)
	counter(c.connects, st.ConnectsAccepted, "accepted")
	counter(c.connects, st.ConnectsRejected, "rejected")
	counter(c.connects, st.ConnectsAbandoned, "abandoned")
	counter(c.sessionEvents, st.SessionsCreated, "created")
	counter(c.sessionEvents, st.SessionsResumed, "resumed")
	counter(c.sessionEvents, st.Takeovers, "taken_over")
	counter(c.sessionEvents, st.SessionsExpired, "expired")
	counter(c.sessionEvents, st.SessionsGone, "gone")
	counter(c.sessionEvents, st.SessionsClaimed, "claimed")
	counter(c.sessionEvents, st.SessionsYielded, "yielded")
	counter(c.sessionEvents, st.SessionsAdopted, "adopted")
	counter(c.wills, st.WillsPublished)
	for outcome, v := range map[string]uint64{"routed": st.Routed, "restored": st.Restored, "delivered": st.Delivered,
		"dropped": st.Dropped, "not_stored_qos0": st.NotStoredQoS0, "discarded": st.Discarded,
		"handed_over": st.HandedOver} {
		counter(c.msgs, v, outcome)
	}
	for _, a := range st.Connacks {
		counter(c.connacks, a.Count, strconv.Itoa(int(a.Version)), code(a.Code))
	}
	for _, d := range st.Disconnects {
		counter(c.disconnects, d.Count, code(byte(d.Code)))
	}
	for _, d := range st.Drops {
		counter(c.drops, d.Count, d.Reason.String())
	}
	counter(c.storeCommits, st.Store.Commits)
	counter(c.storeFailed, st.Store.Failed)
	histogram(ch, c.storeDurations, st.Store.Latency)
	for _, h := range st.Hooks {
		counter(c.hookCalls, h.Calls, h.Hook)
		counter(c.hookPanics, h.Panics, h.Hook)
		if conditional(h.Hook) {
			counter(c.hookTimeouts, h.Timeouts, h.Hook)
			counter(c.hookVerdicts, h.Accepted, h.Hook, "accept")
			counter(c.hookVerdicts, h.Rejected, h.Hook, "reject")
			counter(c.hookVerdicts, h.Exhausted, h.Hook, "exhausted")
			counter(c.hookVerdicts, h.Invalid, h.Hook, "invalid")
			counter(c.hookPassed, h.Next, h.Hook)
		}
		histogram(ch, c.hookDurations, h.Latency, h.Hook)
	}
}

// histogram sends h as a constant histogram, its buckets made cumulative.
func histogram(ch chan<- prom.Metric, d *prom.Desc, h mqtthooks.Histogram, labels ...string) {
	buckets := make(map[float64]uint64, len(h.Bounds))
	var cum uint64
	for i, b := range h.Bounds {
		cum += h.Counts[i]
		buckets[b.Seconds()] = cum
	}
	ch <- prom.MustNewConstHistogram(d, h.Count, h.Sum.Seconds(), buckets, labels...)
}

// conditional reports whether hook decides, and so has verdicts.
func conditional(hook string) bool {
	switch hook {
	case "AuthOnRegister", "AuthOnRegisterM5", "OnAuthM5":
		return true
	}
	return false
}

// code formats a reason or return code as two hex digits, as MQTT 5 writes
// them: "0x86".
func code(b byte) string {
	const hex = "0123456789abcdef"
	return "0x" + string([]byte{hex[b>>4], hex[b&15]})
}
