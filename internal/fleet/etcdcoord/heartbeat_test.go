package etcdcoord

import (
	"context"
	"testing"
	"time"

	"github.com/urldisk/urldisk/internal/fleet"
	"github.com/urldisk/urldisk/internal/testutil/etcdcluster"
)

// A heartbeat renews its host's lease to the full TTL, and a heartbeat
// whose lease is gone (the agent paused past its TTL, or the lease was
// revoked) grants a new one and makes the host alive again at once.
func TestEtcdHeartbeatRenewsAndRegrantsLease(t *testing.T) {
	c := etcdcluster.Start(t)
	ctx := context.Background()
	const ttl = 5 * time.Second
	co := open(t, c, "hb/", Options{Self: "h1", LeaseTTL: ttl})
	beat := func(seq uint64) {
		t.Helper()
		now := time.Now()
		if err := co.PutHeartbeat(ctx, &fleet.Heartbeat{Host: "h1", Seq: seq, Started: now, Time: now, Timeout: ttl}); err != nil {
			t.Fatalf("heartbeat %d: %v", seq, err)
		}
	}
	read := func() *fleet.Heartbeat {
		t.Helper()
		h, err := co.Heartbeat(ctx, "h1")
		if err != nil || h == nil {
			t.Fatalf("read heartbeat: %v, %v", h, err)
		}
		return h
	}
	lease := func() int64 {
		co.mu.Lock()
		defer co.mu.Unlock()
		return int64(co.lease)
	}

	beat(1)
	if h := read(); h.Down || h.Seq != 1 {
		t.Fatalf("after heartbeat 1: down %v seq %d, want alive at 1", h.Down, h.Seq)
	}
	first := lease()
	// Two seconds on, a heartbeat must bring the lease back to its TTL.
	time.Sleep(2 * time.Second)
	beat(2)
	if lease() != first {
		t.Fatalf("heartbeat 2 granted lease %x, want %x renewed", lease(), first)
	}
	ttlResp, err := co.cli.TimeToLive(ctx, co.lease)
	if err != nil {
		t.Fatal(err)
	}
	if ttlResp.TTL < int64(ttl/time.Second)-1 {
		t.Fatalf("lease has %d s left after a heartbeat, want about %v: not renewed", ttlResp.TTL, ttl)
	}

	if _, err := co.cli.Revoke(ctx, co.lease); err != nil {
		t.Fatal(err)
	}
	if h := read(); !h.Down {
		t.Fatal("host alive with its lease revoked")
	}
	beat(3)
	if h := read(); h.Down || h.Seq != 3 {
		t.Fatalf("after heartbeat 3 on a revoked lease: down %v seq %d, want alive at 3", h.Down, h.Seq)
	}
	if lease() == first {
		t.Fatal("heartbeat 3 kept the revoked lease")
	}
}
