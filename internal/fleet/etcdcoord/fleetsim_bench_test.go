package etcdcoord

import (
	"context"
	"flag"
	"fmt"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/urldisk/urldisk/internal/fleet"
	"github.com/urldisk/urldisk/internal/objstore"
	"github.com/urldisk/urldisk/internal/objstore/faultstore"
	"github.com/urldisk/urldisk/internal/testutil/etcdcluster"
)

var (
	simBackend  = flag.String("fleetsim.backend", "etcd", "BenchmarkFleetSim: etcd (a real 3-member cluster) or file (the object store on file://)")
	simHosts    = flag.Int("fleetsim.hosts", 10, "BenchmarkFleetSim: simulated hosts")
	simMachines = flag.Int("fleetsim.machines", 100, "BenchmarkFleetSim: machines, spread evenly")
	simInterval = flag.Duration("fleetsim.interval", time.Second, "BenchmarkFleetSim: heartbeat interval")
	simTimeout  = flag.Duration("fleetsim.timeout", 5*time.Second, "BenchmarkFleetSim: heartbeat timeout (etcd: lease TTL)")
	simDrain    = flag.Int("fleetsim.drain", 100, "BenchmarkFleetSim: machines on the host drained")
)

// simHostsPerConn is how many simulated hosts share one etcd client.
const simHostsPerConn = 25

// simHost is one simulated agent: its own Coord (own client or store
// wrapper) counting its requests, a fleet.Member, and a fake runtime that
// records when each machine assigned to it was first seen.
type simHost struct {
	id     string
	co     fleet.Coord
	closer func()
	m      *fleet.Member
	n      atomic.Int64
	rounds atomic.Int64 // rounds completed: the loop keeps up if about one per interval
	beats  atomic.Int64 // heartbeats written: the heartbeat loop keeps up if about one per interval
	stop   chan struct{}
	done   chan struct{}

	mu   sync.Mutex
	seen map[string]time.Time // machine -> first round it was assigned here (by version)
	ver  map[string]uint64
	// beatLat is every heartbeat's PutHeartbeat latency, in order: the
	// steady window reads its slice from the counts at its ends.
	beatLat []time.Duration
}

type fleetSim struct {
	b       *testing.B
	hosts   []*simHost
	admin   fleet.Coord
	newHost func(id string, n *atomic.Int64) (fleet.Coord, func())
}

// start runs h's agent loops after delay: hosts start spread over an
// interval, as agents started independently would, not in lockstep.
// Heartbeats have their own loop, as the agent's do (heartbeatLoop): in
// one loop with the rounds, a host whose first round read its machines
// slowly (the 1,000-host start-up) let its lease expire and was failed
// over though alive.
func (s *fleetSim) start(h *simHost, delay time.Duration) {
	h.stop, h.done = make(chan struct{}), make(chan struct{})
	go func() {
		defer close(h.done)
		select {
		case <-h.stop:
			return
		case <-time.After(delay):
		}
		ctx := context.Background()
		var beats sync.WaitGroup
		defer beats.Wait()
		beats.Go(func() {
			t := time.NewTicker(*simInterval)
			defer t.Stop()
			for seq := uint64(1); ; seq++ {
				now := time.Now()
				if err := h.co.PutHeartbeat(ctx, &fleet.Heartbeat{Host: h.id, Seq: seq, Started: now, Time: now, Timeout: *simTimeout}); err != nil {
					if !h.killed() {
						s.b.Logf("%s heartbeat: %v", h.id, err)
					}
				} else {
					took := time.Since(now)
					h.mu.Lock()
					h.beatLat = append(h.beatLat, took)
					h.mu.Unlock()
					h.beats.Add(1)
				}
				select {
				case <-h.stop:
					return
				case <-t.C:
				}
			}
		})
		t := time.NewTicker(*simInterval)
		defer t.Stop()
		for {
			h.mu.Lock()
			load := len(h.ver)
			h.mu.Unlock()
			if r, err := h.m.Round(ctx, load); err != nil {
				if !h.killed() {
					s.b.Logf("%s round: %v", h.id, err)
				}
			} else {
				now := time.Now()
				h.mu.Lock()
				for name, p := range r.Assigned {
					if p.Host == h.id && p.State == fleet.Running && h.ver[name] != p.Version {
						h.ver[name], h.seen[name] = p.Version, now
					} else if p.Host != h.id {
						delete(h.ver, name)
					}
				}
				h.mu.Unlock()
			}
			h.rounds.Add(1)
			select {
			case <-h.stop:
				return
			case <-t.C:
			}
		}
	}()
}

// kill stops a host's loop without a clean leave: its heartbeats stop (on
// etcd its client closes: no lease revoked, no election resigned, the
// election session's keep-alives stop).
func (h *simHost) killed() bool {
	select {
	case <-h.stop:
		return true
	default:
		return false
	}
}

func (h *simHost) kill() {
	close(h.stop)
	h.closer() // a crash cuts the host's requests in flight too
}

// waitRunning waits until every machine in names runs, by a version newer
// than from, on a live host other than notOn, and returns each machine's
// time from t0 to when its new host first saw it (the earliest, if it
// moved on again). Each check walks what the hosts run, not names x hosts:
// at 1,000 hosts that product was the simulator's own largest cost.
func (s *fleetSim) waitRunning(names map[string]uint64, notOn map[string]bool, t0 time.Time, limit time.Duration) []time.Duration {
	deadline := time.Now().Add(limit)
	for {
		got := make(map[string]time.Duration, len(names))
		for _, h := range s.hosts {
			if notOn[h.id] {
				continue
			}
			h.mu.Lock()
			for name, v := range h.ver {
				from, ok := names[name]
				if !ok || v <= from {
					continue
				}
				if d, seen := got[name]; !seen || h.seen[name].Sub(t0) < d {
					got[name] = h.seen[name].Sub(t0)
				}
			}
			h.mu.Unlock()
		}
		if len(got) == len(names) {
			return slices.Sorted(maps.Values(got))
		}
		if time.Now().After(deadline) {
			s.b.Fatalf("%d of %d machines running elsewhere after %v", len(got), len(names), limit)
		}
		time.Sleep(*simInterval / 4)
	}
}

// pct is the p quantile of sorted d, to 10 ms (failovers and drains).
func pct(d []time.Duration, p float64) time.Duration {
	return quantile(d, p).Round(10 * time.Millisecond)
}

func quantile(d []time.Duration, p float64) time.Duration {
	return d[min(len(d)-1, int(float64(len(d))*p))]
}

// BenchmarkFleetSim simulates a fleet of in-process agents with a fake
// runtime on a real etcd cluster or the object store (file://) and reports
// coordination requests per host per second in steady state, failover time
// (kill -> the new host sees the machine) p50/p99 after killing 1 host and
// 10% of hosts, and the drain time of a host carrying -fleetsim.drain
// machines (drain call -> every machine seen by its new host). Run once:
// -benchtime=1x. bench/fleetsim.sh runs the scales of BENCHMARKS.md.
func BenchmarkFleetSim(b *testing.B) {
	ctx := context.Background()
	s := &fleetSim{b: b}
	switch *simBackend {
	case "etcd":
		c := etcdcluster.Start(b)
		// Hosts share clients (hostClient says why), simHostsPerConn to
		// each at every size: a client's lease keep-alives travel on one
		// stream that etcd answers one request at a time, so sharing one
		// by the whole fleet expired healthy hosts' election sessions.
		var shared *clientv3.Client
		made := 0
		s.newHost = func(id string, n *atomic.Int64) (fleet.Coord, func()) {
			if made%simHostsPerConn == 0 {
				cli := countingClient(b, c, new(atomic.Int64))
				b.Cleanup(func() { cli.Close() })
				shared = cli
			}
			made++
			co := New(hostClient(shared, n), "sim/", Options{Self: id, LeaseTTL: *simTimeout, MembershipEvery: *simTimeout})
			return co, func() { co.cli.Close() } // no resign, no revoke: a crash
		}
	case "file":
		st, err := objstore.Open(ctx, "file://"+b.TempDir())
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { st.Close() })
		s.newHost = func(id string, n *atomic.Int64) (fleet.Coord, func()) {
			counted := faultstore.New(st, faultstore.Hooks{Before: func(faultstore.Op, string) error { n.Add(1); return nil }})
			return fleet.NewWithOptions(counted, fleet.Options{MembershipEvery: *simTimeout}), func() {}
		}
	default:
		b.Fatalf("-fleetsim.backend=%q: want etcd or file", *simBackend)
	}
	var adminN atomic.Int64
	s.admin, _ = s.newHost("admin", &adminN)
	for i := range *simHosts {
		h := &simHost{id: fmt.Sprintf("h%04d", i), seen: map[string]time.Time{}, ver: map[string]uint64{}}
		h.co, h.closer = s.newHost(h.id, &h.n)
		h.m = fleet.NewMember(h.co, fleet.MemberConfig{Self: h.id, By: "agent " + h.id, Timeout: *simTimeout})
		s.hosts = append(s.hosts, h)
	}
	// The host drained later carries simDrain machines; the rest spread.
	drained := s.hosts[len(s.hosts)-1]
	placed := map[string]string{}
	for i := range *simMachines {
		on := s.hosts[i%(len(s.hosts)-1)].id
		if i < *simDrain {
			on = drained.id
		}
		placed[fmt.Sprintf("m%05d", i)] = on
	}
	// The initial placement is set-up, not measured: written before the
	// hosts start, many at a time.
	t0 := time.Now()
	var wg sync.WaitGroup
	sem := make(chan struct{}, 64)
	for name, on := range placed {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			if _, err := fleet.Update(ctx, s.admin, name, "sim", func(cur *fleet.Placement) (*fleet.Placement, error) {
				return fleet.NextRun(cur, name, spec(name), on, time.Now())
			}); err != nil {
				b.Error(err)
			}
		})
	}
	wg.Wait()
	b.Logf("%d machines placed in %v", len(placed), time.Since(t0).Round(time.Millisecond))
	for i, h := range s.hosts {
		s.start(h, time.Duration(i)*(*simInterval)/time.Duration(len(s.hosts)))
	}
	all := map[string]uint64{}
	for name := range placed {
		all[name] = 0
	}
	s.waitRunning(all, nil, t0, 10*time.Minute)
	b.Logf("%d hosts, %d machines placed and seen by their hosts in %v", len(s.hosts), len(placed), time.Since(t0).Round(time.Millisecond))

	// Steady state: requests per host per second.
	before := make([]int64, len(s.hosts))
	beforeRounds := make([]int64, len(s.hosts))
	beforeBeats := make([]int, len(s.hosts))
	for i, h := range s.hosts {
		before[i], beforeRounds[i] = h.n.Load(), h.rounds.Load()
		h.mu.Lock()
		beforeBeats[i] = len(h.beatLat)
		h.mu.Unlock()
	}
	steady := 10 * *simInterval
	time.Sleep(steady)
	var sum, rounds int64
	var beatRates []float64
	var beatLat []time.Duration
	for i, h := range s.hosts {
		sum += h.n.Load() - before[i]
		rounds += h.rounds.Load() - beforeRounds[i]
		h.mu.Lock()
		lat := h.beatLat[beforeBeats[i]:]
		beatLat = append(beatLat, lat...)
		h.mu.Unlock()
		beatRates = append(beatRates, float64(len(lat))/(float64(steady)/float64(*simInterval)))
	}
	rps := float64(sum) / float64(len(s.hosts)) / steady.Seconds()
	// Rounds per interval below one mean the simulator (or the cluster)
	// could not keep up: fewer requests, later failovers than a real fleet.
	perInterval := float64(rounds) / float64(len(s.hosts)) / (float64(steady) / float64(*simInterval))
	b.ReportMetric(rps, "req/host/s")
	b.ReportMetric(perInterval, "rounds/interval")
	b.Logf("steady: %.2f coordination requests per host per second, %.2f rounds per host per interval (interval %v)", rps, perInterval, *simInterval)
	// A heartbeat loop that falls behind renews its lease late: a host
	// below one per interval looks dead to the scheduler sooner than its
	// timeout says. Rounds per interval do not show it (their own loop).
	slices.Sort(beatRates)
	slices.Sort(beatLat)
	b.ReportMetric(beatRates[len(beatRates)/2], "beats/interval-p50")
	b.ReportMetric(beatRates[0], "beats/interval-min")
	if len(beatLat) == 0 {
		b.Fatalf("no heartbeat completed in the %v steady window", steady)
	}
	// Heartbeats take milliseconds when they keep up: to 1 ms, not 10.
	p50, p99 := quantile(beatLat, 0.5).Round(time.Millisecond), quantile(beatLat, 0.99).Round(time.Millisecond)
	b.ReportMetric(p50.Seconds(), "beat-p50-s")
	b.ReportMetric(p99.Seconds(), "beat-p99-s")
	b.Logf("steady: heartbeats per host per interval p50 %.2f min %.2f; heartbeat latency (PutHeartbeat) p50 %v p99 %v max %v",
		beatRates[len(beatRates)/2], beatRates[0], p50, p99, beatLat[len(beatLat)-1].Round(time.Millisecond))

	// Drain the loaded host.
	versions := func(host string) map[string]uint64 {
		ps, err := s.admin.Placements(ctx)
		if err != nil {
			b.Fatal(err)
		}
		out := map[string]uint64{}
		for name, p := range ps {
			if p.Host == host && p.State == fleet.Running {
				out[name] = p.Version
			}
		}
		return out
	}
	onDrained := versions(drained.id)
	if len(onDrained) == 0 {
		// Only a failover moves them: the scheduler saw the host dead, its
		// heartbeats late (a saturated cluster or simulator).
		b.Fatalf("the host to drain, %s, runs none of its %d machines before the drain: they were failed over (%.2f rounds per host per interval)", drained.id, *simDrain, perInterval)
	}
	t0 = time.Now()
	if _, err := (&fleet.Ops{Fleet: s.admin, By: "sim", DefaultTimeout: *simTimeout}).Drain(ctx, drained.id); err != nil {
		b.Fatal(err)
	}
	written := time.Since(t0)
	d := s.waitRunning(onDrained, map[string]bool{drained.id: true}, t0, 10*time.Minute)
	b.ReportMetric(d[len(d)-1].Seconds(), "drain-s")
	b.Logf("drain of %d machines: placements written in %v, all seen by their new hosts in %v (p50 %v)", len(onDrained), written.Round(time.Millisecond), d[len(d)-1].Round(10*time.Millisecond), pct(d, 0.5))

	// Kill 1 host, then 10% of the rest.
	live := s.hosts[:len(s.hosts)-1] // the drained host stays, empty
	for i, k := range []int{1, max(1, len(s.hosts)/10)} {
		label := []string{"1host", "10pct"}[i]
		victims := live[len(live)-k:]
		live = live[:len(live)-k]
		dead := map[string]bool{}
		moving := map[string]uint64{}
		for _, v := range victims {
			dead[v.id] = true
			for n, ver := range versions(v.id) {
				moving[n] = ver
			}
		}
		t0 := time.Now()
		for _, v := range victims {
			v.kill()
		}
		for _, v := range victims {
			<-v.done
		}
		d := s.waitRunning(moving, dead, t0, 10*time.Minute)
		b.ReportMetric(pct(d, 0.5).Seconds(), "failover-"+label+"-p50-s")
		b.ReportMetric(pct(d, 0.99).Seconds(), "failover-"+label+"-p99-s")
		b.Logf("killed %d host(s) carrying %d machines: failover (kill -> new host runs it) p50 %v p99 %v max %v (timeout %v)",
			k, len(moving), pct(d, 0.5), pct(d, 0.99), d[len(d)-1].Round(10*time.Millisecond), *simTimeout)
		for n := range moving {
			for _, v := range victims {
				v.mu.Lock()
				delete(v.ver, n)
				v.mu.Unlock()
			}
		}
	}
	for _, h := range live {
		close(h.stop)
		<-h.done
	}
	close(drained.stop)
	<-drained.done
}
