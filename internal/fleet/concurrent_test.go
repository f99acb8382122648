package fleet

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"
)

// slowCAS is a Coord whose placement writes each take delay and count how
// many are in flight at once: a store a round trip away.
type slowCAS struct {
	Coord
	delay time.Duration

	mu            sync.Mutex
	inFlight, max int
}

func (s *slowCAS) CompareAndSwap(ctx context.Context, prev, p *Placement) (bool, error) {
	s.mu.Lock()
	s.inFlight++
	s.max = max(s.max, s.inFlight)
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		s.inFlight--
		s.mu.Unlock()
	}()
	time.Sleep(s.delay)
	return s.Coord.CompareAndSwap(ctx, prev, p)
}

// TestFailoverAndDrainMovesRunConcurrently: a failover and a drain of 64
// machines keep several placement writes in flight (one at a time, they
// took as long as the machines to move times a write), and every machine
// still moves once.
func TestFailoverAndDrainMovesRunConcurrently(t *testing.T) {
	ctx := context.Background()
	clk := &fixedClock{t: t0}
	f := NewWithOptions(memStore(t), Options{Now: clk.Now})
	co := &slowCAS{Coord: f, delay: 20 * time.Millisecond}
	beat := func(hosts ...string) {
		for _, h := range hosts {
			if err := f.PutHeartbeat(ctx, &Heartbeat{Host: h, Seq: uint64(clk.Now().Unix()), Started: t0, Time: clk.Now(), Timeout: simTimeout}); err != nil {
				t.Fatal(err)
			}
		}
	}
	beat("h0", "h1", "h2")
	const n = 64
	for i := range n {
		name := fmt.Sprintf("m%02d", i)
		if _, err := Update(ctx, f, name, "test", func(cur *Placement) (*Placement, error) {
			return NextRun(cur, name, procSpec(name), "h2", clk.Now())
		}); err != nil {
			t.Fatal(err)
		}
	}

	// Drain h2 onto h0 and h1.
	start := time.Now()
	res, err := (&Ops{Fleet: co, By: "test", Now: clk.Now}).Drain(ctx, "h2")
	if err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)
	if len(res) != n {
		t.Fatalf("drain reported %d machines, want %d", len(res), n)
	}
	for _, r := range res {
		if r.Err != nil || r.Placement == nil || r.Placement.Host == "h2" {
			t.Fatalf("drain of %s: %+v, %v", r.Name, r.Placement, r.Err)
		}
	}
	t.Logf("drain of %d machines: %d writes in flight at most, %v", n, co.max, took)
	if co.max < 8 {
		t.Fatalf("drain kept at most %d placement writes in flight, want several (up to %d)", co.max, movesInFlight)
	}

	// h0 watches h1 (two hosts: each watches the other); h1 dies.
	if err := f.SetDraining(ctx, "h2", false); err != nil {
		t.Fatal(err)
	}
	m := NewMember(co, MemberConfig{Self: "h0", By: "test", Timeout: simTimeout, Now: clk.Now})
	if _, err := m.Round(ctx, 0); err != nil {
		t.Fatal(err)
	}
	onH1, err := f.Assigned(ctx, "h1")
	if err != nil {
		t.Fatal(err)
	}
	want := 0
	for _, p := range onH1 {
		if p.Host == "h1" && p.State == Running {
			want++
		}
	}
	co.mu.Lock()
	co.max = 0
	co.mu.Unlock()
	// Rounds an interval apart, as the agent's: a gap past half the
	// timeout would make the member start watching over.
	var failovers []*Placement
	for range 2 * int(simTimeout/simInterval) {
		clk.Add(simInterval)
		beat("h0", "h2")
		start = time.Now()
		r, err := m.Round(ctx, n-want)
		if err != nil {
			t.Fatal(err)
		}
		if len(r.Failovers) > 0 {
			took = time.Since(start)
		}
		failovers = append(failovers, r.Failovers...)
	}
	r := &Round{Failovers: failovers}
	if len(r.Failovers) != want || want == 0 {
		t.Fatalf("round failed over %d machines, want the %d running on dead h1", len(r.Failovers), want)
	}
	for _, p := range r.Failovers {
		if p.Host == "h1" || p.Reason != ReasonFailover {
			t.Fatalf("failover wrote %+v", p)
		}
	}
	t.Logf("failover of %d machines: %d writes in flight at most, %v", want, co.max, took)
	if co.max < 8 {
		t.Fatalf("failover kept at most %d placement writes in flight, want several (up to %d)", co.max, movesInFlight)
	}
}
