package fleet

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/urldisk/urldisk/internal/format"
	"github.com/urldisk/urldisk/internal/objstore"
)

// Fleet is the object-store Coord: fleet state under "fleet/" (see the
// package comment). Safe for concurrent use. It caches decoded placements
// by key (they are immutable), the membership view and the heartbeats it
// read with their ETags, so a host's round costs a bounded number of
// requests whatever the fleet's size:
//
//   - its heartbeat: one PUT;
//   - its peers: one conditional GET per watched peer (WatchSet: Peers
//     live successors on the ring of host ids, plus the dead ones between);
//   - its assignments: one LIST of its index fleet/assign/<host>/, and a
//     GET only for a placement version it has not read before;
//   - membership and drain marks: two LISTs every MembershipEvery;
//   - a resync of its index from every placement every ResyncEvery.
type Fleet struct {
	store objstore.Store
	log   *slog.Logger
	opts  Options

	mu sync.Mutex
	// members and draining are the membership view, read at membersAt
	// (zero: never); guarded by mu.
	members   []string
	draining  map[string]bool
	membersAt time.Time
	// resyncAt is when Assigned last resynced each host's index; guarded
	// by mu.
	resyncAt map[string]time.Time
	// beats caches the last heartbeat read of each host with its ETag;
	// guarded by mu.
	beats map[string]etagged
	// placements caches decoded placement objects by key; guarded by mu.
	// Only the newest version of each machine is kept.
	placements map[string]*Placement
	// condOK: the store passed CheckConditionalCreate in this process;
	// guarded by mu. A failure is not remembered: the next write probes
	// again.
	condOK bool
}

// ErrNoConditionalCreate: the fleet's store does not honour
// create-if-absent, so two schedulers could both write one placement
// version (and two hosts run one machine).
var ErrNoConditionalCreate = errors.New("fleet store does not support conditional create; refusing to write placements")

// CheckConditionalCreate probes the fleet's store (objstore.Probe) once
// per Fleet, and returns an error wrapping ErrNoConditionalCreate, naming
// the store, if it does not honour create-if-absent: placement versions and
// acks are only single-writer if it does. The agent calls it at start;
// every placement or ack write calls it first, so a scheduler command
// probes the endpoint it uses before it writes.
func (f *Fleet) CheckConditionalCreate(ctx context.Context) error {
	f.mu.Lock()
	ok := f.condOK
	f.mu.Unlock()
	if ok {
		return nil
	}
	t0 := time.Now()
	ok, err := objstore.Probe(ctx, f.store)
	f.log.Debug("conditional-create probe", "honoured", ok, "duration", time.Since(t0), "err", err)
	if err != nil {
		return fmt.Errorf("probe fleet store: %w", err)
	}
	if !ok {
		return fmt.Errorf("%w: %s overwrote an object on a second create-if-absent (If-None-Match ignored?); use a store (and any proxy in front of it) that honours conditional create",
			ErrNoConditionalCreate, objstore.Describe(ctx, f.store))
	}
	f.mu.Lock()
	f.condOK = true
	f.mu.Unlock()
	return nil
}

// etagged is a decoded heartbeat and the ETag of the object it came from.
type etagged struct {
	etag string
	hb   *Heartbeat
}

// Options tune a Fleet. Zero values pick the defaults.
type Options struct {
	// Logger; nil discards.
	Logger *slog.Logger
	// Now tells the time; default time.Now.
	Now func() time.Time
	// Peers is how many live peers each host watches (WatchSet). Default
	// 3: a host is watched by its 3 nearest live predecessors on the ring.
	Peers int
	// MembershipEvery is how often the list of hosts and drain marks is
	// read again. Default 30s.
	MembershipEvery time.Duration
	// ResyncEvery is how often Assigned rebuilds a host's index from
	// every placement (repairing what writers that crashed between index
	// and placement, or binaries before the index, left). The first
	// Assigned of each host resyncs. Default 10m.
	ResyncEvery time.Duration
	// KeepVersions is how many placement versions (and their acks) each
	// machine keeps; older ones are deleted as new ones are written. The
	// newest is never deleted. Default 32.
	KeepVersions int
	// ForgetAfter is how long a host's index keeps a machine whose newest
	// placement no longer concerns it (moved away, removed), counted from
	// that placement's time. Default 10m.
	ForgetAfter time.Duration
}

// New returns a Fleet over store (the fleet URL's store; keys live under
// Prefix) with the default Options. A nil logger discards.
func New(store objstore.Store, log *slog.Logger) *Fleet {
	return NewWithOptions(store, Options{Logger: log})
}

// NewWithOptions returns a Fleet over store tuned by opts.
func NewWithOptions(store objstore.Store, opts Options) *Fleet {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Peers <= 0 {
		opts.Peers = 3
	}
	if opts.MembershipEvery <= 0 {
		opts.MembershipEvery = 30 * time.Second
	}
	if opts.ResyncEvery <= 0 {
		opts.ResyncEvery = 10 * time.Minute
	}
	if opts.KeepVersions <= 0 {
		opts.KeepVersions = 32
	}
	if opts.ForgetAfter <= 0 {
		opts.ForgetAfter = 10 * time.Minute
	}
	return &Fleet{store: store, log: opts.Logger, opts: opts, placements: map[string]*Placement{},
		resyncAt: map[string]time.Time{}, beats: map[string]etagged{}}
}

// Store returns the underlying store.
func (f *Fleet) Store() objstore.Store { return f.store }

// Placements returns the newest placement of every machine (removed ones
// included, with State Deleted). A corrupt newest version is logged and its
// machine left out: nobody acts on a placement it cannot read.
func (f *Fleet) Placements(ctx context.Context) (map[string]*Placement, error) {
	newest := map[string]uint64{}
	err := f.store.List(ctx, MachinesPrefix, func(oi objstore.ObjectInfo) error {
		if name, v, ok := ParsePlacementKey(oi.Key); ok && v > newest[name] {
			newest[name] = v
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list placements: %w", err)
	}
	out := make(map[string]*Placement, len(newest))
	for name, v := range newest {
		p, err := f.placement(ctx, name, v)
		if errors.Is(err, objstore.ErrNotFound) {
			continue // listed, then gone: only possible if someone deletes placements by hand
		}
		if err != nil {
			if ctx.Err() != nil {
				return nil, err
			}
			f.log.Error("unreadable placement; its machine is left alone", "machine", name, "version", v, "err", err)
			continue
		}
		out[name] = p
	}
	return out, nil
}

// Latest returns a machine's newest placement; nil (and no error) if it
// never existed.
func (f *Fleet) Latest(ctx context.Context, name string) (*Placement, error) {
	var newest, oldest uint64
	err := f.store.List(ctx, MachinePrefix(name), func(oi objstore.ObjectInfo) error {
		if n, v, ok := ParsePlacementKey(oi.Key); ok && n == name {
			newest = max(newest, v)
			if oldest == 0 || v < oldest {
				oldest = v
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list placements of %s: %w", name, err)
	}
	if newest == 0 {
		return nil, nil
	}
	// Versions left over beyond KeepVersions (a prune that failed, or
	// history from before pruning): delete them now.
	for v := oldest; v+uint64(f.opts.KeepVersions) <= newest; v++ {
		f.pruneVersion(ctx, name, v)
	}
	return f.placement(ctx, name, newest)
}

// History returns every placement version of a machine, oldest first.
func (f *Fleet) History(ctx context.Context, name string) ([]*Placement, error) {
	var vs []uint64
	err := f.store.List(ctx, MachinePrefix(name), func(oi objstore.ObjectInfo) error {
		if n, v, ok := ParsePlacementKey(oi.Key); ok && n == name {
			vs = append(vs, v)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list placements of %s: %w", name, err)
	}
	sort.Slice(vs, func(i, j int) bool { return vs[i] < vs[j] })
	out := make([]*Placement, 0, len(vs))
	for _, v := range vs {
		b, err := f.store.Get(ctx, PlacementKey(name, v))
		if errors.Is(err, objstore.ErrNotFound) && v != vs[len(vs)-1] {
			continue // pruned since the listing
		}
		if err != nil {
			return nil, fmt.Errorf("read placement %s v%d: %w", name, v, err)
		}
		p, err := DecodePlacement(b)
		if err != nil {
			return nil, fmt.Errorf("placement %s v%d: %w", name, v, err)
		}
		out = append(out, p)
	}
	return out, nil
}

// placement reads (or recalls) version v of a machine.
func (f *Fleet) placement(ctx context.Context, name string, v uint64) (*Placement, error) {
	key := PlacementKey(name, v)
	f.mu.Lock()
	p, ok := f.placements[key]
	f.mu.Unlock()
	if ok {
		return p, nil
	}
	b, err := f.store.Get(ctx, key)
	if err != nil {
		return nil, fmt.Errorf("read placement %s v%d: %w", name, v, err)
	}
	p, err = DecodePlacement(b)
	if err != nil {
		return nil, fmt.Errorf("placement %s v%d: %w", name, v, err)
	}
	if p.Name != name || p.Version != v {
		return nil, fmt.Errorf("placement %s v%d: names %s v%d inside", name, v, p.Name, p.Version)
	}
	f.mu.Lock()
	for k, old := range f.placements {
		if old.Name == name && old.Version < v {
			delete(f.placements, k)
		}
	}
	f.placements[key] = p
	f.mu.Unlock()
	return p, nil
}

// Update writes the next version of machine name (see the package
// function Update).
func (f *Fleet) Update(ctx context.Context, name, by string, next func(cur *Placement) (*Placement, error)) (*Placement, error) {
	return Update(ctx, f, name, by, next)
}

// CheckWritable implements Coord: CheckConditionalCreate.
func (f *Fleet) CheckWritable(ctx context.Context) error { return f.CheckConditionalCreate(ctx) }

// CompareAndSwap implements Coord: it creates p's version if absent.
// First it adds the version to the index of every host it concerns (p's
// host, prev's host, p's From), so no placement is ever visible that a host
// it concerns cannot find in its index; a writer that loses (or dies
// before the create) leaves index entries naming a version that is not
// theirs, which readers resolve from the placement itself. After a won
// create the version KeepVersions back is pruned, with its ack.
func (f *Fleet) CompareAndSwap(ctx context.Context, prev, p *Placement) (bool, error) {
	if err := f.CheckConditionalCreate(ctx); err != nil {
		return false, fmt.Errorf("write placement %s v%d: %w", p.Name, p.Version, err)
	}
	for _, h := range concerned(prev, p) {
		if err := f.store.Put(ctx, AssignKey(h, p.Name, p.Version), nil); err != nil {
			return false, fmt.Errorf("index placement %s v%d for host %s: %w", p.Name, p.Version, h, err)
		}
	}
	won, err := f.create(ctx, p)
	if err != nil {
		return false, err
	}
	if won {
		if keep := uint64(f.opts.KeepVersions); p.Version > keep {
			f.pruneVersion(ctx, p.Name, p.Version-keep)
		}
		f.log.Info("placement written", "machine", p.Name, "version", p.Version, "host", p.Host, "state", p.State, "reason", p.Reason, "from", p.From)
	} else {
		f.log.Debug("placement version taken by another writer; deciding again", "machine", p.Name, "version", p.Version)
	}
	return won, nil
}

// concerned returns the hosts p (following prev) concerns: they must
// find it in their index.
func concerned(prev, p *Placement) []string {
	var out []string
	add := func(h string) {
		if h != "" && !slices.Contains(out, h) {
			out = append(out, h)
		}
	}
	add(p.Host)
	add(p.From)
	if prev != nil {
		add(prev.Host)
	}
	return out
}

// pruneVersion deletes version v of a machine and its ack. Best effort: a
// leftover is deleted by the next Latest.
func (f *Fleet) pruneVersion(ctx context.Context, name string, v uint64) {
	for _, k := range []string{AckKey(name, v), PlacementKey(name, v)} {
		if err := f.store.Delete(ctx, k); err != nil {
			f.log.Debug("prune old placement version", "key", k, "err", err)
			return
		}
	}
}

// create creates p's version; false if another writer's object is there.
func (f *Fleet) create(ctx context.Context, p *Placement) (bool, error) {
	if err := f.CheckConditionalCreate(ctx); err != nil {
		return false, fmt.Errorf("write placement %s v%d: %w", p.Name, p.Version, err)
	}
	b, err := EncodePlacement(p)
	if err != nil {
		return false, err
	}
	key := PlacementKey(p.Name, p.Version)
	var putErr error
	for try := 0; try < 3; try++ {
		putErr = f.store.PutIfAbsent(ctx, key, b)
		if putErr == nil {
			return true, nil
		}
		if ctx.Err() != nil {
			return false, ctx.Err()
		}
		// Taken, or an unclear outcome: read who owns the slot.
		got, err := f.store.Get(ctx, key)
		if errors.Is(err, objstore.ErrNotFound) {
			continue // the create really failed; try again
		}
		if err != nil {
			return false, fmt.Errorf("create placement %s v%d: %w (then reading it back: %w)", p.Name, p.Version, putErr, err)
		}
		q, err := DecodePlacement(got)
		if err != nil {
			return false, fmt.Errorf("placement %s v%d: %w", p.Name, p.Version, err)
		}
		return q.Nonce == p.Nonce, nil // ours after a lost response, or another writer's
	}
	return false, fmt.Errorf("create placement %s v%d: %w", p.Name, p.Version, putErr)
}

func nonce() (string, error) {
	var b [12]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	return hex.EncodeToString(b[:]), nil
}

// PutHeartbeat overwrites the agent's heartbeat.
func (f *Fleet) PutHeartbeat(ctx context.Context, h *Heartbeat) error {
	return f.putDoc(ctx, AgentKey(h.Host), KindAgent, h, "heartbeat of "+h.Host)
}

// putDoc overwrites the document at key with v encoded as kind; what
// names it in errors.
func (f *Fleet) putDoc(ctx context.Context, key, kind string, v any, what string) error {
	b, err := format.EncodeDoc(kind, v)
	if err != nil {
		return fmt.Errorf("encode %s: %w", what, err)
	}
	if err := f.store.Put(ctx, key, b); err != nil {
		return fmt.Errorf("write %s: %w", what, err)
	}
	return nil
}

// Heartbeats reads every agent's heartbeat, sorted by host. Unreadable
// ones are logged and left out.
func (f *Fleet) Heartbeats(ctx context.Context) ([]*Heartbeat, error) {
	var keys []string
	err := f.store.List(ctx, AgentsPrefix, func(oi objstore.ObjectInfo) error {
		if h := strings.TrimPrefix(oi.Key, AgentsPrefix); ValidateName("host", h) == nil {
			keys = append(keys, oi.Key)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list agents: %w", err)
	}
	out := make([]*Heartbeat, 0, len(keys))
	for _, k := range keys {
		b, err := f.store.Get(ctx, k)
		if errors.Is(err, objstore.ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("read heartbeat %s: %w", k, err)
		}
		h, err := DecodeHeartbeat(b)
		if err != nil {
			f.log.Error("unreadable heartbeat", "key", k, "err", err)
			continue
		}
		out = append(out, h)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Host < out[j].Host })
	return out, nil
}

// PutAck records that ack.Host stopped the machine for version
// ack.Version. An existing ack is kept (acks are created if-absent).
func (f *Fleet) PutAck(ctx context.Context, a *Ack) error {
	if err := f.CheckConditionalCreate(ctx); err != nil {
		return fmt.Errorf("write ack %s v%d: %w", a.Name, a.Version, err)
	}
	b, err := EncodeAck(a)
	if err != nil {
		return err
	}
	err = f.store.PutIfAbsent(ctx, AckKey(a.Name, a.Version), b)
	if err != nil && !errors.Is(err, objstore.ErrExists) {
		return fmt.Errorf("write ack %s v%d: %w", a.Name, a.Version, err)
	}
	return nil
}

// GetAck returns the ack of a version; nil (and no error) if there is none
// yet.
func (f *Fleet) GetAck(ctx context.Context, name string, v uint64) (*Ack, error) {
	b, err := f.store.Get(ctx, AckKey(name, v))
	if errors.Is(err, objstore.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read ack %s v%d: %w", name, v, err)
	}
	a, err := DecodeAck(b)
	if err != nil {
		return nil, fmt.Errorf("ack %s v%d: %w", name, v, err)
	}
	return a, nil
}

// SetDraining marks host as draining (on) or not.
func (f *Fleet) SetDraining(ctx context.Context, host string, on bool) error {
	if err := ValidateName("host", host); err != nil {
		return err
	}
	var err error
	if on {
		err = f.store.Put(ctx, DrainKey(host), []byte(host+"\n"))
	} else {
		err = f.store.Delete(ctx, DrainKey(host))
	}
	if err != nil {
		return fmt.Errorf("mark %s draining=%v: %w", host, on, err)
	}
	return nil
}

// Draining returns the hosts marked draining.
func (f *Fleet) Draining(ctx context.Context) (map[string]bool, error) {
	out := map[string]bool{}
	err := f.store.List(ctx, DrainPrefix, func(oi objstore.ObjectInfo) error {
		out[strings.TrimPrefix(oi.Key, DrainPrefix)] = true
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list draining hosts: %w", err)
	}
	return out, nil
}

// PutTrace overwrites a machine's access trace.
func (f *Fleet) PutTrace(ctx context.Context, t *Trace) error {
	return f.putDoc(ctx, TraceKey(t.Name), KindTrace, t, "trace of "+t.Name)
}

// GetTrace returns a machine's access trace; nil (and no error) if none.
func (f *Fleet) GetTrace(ctx context.Context, name string) (*Trace, error) {
	b, err := f.store.Get(ctx, TraceKey(name))
	if errors.Is(err, objstore.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read trace of %s: %w", name, err)
	}
	t, err := DecodeTrace(b)
	if err != nil {
		return nil, fmt.Errorf("trace of %s: %w", name, err)
	}
	return t, nil
}

// Heartbeat implements Coord. It asks the store for the object only if it
// changed since the last read (ETag), and decodes only then.
func (f *Fleet) Heartbeat(ctx context.Context, host string) (*Heartbeat, error) {
	if err := ValidateName("host", host); err != nil {
		return nil, err
	}
	f.mu.Lock()
	prev, had := f.beats[host]
	f.mu.Unlock()
	b, etag, err := objstore.GetIfChanged(ctx, f.store, AgentKey(host), prev.etag)
	switch {
	case errors.Is(err, objstore.ErrNotModified) && had:
		return prev.hb, nil
	case errors.Is(err, objstore.ErrNotFound):
		f.mu.Lock()
		delete(f.beats, host)
		f.mu.Unlock()
		return nil, nil
	case err != nil:
		return nil, fmt.Errorf("read heartbeat of %s: %w", host, err)
	}
	h, err := DecodeHeartbeat(b)
	if err != nil {
		return nil, fmt.Errorf("heartbeat of %s: %w", host, err)
	}
	if h.Host != host {
		return nil, fmt.Errorf("heartbeat of %s: %w: names host %s inside", host, format.ErrCorrupt, h.Host)
	}
	f.mu.Lock()
	f.beats[host] = etagged{etag: etag, hb: h}
	f.mu.Unlock()
	return h, nil
}

// Members implements Coord: the view is read again once it is
// MembershipEvery old.
func (f *Fleet) Members(ctx context.Context) ([]string, map[string]bool, error) {
	now := f.opts.Now()
	f.mu.Lock()
	if !f.membersAt.IsZero() && now.Sub(f.membersAt) < f.opts.MembershipEvery && now.After(f.membersAt.Add(-time.Second)) {
		hosts, drain := f.members, f.draining
		f.mu.Unlock()
		return hosts, drain, nil
	}
	f.mu.Unlock()
	var hosts []string
	err := f.store.List(ctx, AgentsPrefix, func(oi objstore.ObjectInfo) error {
		if h := strings.TrimPrefix(oi.Key, AgentsPrefix); ValidateName("host", h) == nil {
			hosts = append(hosts, h)
		}
		return nil
	})
	if err != nil {
		return nil, nil, fmt.Errorf("list agents: %w", err)
	}
	drain, err := f.Draining(ctx)
	if err != nil {
		return nil, nil, err
	}
	f.mu.Lock()
	f.members, f.draining, f.membersAt = hosts, drain, now
	f.mu.Unlock()
	return hosts, drain, nil
}

// WatchPeers implements Coord: the heartbeats of WatchSet(members, self,
// Peers, dead). A peer whose heartbeat is gone is left out.
func (f *Fleet) WatchPeers(ctx context.Context, self string, dead func(string) bool) ([]*Heartbeat, error) {
	hosts, _, err := f.Members(ctx)
	if err != nil {
		return nil, err
	}
	var out []*Heartbeat
	for _, h := range WatchSet(hosts, self, f.opts.Peers, dead) {
		hb, err := f.Heartbeat(ctx, h)
		if err != nil {
			if ctx.Err() != nil {
				return nil, err
			}
			// One unreadable peer must not blind this host to the others.
			f.log.Warn("unreadable heartbeat of a watched peer", "host", h, "err", err)
			continue
		}
		if hb != nil {
			out = append(out, hb)
		}
	}
	return out, nil
}

// concerns reports whether host must keep p in its index at now: placed
// on it, or moved off it (or removed) less than forget ago, so that it
// stops and acks.
func concerns(p *Placement, host string, now time.Time, forget time.Duration) bool {
	if p.State != Deleted && p.Host == host {
		return true
	}
	return (p.From == host || p.Host == host) && now.Sub(p.Time) <= forget
}

// Assigned implements Coord from host's index: one LIST, a GET only for a
// version not read before. Index entries of older versions of a machine
// are deleted; so is a machine's entry once its newest placement has not
// concerned host for ForgetAfter. An entry naming a version that does not
// exist (yet: its writer is creating it, lost the race to a writer whose
// version concerns other hosts, or died) is skipped until that version is
// written. Every ResyncEvery (and at a host's first Assigned) the index is
// rebuilt from every placement.
func (f *Fleet) Assigned(ctx context.Context, host string) (map[string]*Placement, error) {
	if err := ValidateName("host", host); err != nil {
		return nil, err
	}
	index := map[string][]uint64{}
	err := f.store.List(ctx, HostAssignPrefix(host), func(oi objstore.ObjectInfo) error {
		if name, v, ok := ParseAssignKey(host, oi.Key); ok {
			index[name] = append(index[name], v)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list the assignments of %s: %w", host, err)
	}
	if err := f.resync(ctx, host, index); err != nil {
		return nil, err
	}
	now := f.opts.Now()
	out := make(map[string]*Placement, len(index))
	for name, vs := range index {
		slices.Sort(vs)
		newest := vs[len(vs)-1]
		for _, v := range vs[:len(vs)-1] {
			f.dropIndex(ctx, host, name, v)
		}
		p, err := f.placement(ctx, name, newest)
		if errors.Is(err, objstore.ErrNotFound) {
			continue
		}
		if err != nil {
			if ctx.Err() != nil {
				return nil, err
			}
			f.log.Error("unreadable placement; its machine is left alone", "machine", name, "version", newest, "err", err)
			continue
		}
		out[name] = p
		if !concerns(p, host, now, f.opts.ForgetAfter) {
			f.dropIndex(ctx, host, name, newest)
		}
	}
	return out, nil
}

// resync adds to host's index (and to index, its listing) every newest
// placement that concerns host and is missing there, when due.
func (f *Fleet) resync(ctx context.Context, host string, index map[string][]uint64) error {
	now := f.opts.Now()
	f.mu.Lock()
	last, ok := f.resyncAt[host]
	due := !ok || now.Sub(last) >= f.opts.ResyncEvery || now.Before(last)
	f.mu.Unlock()
	if !due {
		return nil
	}
	ps, err := f.Placements(ctx)
	if err != nil {
		return fmt.Errorf("resync the assignments of %s: %w", host, err)
	}
	for name, p := range ps {
		if !concerns(p, host, now, f.opts.ForgetAfter) || slices.Contains(index[name], p.Version) {
			continue
		}
		if err := f.store.Put(ctx, AssignKey(host, name, p.Version), nil); err != nil {
			return fmt.Errorf("resync the assignments of %s: %w", host, err)
		}
		f.log.Info("assignment index repaired", "host", host, "machine", name, "version", p.Version)
		index[name] = append(index[name], p.Version)
	}
	f.mu.Lock()
	f.resyncAt[host] = now
	f.mu.Unlock()
	return nil
}

// dropIndex deletes one entry of host's index; best effort (the next
// Assigned tries again).
func (f *Fleet) dropIndex(ctx context.Context, host, name string, v uint64) {
	if err := f.store.Delete(ctx, AssignKey(host, name, v)); err != nil {
		f.log.Debug("drop assignment index entry", "host", host, "machine", name, "version", v, "err", err)
	}
}
