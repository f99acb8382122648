package fleet

import (
	"context"
	"testing"
	"time"
)

// leasedCoord is a Coord whose liveness is its lease (as etcd's): here
// the object store, with Down written by hand where a lease would expire.
type leasedCoord struct{ Coord }

func (leasedCoord) LeasedLiveness() bool { return true }

func TestLeasedLiveness(t *testing.T) {
	const timeout = 2 * time.Second
	l := NewLeasedLiveness(timeout)
	hb := &Heartbeat{Host: "h1", Seq: 7, Started: t0}
	var now time.Time
	for i := range 50 {
		now = t0.Add(time.Duration(i) * 200 * time.Millisecond)
		l.Observe(now, []*Heartbeat{hb})
	}
	if s := l.State("h1", now); s != HostLive {
		t.Fatalf("unchanged for 10 s but not Down: %v, want live (the lease says so)", s)
	}
	down := *hb
	down.Down = true
	l.Observe(now, []*Heartbeat{&down})
	if s := l.State("h1", now); s != HostDead {
		t.Fatalf("lease expired: %v, want dead", s)
	}

	old := &Heartbeat{Host: "h", Time: t0, Timeout: time.Second}
	if s := ageState(old, t0.Add(time.Hour), 0, true); s != HostLive {
		t.Fatalf("leased one-shot view of an old heartbeat: %v, want live", s)
	}
	if s := ageState(&Heartbeat{Host: "h", Time: t0, Down: true}, t0, 0, true); s != HostDead {
		t.Fatalf("leased one-shot view of a Down heartbeat: %v, want dead", s)
	}
}

// TestLeasedMemberFailsOverOnTheLeaseOnly: on a Leased coordination
// service, a host whose heartbeat stays unchanged for several timeouts
// (the service electing a leader: renewals stall, leases are extended)
// keeps its machines; when its heartbeat reads Down (the lease expired)
// they move. The same rounds on a plain Coord fail them over on the stall,
// which is what moved a just-drained machine off a live host after an
// etcd leader was killed.
func TestLeasedMemberFailsOverOnTheLeaseOnly(t *testing.T) {
	for _, tc := range []struct {
		name   string
		leased bool
	}{{"leased", true}, {"plain", false}} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			clk := &fixedClock{t: t0}
			f := NewWithOptions(memStore(t), Options{Now: clk.Now})
			var co Coord = f
			if tc.leased {
				co = leasedCoord{f}
			}
			seq := uint64(0)
			beat := func(host string, down bool) {
				seq++
				if err := f.PutHeartbeat(ctx, &Heartbeat{Host: host, Seq: seq, Started: t0, Time: clk.Now(), Timeout: simTimeout, Down: down}); err != nil {
					t.Fatal(err)
				}
			}
			beat("h0", false)
			beat("h1", false)
			if _, err := Update(ctx, f, "m", "test", func(cur *Placement) (*Placement, error) {
				return NextRun(cur, "m", procSpec("m"), "h1", clk.Now())
			}); err != nil {
				t.Fatal(err)
			}
			m := NewMember(co, MemberConfig{Self: "h0", By: "test", Timeout: simTimeout, Now: clk.Now})
			moved := 0
			// h1 is silent for 3 timeouts; h0 heartbeats and runs rounds.
			for range 3 * int(simTimeout/simInterval) {
				clk.Add(simInterval)
				beat("h0", false)
				r, err := m.Round(ctx, 0)
				if err != nil {
					t.Fatal(err)
				}
				moved += len(r.Failovers)
			}
			switch {
			case tc.leased && moved != 0:
				t.Fatalf("leased: %d failovers of a host whose lease never expired", moved)
			case !tc.leased && moved != 1:
				t.Fatalf("plain: %d failovers of a host silent for 3 timeouts, want 1", moved)
			case !tc.leased:
				return
			}
			if s := m.State("h1"); s != HostLive {
				t.Fatalf("leased: h1 = %v after the stall, want live", s)
			}
			if err := (&Ops{Fleet: co, By: "test", Now: clk.Now}).checkLive(ctx, "h1"); err != nil {
				t.Fatalf("leased: a one-shot view holds h1 not live: %v", err)
			}

			beat("h1", true) // the lease expired
			clk.Add(simInterval)
			beat("h0", false)
			r, err := m.Round(ctx, 0)
			if err != nil {
				t.Fatal(err)
			}
			if len(r.Failovers) != 1 || r.Failovers[0].Host != "h0" {
				t.Fatalf("leased: after h1's lease expired the round wrote %+v, want m moved to h0", r.Failovers)
			}
		})
	}
}

// checkLive reads a View and checks host as a migrate would.
func (o *Ops) checkLive(ctx context.Context, host string) error {
	v, err := o.View(ctx)
	if err != nil {
		return err
	}
	return v.CheckHost(host)
}
