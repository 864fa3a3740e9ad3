package webhooks

import (
	"encoding/json"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// cache keeps the "ok" answers of auth endpoints that sent Cache-Control:
// max-age=N, as VerneMQ does: keyed by endpoint, hook and request without
// the peer's port, for N seconds. Unlike VerneMQ's it is bounded: at
// MaxCacheEntries, expired entries are swept, and if none has expired the
// answer is not kept.
type cache struct {
	mu           sync.Mutex
	entries      map[string]cached
	max          int
	now          func() time.Time
	sweptAt      time.Time // the last sweep of a full cache: at most one a second
	hits, misses atomic.Uint64
}

type cached struct {
	modifiers map[string]json.RawMessage
	expires   time.Time
}

// DefaultMaxCacheEntries is the default bound of the answer cache.
const DefaultMaxCacheEntries = 100_000

func cacheKey(url, hook string, body []byte) string {
	return url + "\x00" + hook + "\x00" + string(body)
}

func (c *cache) get(key string) (map[string]json.RawMessage, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.entries[key]
	if ok && !c.now().Before(e.expires) {
		delete(c.entries, key)
		ok = false
	}
	if ok {
		c.hits.Add(1)
	} else {
		c.misses.Add(1)
	}
	return e.modifiers, ok
}

func (c *cache) put(key string, mods map[string]json.RawMessage, maxAge time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.now()
	if len(c.entries) >= c.max {
		if now.Sub(c.sweptAt) < time.Second {
			return // full, and swept a moment ago: not kept
		}
		c.sweptAt = now
		for k, e := range c.entries {
			if !now.Before(e.expires) {
				delete(c.entries, k)
			}
		}
		if len(c.entries) >= c.max {
			return
		}
	}
	if c.entries == nil {
		c.entries = map[string]cached{}
	}
	c.entries[key] = cached{modifiers: mods, expires: now.Add(maxAge)}
}

func (c *cache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.entries)
}

// maxAge returns the max-age of a Cache-Control header, as VerneMQ reads it:
// the first "max-age=" followed by digits.
func maxAge(header string) (time.Duration, bool) {
	i := strings.Index(strings.ToLower(header), "max-age=")
	if i < 0 {
		return 0, false
	}
	digits := header[i+len("max-age="):]
	n := 0
	for n < len(digits) && digits[n] >= '0' && digits[n] <= '9' {
		n++
	}
	s, err := strconv.Atoi(digits[:n])
	if err != nil || s <= 0 {
		return 0, false
	}
	return time.Duration(s) * time.Second, true
}
