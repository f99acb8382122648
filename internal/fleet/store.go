package fleet

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/urldisk/urldisk/internal/objstore"
)

// Fleet reads and writes fleet state in an object store. Safe for
// concurrent use. It caches decoded placements by key (they are immutable).
type Fleet struct {
	store objstore.Store
	log   *slog.Logger

	mu sync.Mutex
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

// New returns a Fleet over store (the fleet URL's store; keys live under
// Prefix). A nil logger discards.
func New(store objstore.Store, log *slog.Logger) *Fleet {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Fleet{store: store, log: log, placements: map[string]*Placement{}}
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
	var newest uint64
	err := f.store.List(ctx, MachinePrefix(name), func(oi objstore.ObjectInfo) error {
		if n, v, ok := ParsePlacementKey(oi.Key); ok && n == name && v > newest {
			newest = v
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list placements of %s: %w", name, err)
	}
	if newest == 0 {
		return nil, nil
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
func (f *Fleet) CompareAndSwap(ctx context.Context, prev, p *Placement) (bool, error) {
	won, err := f.create(ctx, p)
	if err != nil {
		return false, err
	}
	if won {
		f.log.Info("placement written", "machine", p.Name, "version", p.Version, "host", p.Host, "state", p.State, "reason", p.Reason, "from", p.From)
	} else {
		f.log.Debug("placement version taken by another writer; deciding again", "machine", p.Name, "version", p.Version)
	}
	return won, nil
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
	b, err := EncodeHeartbeat(h)
	if err != nil {
		return err
	}
	if err := f.store.Put(ctx, AgentKey(h.Host), b); err != nil {
		return fmt.Errorf("write heartbeat of %s: %w", h.Host, err)
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
	b, err := EncodeTrace(t)
	if err != nil {
		return err
	}
	if err := f.store.Put(ctx, TraceKey(t.Name), b); err != nil {
		return fmt.Errorf("write trace of %s: %w", t.Name, err)
	}
	return nil
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

// Heartbeat implements Coord.
func (f *Fleet) Heartbeat(ctx context.Context, host string) (*Heartbeat, error) {
	if err := ValidateName("host", host); err != nil {
		return nil, err
	}
	b, err := f.store.Get(ctx, AgentKey(host))
	if errors.Is(err, objstore.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read heartbeat of %s: %w", host, err)
	}
	h, err := DecodeHeartbeat(b)
	if err != nil {
		return nil, fmt.Errorf("heartbeat of %s: %w", host, err)
	}
	return h, nil
}

// Members implements Coord.
func (f *Fleet) Members(ctx context.Context) ([]string, map[string]bool, error) {
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
	return hosts, drain, nil
}

// WatchPeers implements Coord.
func (f *Fleet) WatchPeers(ctx context.Context, self string, dead func(string) bool) ([]*Heartbeat, error) {
	return f.Heartbeats(ctx)
}

// Assigned implements Coord.
func (f *Fleet) Assigned(ctx context.Context, host string) (map[string]*Placement, error) {
	return f.Placements(ctx)
}
