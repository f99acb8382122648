package etcdcoord

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/urldisk/urldisk/internal/fleet"
	"github.com/urldisk/urldisk/internal/testutil/etcdcluster"
)

// TestEtcdSchedulerElected: two agents run fleet.Member rounds on etcd;
// exactly one is elected scheduler and only it fails over a dead host's
// machines (every failover placement is by it). The leader then crashes
// (its client closes without resigning, so its session lease must
// expire): the other is elected within a lease TTL and fails over the
// next dead host's machines.
func TestEtcdSchedulerElected(t *testing.T) {
	c := etcdcluster.Start(t)
	ctx := context.Background()
	const interval, ttl = 100 * time.Millisecond, 2 * time.Second
	type host struct {
		id  string
		co  *Coord
		m   *fleet.Member
		seq uint64
	}
	var hosts []*host
	for i := range 4 {
		h := &host{id: fmt.Sprintf("h%d", i)}
		h.co = open(t, c, "t3", Options{Self: h.id, LeaseTTL: ttl, MembershipEvery: ttl})
		h.m = fleet.NewMember(h.co, fleet.MemberConfig{Self: h.id, By: "agent " + h.id, Timeout: ttl})
		hosts = append(hosts, h)
	}
	beat := func(h *host) {
		h.seq++
		if err := h.co.PutHeartbeat(ctx, &fleet.Heartbeat{Host: h.id, Seq: h.seq, Started: time.Now(), Time: time.Now(), Timeout: ttl}); err != nil {
			t.Fatalf("heartbeat of %s: %v", h.id, err)
		}
	}
	for _, h := range hosts {
		beat(h)
	}
	admin := open(t, c, "t3", Options{})
	for i := range 6 {
		name, on := fmt.Sprintf("m%d", i), hosts[2+i%2].id // on h2 and h3
		if _, err := fleet.Update(ctx, admin, name, "test", func(cur *fleet.Placement) (*fleet.Placement, error) {
			return fleet.NextRun(cur, name, spec(name), on, time.Now())
		}); err != nil {
			t.Fatal(err)
		}
	}
	// crash stops a host's keepalives without revoking its leases.
	crash := func(h *host) { h.co.cli.Close() }

	// rounds runs the agents' rounds until every machine left victim and
	// checks who failed them over.
	rounds := func(agents, passive []*host, victim string) (leader *host) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		byWhom := map[string]int{}
		for {
			for _, h := range passive {
				beat(h) // alive, but runs no rounds
			}
			for _, h := range agents {
				beat(h)
				r, err := h.m.Round(ctx, 0)
				if err != nil {
					t.Fatalf("round of %s: %v", h.id, err)
				}
				for _, p := range r.Failovers {
					byWhom[h.id]++
					if p.By != "agent "+h.id {
						t.Fatalf("failover of %s written by %q, reported by %s", p.Name, p.By, h.id)
					}
				}
			}
			ps, err := admin.Placements(ctx)
			if err != nil {
				t.Fatal(err)
			}
			left := 0
			for _, p := range ps {
				if p.Host == victim {
					left++
				}
			}
			if left == 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%d machines still on %s after 30s", left, victim)
			}
			time.Sleep(interval)
		}
		var leaders []*host
		for _, h := range agents {
			if ok, _ := h.co.Leads(ctx, h.id); ok {
				leaders = append(leaders, h)
			}
		}
		if len(leaders) != 1 {
			t.Fatalf("%d agents lead, want 1", len(leaders))
		}
		if len(byWhom) > 1 || (len(byWhom) == 1 && byWhom[leaders[0].id] == 0) {
			t.Fatalf("failovers off %s by %v, want only by the scheduler %s", victim, byWhom, leaders[0].id)
		}
		t.Logf("%s's machines failed over by the scheduler %s: %v", victim, leaders[0].id, byWhom)
		return leaders[0]
	}

	crash(hosts[2])
	leader := rounds([]*host{hosts[0], hosts[1]}, []*host{hosts[3]}, "h2")
	other := hosts[0]
	if leader == hosts[0] {
		other = hosts[1]
	}

	crash(leader)
	crashed := time.Now()
	for {
		beat(other)
		if ok, err := other.co.Leads(ctx, other.id); err != nil {
			t.Fatal(err)
		} else if ok {
			break
		}
		// A liveness bound, not a speed target: etcd finds expired leases
		// every 500 ms and the watch then wakes the next candidate, but a
		// loaded CI machine (and an etcd leader change, which extends
		// leases) can add seconds; the typical time is logged below.
		if time.Since(crashed) > ttl+15*time.Second {
			t.Fatalf("%s not elected %v after the scheduler %s crashed (lease TTL %v)", other.id, time.Since(crashed), leader.id, ttl)
		}
		time.Sleep(50 * time.Millisecond)
	}
	took := time.Since(crashed)
	t.Logf("%s elected %v after the scheduler %s crashed (TTL %v)", other.id, took.Round(time.Millisecond), leader.id, ttl)
	// The new scheduler fails over both the old one's machines and those
	// of a host that dies now.
	crash(hosts[3])
	rounds([]*host{other}, nil, "h3")
	rounds([]*host{other}, nil, leader.id)
}
