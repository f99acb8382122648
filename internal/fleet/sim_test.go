package fleet

import (
	"context"
	"fmt"
	"sort"
	"sync/atomic"
	"testing"
	"time"

	"github.com/urldisk/urldisk/internal/objstore"
	"github.com/urldisk/urldisk/internal/objstore/faultstore"
)

// The fleet simulation: hosts in this process, each with its own Fleet
// (over a counting wrapper of one shared mem:// store) and Member, driven
// round by round on a simulated clock. The runtime is fake: a host "runs"
// what its round says should run there and acks a move off it at once.
// Each round every live host writes its heartbeat and runs Member.Round,
// which is what the agent does every interval.

const (
	simInterval = time.Second
	simTimeout  = 5 * time.Second
)

type simHost struct {
	id      string
	f       *Fleet
	m       *Member
	seq     uint64
	running map[string]uint64 // machine → version running here
	acked   map[string]uint64 // machine → newest version acked
	down    bool              // crashed: no heartbeat, no round
	reqs    atomic.Int64      // store requests this host made
}

type sim struct {
	t     *testing.T
	store objstore.Store
	now   time.Time
	hosts []*simHost
	byID  map[string]*simHost
	admin *Fleet
}

func newSim(t *testing.T, hosts, machinesPerHost int) *sim {
	t.Helper()
	s := &sim{t: t, store: memStore(t), now: t0, byID: map[string]*simHost{}}
	clock := func() time.Time { return s.now }
	s.admin = NewWithOptions(s.store, Options{Now: clock})
	for i := range hosts {
		h := &simHost{id: fmt.Sprintf("h%03d", i), running: map[string]uint64{}, acked: map[string]uint64{}}
		counted := faultstore.New(s.store, faultstore.Hooks{Before: func(faultstore.Op, string) error {
			h.reqs.Add(1)
			return nil
		}})
		h.f = NewWithOptions(counted, Options{Now: clock, MembershipEvery: 10 * simInterval, ResyncEvery: time.Hour})
		h.m = NewMember(h.f, MemberConfig{Self: h.id, By: "sim " + h.id, Timeout: simTimeout, Now: clock})
		s.hosts = append(s.hosts, h)
		s.byID[h.id] = h
	}
	// Every host heartbeats once before machines are placed, as agents do.
	for _, h := range s.hosts {
		s.heartbeat(h)
	}
	ctx := context.Background()
	for i := range hosts * machinesPerHost {
		name, host := fmt.Sprintf("m%04d", i), s.hosts[i%hosts].id
		if _, err := s.admin.Update(ctx, name, "sim", func(cur *Placement) (*Placement, error) {
			return NextRun(cur, name, procSpec(name), host, s.now)
		}); err != nil {
			t.Fatal(err)
		}
	}
	return s
}

func (s *sim) heartbeat(h *simHost) {
	s.t.Helper()
	h.seq++
	hb := &Heartbeat{Host: h.id, Seq: h.seq, Started: t0, Time: s.now, Interval: simInterval, Timeout: simTimeout, Machines: []MachineStatus{}}
	names := make([]string, 0, len(h.running))
	for n := range h.running {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		hb.Machines = append(hb.Machines, MachineStatus{Name: n, Version: h.running[n], Phase: PhaseRunning})
	}
	if err := h.f.PutHeartbeat(context.Background(), hb); err != nil {
		s.t.Fatal(err)
	}
}

// round advances the clock one interval; every live host heartbeats, then
// every live host runs its round and applies it to its fake runtime.
func (s *sim) round() {
	s.t.Helper()
	ctx := context.Background()
	s.now = s.now.Add(simInterval)
	for _, h := range s.hosts {
		if !h.down {
			s.heartbeat(h)
		}
	}
	for _, h := range s.hosts {
		if h.down {
			continue
		}
		r, err := h.m.Round(ctx, len(h.running))
		if err != nil {
			s.t.Fatalf("%s: round: %v", h.id, err)
		}
		for name, p := range r.Assigned {
			switch {
			case p.RunsOn(h.id):
				h.running[name] = p.Version
			default:
				delete(h.running, name)
				if p.From == h.id && h.acked[name] < p.Version {
					h.acked[name] = p.Version
					if err := h.f.PutAck(ctx, &Ack{Name: name, Version: p.Version, Host: h.id, Stopped: s.now}); err != nil {
						s.t.Fatal(err)
					}
				}
			}
		}
	}
}

// requests returns the store requests every live host made so far.
func (s *sim) requests() map[string]int64 {
	out := map[string]int64{}
	for _, h := range s.hosts {
		if !h.down {
			out[h.id] = h.reqs.Load()
		}
	}
	return out
}

// steadyRequests runs warm rounds, then measure rounds, and returns the
// mean and the maximum over hosts of store requests per host per round
// in the measured rounds.
func (s *sim) steadyRequests(warm, measure int) (mean, most float64) {
	for range warm {
		s.round()
	}
	before := s.requests()
	for range measure {
		s.round()
	}
	var sum int64
	for id, n := range s.requests() {
		d := n - before[id]
		sum += d
		most = max(most, float64(d)/float64(measure))
	}
	return float64(sum) / float64(len(before)) / float64(measure), most
}

// TestCoordinationRequestsPerHostConstant: the store requests a host makes
// per interval in the steady state do not grow with the fleet: 10 and 100
// hosts (5 machines each) cost the same per host. It fails with a Coord
// whose rounds read every heartbeat or every placement (as the one before
// the assignment index did: 10x more at 100 hosts).
func TestCoordinationRequestsPerHostConstant(t *testing.T) {
	// Measure over a whole number of membership periods (10 rounds).
	const warm, measure = 15, 40
	small, smallMax := newSim(t, 10, 5).steadyRequests(warm, measure)
	large, largeMax := newSim(t, 100, 5).steadyRequests(warm, measure)
	t.Logf("store requests per host per interval: 10 hosts: mean %.2f, max %.2f; 100 hosts: mean %.2f, max %.2f", small, smallMax, large, largeMax)
	if large > small*1.1 || largeMax > smallMax*1.1 {
		t.Fatalf("requests per host per interval grow with the fleet: %.2f (max %.2f) at 10 hosts, %.2f (max %.2f) at 100", small, smallMax, large, largeMax)
	}
	// One PUT (heartbeat), 3 peer GETs, one LIST of the index, and the
	// membership LISTs every 10 rounds.
	if largeMax > 6 {
		t.Fatalf("%.2f requests per host per interval at most, want at most 6", largeMax)
	}
}

// TestSimFailoverSeveralHostsDie: 5 of 20 hosts crash at once, 4 of them
// next to each other on the ring (more than the 3 live peers each host
// watches). Every machine of theirs is running on a live host within a few
// timeouts: the nearest live predecessor of a dead host reaches past the
// dead ones between. Nothing moves off a live host.
func TestSimFailoverSeveralHostsDie(t *testing.T) {
	s := newSim(t, 20, 3)
	for range 15 {
		s.round()
	}
	ctx := context.Background()
	before, err := s.admin.Placements(ctx)
	if err != nil {
		t.Fatal(err)
	}
	killed := []string{"h004", "h005", "h006", "h007", "h013"}
	for _, id := range killed {
		s.byID[id].down = true
	}
	isKilled := func(h string) bool { return s.byID[h].down }
	var rounds int
	for rounds = 1; rounds <= 60; rounds++ {
		s.round()
		ps, err := s.admin.Placements(ctx)
		if err != nil {
			t.Fatal(err)
		}
		done := true
		for name, p := range ps {
			if isKilled(p.Host) || s.byID[p.Host].running[name] != p.Version {
				done = false
				break
			}
		}
		if done {
			break
		}
	}
	after, err := s.admin.Placements(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for name, p := range after {
		if isKilled(p.Host) {
			t.Errorf("%s still placed on dead %s after %d rounds", name, p.Host, rounds)
		} else if s.byID[p.Host].running[name] != p.Version {
			t.Errorf("%s v%d placed on %s, which does not run it", name, p.Version, p.Host)
		}
		b := before[name]
		if !isKilled(b.Host) && p.Version != b.Version {
			t.Errorf("%s moved off live host %s: %+v", name, b.Host, p)
		}
		if isKilled(b.Host) && (p.Reason != ReasonFailover || p.From != "") {
			t.Errorf("%s left dead %s as %+v, want a failover", name, b.Host, p)
		}
	}
	if t.Failed() {
		return
	}
	// Detection takes a timeout per dead host in a row beyond the first 3.
	t.Logf("every machine of %d dead hosts running elsewhere after %d rounds (%v)", len(killed), rounds, time.Duration(rounds)*simInterval)
	if limit := 3*int(simTimeout/simInterval) + 5; rounds > limit {
		t.Fatalf("failover took %d rounds, want at most %d", rounds, limit)
	}
}
