package e2efleet

import (
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/urldisk/urldisk/internal/fleet"
)

// counterMachine runs the counter on host and returns its acks file.
func (e *env) counterMachine(name, host string) (volURL, acksFile string) {
	e.t.Helper()
	volURL = e.volumeURL(name)
	e.mustCLI("create", volURL, "--size", "64M")
	acksFile = filepath.Join(e.dir, name+".acks")
	e.mustCLI("machine", "run", name, "--volume", volURL, "--runtime", "process", "--host", host, "--wait", "60s",
		"--", counterBin, "--acks", acksFile, "--interval", "100ms")
	return volURL, acksFile
}

// waitAcks waits until n more values than before were acknowledged by a
// writer on host, and returns the acks so far.
func (e *env) waitAcks(acksFile, host string, n int) []ackLine {
	e.t.Helper()
	before := 0
	for _, a := range readAcks(e.t, acksFile) {
		if a.kind == "ack" && a.host == host {
			before++
		}
	}
	var acks []ackLine
	e.waitFor(strings.Join([]string{"acks from", host}, " "), 60*time.Second, func() bool {
		acks = readAcks(e.t, acksFile)
		got := 0
		for _, a := range acks {
			if a.kind == "ack" && a.host == host {
				got++
			}
		}
		return got >= before+n
	})
	return acks
}

var downRE = regexp.MustCompile(`down (\S+)`)

// downtime extracts "down 123ms" from a migrate or drain output line.
func downtime(t testing.TB, out string) time.Duration {
	t.Helper()
	m := downRE.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no downtime reported in:\n%s", out)
	}
	d, err := time.ParseDuration(strings.TrimSuffix(m[1], ","))
	if err != nil {
		t.Fatalf("downtime %q: %v", m[1], err)
	}
	return d
}

// TestFleetCounterSurvivesMoves: three agents, one counter machine; it is
// migrated, drained off its host, and failed over from a SIGKILLed agent.
// It keeps counting throughout, no acknowledged value is lost, there are
// no gaps, no two hosts ever wrote it at once, and every move raised the
// volume's epoch.
func TestFleetCounterSurvivesMoves(t *testing.T) { counterSurvivesMoves(t, newEnv(t)) }

// TestFleetCounterSurvivesMovesEtcd is TestFleetCounterSurvivesMoves with
// the agents and commands coordinating through a 3-member etcd cluster
// (--coord): the failover comes from the killed agent's lease expiring.
func TestFleetCounterSurvivesMovesEtcd(t *testing.T) { counterSurvivesMoves(t, newEtcdEnv(t)) }

func counterSurvivesMoves(t *testing.T, e *env) {
	for _, h := range []string{"h1", "h2", "h3"} {
		e.startAgent(h)
	}
	vol, acksFile := e.counterMachine("counter", "h1")
	e.waitAcks(acksFile, "h1", 15)
	epochs := []uint64{e.infoEpoch(vol)}
	moved := func(how string) {
		t.Helper()
		ep := e.infoEpoch(vol)
		if ep <= epochs[len(epochs)-1] {
			t.Fatalf("after %s the volume's epoch is %d, not above %d", how, ep, epochs[len(epochs)-1])
		}
		epochs = append(epochs, ep)
	}

	// migrate h1 → h2.
	out := e.mustCLI("migrate", "counter", "h2", "--token-file", e.tokenFile)
	t.Logf("migrate:\n%s", out)
	dMigrate := downtime(t, out)
	e.waitAcks(acksFile, "h2", 15)
	moved("migrate")

	// drain h2: h1 and h3 carry nothing, so it goes to h1 (ties: smallest id).
	out = e.mustCLI("drain", "h2")
	t.Logf("drain:\n%s", out)
	dDrain := downtime(t, out)
	if !strings.Contains(out, "h2 → h1") {
		t.Fatalf("drain did not move counter to h1:\n%s", out)
	}
	e.waitAcks(acksFile, "h1", 15)
	moved("drain")
	hosts := e.mustCLI("hosts")
	t.Logf("hosts:\n%s", hosts)
	if !regexp.MustCompile(`(?m)^h2\s+draining`).MatchString(hosts) || !regexp.MustCompile(`(?m)^h1\s+live\s+1 running`).MatchString(hosts) {
		t.Fatalf("hosts does not show h2 draining and h1 running the machine:\n%s", hosts)
	}
	e.mustCLI("undrain", "h2")

	// SIGKILL h1's agent: after the heartbeat timeout another agent moves
	// the machine to a live host (h2 or h3, whichever is less loaded).
	killed := time.Now()
	e.signal("h1", syscall.SIGKILL)
	var to string
	e.waitFor("failover off h1", 30*time.Second, func() bool {
		p := e.placement("counter")
		to = p.Host
		return p.Host != "h1" && p.Reason == fleet.ReasonFailover
	})
	e.waitAcks(acksFile, to, 15)
	dFailover := time.Since(killed)
	moved("failover")
	ls := e.mustCLI("machine", "ls")
	t.Logf("machine ls:\n%s", ls)
	if !regexp.MustCompile(`(?m)^counter\s+running\s+` + to + `\s+\d+\s+running`).MatchString(ls) {
		t.Fatalf("machine ls does not show counter running on %s:\n%s", to, ls)
	}

	// Stop it cleanly and check everything.
	e.mustCLI("machine", "stop", "counter", "--wait", "30s")
	acks := readAcks(t, acksFile)
	for _, a := range acks {
		if a.kind == "start" {
			e.waitFor("counter process to exit", 10*time.Second, func() bool {
				return syscall.Kill(a.pid, 0) != nil
			})
		}
	}
	runs := e.checkCounter("counter", acks)
	if len(runs) < 4 {
		t.Fatalf("%d writer runs on the disk, want at least 4 (h1, h2, h1, %s)", len(runs), to)
	}
	lg := e.checkLog("counter")
	if len(lg.fences) != len(epochs) {
		t.Fatalf("%d fences in the log, want %d (one per attach)", len(lg.fences), len(epochs))
	}
	t.Logf("epochs per move: %v; downtime: migrate %v, drain %v; failover (kill → 10 acks on %s) %v",
		epochs, dMigrate, dDrain, to, dFailover.Round(time.Millisecond))
}

// TestFleetPartitionFencing: the counter's agent is frozen (SIGSTOP) long
// enough to be declared dead; its machine fails over. When it resumes
// (SIGCONT) it finds the placement moved and its volume fenced: it stops
// its orphaned machine, nothing it wrote after the takeover is visible,
// and the new host's data is intact.
func TestFleetPartitionFencing(t *testing.T) { partitionFencing(t, newEnv(t)) }

// TestFleetPartitionFencingEtcd is TestFleetPartitionFencing coordinated
// through etcd: the frozen agent's lease expires; resumed, it gets a new
// one and finds its machine moved and fenced.
func TestFleetPartitionFencingEtcd(t *testing.T) { partitionFencing(t, newEtcdEnv(t)) }

func partitionFencing(t *testing.T, e *env) {
	for _, h := range []string{"h1", "h2", "h3"} {
		e.startAgent(h)
	}
	_, acksFile := e.counterMachine("counter", "h1")
	acks := e.waitAcks(acksFile, "h1", 15)
	var oldPID int
	for _, a := range acks {
		if a.kind == "start" && a.host == "h1" {
			oldPID = a.pid
		}
	}

	e.signal("h1", syscall.SIGSTOP)
	var to string
	e.waitFor("failover off the frozen h1", 30*time.Second, func() bool {
		p := e.placement("counter")
		to = p.Host
		return p.Host != "h1"
	})
	e.waitAcks(acksFile, to, 15)
	if syscall.Kill(oldPID, 0) != nil {
		t.Fatal("the old counter process died while its agent was frozen: the test cannot show it is stopped by the agent")
	}
	e.signal("h1", syscall.SIGCONT)

	// h1's agent stops its orphan and reports no machine running.
	e.waitFor("the old counter process to be stopped", 30*time.Second, func() bool {
		return syscall.Kill(oldPID, 0) != nil
	})
	e.waitFor("h1 to report nothing running", 30*time.Second, func() bool {
		hb := e.heartbeat("h1")
		return hb != nil && !hb.Down && hb.Running() == 0 && e.placement("counter").Host == to
	})
	// The new host keeps counting after h1 came back.
	e.waitAcks(acksFile, to, 15)
	agentLog := e.agents["h1"].out.String()
	fencedSeen := strings.Contains(agentLog, "FENCED") || e.heartbeat("h1").Fenced > 0
	var notable []string
	for _, l := range strings.Split(agentLog, "\n") {
		if strings.Contains(l, "FENCED") || strings.Contains(l, "machine stopped") || strings.Contains(l, "stopping machine") {
			notable = append(notable, l)
		}
	}
	t.Logf("h1 after SIGCONT:\n%s", strings.Join(notable, "\n"))
	if !fencedSeen {
		t.Fatalf("h1 resumed with the counter's writes pending but never saw its volume fenced; h1's log:\n%s", agentLog)
	}

	e.mustCLI("machine", "stop", "counter", "--wait", "30s")
	acks = readAcks(t, acksFile)
	runs := e.checkCounter("counter", acks)
	if len(runs) < 2 {
		t.Fatalf("%d writer runs, want at least 2", len(runs))
	}
	// Nothing h1's counter acknowledged comes after what the new host's
	// counter started from.
	var newStart uint64
	for _, a := range acks {
		if a.kind == "start" && a.host == to {
			newStart = a.value
		}
	}
	for _, a := range acks {
		if a.kind == "ack" && a.host == "h1" && a.value > newStart {
			t.Fatalf("h1 acknowledged %d after the new host started from %d", a.value, newStart)
		}
	}
	e.checkLog("counter")
}
