// Package etcdcoord is fleet.Coord on etcd, for fleets past what the object
// store coordinates cheaply: every placement change is one transaction on
// the version keys' revisions, a host's assignments come from a watch (no
// polling), and every heartbeat renews the host's lease, so a host whose
// agent died is dead to every watcher when its lease expires.
//
// Keys, under the URL's prefix P:
//
//	P/agents/<host>                     heartbeat document (stays: membership)
//	P/alive/<host>                      on the host's lease: gone = dead
//	P/machines/<name>/<version:016x>    placement versions (newest KeepVersions kept)
//	P/assign/<host>/<name>              index: newest version concerning host (decimal)
//	P/acks/<name>/<version:016x>        stop acks
//	P/drain/<host>                      drain marks
//	P/traces/<name>                     access traces
//
// Documents are fleet's checksummed encodings, as in the object store.
package etcdcoord

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/urldisk/urldisk/internal/fleet"
)

// Options tune a Coord. Zero values pick the defaults.
type Options struct {
	// Self, if set, is the host this process runs for: its assignment
	// index is kept current by a watch instead of read per call.
	Self string
	// LeaseTTL is the heartbeat lease's time to live: a host that stops
	// heartbeating leaves the fleet this long after its last heartbeat.
	// Default 10s; etcd counts it in whole seconds (at least 2).
	LeaseTTL time.Duration
	// Peers and MembershipEvery are as fleet.Options'.
	Peers           int
	MembershipEvery time.Duration
	// KeepVersions is how many placement versions each machine keeps.
	// Default 32.
	KeepVersions int
	// ForgetAfter is how long a host's index keeps a machine whose newest
	// placement no longer concerns it, counted from that placement's time.
	// Default 10m.
	ForgetAfter time.Duration
	// Now tells the time; default time.Now.
	Now func() time.Time
	// Logger; nil discards.
	Logger *slog.Logger
}

// Coord is fleet.Coord on etcd. Safe for concurrent use. Close stops its
// watch and closes the client.
type Coord struct {
	cli    *clientv3.Client
	prefix string // ends with "/"
	opts   Options
	log    *slog.Logger

	watchCtx    context.Context
	watchCancel context.CancelFunc
	watchWG     sync.WaitGroup

	mu sync.Mutex
	// Guarded by mu:
	lease      clientv3.LeaseID // 0: none yet (or expired)
	members    []string
	draining   map[string]bool
	membersAt  time.Time
	placements map[string]*fleet.Placement // newest read version per machine
	// index is Self's assignment index as the watch last saw it; indexOK
	// says it is current (false until the first read, and after the
	// watch broke).
	index   map[string]uint64
	indexOK bool
	elect   election
}

var (
	_ fleet.Coord  = (*Coord)(nil)
	_ fleet.Leased = (*Coord)(nil)
)

// New returns a Coord over an etcd client; keys live under prefix (""
// or ending with "/"). Close closes cli.
func New(cli *clientv3.Client, prefix string, opts Options) *Coord {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.LeaseTTL <= 0 {
		opts.LeaseTTL = 10 * time.Second
	}
	if opts.Peers <= 0 {
		opts.Peers = 3
	}
	if opts.MembershipEvery <= 0 {
		opts.MembershipEvery = 30 * time.Second
	}
	if opts.KeepVersions <= 0 {
		opts.KeepVersions = 32
	}
	if opts.ForgetAfter <= 0 {
		opts.ForgetAfter = 10 * time.Minute
	}
	c := &Coord{cli: cli, prefix: prefix, opts: opts, log: opts.Logger,
		placements: map[string]*fleet.Placement{}, index: map[string]uint64{}}
	c.watchCtx, c.watchCancel = context.WithCancel(context.Background())
	return c
}

// Close stops the watch and closes the client.
func (c *Coord) Close() error {
	c.watchCancel()
	c.watchWG.Wait()
	return c.cli.Close()
}

func (c *Coord) agentKey(h string) string      { return c.prefix + "agents/" + h }
func (c *Coord) aliveKey(h string) string      { return c.prefix + "alive/" + h }
func (c *Coord) machinePrefix(n string) string { return c.prefix + "machines/" + n + "/" }
func (c *Coord) versionKey(n string, v uint64) string {
	return fmt.Sprintf("%s%016x", c.machinePrefix(n), v)
}
func (c *Coord) assignPrefix(h string) string { return c.prefix + "assign/" + h + "/" }
func (c *Coord) assignKey(h, n string) string { return c.assignPrefix(h) + n }
func (c *Coord) ackKey(n string, v uint64) string {
	return fmt.Sprintf("%sacks/%s/%016x", c.prefix, n, v)
}
func (c *Coord) drainKey(h string) string { return c.prefix + "drain/" + h }
func (c *Coord) traceKey(n string) string { return c.prefix + "traces/" + n }

// CheckWritable implements fleet.Coord: etcd transactions are
// linearizable; this checks the cluster answers.
func (c *Coord) CheckWritable(ctx context.Context) error {
	if _, err := c.cli.Get(ctx, c.prefix+"agents/", clientv3.WithPrefix(), clientv3.WithCountOnly()); err != nil {
		return fmt.Errorf("etcd: %w", err)
	}
	return nil
}

// PutHeartbeat implements fleet.Coord: one transaction writes the
// heartbeat and the host's alive key on its lease, which it renews (a
// stopping agent's last heartbeat deletes the alive key instead). The
// renewal goes alongside the write, not before it: a keep-alive is a
// round trip of its own to the leader (a follower forwards it, and the
// leader confirms its leadership with a quorum first), and in sequence
// a heartbeat waited for both (at 1,000 simulated hosts the write's wait
// dominates: BENCHMARKS.md, fleet simulator). A write
// naming a lease that expired fails; so does its renewal, and the host
// then grants a new lease and writes again.
func (c *Coord) PutHeartbeat(ctx context.Context, h *fleet.Heartbeat) error {
	b, err := fleet.EncodeHeartbeat(h)
	if err != nil {
		return err
	}
	write := func(alive clientv3.Op) error {
		if _, err := c.cli.Txn(ctx).Then(clientv3.OpPut(c.agentKey(h.Host), string(b)), alive).Commit(); err != nil {
			return fmt.Errorf("write heartbeat of %s: %w", h.Host, err)
		}
		return nil
	}
	if h.Down {
		return write(clientv3.OpDelete(c.aliveKey(h.Host)))
	}
	c.mu.Lock()
	id := c.lease
	c.mu.Unlock()
	if id != 0 {
		renewed := make(chan error, 1)
		go func() {
			_, err := c.cli.KeepAliveOnce(ctx, id)
			renewed <- err
		}()
		werr := write(clientv3.OpPut(c.aliveKey(h.Host), "", clientv3.WithLease(id)))
		rerr := <-renewed
		if rerr == nil {
			return werr
		}
		if ctx.Err() != nil {
			return fmt.Errorf("write heartbeat of %s: renew lease: %w", h.Host, rerr)
		}
	}
	id, err = c.grantLease(ctx)
	if err != nil {
		return fmt.Errorf("write heartbeat of %s: %w", h.Host, err)
	}
	return write(clientv3.OpPut(c.aliveKey(h.Host), "", clientv3.WithLease(id)))
}

// LeasedLiveness implements fleet.Leased: a host is dead when its lease
// expired (Heartbeat and Heartbeats read it Down), by the cluster's clock;
// a heartbeat that stalls while the cluster elects a leader is not a
// failure (a new leader extends every lease).
func (c *Coord) LeasedLiveness() bool { return true }

// grantLease grants this process a new heartbeat lease: the first, or
// after the last expired (the agent was paused past its TTL).
func (c *Coord) grantLease(ctx context.Context) (clientv3.LeaseID, error) {
	ttl := max(int64((c.opts.LeaseTTL+time.Second-1)/time.Second), 2)
	g, err := c.cli.Grant(ctx, ttl)
	if err != nil {
		return 0, fmt.Errorf("grant lease: %w", err)
	}
	c.mu.Lock()
	c.lease = g.ID
	c.mu.Unlock()
	return g.ID, nil
}

// Heartbeat implements fleet.Coord (one transaction reading the heartbeat
// and the alive key): a host whose lease expired is reported Down, dead
// to every watcher at once.
func (c *Coord) Heartbeat(ctx context.Context, host string) (*fleet.Heartbeat, error) {
	if err := fleet.ValidateName("host", host); err != nil {
		return nil, err
	}
	r, err := c.cli.Txn(ctx).Then(clientv3.OpGet(c.agentKey(host)), clientv3.OpGet(c.aliveKey(host), clientv3.WithCountOnly())).Commit()
	if err != nil {
		return nil, fmt.Errorf("read heartbeat of %s: %w", host, err)
	}
	hbKVs, alive := r.Responses[0].GetResponseRange().Kvs, r.Responses[1].GetResponseRange().Count
	if len(hbKVs) == 0 {
		return nil, nil
	}
	h, err := fleet.DecodeHeartbeat(hbKVs[0].Value)
	if err != nil {
		return nil, fmt.Errorf("heartbeat of %s: %w", host, err)
	}
	if alive == 0 {
		h.Down = true
	}
	return h, nil
}

// Heartbeats implements fleet.Coord (one transaction of two range
// reads); hosts whose lease expired are marked Down.
func (c *Coord) Heartbeats(ctx context.Context) ([]*fleet.Heartbeat, error) {
	r, err := c.cli.Txn(ctx).Then(clientv3.OpGet(c.prefix+"agents/", clientv3.WithPrefix()),
		clientv3.OpGet(c.prefix+"alive/", clientv3.WithPrefix(), clientv3.WithKeysOnly())).Commit()
	if err != nil {
		return nil, fmt.Errorf("list agents: %w", err)
	}
	alive := map[string]bool{}
	for _, kv := range r.Responses[1].GetResponseRange().Kvs {
		alive[strings.TrimPrefix(string(kv.Key), c.prefix+"alive/")] = true
	}
	var out []*fleet.Heartbeat
	for _, kv := range r.Responses[0].GetResponseRange().Kvs {
		h, err := fleet.DecodeHeartbeat(kv.Value)
		if err != nil {
			c.log.Error("unreadable heartbeat", "key", string(kv.Key), "err", err)
			continue
		}
		if !alive[h.Host] {
			h.Down = true
		}
		out = append(out, h)
	}
	return out, nil
}

// Members implements fleet.Coord: hosts with a heartbeat key (live or
// not), re-read every MembershipEvery.
func (c *Coord) Members(ctx context.Context) ([]string, map[string]bool, error) {
	now := c.opts.Now()
	c.mu.Lock()
	if !c.membersAt.IsZero() && now.Sub(c.membersAt) < c.opts.MembershipEvery && !now.Before(c.membersAt) {
		hosts, drain := c.members, c.draining
		c.mu.Unlock()
		return hosts, drain, nil
	}
	c.mu.Unlock()
	r, err := c.cli.Get(ctx, c.prefix+"agents/", clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		return nil, nil, fmt.Errorf("list agents: %w", err)
	}
	drain, err := c.Draining(ctx)
	if err != nil {
		return nil, nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	var hosts []string
	for _, kv := range r.Kvs {
		if h := strings.TrimPrefix(string(kv.Key), c.prefix+"agents/"); fleet.ValidateName("host", h) == nil {
			hosts = append(hosts, h)
		}
	}
	c.members, c.draining, c.membersAt = hosts, drain, now
	return hosts, drain, nil
}

// WatchPeers implements fleet.Coord as the object store does: the ring of
// host ids (fleet.WatchSet), one read per watched peer.
func (c *Coord) WatchPeers(ctx context.Context, self string, dead func(string) bool) ([]*fleet.Heartbeat, error) {
	hosts, _, err := c.Members(ctx)
	if err != nil {
		return nil, err
	}
	var out []*fleet.Heartbeat
	for _, h := range fleet.WatchSet(hosts, self, c.opts.Peers, dead) {
		hb, err := c.Heartbeat(ctx, h)
		if err != nil {
			return nil, err
		}
		if hb != nil {
			out = append(out, hb)
		}
	}
	return out, nil
}

// Assigned implements fleet.Coord. For Options.Self the index comes from a
// watch (no request per call once it runs); for other hosts (a dead one
// being failed over) it is one range read.
func (c *Coord) Assigned(ctx context.Context, host string) (map[string]*fleet.Placement, error) {
	if err := fleet.ValidateName("host", host); err != nil {
		return nil, err
	}
	var index map[string]uint64
	if host == c.opts.Self {
		var err error
		if index, err = c.selfIndex(ctx); err != nil {
			return nil, err
		}
	} else {
		r, err := c.cli.Get(ctx, c.assignPrefix(host), clientv3.WithPrefix())
		if err != nil {
			return nil, fmt.Errorf("list the assignments of %s: %w", host, err)
		}
		index = c.parseIndex(host, r.Kvs)
	}
	got, err := c.placementsOf(ctx, index)
	if err != nil {
		return nil, err
	}
	now := c.opts.Now()
	out := make(map[string]*fleet.Placement, len(index))
	for name, v := range index {
		p := got[name]
		if p != nil {
			out[name] = p
		}
		// A version written with the entry in one transaction is missing
		// only once pruned: the machine left long ago.
		if p == nil || (!(p.State != fleet.Deleted && p.Host == host) && now.Sub(p.Time) > c.opts.ForgetAfter) {
			c.forget(ctx, host, name, v)
		}
	}
	return out, nil
}

// forget deletes host's index entry of a machine if it still names
// version v (a writer may have pointed it at a newer one meanwhile). Best
// effort: the next Assigned tries again.
func (c *Coord) forget(ctx context.Context, host, name string, v uint64) {
	k := c.assignKey(host, name)
	if _, err := c.cli.Txn(ctx).If(clientv3.Compare(clientv3.Value(k), "=", strconv.FormatUint(v, 10))).Then(clientv3.OpDelete(k)).Commit(); err != nil {
		c.log.Debug("drop assignment index entry", "host", host, "machine", name, "version", v, "err", err)
	}
}

func (c *Coord) parseIndex(host string, kvs []*mvccpb.KeyValue) map[string]uint64 {
	out := map[string]uint64{}
	for _, kv := range kvs {
		name := strings.TrimPrefix(string(kv.Key), c.assignPrefix(host))
		if v, err := strconv.ParseUint(string(kv.Value), 10, 64); err == nil && fleet.ValidateName("machine", name) == nil {
			out[name] = v
		}
	}
	return out
}

// selfIndex returns Self's index from the watch, starting it (one range
// read, then a watch from the revision after it) when it is not running.
func (c *Coord) selfIndex(ctx context.Context) (map[string]uint64, error) {
	c.mu.Lock()
	if c.indexOK {
		out := maps.Clone(c.index)
		c.mu.Unlock()
		return out, nil
	}
	c.mu.Unlock()
	host := c.opts.Self
	r, err := c.cli.Get(ctx, c.assignPrefix(host), clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("list the assignments of %s: %w", host, err)
	}
	index := c.parseIndex(host, r.Kvs)
	c.mu.Lock()
	c.index, c.indexOK = index, true
	out := maps.Clone(index)
	c.mu.Unlock()
	wch := c.cli.Watch(clientv3.WithRequireLeader(c.watchCtx), c.assignPrefix(host), clientv3.WithPrefix(), clientv3.WithRev(r.Header.Revision+1))
	c.watchWG.Add(1)
	go func() {
		defer c.watchWG.Done()
		c.follow(host, wch)
	}()
	return out, nil
}

// follow applies the watch's events to the index until the watch ends;
// then the next Assigned reads the index again and watches anew.
func (c *Coord) follow(host string, wch clientv3.WatchChan) {
	defer func() {
		c.mu.Lock()
		c.indexOK = false
		c.mu.Unlock()
	}()
	for resp := range wch {
		if err := resp.Err(); err != nil {
			if c.watchCtx.Err() == nil {
				c.log.Warn("assignment watch broke; reading the index again", "err", err)
			}
			return
		}
		c.mu.Lock()
		for _, ev := range resp.Events {
			name := strings.TrimPrefix(string(ev.Kv.Key), c.assignPrefix(host))
			if ev.Type == clientv3.EventTypeDelete {
				delete(c.index, name)
				continue
			}
			if v, err := strconv.ParseUint(string(ev.Kv.Value), 10, 64); err == nil {
				c.index[name] = v
			}
		}
		c.mu.Unlock()
	}
}

// txnReads is how many placement reads placementsOf puts in one
// transaction: etcd refuses more than --max-txn-ops (128 by default).
const txnReads = 128

// placementsOf returns the placement versions index names (machine ->
// version; absent: pruned), the cached ones without a request and the
// others read txnReads to a transaction. A host's first round after a
// start made one read per machine it runs: at 1,000 hosts that round took
// 28-95 s, the machines waiting for it.
func (c *Coord) placementsOf(ctx context.Context, index map[string]uint64) (map[string]*fleet.Placement, error) {
	out := make(map[string]*fleet.Placement, len(index))
	var missing []string
	c.mu.Lock()
	for name, v := range index {
		if p := c.placements[name]; p != nil && p.Version == v {
			out[name] = p
		} else {
			missing = append(missing, name)
		}
	}
	c.mu.Unlock()
	slices.Sort(missing)
	for len(missing) > 0 {
		batch := missing[:min(len(missing), txnReads)]
		missing = missing[len(batch):]
		ops := make([]clientv3.Op, len(batch))
		for i, name := range batch {
			ops[i] = clientv3.OpGet(c.versionKey(name, index[name]))
		}
		r, err := c.cli.Txn(ctx).Then(ops...).Commit()
		if err != nil {
			return nil, fmt.Errorf("read %d placements (%s...): %w", len(batch), batch[0], err)
		}
		for i, name := range batch {
			kvs := r.Responses[i].GetResponseRange().GetKvs()
			if len(kvs) == 0 {
				continue
			}
			p, err := c.decode(name, index[name], kvs[0].Value)
			if err != nil {
				return nil, err
			}
			out[name] = p
		}
	}
	return out, nil
}

// placement returns version v of a machine (cached: versions never
// change); nil if it does not exist (pruned, or a newer one exists).
func (c *Coord) placement(ctx context.Context, name string, v uint64) (*fleet.Placement, error) {
	c.mu.Lock()
	p := c.placements[name]
	c.mu.Unlock()
	if p != nil && p.Version == v {
		return p, nil
	}
	r, err := c.cli.Get(ctx, c.versionKey(name, v))
	if err != nil {
		return nil, fmt.Errorf("read placement %s v%d: %w", name, v, err)
	}
	if len(r.Kvs) == 0 {
		return nil, nil
	}
	return c.decode(name, v, r.Kvs[0].Value)
}

func (c *Coord) decode(name string, v uint64, b []byte) (*fleet.Placement, error) {
	p, err := fleet.DecodePlacement(b)
	if err != nil {
		return nil, fmt.Errorf("placement %s v%d: %w", name, v, err)
	}
	if p.Name != name || p.Version != v {
		return nil, fmt.Errorf("placement %s v%d: names %s v%d inside", name, v, p.Name, p.Version)
	}
	c.mu.Lock()
	if cur := c.placements[name]; cur == nil || cur.Version < v {
		c.placements[name] = p
	}
	c.mu.Unlock()
	return p, nil
}

// Latest implements fleet.Coord: one range read of the newest version key.
func (c *Coord) Latest(ctx context.Context, name string) (*fleet.Placement, error) {
	r, err := c.cli.Get(ctx, c.machinePrefix(name), clientv3.WithPrefix(), clientv3.WithSort(clientv3.SortByKey, clientv3.SortDescend), clientv3.WithLimit(1))
	if err != nil {
		return nil, fmt.Errorf("read placement of %s: %w", name, err)
	}
	if len(r.Kvs) == 0 {
		return nil, nil
	}
	v, err := strconv.ParseUint(strings.TrimPrefix(string(r.Kvs[0].Key), c.machinePrefix(name)), 16, 64)
	if err != nil {
		return nil, fmt.Errorf("placement key %s: %w", r.Kvs[0].Key, err)
	}
	return c.decode(name, v, r.Kvs[0].Value)
}

// Placements implements fleet.Coord (one range read of every version).
func (c *Coord) Placements(ctx context.Context) (map[string]*fleet.Placement, error) {
	r, err := c.cli.Get(ctx, c.prefix+"machines/", clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("list placements: %w", err)
	}
	out := map[string]*fleet.Placement{}
	for _, kv := range r.Kvs {
		p, err := fleet.DecodePlacement(kv.Value)
		if err != nil {
			c.log.Error("unreadable placement; its machine is left alone", "key", string(kv.Key), "err", err)
			continue
		}
		if cur := out[p.Name]; cur == nil || p.Version > cur.Version {
			out[p.Name] = p
		}
	}
	return out, nil
}

// History implements fleet.Coord.
func (c *Coord) History(ctx context.Context, name string) ([]*fleet.Placement, error) {
	r, err := c.cli.Get(ctx, c.machinePrefix(name), clientv3.WithPrefix(), clientv3.WithSort(clientv3.SortByKey, clientv3.SortAscend))
	if err != nil {
		return nil, fmt.Errorf("list placements of %s: %w", name, err)
	}
	var out []*fleet.Placement
	for _, kv := range r.Kvs {
		p, err := fleet.DecodePlacement(kv.Value)
		if err != nil {
			return nil, fmt.Errorf("placement %s: %w", kv.Key, err)
		}
		out = append(out, p)
	}
	return out, nil
}

// CompareAndSwap implements fleet.Coord as one transaction: if version
// p.Version does not exist and (after version 1) version p.Version-1 still
// does at the revision prev was written, create p, point the index of every
// host it concerns at it, and prune the version KeepVersions back with its
// ack.
func (c *Coord) CompareAndSwap(ctx context.Context, prev, p *fleet.Placement) (bool, error) {
	b, err := fleet.EncodePlacement(p)
	if err != nil {
		return false, err
	}
	conds := []clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision(c.versionKey(p.Name, p.Version)), "=", 0)}
	if p.Version > 1 {
		conds = append(conds, clientv3.Compare(clientv3.CreateRevision(c.versionKey(p.Name, p.Version-1)), ">", 0))
	}
	ops := []clientv3.Op{clientv3.OpPut(c.versionKey(p.Name, p.Version), string(b))}
	hosts := []string{p.Host, p.From}
	if prev != nil {
		hosts = append(hosts, prev.Host)
	}
	seen := map[string]bool{}
	for _, h := range hosts {
		if h != "" && !seen[h] {
			seen[h] = true
			ops = append(ops, clientv3.OpPut(c.assignKey(h, p.Name), strconv.FormatUint(p.Version, 10)))
		}
	}
	if keep := uint64(c.opts.KeepVersions); p.Version > keep {
		ops = append(ops, clientv3.OpDelete(c.versionKey(p.Name, p.Version-keep)), clientv3.OpDelete(c.ackKey(p.Name, p.Version-keep)))
	}
	r, err := c.cli.Txn(ctx).If(conds...).Then(ops...).Commit()
	if err != nil {
		// An unclear outcome: read who owns the version.
		q, gerr := c.placement(ctx, p.Name, p.Version)
		if gerr != nil || q == nil {
			return false, fmt.Errorf("write placement %s v%d: %w", p.Name, p.Version, err)
		}
		return q.Nonce == p.Nonce, nil
	}
	if r.Succeeded {
		c.mu.Lock()
		c.placements[p.Name] = p
		c.mu.Unlock()
		c.log.Info("placement written", "machine", p.Name, "version", p.Version, "host", p.Host, "state", p.State, "reason", p.Reason, "from", p.From)
	}
	return r.Succeeded, nil
}

// PutAck implements fleet.Coord (create if absent).
func (c *Coord) PutAck(ctx context.Context, a *fleet.Ack) error {
	b, err := fleet.EncodeAck(a)
	if err != nil {
		return err
	}
	k := c.ackKey(a.Name, a.Version)
	if _, err := c.cli.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(k), "=", 0)).Then(clientv3.OpPut(k, string(b))).Commit(); err != nil {
		return fmt.Errorf("write ack %s v%d: %w", a.Name, a.Version, err)
	}
	return nil
}

// GetAck implements fleet.Coord.
func (c *Coord) GetAck(ctx context.Context, name string, v uint64) (*fleet.Ack, error) {
	r, err := c.cli.Get(ctx, c.ackKey(name, v))
	if err != nil {
		return nil, fmt.Errorf("read ack %s v%d: %w", name, v, err)
	}
	if len(r.Kvs) == 0 {
		return nil, nil
	}
	a, err := fleet.DecodeAck(r.Kvs[0].Value)
	if err != nil {
		return nil, fmt.Errorf("ack %s v%d: %w", name, v, err)
	}
	return a, nil
}

// SetDraining implements fleet.Coord.
func (c *Coord) SetDraining(ctx context.Context, host string, on bool) error {
	if err := fleet.ValidateName("host", host); err != nil {
		return err
	}
	var err error
	if on {
		_, err = c.cli.Put(ctx, c.drainKey(host), host)
	} else {
		_, err = c.cli.Delete(ctx, c.drainKey(host))
	}
	if err != nil {
		return fmt.Errorf("mark %s draining=%v: %w", host, on, err)
	}
	return nil
}

// Draining implements fleet.Coord.
func (c *Coord) Draining(ctx context.Context) (map[string]bool, error) {
	r, err := c.cli.Get(ctx, c.prefix+"drain/", clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		return nil, fmt.Errorf("list draining hosts: %w", err)
	}
	out := map[string]bool{}
	for _, kv := range r.Kvs {
		out[strings.TrimPrefix(string(kv.Key), c.prefix+"drain/")] = true
	}
	return out, nil
}

// PutTrace implements fleet.Coord.
func (c *Coord) PutTrace(ctx context.Context, t *fleet.Trace) error {
	b, err := fleet.EncodeTrace(t)
	if err != nil {
		return err
	}
	if _, err := c.cli.Put(ctx, c.traceKey(t.Name), string(b)); err != nil {
		return fmt.Errorf("write trace of %s: %w", t.Name, err)
	}
	return nil
}

// GetTrace implements fleet.Coord.
func (c *Coord) GetTrace(ctx context.Context, name string) (*fleet.Trace, error) {
	r, err := c.cli.Get(ctx, c.traceKey(name))
	if err != nil {
		return nil, fmt.Errorf("read trace of %s: %w", name, err)
	}
	if len(r.Kvs) == 0 {
		return nil, nil
	}
	t, err := fleet.DecodeTrace(r.Kvs[0].Value)
	if err != nil {
		return nil, fmt.Errorf("trace of %s: %w", name, err)
	}
	return t, nil
}
