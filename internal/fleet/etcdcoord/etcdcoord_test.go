package etcdcoord

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/urldisk/urldisk/internal/fleet"
	"github.com/urldisk/urldisk/internal/testutil/etcdcluster"
)

func open(t *testing.T, c *etcdcluster.Cluster, prefix string, opts Options) *Coord {
	t.Helper()
	co, err := Open(context.Background(), c.URL(prefix), opts)
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
	cfg, err := ParseURL("etcd://h1:2379,h2:2379/urldisk/prod")
	if err != nil || strings.Join(cfg.Endpoints, " ") != "http://h1:2379 http://h2:2379" || cfg.Prefix != "urldisk/prod/" || cfg.TLS || cfg.User != "" {
		t.Fatalf("ParseURL: %+v %v", cfg, err)
	}
	cfg, err = ParseURL("etcd://fleet@h1:2379/p?cacert=/ca.pem&cert=/c.pem&key=/k.pem&password-file=/pw")
	if err != nil || cfg.Endpoints[0] != "https://h1:2379" || cfg.User != "fleet" || cfg.CAFile != "/ca.pem" || cfg.CertFile != "/c.pem" || cfg.KeyFile != "/k.pem" || cfg.PasswordFile != "/pw" {
		t.Fatalf("ParseURL with options: %+v %v", cfg, err)
	}
	if cfg, err = ParseURL("etcd://h1:2379/p?tls=1"); err != nil || cfg.Endpoints[0] != "https://h1:2379" {
		t.Fatalf("ParseURL tls=1: %+v %v", cfg, err)
	}
	for _, bad := range []string{"etcd:///x", "http://h1:2379/x", "etcd://h1/x", "etcd://u:s3cret@h1:2379/x",
		"etcd://h1:2379,/x", "etcd://h1:2379/x?tls=yes", "etcd://u:s3cret@[::1/x", "etcd://h1:2379/x?cert=/c.pem",
		"etcd://h1:2379/x?password-file=/pw", "etcd://h1:2379/x?password=s3cret", "etcd://:s3cret@h1:2379/x"} {
		_, err := ParseURL(bad)
		if !errors.Is(err, ErrBadURL) {
			t.Errorf("ParseURL(%q): %v, want ErrBadURL", bad, err)
		} else if strings.Contains(err.Error(), "s3cret") {
			t.Errorf("ParseURL(%q): error shows the password: %v", bad, err)
		}
	}
}

// TestEtcdUpdateConcurrentWriters: writers on their own clients bump one
// machine's version through fleet.Update at once: every success owns
// exactly one version, versions are dense, and history keeps only the
// newest KeepVersions. Then the leader is killed and writes go on: no
// version a writer was told it won is lost.
func TestEtcdUpdateConcurrentWriters(t *testing.T) {
	c := etcdcluster.Start(t)
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
	killed := c.KillLeader()
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
	c := etcdcluster.Start(t)
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
	// The dead host, coming back, finds its machines moved in its index;
	// after ForgetAfter they leave it.
	got, err := dead.co.Assigned(ctx, dead.id)
	if err != nil || got["m2"] == nil || got["m2"].Host == dead.id {
		t.Fatalf("dead host's index: %v %v", got, err)
	}
	later := New(dead.co.cli, "t2/", Options{Now: func() time.Time { return time.Now().Add(time.Hour) }})
	if _, err := later.Assigned(ctx, dead.id); err != nil {
		t.Fatal(err)
	}
	// (later shares dead's client: not closed here.) dead's watch sees the
	// deletions.
	waitFor(t, "dead host's index to empty an hour later", func() bool {
		got, err := dead.co.Assigned(ctx, dead.id)
		return err == nil && len(got) == 0
	})
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
