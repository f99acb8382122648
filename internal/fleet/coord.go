package fleet

import (
	"context"
	"fmt"
)

// Coord is the fleet's coordination service, as agents and the CLI use it.
// Fleet implements it over an object store; another backend (etcd) may
// implement it with leases and watches. Decisions stay pure (plan.go,
// liveness.go): a Coord only reads and writes.
//
// Safety never rests on a Coord: the volume's read-write attach fences the
// previous writer whatever the coordination state says, so a Coord bug can
// cost availability (a machine started twice is fenced on one host) but not
// a volume written by two hosts.
//
// Implementations are safe for concurrent use. Reads that find nothing
// return nil and no error.
type Coord interface {
	// CheckWritable fails, naming the backend, if it cannot make placement
	// versions single-writer (for the object store: conditional create
	// not honoured; ErrNoConditionalCreate). Writes check it themselves;
	// agents call it at start to refuse to run.
	CheckWritable(ctx context.Context) error

	// PutHeartbeat writes the host's own heartbeat (h.Host).
	PutHeartbeat(ctx context.Context, h *Heartbeat) error
	// Heartbeat reads one host's heartbeat; nil if it has none.
	Heartbeat(ctx context.Context, host string) (*Heartbeat, error)
	// Heartbeats reads every host's heartbeat, sorted by host: O(hosts),
	// for one-shot readers (the CLI), never for an agent's rounds.
	Heartbeats(ctx context.Context) ([]*Heartbeat, error)
	// WatchPeers returns the heartbeats of the bounded set of peers self
	// must watch for failure now (nil entries are left out); dead tells
	// which hosts self already holds dead, so the set can reach past them
	// (every host stays watched by a live one while several fail).
	WatchPeers(ctx context.Context, self string, dead func(host string) bool) ([]*Heartbeat, error)
	// Members returns the ids of the hosts that heartbeat, sorted, and the
	// hosts marked draining. Cheap to call often: implementations may
	// answer from a view refreshed at a bounded rate.
	Members(ctx context.Context) (hosts []string, draining map[string]bool, err error)

	// Assigned returns the newest placement of every machine that concerns
	// host: placed on it, moving off it (From), or moved off it recently
	// (so it stops what it still runs). Cost is bounded by those machines,
	// not by the fleet.
	Assigned(ctx context.Context, host string) (map[string]*Placement, error)
	// Latest returns a machine's newest placement; nil if it never existed.
	Latest(ctx context.Context, name string) (*Placement, error)
	// Placements returns the newest placement of every machine: O(machines),
	// for one-shot readers and plans that need the whole fleet (drain).
	Placements(ctx context.Context) (map[string]*Placement, error)
	// History returns a machine's retained placement versions, oldest
	// first (old versions may have been pruned; never the newest).
	History(ctx context.Context, name string) ([]*Placement, error)
	// CompareAndSwap writes p (p.By and p.Nonce set) as version p.Version
	// of its machine if and only if no such version exists yet: versions
	// are dense, so it succeeds only if the newest version is
	// p.Version-1, as its writer read. prev is the placement p follows
	// (nil for version 1): the hosts it concerned learn of p too. False
	// (and no error) when another writer took the version.
	CompareAndSwap(ctx context.Context, prev, p *Placement) (bool, error)

	// PutAck records that a.Host stopped the machine for version
	// a.Version; an existing ack is kept.
	PutAck(ctx context.Context, a *Ack) error
	// GetAck returns the ack of a version; nil if there is none yet.
	GetAck(ctx context.Context, name string, version uint64) (*Ack, error)
	// SetDraining marks host as draining (on) or not.
	SetDraining(ctx context.Context, host string, on bool) error
	// Draining returns the hosts marked draining, read now.
	Draining(ctx context.Context) (map[string]bool, error)
	// PutTrace overwrites a machine's access trace.
	PutTrace(ctx context.Context, t *Trace) error
	// GetTrace returns a machine's access trace; nil if none.
	GetTrace(ctx context.Context, name string) (*Trace, error)
}

var _ Coord = (*Fleet)(nil)

// maxUpdateAttempts bounds Update's retries when other writers keep
// winning.
const maxUpdateAttempts = 16

// movesInFlight bounds the placement writes a failover or a drain keeps in
// flight: each is still one compare-and-swap on its machine's version, so
// running them together changes how long a move of many machines takes,
// not what wins.
const movesInFlight = 32

// Update writes the next version of machine name through c. It reads the
// newest placement (nil if none), asks next for the following one, and
// compare-and-swaps it in. If another writer took that version first,
// Update reads again and asks next again: next must decide from what it is
// given, not from what the caller saw earlier. next may return ErrNoChange
// (Update returns it, with the current placement) or any error (returned
// as is). by names the writer in the object.
func Update(ctx context.Context, c Coord, name, by string, next func(cur *Placement) (*Placement, error)) (*Placement, error) {
	if err := ValidateName("machine", name); err != nil {
		return nil, err
	}
	for attempt := 0; attempt < maxUpdateAttempts; attempt++ {
		cur, err := c.Latest(ctx, name)
		if err != nil {
			return nil, err
		}
		p, err := next(cur)
		if err != nil {
			return cur, err
		}
		want := uint64(1)
		if cur != nil {
			want = cur.Version + 1
		}
		if p.Name != name || p.Version != want {
			return nil, fmt.Errorf("update %s: next built %s v%d, want v%d (a bug)", name, p.Name, p.Version, want)
		}
		p.By = by
		if p.Nonce, err = nonce(); err != nil {
			return nil, err
		}
		won, err := c.CompareAndSwap(ctx, cur, p)
		if err != nil {
			return nil, err
		}
		if won {
			return p, nil
		}
	}
	return nil, fmt.Errorf("update %s: %w", name, ErrContended)
}

// Scheduler is implemented by a Coord that elects one host to fail over
// dead hosts' machines (etcd). With it, Member fails over only while its
// host leads, and then watches every host (one read of the fleet's
// heartbeats per round, for one host); the other hosts read no peers'
// heartbeats (only those they Track); without it (the object store) every
// host fails over the peers it watches on the ring and the placement's
// compare-and-swap picks one winner per machine.
type Scheduler interface {
	// Leads reports whether self is the elected scheduler now; the first
	// call enters self in the election.
	Leads(ctx context.Context, self string) (bool, error)
}

// Leased is implemented by a Coord whose heartbeats carry their own
// liveness: each host renews a lease that the service itself expires,
// and a host whose lease expired reads as Down (etcd). Observers then
// hold a host dead by Down alone, never because they saw its heartbeat
// unchanged for a timeout: while the service elects a new leader, every
// host's heartbeat stalls (a renewal waits on the dead member until its
// deadline) although no host failed, and etcd extends every lease when a
// new leader takes over for exactly that reason. Failing hosts over on
// the stall moved machines off live hosts after each etcd election.
type Leased interface {
	// LeasedLiveness reports whether liveness is the lease.
	LeasedLiveness() bool
}

// leased reports whether c's liveness is its lease (Leased).
func leased(c Coord) bool {
	l, ok := c.(Leased)
	return ok && l.LeasedLiveness()
}
