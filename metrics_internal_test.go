package mqtthooks

import (
	"testing"
	"time"
)

// A duration lands in the first bucket whose bound it does not exceed.
func TestHistogramBuckets(t *testing.T) {
	for _, tc := range []struct {
		d    time.Duration
		want time.Duration // the bucket's bound; 0: above them all
	}{
		{0, time.Microsecond}, {time.Microsecond, time.Microsecond}, {time.Microsecond + 1, 2500 * time.Nanosecond},
		{3 * time.Millisecond, 5 * time.Millisecond}, {5 * time.Millisecond, 5 * time.Millisecond},
		{10 * time.Second, 10 * time.Second}, {time.Minute, 0},
	} {
		i := bucketOf(tc.d)
		if tc.want == 0 {
			if i != len(latencyBounds) {
				t.Errorf("%v: bucket %d, want the last", tc.d, i)
			}
			continue
		}
		if i >= len(latencyBounds) || latencyBounds[i] != tc.want {
			t.Errorf("%v: bucket %d, want the one up to %v", tc.d, i, tc.want)
		}
	}
	// A timed call is counted with its duration; an untimed one (the zero
	// start) is not.
	var m latency
	m.done(time.Now().Add(-time.Minute))
	m.done(time.Time{})
	h := m.read()
	if h.Count != 1 || h.Counts[len(latencyBounds)] != 1 || h.Sum < time.Minute {
		t.Errorf("after one call of a minute: %+v", h)
	}
}
