package main

import (
	"math"
	"runtime/debug"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/mqtthooks/mqtthooks"
)

// sysStats are the broker's own counters behind the $SYS topics, besides
// the core's Stats.
type sysStats struct {
	started        time.Time
	received, sent atomic.Uint64 // PUBLISH packets from clients, and to them
	lastAt         time.Time     // of the last publishSys: the load averages' step
	last           [3]uint64     // received, sent, connects at lastAt
	loads          [3][3]float64
	loadsReady     bool
}

// loadWindows are the windows of the $SYS load averages, as Mosquitto has
// them: 1, 5 and 15 minutes.
var loadWindows = [3]time.Duration{time.Minute, 5 * time.Minute, 15 * time.Minute}

// publishSys publishes the $SYS topics as retained messages, as Mosquitto
// does every sys_interval: the version, uptime, clients, messages, and the
// 1, 5 and 15 minute load averages (per minute) of messages and connects.
// now is the time of the figures. Only the sysLoop goroutine and tests call
// it, one at a time.
func (s *server) publishSys(now time.Time) {
	st := s.core.Stats()
	sy := &s.sys
	counts := [3]uint64{sy.received.Load(), sy.sent.Load(), st.ConnectsAccepted}
	if sy.loadsReady {
		step := now.Sub(sy.lastAt)
		for i, c := range counts {
			perMinute := float64(c-sy.last[i]) / step.Minutes()
			for w, window := range loadWindows {
				decay := math.Exp(-step.Seconds() / window.Seconds())
				sy.loads[i][w] = sy.loads[i][w]*decay + perMinute*(1-decay)
			}
		}
	}
	sy.lastAt, sy.last, sy.loadsReady = now, counts, true

	subs, retained := s.router.counts()
	values := map[string]string{
		"$SYS/broker/version":                 "mqtthooks example broker " + moduleVersion(),
		"$SYS/broker/uptime":                  strconv.FormatInt(int64(now.Sub(sy.started).Seconds()), 10) + " seconds",
		"$SYS/broker/clients/connected":       strconv.FormatInt(st.Connections, 10),
		"$SYS/broker/clients/total":           strconv.FormatInt(st.Sessions, 10),
		"$SYS/broker/clients/disconnected":    strconv.FormatInt(max(st.Sessions-st.Connections, 0), 10),
		"$SYS/broker/messages/received":       strconv.FormatUint(counts[0], 10),
		"$SYS/broker/messages/sent":           strconv.FormatUint(counts[1], 10),
		"$SYS/broker/messages/dropped":        strconv.FormatUint(st.Dropped, 10),
		"$SYS/broker/subscriptions/count":     strconv.Itoa(subs),
		"$SYS/broker/retained messages/count": strconv.Itoa(retained),
		"$SYS/broker/store/messages/count":    strconv.FormatUint(st.Routed+st.Restored-st.Delivered-st.Dropped-st.NotStoredQoS0-st.Discarded-st.HandedOver, 10),
	}
	for i, name := range []string{"messages/received", "messages/sent", "connections"} {
		for w, window := range []string{"1min", "5min", "15min"} {
			values["$SYS/broker/load/"+name+"/"+window] = strconv.FormatFloat(sy.loads[i][w], 'f', 2, 64)
		}
	}
	for topic, v := range values {
		s.route(mqtthooks.SubscriberID{}, &mqtthooks.Message{Topic: topic, Payload: []byte(v), Retain: true}, nil)
	}
}

// sysLoop publishes the $SYS topics every interval until stop closes.
func (s *server) sysLoop(interval time.Duration, stop <-chan struct{}) {
	t := time.NewTicker(interval)
	defer t.Stop()
	s.publishSys(time.Now())
	for {
		select {
		case <-stop:
			return
		case now := <-t.C:
			s.publishSys(now)
		}
	}
}

// moduleVersion is the broker's module version, "(devel)" when built from
// a checkout.
func moduleVersion() string {
	if bi, ok := debug.ReadBuildInfo(); ok {
		return bi.Main.Version
	}
	return "(devel)"
}
