package etcdcoord

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"go.etcd.io/etcd/server/v3/embed"

	"github.com/urldisk/urldisk/internal/fleet"
)

// cluster is a real 3-member etcd cluster on loopback, in this process
// (go.etcd.io/etcd/server/v3/embed), each member with its own data
// directory and ports.
type cluster struct {
	t       *testing.T
	members []*embed.Etcd
	stops   []func() // close member i once
	clients []string // client URLs
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func startCluster(t *testing.T) *cluster {
	t.Helper()
	c := &cluster{t: t}
	type ports struct{ peer, client int }
	var ps []ports
	var initial []string
	for i := range 3 {
		p := ports{freePort(t), freePort(t)}
		ps = append(ps, p)
		initial = append(initial, fmt.Sprintf("m%d=http://127.0.0.1:%d", i, p.peer))
	}
	for i, p := range ps {
		cfg := embed.NewConfig()
		cfg.Name = fmt.Sprintf("m%d", i)
		cfg.Dir = t.TempDir()
		peer, _ := url.Parse(fmt.Sprintf("http://127.0.0.1:%d", p.peer))
		client, _ := url.Parse(fmt.Sprintf("http://127.0.0.1:%d", p.client))
		cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{*peer}, []url.URL{*peer}
		cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{*client}, []url.URL{*client}
		cfg.InitialCluster = strings.Join(initial, ",")
		cfg.InitialClusterToken = "urldisk-test"
		cfg.LogLevel = "error"
		e, err := embed.StartEtcd(cfg)
		if err != nil {
			t.Fatalf("start etcd member %d: %v", i, err)
		}
		c.members = append(c.members, e)
		c.stops = append(c.stops, sync.OnceFunc(e.Close))
		c.clients = append(c.clients, client.Host)
		t.Cleanup(c.stops[i])
	}
	for i, e := range c.members {
		select {
		case <-e.Server.ReadyNotify():
		case <-time.After(60 * time.Second):
			t.Fatalf("etcd member %d not ready after 60s", i)
		}
	}
	return c
}

// url is the --coord URL of the cluster with prefix.
func (c *cluster) url(prefix string) string {
	return "etcd://" + strings.Join(c.clients, ",") + "/" + prefix
}

// killLeader stops the member that leads; it returns its index.
func (c *cluster) killLeader() int {
	c.t.Helper()
	for i, e := range c.members {
		if e.Server.Leader() == e.Server.MemberID() {
			c.stops[i]()
			return i
		}
	}
	c.t.Fatal("no leader")
	return -1
}

func open(t *testing.T, c *cluster, prefix string, opts Options) *Coord {
	t.Helper()
	co, err := Open(context.Background(), c.url(prefix), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { co.Close() })
	return co
}

func spec(name string) fleet.Spec {
	return fleet.Spec{Volume: "file:///pool/" + name, Runtime: fleet.RuntimeProcess, Args: []string{"true"}}
}

func TestParseURL(t *testing.T) {
	eps, prefix, err := ParseURL("etcd://h1:2379,h2:2379/urldisk/prod")
	if err != nil || strings.Join(eps, " ") != "http://h1:2379 http://h2:2379" || prefix != "urldisk/prod/" {
		t.Fatalf("ParseURL: %v %q %v", eps, prefix, err)
	}
	for _, bad := range []string{"etcd:///x", "http://h1:2379/x", "etcd://h1/x", "etcd://u:p@h1:2379/x", "etcd://h1:2379,/x"} {
		if _, _, err := ParseURL(bad); !errors.Is(err, ErrBadURL) {
			t.Errorf("ParseURL(%q): %v, want ErrBadURL", bad, err)
		}
	}
}

// TestEtcdUpdateConcurrentWriters: writers on their own clients bump one
// machine's version through fleet.Update at once: every success owns
// exactly one version, versions are dense, and history keeps only the
// newest KeepVersions. Then the leader is killed and writes go on: no
// version a writer was told it won is lost.
func TestEtcdUpdateConcurrentWriters(t *testing.T) {
	c := startCluster(t)
	ctx := context.Background()
	admin := open(t, c, "t1", Options{KeepVersions: 1000})
	if _, err := fleet.Update(ctx, admin, "m", "w", func(cur *fleet.Placement) (*fleet.Placement, error) {
		return fleet.NextRun(cur, "m", spec("m"), "h0", time.Now())
	}); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	owned := map[uint64]string{}
	write := func(rounds int) {
		var wg sync.WaitGroup
		for w := range 4 {
			co := open(t, c, "t1", Options{KeepVersions: 1000})
			wg.Go(func() {
				for i := range rounds {
					host := fmt.Sprintf("h%d-%d", w, i)
					p, err := fleet.Update(ctx, co, "m", host, func(cur *fleet.Placement) (*fleet.Placement, error) {
						return fleet.NextMove(cur, "m", host, fleet.ReasonMigrate, time.Now())
					})
					if err != nil {
						t.Errorf("writer %d: %v", w, err)
						continue
					}
					mu.Lock()
					if o, ok := owned[p.Version]; ok {
						t.Errorf("version %d won by %s and %s", p.Version, o, host)
					}
					owned[p.Version] = host
					mu.Unlock()
				}
			})
		}
		wg.Wait()
	}
	write(5)
	killed := c.killLeader()
	t.Logf("killed leader m%d", killed)
	write(5)
	hist, err := admin.History(ctx, "m")
	if err != nil {
		t.Fatal(err)
	}
	if len(hist) != 1+len(owned) || len(owned) != 40 {
		t.Fatalf("%d versions in history, %d won; want 41 and 40", len(hist), len(owned))
	}
	for i, p := range hist {
		if p.Version != uint64(i+1) || (i > 0 && owned[p.Version] != p.Host) {
			t.Fatalf("version %d at %d: host %s, won by %s", p.Version, i, p.Host, owned[p.Version])
		}
	}
	// Pruning: a Coord keeping 8 versions prunes on its next write.
	pruner := open(t, c, "t1", Options{KeepVersions: 8})
	for range 8 {
		if _, err := fleet.Update(ctx, pruner, "m", "p", func(cur *fleet.Placement) (*fleet.Placement, error) {
			return fleet.NextRestart(cur, "m", time.Now())
		}); err != nil {
			t.Fatal(err)
		}
	}
	hist, err = admin.History(ctx, "m")
	if err != nil {
		t.Fatal(err)
	}
	// Each write of version v deleted v-8: 34..41 are gone, 42..49 kept
	// (older ones were left by the Coord that kept everything).
	kept := map[uint64]bool{}
	for _, p := range hist {
		kept[p.Version] = true
	}
	for v := uint64(34); v <= 49; v++ {
		if kept[v] != (v >= 42) {
			t.Fatalf("version %d kept=%v after writes up to 49 keeping 8", v, kept[v])
		}
	}
}

// TestEtcdFailover: four hosts run fleet.Member rounds on their own etcd
// Coords with heartbeats on 2 s leases; one stops heartbeating (killed):
// its lease expires, its watchers see it dead and move its machines to
// live hosts, whose watched index shows them without reading it again.
func TestEtcdFailover(t *testing.T) {
	c := startCluster(t)
	ctx := context.Background()
	const interval, timeout = 200 * time.Millisecond, 2 * time.Second
	type host struct {
		id  string
		co  *Coord
		m   *fleet.Member
		seq uint64
	}
	var hosts []*host
	for i := range 4 {
		h := &host{id: fmt.Sprintf("h%d", i)}
		h.co = open(t, c, "t2", Options{Self: h.id, LeaseTTL: timeout, MembershipEvery: timeout})
		h.m = fleet.NewMember(h.co, fleet.MemberConfig{Self: h.id, By: "agent " + h.id, Timeout: timeout})
		hosts = append(hosts, h)
	}
	beat := func(h *host) {
		h.seq++
		if err := h.co.PutHeartbeat(ctx, &fleet.Heartbeat{Host: h.id, Seq: h.seq, Started: time.Now(), Time: time.Now(), Timeout: timeout}); err != nil {
			t.Fatal(err)
		}
	}
	for _, h := range hosts {
		beat(h)
	}
	admin := open(t, c, "t2", Options{})
	for i := range 8 {
		name, on := fmt.Sprintf("m%d", i), hosts[i%4].id
		if _, err := fleet.Update(ctx, admin, name, "test", func(cur *fleet.Placement) (*fleet.Placement, error) {
			return fleet.NextRun(cur, name, spec(name), on, time.Now())
		}); err != nil {
			t.Fatal(err)
		}
	}
	dead := hosts[2]
	alive := []*host{hosts[0], hosts[1], hosts[3]}
	deadline := time.Now().Add(30 * time.Second)
	var placedOnDead int
	for time.Now().Before(deadline) {
		for _, h := range alive {
			beat(h)
			if _, err := h.m.Round(ctx, 2); err != nil {
				t.Fatalf("%s: %v", h.id, err)
			}
		}
		ps, err := admin.Placements(ctx)
		if err != nil {
			t.Fatal(err)
		}
		placedOnDead = 0
		for _, p := range ps {
			if p.Host == dead.id {
				placedOnDead++
			}
		}
		if placedOnDead == 0 {
			break
		}
		time.Sleep(interval)
	}
	if placedOnDead != 0 {
		t.Fatalf("%d machines still on dead %s after 30s", placedOnDead, dead.id)
	}
	// Every moved machine is in its new host's (watched) index.
	ps, err := admin.Placements(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"m2", "m6"} {
		p := ps[name]
		if p.Reason != fleet.ReasonFailover || p.From != "" {
			t.Fatalf("%s after failover: %+v", name, p)
		}
		var owner *host
		for _, h := range alive {
			if h.id == p.Host {
				owner = h
			}
		}
		waitFor(t, name+" in "+p.Host+"'s watched index", func() bool {
			got, err := owner.co.Assigned(ctx, owner.id)
			return err == nil && got[name] != nil && got[name].Version == p.Version
		})
	}
	// Its lease expired: every reader sees it Down, the live ones not.
	waitFor(t, "dead host's lease to expire", func() bool {
		hb, err := admin.Heartbeat(ctx, dead.id)
		return err == nil && hb != nil && hb.Down
	})
	if hb, err := admin.Heartbeat(ctx, alive[0].id); err != nil || hb == nil || hb.Down {
		t.Fatalf("live host's heartbeat: %+v %v", hb, err)
	}
	// The dead host, coming back, finds its machines moved in its index.
	got, err := dead.co.Assigned(ctx, dead.id)
	if err != nil || got["m2"] == nil || got["m2"].Host == dead.id {
		t.Fatalf("dead host's index: %v %v", got, err)
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
