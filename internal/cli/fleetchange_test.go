package cli

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/urldisk/urldisk/internal/fleet"
	"github.com/urldisk/urldisk/internal/objstore"
)

// TestFleetChangeCommands runs the commands fleetChange builds (machine
// stop, start and rm, migrate, drain) against a real file:// fleet whose
// two hosts heartbeat from the test (no agents): each changes the
// placement and says so, and --wait reaches the command (a stop waits for
// h1, which keeps reporting the machine running, until --wait passes).
func TestFleetChangeCommands(t *testing.T) {
	ctx := context.Background()
	pool := "file://" + t.TempDir()
	mustRun(t, "create", pool+"/v", "--size", "1M")
	store, err := objstore.Open(ctx, pool)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	f := fleet.New(store, nil)
	seq := uint64(0)
	beat := func(host string, running ...string) {
		t.Helper()
		seq++
		hb := &fleet.Heartbeat{Host: host, Seq: seq, Started: time.Now(), Time: time.Now(), Timeout: time.Minute}
		for _, m := range running {
			hb.Machines = append(hb.Machines, fleet.MachineStatus{Name: m, Phase: fleet.PhaseRunning})
		}
		if err := f.PutHeartbeat(ctx, hb); err != nil {
			t.Fatal(err)
		}
	}
	beat("h1")
	beat("h2")
	fl := []string{"--fleet", pool}
	cli := func(args ...string) string {
		t.Helper()
		return mustRun(t, append(args, fl...)...)
	}
	want := func(out, substr string) {
		t.Helper()
		if !strings.Contains(out, substr) {
			t.Errorf("output %q, want it to say %q", out, substr)
		}
	}

	want(mustRun(t, "machine", "run", "m1", "--fleet", pool, "--volume", pool+"/v", "--runtime", "process", "--host", "h1", "--", "/bin/true"), "machine m1: version 1, running on h1")
	beat("h1", "m1")
	_, err = run(t, ctx, append([]string{"machine", "stop", "m1", "--wait", "300ms"}, fl...)...)
	if err == nil || !strings.Contains(err.Error(), "machine m1 still active after 300ms") {
		t.Errorf("machine stop --wait 300ms while h1 reports m1 running: %v, want it to wait 300ms and say m1 is still active", err)
	}
	want(cli("machine", "stop", "m1"), "machine m1: already stopped on h1 (version 2)")
	want(cli("machine", "start", "m1"), "machine m1: version 3, running on h1")
	want(cli("migrate", "m1", "h2", "--wait", "0"), "machine m1: version 4 moves h1 → h2")
	out := cli("drain", "h2", "--wait", "0")
	want(out, "draining h2: 1 machine(s) to move")
	want(out, "m1\th2 → h1\trunning")
	want(cli("machine", "rm", "m1"), "machine m1: version 6, deleted on h1")
	// The listings fleetListing builds: a removed machine only with --all.
	if out := cli("machine", "ls"); strings.Contains(out, "m1") {
		t.Errorf("machine ls lists the removed m1:\n%s", out)
	}
	want(cli("machine", "ls", "--all", "--json"), `"name": "m1"`)
	out = cli("hosts", "--json")
	want(out, `"host": "h1"`)
	want(out, `"host": "h2"`)
	if _, err := run(t, ctx, append([]string{"migrate", "m1", "h2", "--wait", "soon"}, fl...)...); err == nil || !strings.Contains(err.Error(), "--wait") {
		t.Errorf("migrate --wait soon: %v, want an error naming --wait", err)
	}
}
