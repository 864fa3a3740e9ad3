package main

import (
	"context"
	"errors"
	"maps"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/mqtthooks/mqtthooks"
)

// Sessions moving between nodes. When a session leaves this node for
// another (a CONNECT there took it over; the Core calls Moved), the new
// owner adds its subscriptions to its router only once it has read the
// session. A PUBLISH routed between the two would reach it nowhere and be
// acknowledged all the same. So this node keeps, until the new owner
// routes them, the session's filters in its interest (the other nodes go on
// sending what matches them here) and in a router of moved filters: a QoS
// 1 or 2 PUBLISH matching one, received here or forwarded, is refused
// (not acknowledged, so that its client sends it again) and delivered to
// nobody here. The Core refuses the same for the session while it hands it
// over (Deliver: ErrNotOwner).
//
// Moved also puts the key <node>.m.<token> (the session's name) in the
// interest bucket, and returns once every node has read it: before the
// new owner's claim returns, so before it adds the session's
// subscriptions. Its Router's Add, for a session some node holds moved
// filters of, then tells that node on mqtthooks.arrived.<node>, once every
// node routes the filter to it, and waits for the answer: the old node
// lets the filter go, and the CONNACK follows. Filters nobody takes within
// routeTimeout are let go too: the session unsubscribed from them, or
// ended, or its new node died (its sessions' adopter subscribes them
// again).
//
// The price is availability, never a message: a moved filter refuses every
// QoS 1 or 2 PUBLISH it matches, whatever the subscription's QoS, and a
// moved shared subscription refuses those to its whole group (its other
// members would do), each refusal closing a publisher's connection, for
// the milliseconds a hand-over takes (routeTimeout at most).

// errMoving is why a PUBLISH is refused while a session it matches moves.
var errMoving = errors.New("cluster: a session subscribed to the topic is moving to another node")

// movedSessions are the filters of the sessions that left this node and
// that their new owner does not route yet.
type movedSessions struct {
	mu    sync.Mutex
	r     *router // each move under its own name, see move.mid
	next  uint64
	moves map[mqtthooks.SubscriberID][]*move
}

// move is one departure of a session, with the filters it left here.
type move struct {
	mid  mqtthooks.SubscriberID // its name in movedSessions.r: a session may leave again before a move is settled
	left map[string]bool
	done chan struct{} // closed when no filter is left
}

// refuses reports whether a QoS 1 or 2 PUBLISH to topic must be refused
// because it matches the filters of a moving session.
func (m *movedSessions) refuses(mountpoint, topic string) bool {
	m.mu.Lock()
	r := m.r
	m.mu.Unlock()
	return r != nil && len(r.matches(mountpoint, topic, mqtthooks.SubscriberID{})) > 0
}

// Moved forgets the subscriptions of id, which another node owns now, from
// the local router, and keeps its filters in the interest and among the
// moved ones until the new owner routes them.
func (r clusterRouter) Moved(id mqtthooks.SubscriberID, gen uint64) {
	cl, m := r.cl, &r.cl.moved
	r.mu.Lock()
	filters := r.local.filters(id)
	r.local.RemoveAll(id, gen)
	if len(filters) == 0 {
		r.mu.Unlock()
		return
	}
	m.mu.Lock()
	if m.r == nil {
		m.r, m.moves = newRouter(), map[mqtthooks.SubscriberID][]*move{}
	}
	m.next++
	mv := &move{mid: mqtthooks.SubscriberID{Mountpoint: id.Mountpoint, ClientID: id.ClientID + "\x00" + strconv.FormatUint(m.next, 10)},
		left: map[string]bool{}, done: make(chan struct{})}
	for _, f := range filters {
		m.r.Add(mv.mid, 0, mqtthooks.Subscription{Filter: f})
		mv.left[f] = true
	}
	m.moves[id] = append(m.moves[id], mv)
	m.mu.Unlock()
	r.mu.Unlock()

	key := cl.node + ".m." + movedToken(id)
	ctx, cancel := context.WithTimeout(cl.stopCtx, kvTimeout)
	rev, err := cl.interestKV.Put(ctx, key, encodeInterest(id.Mountpoint, id.ClientID))
	cancel()
	if err != nil {
		cl.log.Warn("cluster: announcing a session that moved away", "session", id.String(), "err", err)
	} else {
		cl.syncInterest(rev)
	}
	if !cl.spawnOK(func() { r.awaitMoved(id, mv, key) }) {
		r.settle(id, mv, "")
	}
}

// awaitMoved waits until the new owner of id took every filter of mv, or
// routeTimeout; then it lets the rest go.
func (r clusterRouter) awaitMoved(id mqtthooks.SubscriberID, mv *move, key string) {
	t := time.NewTimer(r.cl.timing.routeTimeout())
	defer t.Stop()
	select {
	case <-mv.done:
	case <-t.C:
	case <-r.cl.stop:
	}
	r.settle(id, mv, "")
	ctx, cancel := context.WithTimeout(context.Background(), kvTimeout)
	defer cancel()
	r.cl.moved.mu.Lock()
	last := len(r.cl.moved.moves[id]) == 0
	r.cl.moved.mu.Unlock()
	if last {
		_ = r.cl.interestKV.Delete(ctx, key)
	}
}

// settle lets filter of mv go (all its filters if filter is empty): it is
// no longer refused here, and no longer in this node's interest unless a
// session here subscribes to it.
func (r clusterRouter) settle(id mqtthooks.SubscriberID, mv *move, filter string) {
	m := &r.cl.moved
	r.mu.Lock()
	defer r.mu.Unlock()
	m.mu.Lock()
	defer m.mu.Unlock()
	for f := range mv.left {
		if filter != "" && f != filter {
			continue
		}
		delete(mv.left, f)
		m.r.Remove(mv.mid, 0, f)
		r.cl.mine.change(ikey{id.Mountpoint, f}, -1)
	}
	if len(mv.left) == 0 {
		select {
		case <-mv.done:
		default:
			close(mv.done)
			m.moves[id] = slices.DeleteFunc(m.moves[id], func(x *move) bool { return x == mv })
			if len(m.moves[id]) == 0 {
				delete(m.moves, id)
			}
		}
	}
}

// arrived tells the nodes that hold moved filters of id (this one too) that
// this node routes filter for it now (its Router's Add is done with it),
// and waits for their answers, syncTimeout at most.
func (cl *cluster) arrived(id mqtthooks.SubscriberID, filter string) {
	cl.takeMoved(id, filter) // it may have come back before its move from here settled
	cl.imu.Lock()
	from := slices.Collect(maps.Keys(cl.movedFrom[id]))
	cl.imu.Unlock()
	if len(from) == 0 {
		return
	}
	e := encoder{}
	e.str(id.Mountpoint)
	e.str(id.ClientID)
	e.str(filter)
	ctx, cancel := context.WithTimeout(cl.stopCtx, syncTimeout)
	defer cancel()
	var wg sync.WaitGroup
	for _, node := range from {
		wg.Go(func() {
			_, err := cl.nc.RequestWithContext(ctx, cl.subject("arrived", node), e.b)
			if err != nil && !errors.Is(err, nats.ErrNoResponders) && cl.serving.Load() {
				cl.log.Warn("cluster: a node did not let go of a session that moved here", "other", node,
					"session", id.String(), "err", err)
			}
		})
	}
	wg.Wait()
}

// serveArrived answers a node's arrived: its filter of the session is no
// longer refused here.
func (cl *cluster) serveArrived(m *nats.Msg) {
	d := decoder{b: m.Data}
	id := mqtthooks.SubscriberID{Mountpoint: d.str(), ClientID: d.str()}
	filter := d.str()
	if d.err != nil {
		return
	}
	cl.takeMoved(id, filter)
	_ = m.Respond(nil)
}

// takeMoved lets filter go in every move of id.
func (cl *cluster) takeMoved(id mqtthooks.SubscriberID, filter string) {
	m := &cl.moved
	m.mu.Lock()
	moves := slices.Clone(m.moves[id])
	m.mu.Unlock()
	r := cl.router()
	for _, mv := range moves {
		r.settle(id, mv, filter)
	}
}

// applyMoved applies a change of a node's .m. key (the value names the
// session) to movedFrom.
func (cl *cluster) applyMoved(node, key string, value []byte, put bool) {
	if put {
		mp, client, err := decodeInterest(value)
		if err != nil {
			cl.log.Warn("cluster: a key this release cannot read", "key", key, "err", err)
			return
		}
		id := mqtthooks.SubscriberID{Mountpoint: mp, ClientID: client}
		cl.mkeys[key] = id
		if cl.movedFrom[id] == nil {
			cl.movedFrom[id] = map[string]bool{}
		}
		cl.movedFrom[id][node] = true
		return
	}
	id, ok := cl.mkeys[key]
	if !ok {
		return
	}
	delete(cl.mkeys, key)
	delete(cl.movedFrom[id], node)
	if len(cl.movedFrom[id]) == 0 {
		delete(cl.movedFrom, id)
	}
}

// movedToken is the key token of a session's name.
func movedToken(id mqtthooks.SubscriberID) string {
	token, _ := keyToken(id.Mountpoint, id.ClientID)
	return token
}

// spawnOK is spawn, reporting whether f was started.
func (cl *cluster) spawnOK(f func()) bool {
	cl.gmu.Lock()
	defer cl.gmu.Unlock()
	if cl.stopped {
		return false
	}
	cl.wg.Go(f)
	return true
}
