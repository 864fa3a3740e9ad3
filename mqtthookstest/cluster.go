package mqtthookstest

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/mqtthooks/mqtthooks"
)

// Cluster is a mqtthooks.Cluster for Cores in one process, the nodes of a
// test: give each Core the Node of its own name, and one shared store (a
// mqtthooks.MemoryStore will do). Ownership lives in a map; a claim on a
// session another node owns calls that node's Yield directly, on the
// claimant's goroutine. Kill makes a node dead without stopping its Core, as
// a node cut off from the cluster: its sessions are then adopted by another.
// A node that leaves (Core.Shutdown) hands its sessions to another too.
//
// A Cluster is safe for concurrent use.
type Cluster struct {
	mu       sync.Mutex
	owners   map[mqtthooks.SubscriberID]string
	nodes    map[string]*clusterNode
	adopting map[mqtthooks.SubscriberID]chan struct{} // closed once adopted
}

// NewCluster returns a Cluster with no nodes.
func NewCluster() *Cluster {
	return &Cluster{owners: map[mqtthooks.SubscriberID]string{}, nodes: map[string]*clusterNode{},
		adopting: map[mqtthooks.SubscriberID]chan struct{}{}}
}

// Node returns the mqtthooks.Cluster of the node name, for the Options of
// its Core. Each name joins once.
func (c *Cluster) Node(name string) mqtthooks.Cluster { return &clusterNode{c: c, name: name} }

// Owner returns the name of the node that owns the session of id, or "".
func (c *Cluster) Owner(id mqtthooks.SubscriberID) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.owners[id]
}

// Kill makes the node name dead, as a node that crashed or was cut off from
// the cluster, without stopping its Core: it is never asked to yield again,
// and each session it owns is adopted (ClusterNode.Adopt) by a node still
// alive, the first by name, before Kill returns.
func (c *Cluster) Kill(name string) {
	c.mu.Lock()
	if n := c.nodes[name]; n != nil {
		n.dead = true
	}
	c.mu.Unlock()
	c.adopt(name)
}

// adopt hands the sessions of the node name, dead or gone, to the first
// node alive.
func (c *Cluster) adopt(name string) {
	c.mu.Lock()
	var heir *clusterNode
	for _, n := range c.nodes {
		if !n.dead && n.name != name && n.core != nil && (heir == nil || n.name < heir.name) {
			heir = n
		}
	}
	var ids []mqtthooks.SubscriberID
	if heir != nil {
		for id, owner := range c.owners {
			if owner == name {
				c.owners[id] = heir.name
				c.adopting[id] = make(chan struct{})
				ids = append(ids, id)
			}
		}
	}
	c.mu.Unlock()
	for _, id := range ids {
		_ = heir.core.Adopt(context.Background(), id)
		c.mu.Lock()
		close(c.adopting[id])
		delete(c.adopting, id)
		c.mu.Unlock()
	}
}

type clusterNode struct {
	c    *Cluster
	name string
	core mqtthooks.ClusterNode
	dead bool // guarded by c.mu
}

func (n *clusterNode) Join(core mqtthooks.ClusterNode) error {
	n.c.mu.Lock()
	defer n.c.mu.Unlock()
	if _, dup := n.c.nodes[n.name]; dup {
		return fmt.Errorf("mqtthookstest: node %q joined twice", n.name)
	}
	n.core = core
	n.c.nodes[n.name] = n
	return nil
}

func (n *clusterNode) Claim(ctx context.Context, r *mqtthooks.ClaimRequest) error {
	id := r.Resume.SubscriberID
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		n.c.mu.Lock()
		if adopted, ok := n.c.adopting[id]; ok { // its new owner has yet to take it over: wait
			n.c.mu.Unlock()
			select {
			case <-adopted:
			case <-ctx.Done():
				return ctx.Err()
			}
			continue
		}
		prev := n.c.owners[id]
		owner := n.c.nodes[prev]
		if prev == "" || prev == n.name || owner == nil || owner.dead || owner.core == nil {
			n.c.owners[id] = n.name
			n.c.mu.Unlock()
			return nil
		}
		n.c.mu.Unlock()
		err := owner.core.Yield(ctx, &mqtthooks.YieldRequest{Resume: r.Resume, Transfer: func(context.Context) error {
			n.c.mu.Lock()
			defer n.c.mu.Unlock()
			if n.c.owners[id] != prev {
				return mqtthooks.ErrNotOwner
			}
			n.c.owners[id] = n.name
			return nil
		}})
		switch {
		case err == nil:
			return nil
		case errors.Is(err, mqtthooks.ErrNotOwner): // another claim won meanwhile: ask the new owner
			continue
		default:
			return err
		}
	}
}

func (n *clusterNode) Disown(_ context.Context, id mqtthooks.SubscriberID) error {
	n.c.mu.Lock()
	defer n.c.mu.Unlock()
	if n.c.owners[id] != n.name {
		return mqtthooks.ErrNotOwner
	}
	delete(n.c.owners, id)
	return nil
}

func (n *clusterNode) Leave(context.Context) error {
	n.c.mu.Lock()
	delete(n.c.nodes, n.name)
	n.c.mu.Unlock()
	n.c.adopt(n.name) // its sessions, offline and stored, expire elsewhere
	return nil
}
