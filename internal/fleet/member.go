package fleet

import (
	"context"
	"errors"
	"log/slog"
	"sort"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"
)

// Member is one host's side of the coordination: every round it watches a
// bounded set of peers (Coord.WatchPeers), fails over the machines of the
// ones it holds dead, and reads the placements concerning itself. On a
// Coord that is a Scheduler (etcd) only the elected host fails over, and it
// watches every host; the others watch no peers, only the hosts they Track
// (their leases are what fails them over). The agent
// drives it; so does the fleet simulation test, with a fake runtime. Its
// requests per round do not grow with the fleet (with the object-store
// Coord: see Fleet). Safe for concurrent use.
type Member struct {
	c    Coord
	self string
	by   string
	now  func() time.Time
	log  *slog.Logger
	// recheck is how long a dead host whose machines all moved is left
	// alone before its placements are read again.
	recheck time.Duration

	mu sync.Mutex
	// Guarded by mu:
	live *Liveness
	// extra counts Track calls per host: watched besides WatchPeers' set.
	extra map[string]int
	// handled: dead hosts whose machines were all moved, and when.
	handled map[string]time.Time
}

// MemberConfig configures a Member. Zero values pick the defaults.
type MemberConfig struct {
	// Self is this host's id (required); By names it in placements it
	// writes ("agent h1").
	Self, By string
	// Timeout: a watched host whose heartbeat did not change for this long
	// is dead (Liveness). Default 10s.
	Timeout time.Duration
	// Now tells the time; default time.Now.
	Now func() time.Time
	// Logger; nil discards.
	Logger *slog.Logger
}

// NewMember returns the Member of cfg.Self over c.
func NewMember(c Coord, cfg MemberConfig) *Member {
	if cfg.Timeout <= 0 {
		cfg.Timeout = 10 * time.Second
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	live := NewLiveness(cfg.Timeout)
	if leased(c) {
		live = NewLeasedLiveness(cfg.Timeout)
	}
	return &Member{c: c, self: cfg.Self, by: cfg.By, now: cfg.Now, log: cfg.Logger, recheck: 6 * cfg.Timeout,
		live: live, extra: map[string]int{}, handled: map[string]time.Time{}}
}

// Round is what one round found and did.
type Round struct {
	// Assigned is Coord.Assigned(self), with this round's failovers to
	// self applied.
	Assigned map[string]*Placement
	// Failovers are the placements this round wrote, moving machines off
	// dead hosts.
	Failovers []*Placement
}

// Round runs one round. load is how many machines this host runs (for
// placing failed-over machines).
func (m *Member) Round(ctx context.Context, load int) (*Round, error) {
	schedules := true
	if s, ok := m.c.(Scheduler); ok {
		var err error
		if schedules, err = s.Leads(ctx, m.self); err != nil {
			return nil, err
		}
	}
	var hbs []*Heartbeat
	var err error
	_, elected := m.c.(Scheduler)
	switch {
	case elected && schedules:
		hbs, err = m.c.Heartbeats(ctx) // the scheduler watches every host
	case elected:
		// Liveness is the lease and only the scheduler fails hosts over:
		// reading ring peers would cost every host requests each round
		// (half of them, at 500 hosts) for a result nothing acts on. The
		// hosts it Tracks (a previous host it waits on) are still read.
	default:
		hbs, err = m.c.WatchPeers(ctx, m.self, m.Dead)
	}
	if err != nil {
		return nil, err
	}
	m.mu.Lock()
	var extra []string
	for h := range m.extra {
		extra = append(extra, h)
	}
	m.mu.Unlock()
	seen := map[string]bool{}
	for _, hb := range hbs {
		seen[hb.Host] = true
	}
	for _, h := range extra {
		if seen[h] {
			continue
		}
		hb, err := m.c.Heartbeat(ctx, h)
		if err != nil {
			return nil, err
		}
		if hb != nil {
			hbs = append(hbs, hb)
		}
	}
	now := m.now()
	m.mu.Lock()
	m.live.Observe(now, hbs)
	m.mu.Unlock()

	r := &Round{}
	if schedules {
		if err := m.failover(ctx, now, load, r); err != nil {
			return nil, err
		}
	}
	if r.Assigned, err = m.c.Assigned(ctx, m.self); err != nil {
		return nil, err
	}
	for _, p := range r.Failovers {
		if cur, ok := r.Assigned[p.Name]; p.Host == m.self && (!ok || cur.Version < p.Version) {
			r.Assigned[p.Name] = p
		}
	}
	return r, nil
}

// failover moves the running machines of the watched hosts this member
// holds dead to the live, non-draining hosts it watches (or itself), the
// least loaded first. Every watcher of a dead host tries; the version's
// compare-and-swap decides who moves each machine, and the losers see it
// moved.
func (m *Member) failover(ctx context.Context, now time.Time, load int, r *Round) error {
	m.mu.Lock()
	var dead []string
	loads := map[string]int{m.self: load}
	cands := []string{m.self}
	for _, h := range m.live.Hosts() {
		if h == m.self {
			continue
		}
		switch m.live.State(h, now) {
		case HostDead:
			if t, ok := m.handled[h]; !ok || now.Sub(t) > m.recheck {
				dead = append(dead, h)
			}
		case HostLive:
			delete(m.handled, h)
			cands = append(cands, h)
			loads[h] = m.live.Heartbeat(h).Running()
		}
	}
	m.mu.Unlock()
	if len(dead) == 0 {
		return nil
	}
	_, draining, err := m.c.Members(ctx)
	if err != nil {
		return err
	}
	live := cands[:0]
	for _, h := range cands {
		if !draining[h] {
			live = append(live, h)
		}
	}
	sort.Strings(live)

	// Reads and moves run movesInFlight at a time: one at a time, the
	// failover of 10% of a fleet took as long as the machines to move.
	assigned := make([]map[string]*Placement, len(dead))
	var g errgroup.Group
	g.SetLimit(movesInFlight)
	for i, d := range dead {
		g.Go(func() error {
			var err error
			assigned[i], err = m.c.Assigned(ctx, d)
			return err
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}
	type move struct {
		Move
		dead int // index in dead
	}
	var moves []move
	for i, d := range dead {
		for _, mv := range FailoverMovesLoaded(assigned[i], func(h string) bool { return h == d }, live, loads) {
			loads[mv.To]++ // planned: the next dead host's machines spread past it
			moves = append(moves, move{mv, i})
		}
	}
	failed := make([]bool, len(dead))
	var mu sync.Mutex // guards failed and r.Failovers
	for _, mv := range moves {
		g.Go(func() error {
			p, err := Update(ctx, m.c, mv.Name, m.by, func(cur *Placement) (*Placement, error) {
				if cur == nil || cur.State != Running || cur.Host != mv.From || !m.Dead(cur.Host) {
					return nil, ErrNoChange // someone else moved it, or the host is back
				}
				return NextMove(cur, mv.Name, mv.To, ReasonFailover, now)
			})
			mu.Lock()
			defer mu.Unlock()
			switch {
			case errors.Is(err, ErrNoChange):
			case err != nil:
				failed[mv.dead] = true
				m.log.Warn("failover failed", "machine", mv.Name, "from", mv.From, "to", mv.To, "err", err)
			default:
				m.log.Warn("FAILOVER: host stopped heartbeating; machine reassigned", "machine", mv.Name, "dead_host", mv.From, "to", mv.To, "version", p.Version)
				r.Failovers = append(r.Failovers, p)
			}
			return nil
		})
	}
	g.Wait() // the moves report their errors themselves
	m.mu.Lock()
	for i, d := range dead {
		if !failed[i] {
			m.handled[d] = now
		}
	}
	m.mu.Unlock()
	return nil
}

// Dead reports whether this member, watching heartbeats, holds host dead
// (never itself). A host it does not watch is not dead to it.
func (m *Member) Dead(host string) bool {
	if host == m.self {
		return false
	}
	return m.State(host) == HostDead
}

// State returns what this member concludes about host now.
func (m *Member) State(host string) HostState {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.live.State(host, m.now())
}

// Heartbeat returns host's last heartbeat this member observed, or nil.
func (m *Member) Heartbeat(host string) *Heartbeat {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.live.Heartbeat(host)
}

// Track watches host besides the peers WatchPeers names, until the
// returned function is called: a new host waiting for a previous host's
// stop ack watches it, so it stops waiting if that host dies.
func (m *Member) Track(host string) (untrack func()) {
	m.mu.Lock()
	m.extra[host]++
	m.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			m.mu.Lock()
			if m.extra[host]--; m.extra[host] <= 0 {
				delete(m.extra, host)
			}
			m.mu.Unlock()
		})
	}
}
