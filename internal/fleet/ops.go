package fleet

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/urldisk/urldisk/internal/objstore"
	"github.com/urldisk/urldisk/internal/volref"
)

// Ops are the fleet operations behind the CLI and the agent API: they
// validate requests, choose hosts and write placement versions. Safe for
// concurrent use if ResolveVolume is.
type Ops struct {
	// Fleet is the coordination service the operations read and write.
	Fleet Coord
	// By names the writer in the placements it writes ("cli", "agent h1").
	By string
	// Now tells the time; nil means time.Now.
	Now func() time.Time
	// ResolveVolume, if set, returns the id of the volume a URL names, or
	// fails unless it names an existing volume. The fleet does not open
	// pools itself (that is the volume engine's, a layer it does not
	// import); the id it returns is recorded in the placement and is what
	// tells two machines' volumes apart.
	ResolveVolume func(ctx context.Context, url string) (id string, err error)
	// DefaultTimeout judges heartbeats that state no timeout. Zero: 10s.
	DefaultTimeout time.Duration
}

func (o *Ops) now() time.Time {
	if o.Now != nil {
		return o.Now()
	}
	return time.Now()
}

// View is a one-shot picture of the fleet, with liveness judged by
// heartbeat age (AgeState), or by the lease on a Leased coordination
// service.
type View struct {
	Now        time.Time
	Heartbeats map[string]*Heartbeat
	Draining   map[string]bool
	Placements map[string]*Placement
	timeout    time.Duration
	leased     bool
}

// View reads heartbeats, drain marks and placements.
func (o *Ops) View(ctx context.Context) (*View, error) {
	hbs, err := o.Fleet.Heartbeats(ctx)
	if err != nil {
		return nil, err
	}
	drain, err := o.Fleet.Draining(ctx)
	if err != nil {
		return nil, err
	}
	ps, err := o.Fleet.Placements(ctx)
	if err != nil {
		return nil, err
	}
	v := &View{Now: o.now(), Heartbeats: map[string]*Heartbeat{}, Draining: drain, Placements: ps, timeout: o.DefaultTimeout, leased: leased(o.Fleet)}
	if v.timeout <= 0 {
		v.timeout = 10 * time.Second
	}
	for _, h := range hbs {
		v.Heartbeats[h.Host] = h
	}
	return v, nil
}

// State returns a host's state by its heartbeat's age (or lease).
func (v *View) State(host string) HostState {
	return ageState(v.Heartbeats[host], v.Now, v.timeout, v.leased)
}

// Hosts returns every host with a heartbeat, sorted.
func (v *View) Hosts() []string { return slices.Sorted(maps.Keys(v.Heartbeats)) }

// Candidates returns the live, non-draining hosts other than exclude.
func (v *View) Candidates(exclude string) []string {
	var out []string
	for _, h := range v.Hosts() {
		if h != exclude && !v.Draining[h] && v.State(h) == HostLive {
			out = append(out, h)
		}
	}
	return out
}

// CheckHost fails unless host is known, live and not draining.
func (v *View) CheckHost(host string) error {
	if err := ValidateName("host", host); err != nil {
		return err
	}
	hb, ok := v.Heartbeats[host]
	switch {
	case !ok:
		return fmt.Errorf("%w %q: no agent with that id has heartbeated in this fleet (known: %s)", ErrUnknownHost, host, strings.Join(v.Hosts(), ", "))
	case hb.Down:
		return fmt.Errorf("%w: %s: its agent stopped at %s", ErrHostDead, host, hb.Time.Format(time.RFC3339))
	case v.State(host) != HostLive:
		return fmt.Errorf("%w: %s: last heartbeat %v ago", ErrHostDead, host, v.Now.Sub(hb.Time).Round(time.Millisecond))
	case v.Draining[host]:
		return fmt.Errorf("%w: %s is draining (undrain it first)", ErrHostDead, host)
	}
	return nil
}

// pick returns host after checking it, or the least loaded candidate.
func (v *View) pick(host, exclude string) (string, error) {
	if host != "" {
		return host, v.CheckHost(host)
	}
	h, ok := LeastLoaded(v.Candidates(exclude), Load(v.Placements))
	if !ok {
		return "", fmt.Errorf("%w: %d host(s) known, none live and not draining", ErrNoHosts, len(v.Heartbeats))
	}
	return h, nil
}

// sameVolume reports whether placement p uses the volume url, whose id
// is id ("" if unknown). Ids decide when both are known: every spelling
// of a volume resolves to its one id. Otherwise (placements written before
// ids were recorded) the canonical URLs are compared, never redacted ones:
// two spellings of one volume must not pass as two, or two machines would
// run on it and fence each other.
func sameVolume(p *Placement, url, id string) bool {
	if p.VolumeID != "" && id != "" {
		return p.VolumeID == id
	}
	ra, err1 := volref.ParseHead(p.Spec.Volume)
	rb, err2 := volref.ParseHead(url)
	if err1 != nil || err2 != nil {
		return p.Spec.Volume == url
	}
	return ra.URL() == rb.URL()
}

// volumeUser returns the machine other than name that uses the volume url
// (id: see sameVolume).
func (v *View) volumeUser(name, url, id string) (string, bool) {
	for n, p := range v.Placements {
		if n != name && p.State != Deleted && sameVolume(p, url, id) {
			return n, true
		}
	}
	return "", false
}

// Run creates machine name with spec on host ("" picks the least loaded
// live host).
func (o *Ops) Run(ctx context.Context, name string, spec Spec, host string) (*Placement, error) {
	if err := ValidateName("machine", name); err != nil {
		return nil, err
	}
	if err := spec.Validate(); err != nil {
		return nil, err
	}
	v, err := o.View(ctx)
	if err != nil {
		return nil, err
	}
	// By URL first (no I/O), then by id once the volume is resolved.
	if n, ok := v.volumeUser(name, spec.Volume, ""); ok {
		return nil, fmt.Errorf("%w: %s is the volume of machine %q", ErrVolumeInUse, objstore.Redact(spec.Volume), n)
	}
	if host, err = v.pick(host, ""); err != nil {
		return nil, err
	}
	var id string
	if o.ResolveVolume != nil {
		if id, err = o.ResolveVolume(ctx, spec.Volume); err != nil {
			return nil, fmt.Errorf("%w: volume %s: %w", ErrInvalid, objstore.Redact(spec.Volume), err)
		}
		if n, ok := v.volumeUser(name, spec.Volume, id); ok {
			return nil, fmt.Errorf("%w: %s is the volume of machine %q (volume id %s)", ErrVolumeInUse, objstore.Redact(spec.Volume), n, id)
		}
	}
	now := o.now()
	return Update(ctx, o.Fleet, name, o.By, func(cur *Placement) (*Placement, error) {
		p, err := NextRun(cur, name, spec, host, now)
		if err != nil {
			return nil, err
		}
		p.VolumeID = id
		return p, nil
	})
}

// Stop stops a machine; it stays placed on its host.
func (o *Ops) Stop(ctx context.Context, name string) (*Placement, error) {
	now := o.now()
	return Update(ctx, o.Fleet, name, o.By, func(cur *Placement) (*Placement, error) {
		return NextStop(cur, name, now)
	})
}

// Start starts a stopped machine on its host, or on the least loaded live
// host if its own is not live. A machine whose workload exited (or was
// fenced) on its host is started again there.
func (o *Ops) Start(ctx context.Context, name string) (*Placement, error) {
	v, err := o.View(ctx)
	if err != nil {
		return nil, err
	}
	return Update(ctx, o.Fleet, name, o.By, func(cur *Placement) (*Placement, error) {
		if err := exists(cur, name); err != nil {
			return nil, err
		}
		host := cur.Host
		if v.CheckHost(host) != nil {
			if host, err = v.pick("", cur.Host); err != nil {
				return nil, err
			}
		} else if cur.State == Running {
			// Running on a live host: if its workload ended by itself, a new
			// version makes the host run it again.
			if st, ok := v.Heartbeats[host].Machine(name); ok && st.Version == cur.Version &&
				(st.Phase == PhaseExited || st.Phase == PhaseFenced) {
				return NextRestart(cur, name, v.Now)
			}
		}
		return NextStart(cur, name, host, v.Now)
	})
}

// Remove deletes a machine (its volume stays).
func (o *Ops) Remove(ctx context.Context, name string) (*Placement, error) {
	now := o.now()
	return Update(ctx, o.Fleet, name, o.By, func(cur *Placement) (*Placement, error) {
		return NextRemove(cur, name, now)
	})
}

// Migrate moves a machine to host. ErrNoChange if it is already there.
func (o *Ops) Migrate(ctx context.Context, name, host string) (*Placement, error) {
	v, err := o.View(ctx)
	if err != nil {
		return nil, err
	}
	if err := v.CheckHost(host); err != nil {
		return nil, err
	}
	return Update(ctx, o.Fleet, name, o.By, func(cur *Placement) (*Placement, error) {
		return NextMove(cur, name, host, ReasonMigrate, v.Now)
	})
}

// DrainResult is what Drain did with one machine.
type DrainResult struct {
	Move
	// Placement is the version written (nil on error).
	Placement *Placement
	Err       error
}

// Drain marks host draining (no machine is placed there any more) and
// moves every machine placed on it to the least loaded live hosts. A
// machine that cannot move (no candidate, a failed write) is reported with
// its error; the others still move.
func (o *Ops) Drain(ctx context.Context, host string) ([]DrainResult, error) {
	v, err := o.View(ctx)
	if err != nil {
		return nil, err
	}
	if _, ok := v.Heartbeats[host]; !ok {
		if err := ValidateName("host", host); err != nil {
			return nil, err
		}
		return nil, fmt.Errorf("%w %q: no agent with that id has heartbeated in this fleet (known: %s)", ErrUnknownHost, host, strings.Join(v.Hosts(), ", "))
	}
	if err := o.Fleet.SetDraining(ctx, host, true); err != nil {
		return nil, err
	}
	cands := v.Candidates(host)
	moves := DrainMoves(v.Placements, host, cands)
	out := make([]DrainResult, len(moves))
	planned := map[string]bool{}
	var g errgroup.Group
	g.SetLimit(movesInFlight) // one at a time, a 100-machine drain took seconds
	for i, m := range moves {
		planned[m.Name] = true
		g.Go(func() error {
			p, err := Update(ctx, o.Fleet, m.Name, o.By, func(cur *Placement) (*Placement, error) {
				if cur == nil || cur.State == Deleted || cur.Host != host {
					return nil, ErrNoChange // moved or removed meanwhile
				}
				return NextMove(cur, m.Name, m.To, ReasonDrain, v.Now)
			})
			if errors.Is(err, ErrNoChange) {
				err = nil
				p = nil
			}
			out[i] = DrainResult{Move: m, Placement: p, Err: err}
			return nil
		})
	}
	g.Wait() // each result carries its error
	for n, p := range v.Placements {
		if p.State != Deleted && p.Host == host && !planned[n] {
			out = append(out, DrainResult{Move: Move{Name: n, Version: p.Version, From: host}, Err: fmt.Errorf("%w to move it to", ErrNoHosts)})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}
