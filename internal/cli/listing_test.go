package cli

import (
	"bytes"
	"encoding/json"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/urldisk/urldisk/internal/fleet"
)

// testView is a fleet as `hosts` and `machine ls` see it: h1 live running
// m1, h2 dead (stopped) after m2 exited 3, h3 drained without ever
// heartbeating; m3 removed. The volume URL carries an option to redact.
func testView() *fleet.View {
	now := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	return &fleet.View{
		Now: now,
		Heartbeats: map[string]*fleet.Heartbeat{
			"h1": {Host: "h1", Time: now.Add(-time.Second), Timeout: 10 * time.Second, API: "https://h1:7000",
				Cache:    fleet.CacheStats{Bytes: 1 << 20, Capacity: 1 << 30, Hits: 3, Misses: 1},
				Machines: []fleet.MachineStatus{{Name: "m1", Version: 1, Phase: fleet.PhaseRunning}}},
			"h2": {Host: "h2", Time: now.Add(-time.Minute), Down: true,
				Machines: []fleet.MachineStatus{{Name: "m2", Version: 2, Phase: fleet.PhaseExited, ExitCode: 3}}},
		},
		Draining: map[string]bool{"h3": true},
		Placements: map[string]*fleet.Placement{
			"m1": {Name: "m1", Version: 1, Host: "h1", State: fleet.Running, Spec: fleet.Spec{Runtime: "process", Volume: "s3://b/p/v1?endpoint=http://x:1"}},
			"m2": {Name: "m2", Version: 2, Host: "h2", State: fleet.Running, Spec: fleet.Spec{Runtime: "qemu", Volume: "file:///p/v2"}},
			"m3": {Name: "m3", Version: 4, Host: "h1", State: fleet.Deleted, Spec: fleet.Spec{Runtime: "process", Volume: "file:///p/v3"}},
		},
	}
}

func TestPrintHosts(t *testing.T) {
	var b bytes.Buffer
	if err := printHosts(&b, testView(), false); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(b.String()), "\n")
	if len(lines) != 4 || !strings.HasPrefix(lines[0], "HOST ") {
		t.Fatalf("hosts table:\n%s", b.String())
	}
	for i, want := range []string{
		`^h1 +live +1 running, 1 placed +1 MiB / 1 GiB +75\.0% \(3 hits, 1 misses\) +1s ago +https://h1:7000$`,
		`^h2 +dead \(stopped\) +0 running at last report, 1 placed .* 1m0s ago +-$`,
		`^h3 +unknown,draining +0 running at last report, 0 placed .* - +-$`,
	} {
		if !regexpMatch(t, want, lines[i+1]) {
			t.Errorf("hosts line %d = %q, want %s", i+1, lines[i+1], want)
		}
	}
	b.Reset()
	if err := printHosts(&b, testView(), true); err != nil {
		t.Fatal(err)
	}
	var rows []hostRow
	if err := json.Unmarshal(b.Bytes(), &rows); err != nil || len(rows) != 3 || rows[2].Host != "h3" || !rows[2].Draining {
		t.Fatalf("hosts --json: %v %+v", err, rows)
	}
	b.Reset()
	if err := printHosts(&b, &fleet.View{}, true); err != nil || strings.TrimSpace(b.String()) != "[]" {
		t.Fatalf("hosts --json of an empty fleet = %q (%v), want []", b.String(), err)
	}
}

func TestPrintMachines(t *testing.T) {
	var b bytes.Buffer
	if err := printMachines(&b, testView(), false, false); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 3 || !strings.HasPrefix(lines[0], "NAME ") {
		t.Fatalf("machine ls table:\n%s", out)
	}
	if !regexpMatch(t, `^m1 +running +h1 +1 +running +process +s3://b/p/v1`, lines[1]) ||
		!regexpMatch(t, `^m2 +running +h2 +2 +exited\(3\) \(host dead\) +qemu +file:///p/v2$`, lines[2]) {
		t.Errorf("machine ls rows:\n%s", out)
	}
	b.Reset()
	if err := printMachines(&b, testView(), true, true); err != nil {
		t.Fatal(err)
	}
	var rows []machineRow
	if err := json.Unmarshal(b.Bytes(), &rows); err != nil || len(rows) != 3 || rows[2].Name != "m3" || rows[2].State != fleet.Deleted {
		t.Fatalf("machine ls --all --json: %v %+v", err, rows)
	}
}

func regexpMatch(t *testing.T, re, s string) bool {
	t.Helper()
	return regexp.MustCompile(re).MatchString(s)
}

// TestVolumeListings: ls, checkpoints and du print aligned tables or JSON
// arrays, an empty listing as [] (not null, which scripts iterating the
// result choke on).
func TestVolumeListings(t *testing.T) {
	pool := "file://" + t.TempDir() + "/pool"
	mustRun(t, "pool", "init", pool)
	for _, args := range [][]string{{"ls", pool, "--json"}, {"du", pool, "--json"}} {
		if out := mustRun(t, args...); strings.TrimSpace(out) != "[]" {
			t.Errorf("%v of an empty pool = %q, want []", args, out)
		}
	}
	mustRun(t, "create", pool+"/a", "--size", "1M")
	mustRun(t, "create", pool+"/b", "--size", "2M")
	if out := mustRun(t, "checkpoints", pool+"/a", "--json"); strings.TrimSpace(out) != "[]" {
		t.Errorf("checkpoints --json without any = %q, want []", out)
	}
	mustRun(t, "checkpoint", pool+"/a", "first")

	lines := strings.Split(strings.TrimSpace(mustRun(t, "ls", pool)), "\n")
	if len(lines) != 3 || !regexpMatch(t, `^NAME +SIZE +ID +CREATED +PARENT$`, lines[0]) ||
		!regexpMatch(t, `^a +1 MiB +[0-9a-f]+ +\S+ +-$`, lines[1]) || !regexpMatch(t, `^b +2 MiB `, lines[2]) {
		t.Errorf("ls table:\n%s", strings.Join(lines, "\n"))
	}
	var vols []struct{ Name string }
	if err := json.Unmarshal([]byte(mustRun(t, "ls", pool, "--json")), &vols); err != nil || len(vols) != 2 || vols[1].Name != "b" {
		t.Errorf("ls --json: %v %+v", err, vols)
	}
	lines = strings.Split(strings.TrimSpace(mustRun(t, "checkpoints", pool+"/a")), "\n")
	if len(lines) != 2 || !regexpMatch(t, `^LABEL +SEQ +TIME +UNIQUE$`, lines[0]) || !regexpMatch(t, `^first +\d+ +\S+ +0 B$`, lines[1]) {
		t.Errorf("checkpoints table:\n%s", strings.Join(lines, "\n"))
	}
	var cps []struct {
		Label string
		Seq   uint64
	}
	if err := json.Unmarshal([]byte(mustRun(t, "checkpoints", pool+"/a", "--json")), &cps); err != nil || len(cps) != 1 || cps[0].Label != "first" {
		t.Errorf("checkpoints --json: %v %+v", err, cps)
	}
	lines = strings.Split(strings.TrimSpace(mustRun(t, "du", pool)), "\n")
	if len(lines) != 3 || !regexpMatch(t, `^VOLUME +STORED +LOGICAL +EXCLUSIVE +SHARED +HISTORY +GARBAGE$`, lines[0]) {
		t.Errorf("du table:\n%s", strings.Join(lines, "\n"))
	}
}
