package etcdcoord

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"

	"github.com/urldisk/urldisk/internal/fleet"
	"github.com/urldisk/urldisk/internal/testutil/etcdcluster"
)

// countingClient is an etcd client that counts the RPCs it sends (unary
// calls and streams opened).
func countingClient(t testing.TB, c *etcdcluster.Cluster, n *atomic.Int64) *clientv3.Client {
	t.Helper()
	var eps []string
	for _, h := range c.Clients {
		eps = append(eps, "http://"+h)
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: eps, DialTimeout: 5 * time.Second, DialOptions: []grpc.DialOption{
		grpc.WithChainUnaryInterceptor(func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
			n.Add(1)
			return invoker(ctx, method, req, reply, cc, opts...)
		}),
		grpc.WithChainStreamInterceptor(func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
			n.Add(1)
			return streamer(ctx, desc, cc, method, opts...)
		}),
	}})
	if err != nil {
		t.Fatal(err)
	}
	return cli
}

// etcdRequests runs hosts simulated hosts (3 machines each) on c, each
// heartbeating and running fleet.Member rounds on its own counting client
// on a simulated clock, and returns the mean etcd RPCs per host per round
// after warm rounds, over measure rounds.
func etcdRequests(t *testing.T, c *etcdcluster.Cluster, prefix string, hosts, warm, measure int) float64 {
	ctx := context.Background()
	now := time.Now()
	clock := func() time.Time { return now }
	type host struct {
		id  string
		co  *Coord
		m   *fleet.Member
		n   atomic.Int64
		seq uint64
	}
	var hs []*host
	for i := range hosts {
		h := &host{id: fmt.Sprintf("h%03d", i)}
		h.co = New(countingClient(t, c, &h.n), prefix+"/", Options{Self: h.id, Now: clock, MembershipEvery: 10 * time.Second, LeaseTTL: time.Minute})
		t.Cleanup(func() { h.co.Close() })
		h.m = fleet.NewMember(h.co, fleet.MemberConfig{Self: h.id, By: "sim", Timeout: 5 * time.Second, Now: clock})
		hs = append(hs, h)
	}
	round := func() {
		now = now.Add(time.Second)
		for _, h := range hs {
			h.seq++
			if err := h.co.PutHeartbeat(ctx, &fleet.Heartbeat{Host: h.id, Seq: h.seq, Started: now, Time: now}); err != nil {
				t.Fatal(err)
			}
		}
		for _, h := range hs {
			r, err := h.m.Round(ctx, 3)
			if err != nil {
				t.Fatal(err)
			}
			if len(r.Failovers) != 0 {
				t.Fatalf("%s failed over %d machines in a healthy fleet", h.id, len(r.Failovers))
			}
		}
	}
	round()
	admin := New(countingClient(t, c, new(atomic.Int64)), prefix+"/", Options{})
	t.Cleanup(func() { admin.Close() })
	for i := range hosts * 3 {
		name, on := fmt.Sprintf("m%03d", i), hs[i%hosts].id
		if _, err := fleet.Update(ctx, admin, name, "sim", func(cur *fleet.Placement) (*fleet.Placement, error) {
			return fleet.NextRun(cur, name, spec(name), on, now)
		}); err != nil {
			t.Fatal(err)
		}
	}
	for range warm {
		round()
	}
	before := make([]int64, len(hs))
	for i, h := range hs {
		before[i] = h.n.Load()
	}
	for range measure {
		round()
	}
	var sum int64
	for i, h := range hs {
		sum += h.n.Load() - before[i]
		got, err := h.co.Assigned(ctx, h.id)
		if err != nil || len(got) != 3 {
			t.Fatalf("%s assigned %d machines (%v), want 3", h.id, len(got), err)
		}
	}
	return float64(sum) / float64(hosts) / float64(measure)
}

// TestEtcdRequestsPerHostConstant: on etcd too, a host's RPCs per interval
// do not grow with the fleet (5 vs 20 hosts): its assignments come from
// its watch, not from reads, and only the scheduler reads heartbeats.
func TestEtcdRequestsPerHostConstant(t *testing.T) {
	c := etcdcluster.Start(t)
	small := etcdRequests(t, c, "small", 5, 12, 20)
	large := etcdRequests(t, c, "large", 20, 12, 20)
	t.Logf("etcd RPCs per host per interval: 5 hosts %.2f, 20 hosts %.2f", small, large)
	if large > small*1.1 {
		t.Fatalf("RPCs per host per interval grow with the fleet: %.2f at 5 hosts, %.2f at 20", small, large)
	}
	// A heartbeat transaction and its lease's keep-alive; the scheduler's
	// read of every heartbeat is one host's. Reading three ring peers'
	// heartbeats, as the object store's hosts do, made it about 5.
	if large > 3 {
		t.Fatalf("%.2f RPCs per host per interval, want at most 3 (hosts other than the scheduler read no peers' heartbeats)", large)
	}
}

// TestEtcdAssignedReadsPlacementsInBatches: a host's first Assigned after a
// start reads the placements of the 300 machines it runs in transactions
// of txnReads reads (3), not one read each, and returns each one's newest
// version (a moved machine's too); the next Assigned reads none (cached).
func TestEtcdAssignedReadsPlacementsInBatches(t *testing.T) {
	c := etcdcluster.Start(t)
	ctx := context.Background()
	admin := open(t, c, "batch", Options{})
	const n = 300
	for i := range n {
		name := fmt.Sprintf("m%03d", i)
		if _, err := fleet.Update(ctx, admin, name, "test", func(cur *fleet.Placement) (*fleet.Placement, error) {
			return fleet.NextRun(cur, name, spec(name), "h1", time.Now())
		}); err != nil {
			t.Fatal(err)
		}
	}
	// One machine gets a second version, so the index names version 2.
	moved, err := fleet.Update(ctx, admin, "m007", "test", func(cur *fleet.Placement) (*fleet.Placement, error) {
		return fleet.NextStop(cur, "m007", time.Now())
	})
	if err != nil {
		t.Fatal(err)
	}
	var reqs atomic.Int64
	co := New(countingClient(t, c, &reqs), "batch/", Options{Self: "h1"})
	defer co.Close()
	got, err := co.Assigned(ctx, "h1")
	if err != nil {
		t.Fatal(err)
	}
	first := reqs.Load()
	if len(got) != n {
		t.Fatalf("Assigned: %d machines, want %d", len(got), n)
	}
	for name, p := range got {
		if p.Host != "h1" || p.Name != name {
			t.Fatalf("Assigned[%s] = %s on %s", name, p.Name, p.Host)
		}
	}
	if p := got["m007"]; p.Version != moved.Version || p.State != moved.State {
		t.Fatalf("m007: version %d state %v, want the newest (%d, %v)", p.Version, p.State, moved.Version, moved.State)
	}
	// The index read, the watch, 3 transactions of 128 reads.
	if first > 5 {
		t.Fatalf("the first Assigned sent %d etcd requests for %d machines", first, n)
	}
	if _, err := co.Assigned(ctx, "h1"); err != nil {
		t.Fatal(err)
	}
	if again := reqs.Load() - first; again != 0 {
		t.Fatalf("a second Assigned sent %d requests; want none (index watched, placements cached)", again)
	}
}
