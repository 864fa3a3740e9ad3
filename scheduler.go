package mqtthooks

import (
	"container/heap"
	"sync"
	"time"
)

// scheduler runs timed work (session expiry, delayed Wills) for all sessions
// on one timer, without a goroutine per session. Due work runs on a bounded
// pool, so a mass expiry never has more than poolSize goroutines at once.
type scheduler struct {
	mu      sync.Mutex
	idle    sync.Cond // signalled when run stops draining
	items   timerHeap
	timer   *time.Timer // fires run; nil until the first item
	running bool        // run is draining due items
	closed  bool

	sem chan struct{} // the pool's slots
	wg  sync.WaitGroup
}

// timerItem is one piece of timed work. Its index is its place in the heap,
// or -1 when it is not scheduled.
type timerItem struct {
	at    time.Time
	fn    func()
	index int
}

func newScheduler(poolSize int) *scheduler {
	s := &scheduler{sem: make(chan struct{}, poolSize)}
	s.idle.L = &s.mu
	return s
}

// schedule arranges for fn to run at (or soon after) at, and returns the item
// with which to cancel it.
func (s *scheduler) schedule(at time.Time, fn func()) *timerItem {
	it := &timerItem{at: at, fn: fn, index: -1}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return it
	}
	heap.Push(&s.items, it)
	if it.index == 0 && !s.running {
		s.armLocked()
	}
	return it
}

// cancel unschedules it; cancelling an item that ran or was cancelled is a
// no-op. A nil item is ignored.
func (s *scheduler) cancel(it *timerItem) {
	if it == nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if it.index >= 0 {
		heap.Remove(&s.items, it.index)
	}
}

// armLocked sets the timer for the earliest item.
func (s *scheduler) armLocked() {
	if len(s.items) == 0 {
		return
	}
	d := time.Until(s.items[0].at)
	if s.timer == nil {
		s.timer = time.AfterFunc(d, s.run)
		return
	}
	s.timer.Reset(d)
}

// run hands every due item to the pool, then re-arms the timer.
func (s *scheduler) run() {
	s.mu.Lock()
	if s.running || s.closed {
		s.mu.Unlock()
		return
	}
	s.running = true
	for len(s.items) > 0 && !s.closed && !s.items[0].at.After(time.Now()) {
		it := heap.Pop(&s.items).(*timerItem)
		s.wg.Add(1) // under mu, so close cannot have passed it by
		s.mu.Unlock()
		s.sem <- struct{}{} // wait for a free worker
		go func() {
			defer s.wg.Done()
			defer func() { <-s.sem }()
			it.fn()
		}()
		s.mu.Lock()
	}
	s.running = false
	s.idle.Broadcast()
	if !s.closed {
		s.armLocked()
	}
	s.mu.Unlock()
}

// close stops the timer, drops what is scheduled and returns the items that
// were still pending, for the caller to run or discard. Work already handed to
// the pool goes on; wait for it with wait.
func (s *scheduler) close() []*timerItem {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	if s.timer != nil {
		s.timer.Stop()
	}
	for s.running { // run is handing an item to the pool: let it finish
		s.idle.Wait()
	}
	pending := make([]*timerItem, len(s.items))
	copy(pending, s.items)
	for _, it := range pending {
		it.index = -1
	}
	s.items = nil
	return pending
}

// wait returns when the work handed to the pool has finished.
func (s *scheduler) wait() { s.wg.Wait() }

// timerHeap orders items by time, earliest first.
type timerHeap []*timerItem

func (h timerHeap) Len() int           { return len(h) }
func (h timerHeap) Less(i, j int) bool { return h[i].at.Before(h[j].at) }
func (h timerHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].index = i
	h[j].index = j
}

func (h *timerHeap) Push(x any) {
	it := x.(*timerItem)
	it.index = len(*h)
	*h = append(*h, it)
}

func (h *timerHeap) Pop() any {
	old := *h
	it := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	it.index = -1
	return it
}
