package e2efleet

import (
	"syscall"
	"testing"
	"time"
)

// TestFleetEtcdLeaderKilledDuringDrainThenEtcdLost: on a real 3-member
// etcd cluster, the etcd leader is killed as `drain h1` starts moving the
// counter: the drain completes on the two members left and the counter
// runs on another host with no acknowledged count lost and one fence per attach. Then every etcd
// member is stopped: the agent running the counter cannot heartbeat or
// read placements, yet keeps it running and acknowledging (nobody can take
// it, so nothing fences it) for several heartbeat timeouts.
func TestFleetEtcdLeaderKilledDuringDrainThenEtcdLost(t *testing.T) {
	e := newEtcdEnv(t)
	for _, h := range []string{"h1", "h2", "h3"} {
		e.startAgent(h)
	}
	vol, acksFile := e.counterMachine("counter", "h1")
	e.waitAcks(acksFile, "h1", 15)
	epoch := e.infoEpoch(vol)

	// The drain starts as the leader dies: its writes and the agents'
	// heartbeats, watches and acks meet a cluster electing a new leader
	// (election timeout 1s, more than the CLI takes to start).
	killed := e.etcd.KillLeader()
	r := e.cli("drain", "h1")
	t.Logf("etcd member %d (leader) killed as the drain started:\n%s", killed, r)
	if r.code != 0 {
		t.Fatalf("drain failed when the etcd leader was killed:\n%s", r)
	}
	to := e.placement("counter").Host
	if to == "h1" {
		t.Fatalf("after the drain the counter is still placed on h1")
	}
	e.waitAcks(acksFile, to, 15)
	if ep := e.infoEpoch(vol); ep <= epoch {
		t.Fatalf("after the drain the volume's epoch is %d, not above %d", ep, epoch)
	}
	var pid int
	for _, a := range readAcks(t, acksFile) {
		if a.kind == "start" && a.host == to {
			pid = a.pid
		}
	}

	// Lose etcd entirely.
	e.etcd.StopAll()
	time.Sleep(3 * hbTimeout)
	// 15 more acks counted from 3 heartbeat timeouts after the loss.
	acks := e.waitAcks(acksFile, to, 15)
	if syscall.Kill(pid, 0) != nil {
		t.Fatalf("the counter on %s died after etcd was lost", to)
	}
	if runs := e.checkCounter("counter", acks); len(runs) != 2 {
		t.Fatalf("writer runs %v, want 2 (h1's, then %s's)", runs, to)
	}
	if lg := e.checkLog("counter"); len(lg.fences) != 2 {
		t.Fatalf("%d fences in the log, want 2 (h1's attach, %s's)", len(lg.fences), to)
	}
}
