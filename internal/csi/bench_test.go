package csi_test

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// BenchmarkNodeStage measures NodeStageVolume from the call to a mounted
// filesystem: the first stage of a new volume (serve attach, nbdfuse,
// loop device, mkfs.ext4, mount) and a later stage of the same volume
// (its filesystem already made). bench/csi.sh runs it.
func BenchmarkNodeStage(b *testing.B) {
	requireNodeTools(b)
	e := newEnv(b)
	n := startDriver(b, "node-a")
	var first, again time.Duration
	for i := 0; i < b.N; i++ {
		vol := e.createVolume(b, n, fmt.Sprintf("pvc-stage-%d", i), 1<<30, nil)
		start := time.Now()
		s := e.stage(b, n, vol, mountCap(rwo))
		first += time.Since(start)
		if err := s.unstage(b); err != nil {
			b.Fatal(err)
		}
		start = time.Now()
		s = e.stage(b, n, vol, mountCap(rwo))
		again += time.Since(start)
		if err := s.unstage(b); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(first.Milliseconds())/float64(b.N), "first-stage-ms")
	b.ReportMetric(float64(again.Milliseconds())/float64(b.N), "restage-ms")
	b.ReportMetric(0, "ns/op")
}

// BenchmarkFailover measures a takeover after node loss: node A stages a
// volume and fsyncs a file, then A's serve and nbdfuse are frozen with
// SIGSTOP (a hung node); the time is from node B's NodeStageVolume call
// until B's mount answers with A's file.
func BenchmarkFailover(b *testing.B) {
	requireNodeTools(b)
	e := newEnv(b)
	a, bn := startDriver(b, "node-a"), startDriver(b, "node-b")
	var total time.Duration
	for i := 0; i < b.N; i++ {
		vol := e.createVolume(b, a, fmt.Sprintf("pvc-failover-%d", i), 1<<30, nil)
		sa := e.stage(b, a, vol, mountCap(rwo))
		if err := writeSync(sa.path, "before", []byte("flushed on A")); err != nil {
			b.Fatal(err)
		}
		frozen := stagedPIDs(b, a.stateDir)
		for _, pid := range frozen {
			syscall.Kill(pid, syscall.SIGSTOP)
		}
		start := time.Now()
		sb := e.stage(b, bn, vol, mountCap(rwo))
		got, err := os.ReadFile(filepath.Join(sb.path, "before"))
		total += time.Since(start)
		if err != nil || string(got) != "flushed on A" {
			b.Fatalf("B reads %q, %v", got, err)
		}
		for _, pid := range frozen {
			syscall.Kill(pid, syscall.SIGCONT)
		}
		sa.unstage(b) // fenced: errors are expected and beside the point
		if err := sb.unstage(b); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(total.Milliseconds())/float64(b.N), "failover-ms")
	b.ReportMetric(0, "ns/op")
}

// stagedPIDs returns the serve and nbdfuse pids of every volume staged
// under a node's state directory.
func stagedPIDs(t testing.TB, stateDir string) []int {
	t.Helper()
	files, _ := filepath.Glob(filepath.Join(stateDir, "vols", "*", "state.json"))
	var pids []int
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var s struct {
			Serve, Fuse struct {
				PID int `json:"pid"`
			}
		}
		if err := json.Unmarshal(b, &s); err != nil {
			t.Fatal(err)
		}
		pids = append(pids, s.Serve.PID, s.Fuse.PID)
	}
	if len(pids) == 0 {
		t.Fatalf("no staged volume under %s", stateDir)
	}
	return pids
}
