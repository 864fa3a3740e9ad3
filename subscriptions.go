package mqtthooks

// A session's subscriptions live in its state, one per filter; a store gets
// each as a change of its own. A session with many of them also keeps an
// index from filter to position, so that Subscribe and Unsubscribe cost the
// same per filter at 10 subscriptions and at 100,000; most sessions have a
// few, and a short scan is cheaper than a map for them.

// subIndexFrom is the number of subscriptions from which a session keeps an
// index.
const subIndexFrom = 16

// findSubscription returns the position of filter's subscription, or -1.
// st.mu is held.
func (st *sessionState) findSubscription(filter string) int {
	if st.subIndex != nil {
		if i, ok := st.subIndex[filter]; ok {
			return i
		}
		return -1
	}
	for i := range st.subs {
		if st.subs[i].Filter == filter {
			return i
		}
	}
	return -1
}

// subscribe stores sub, replacing the subscription with the same filter.
// st.mu is held.
func (st *sessionState) subscribe(sub Subscription) {
	if i := st.findSubscription(sub.Filter); i >= 0 {
		st.subs[i] = sub
		return
	}
	st.subs = append(st.subs, sub)
	switch n := len(st.subs); {
	case st.subIndex != nil:
		st.subIndex[sub.Filter] = n - 1
	case n >= subIndexFrom:
		st.subIndex = make(map[string]int, n)
		for i, s := range st.subs {
			st.subIndex[s.Filter] = i
		}
	}
}

// unsubscribe removes filter's subscription and reports whether it existed.
// The last subscription takes its place. st.mu is held.
func (st *sessionState) unsubscribe(filter string) bool {
	i := st.findSubscription(filter)
	if i < 0 {
		return false
	}
	subs := st.subs
	last := len(subs) - 1
	if st.subIndex != nil {
		delete(st.subIndex, filter)
		if i != last {
			st.subIndex[subs[last].Filter] = i
		}
	}
	subs[i] = subs[last]
	subs[last] = Subscription{}
	st.subs = subs[:last]
	if last == 0 {
		st.subs = nil
	}
	if st.subIndex != nil && last < subIndexFrom/2 {
		st.subIndex = nil // few are left: scanning is cheaper again
	}
	return true
}

// clearSubscriptions drops every subscription. st.mu is held.
func (st *sessionState) clearSubscriptions() {
	st.subs = nil
	st.subIndex = nil
}
