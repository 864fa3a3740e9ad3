package main

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/mqtthooks/mqtthooks/plugins/webhooks"
)

// webhookCollector exports the webhook plugin's counters per hook and
// endpoint, and its cache's, next to the core's on /metrics.
type webhookCollector struct{ p *webhooks.Plugin }

var (
	whRequests = prometheus.NewDesc("mqtthooks_webhook_requests_total", "Webhook calls.", []string{"hook", "url"}, nil)
	whErrors   = prometheus.NewDesc("mqtthooks_webhook_errors_total",
		"Webhook calls that failed: unreachable, a status other than 200, an invalid answer, or an error answer.",
		[]string{"hook", "url"}, nil)
	whTimeouts = prometheus.NewDesc("mqtthooks_webhook_timeouts_total", "Webhook calls past their timeout.",
		[]string{"hook", "url"}, nil)
	whCanceled = prometheus.NewDesc("mqtthooks_webhook_canceled_total", "Webhook calls canceled: the client went away.",
		[]string{"hook", "url"}, nil)
	whSeconds = prometheus.NewDesc("mqtthooks_webhook_seconds_total", "Time spent in webhook calls.",
		[]string{"hook", "url"}, nil)
	whCache = prometheus.NewDesc("mqtthooks_webhook_cache_lookups_total", "Cache lookups of auth answers, by result.",
		[]string{"result"}, nil)
	whEntries = prometheus.NewDesc("mqtthooks_webhook_cache_entries", "Auth answers in the cache.", nil, nil)
)

func (webhookCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{whRequests, whErrors, whTimeouts, whCanceled, whSeconds, whCache, whEntries} {
		ch <- d
	}
}

func (c webhookCollector) Collect(ch chan<- prometheus.Metric) {
	for _, s := range c.p.Stats() {
		counter := func(d *prometheus.Desc, v float64) {
			ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, s.Hook, s.URL)
		}
		counter(whRequests, float64(s.Requests))
		counter(whErrors, float64(s.Errors))
		counter(whTimeouts, float64(s.Timeouts))
		counter(whCanceled, float64(s.Canceled))
		counter(whSeconds, s.Elapsed.Seconds())
	}
	cs := c.p.CacheStats()
	ch <- prometheus.MustNewConstMetric(whCache, prometheus.CounterValue, float64(cs.Hits), "hit")
	ch <- prometheus.MustNewConstMetric(whCache, prometheus.CounterValue, float64(cs.Misses), "miss")
	ch <- prometheus.MustNewConstMetric(whEntries, prometheus.GaugeValue, float64(cs.Entries))
}
