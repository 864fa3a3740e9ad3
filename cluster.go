package mqtthooks

import (
	"context"
	"errors"
)

// A Cluster lets the Cores of several brokers, the nodes of a cluster, share
// sessions. Each session is owned by one node at a time: the node that holds
// it in memory, runs its hooks and timers, and writes it to the SessionStore
// that every node shares (Options.Store, which must be a SessionLoader). A
// CONNECT on a node that does not own the session claims it; the owner ends
// its connections and hooks there, as a takeover on one node would, makes its
// writes durable, and hands the session over; the new node reads it from the
// store and goes on. The hooks of one session therefore keep their order
// across nodes: the old node's terminal hook returns before the new node's
// OnClientWakeup runs.
//
// The Core calls Claim and Disown from a lifecycle operation of the
// session's SubscriberID, and never holds a lock while doing so. A Cluster
// calls the ClusterNode it was given by Join from its own goroutines.
//
// The cluster/natsjs module implements a Cluster on NATS JetStream;
// mqtthookstest.Cluster is one for the Cores of one process, for tests.
type Cluster interface {
	// Join is called once by NewCore, before the Core accepts a CONNECT:
	// from then on the Cluster calls n when another node claims a session
	// this node owns. An error fails NewCore.
	Join(n ClusterNode) error
	// Claim makes this node the owner of the session of r.Resume.SubscriberID,
	// for a CONNECT on this node that finds no session here. If another
	// node owns it, Claim asks that node to yield it (ClusterNode.Yield
	// there) and returns once it has; if the owner is gone (its node died
	// or left), Claim takes the session over without it. The session,
	// if one exists, is then in the store for this node to read. Claim
	// fails with an error wrapping ErrResumeRefused when the owner's
	// ResumePolicy refused the CONNECT, and with another error when the
	// cluster cannot decide before ctx ends; the CONNECT is then refused
	// and the session stays where it was.
	Claim(ctx context.Context, r *ClaimRequest) error
	// Disown ends this node's ownership of id when its session ended here
	// (gone or expired), or when a claimed session was not installed (its
	// CONNECT failed after Claim): the next CONNECT, on any node, finds no
	// owner. Only the owner disowns: Disown fails with ErrNotOwner if
	// another node took the session meanwhile, which the Core takes as done;
	// another error is logged by the Core.
	Disown(ctx context.Context, id SubscriberID) error
	// Leave is called once by Core.Shutdown, after every session ended
	// there: the Cluster stops calling the node, and the sessions it owned,
	// stored offline, may be claimed from the store by other nodes.
	Leave(ctx context.Context) error
}

// ClaimRequest is a CONNECT's claim on a session that another node may own.
type ClaimRequest struct {
	// Resume describes the CONNECT, for the ResumePolicy of the node that
	// owns the session, which fills in PrevUsername and PrevHasUsername.
	// Resume.Conn describes the claimant's connection on its own node; a
	// Cluster that carries it to another process may leave out what does
	// not travel (natsjs drops the TLS state).
	Resume ResumeRequest
}

// ClusterNode is the side of a Core that a Cluster calls.
type ClusterNode interface {
	// Yield hands over a session this node owns to another node, for the
	// CONNECT that r describes. It runs as a lifecycle operation of the
	// session, after those before it: the ResumePolicy decides on r.Resume
	// (a refusal returns an error wrapping ErrResumeRefused and changes
	// nothing); then the session's connections here end, with the Will and
	// hooks of a takeover (OnClientOffline{TakenOver}, or OnClientGone when
	// the CONNECT starts clean or the connection had cleanup on disconnect);
	// the session's writes become durable; r.Transfer makes the claimant the
	// owner; and the session leaves this node's memory (not the store).
	// If Transfer fails, a session that goes on (a persistent one, taken
	// over) stays here, offline, and Yield returns the error; one that ended
	// (clean start, cleanup on disconnect) stays ended. A session this node
	// does not hold is transferred at once, after any end of a life here
	// that the store has yet to record.
	Yield(ctx context.Context, r *YieldRequest) error
	// Adopt takes over a session whose node is gone (it died, or left the
	// cluster): the Cluster has made this node its owner, for the whole
	// cluster, before calling Adopt. The Core reads the session from the
	// store; a connection the old node held is reported ended, with
	// ReasonNodeDown (OnClientOffline, or OnClientGone with its Will for a
	// session that ends with its connection), and an offline session's
	// expiry and delayed Wills run here from now on. Adopting a session
	// this node holds already, or one the store does not have, does
	// nothing (the latter disowns it).
	Adopt(ctx context.Context, id SubscriberID) error
	// Isolated tells the Core that this node may have lost its place in the
	// cluster: its lease ran out, or may have, since it could not renew it
	// in time, so other nodes may adopt its sessions. The Core checks each
	// session it holds with a write the store fences: a session another
	// node took over is forgotten here, its connections ended as taken
	// over, firing no hook and publishing no Will (the node that adopted it
	// reports its end); the others stay. Any later write refused as stale
	// does the same for its session.
	Isolated(ctx context.Context)
	// Disowned tells the Core that the cluster names another node as the
	// owner of id, which this node may still hold: it kept the session
	// through Isolated (its fenced write passed, the new owner not having
	// renewed it yet) and would go on writing it, in the new owner's way.
	// The Core forgets it as Isolated forgets a session taken over: no hook,
	// no Will, its connections ended as taken over; the store keeps it for
	// its owner. A session this node does not hold is nothing to forget.
	Disowned(ctx context.Context, id SubscriberID) error
}

// YieldRequest is another node's claim on a session this node owns.
type YieldRequest struct {
	// Resume describes the claiming CONNECT (see ClaimRequest).
	Resume ResumeRequest
	// Transfer records the claimant as the session's owner. The Core calls
	// it once, inside the session's operation, when the session has ended
	// here and its writes are durable.
	Transfer func(ctx context.Context) error
}

// ErrNotOwner is the error of a Cluster operation on a session that another
// node owns now, and of Core.Deliver to a session that this node is handing
// over to another one.
var ErrNotOwner = errors.New("mqtthooks: the session is owned by another node")
