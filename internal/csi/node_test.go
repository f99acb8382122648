package csi_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
)

// TestNodeLoss: node A stages a volume and writes files through ext4 with
// fsync; node B (another node id, state and cache) stages the same volume
// while A's serve still runs. B sees every fsynced file at once; A's next
// write and fsync fail and its serve exits fenced, so nothing A does
// reaches the volume any more; the filesystem B took over is clean.
func TestNodeLoss(t *testing.T) {
	requireNodeTools(t)
	e := newEnv(t)
	a, b := startDriver(t, "node-a"), startDriver(t, "node-b")
	vol := e.createVolume(t, a, "pvc-nodeloss", 64<<20, nil)

	sa := e.stage(t, a, vol, mountCap(rwo))
	want := map[string][]byte{}
	for i := range 5 {
		name := fmt.Sprintf("f%d", i)
		want[name] = bytes.Repeat([]byte{byte('a' + i)}, 100_000+i)
		if err := writeSync(sa.path, name, want[name]); err != nil {
			t.Fatalf("write %s on A: %v", name, err)
		}
	}

	start := time.Now()
	sb := e.stage(t, b, vol, mountCap(rwo))
	t.Logf("B staged (fencing A) in %v", time.Since(start).Round(time.Millisecond))
	for name, data := range want {
		got, err := os.ReadFile(filepath.Join(sb.path, name))
		if err != nil || !bytes.Equal(got, data) {
			t.Errorf("B reads %s: %d bytes, err %v; want the %d bytes A fsynced", name, len(got), err, len(data))
		}
	}

	// A's writes now fail: its serve is fenced at its next flush (or by
	// its once-a-second fence check) and exits.
	err := writeSync(sa.path, "after-takeover", []byte("must never reach the volume"))
	if err == nil {
		t.Errorf("A wrote and fsynced a file after B took the volume over")
	}
	serveLog := filepath.Join(a.stateDir, "vols")
	deadline := time.Now().Add(20 * time.Second)
	var logs string
	for time.Now().Before(deadline) {
		logs = readLogs(t, serveLog, "serve.log")
		if strings.Contains(logs, "fenced") {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if !strings.Contains(logs, "fenced") {
		t.Errorf("A's serve log does not say it was fenced:\n%s", logs)
	}
	// Staging again on A does not take the volume back from B: it must
	// be unstaged first.
	_, err = a.node.NodeStageVolume(context.Background(), &csi.NodeStageVolumeRequest{VolumeId: vol.VolumeId,
		StagingTargetPath: sa.stagingPath, VolumeCapability: mountCap(rwo), Secrets: e.secrets, VolumeContext: vol.VolumeContext})
	wantCode(t, "stage again on fenced A", err, codes.FailedPrecondition, "fenced")
	if err := writeSync(sb.path, "b-still-writes", []byte("B owns it")); err != nil {
		t.Errorf("B after A's refused restage: %v", err)
	}
	want["b-still-writes"] = []byte("B owns it")

	// The fenced node lets go of everything: mount, loop device, nbdfuse,
	// serve (already exited) and its state.
	if err := sa.unstage(t); err != nil {
		t.Errorf("unstage on fenced A: %v", err)
	}
	if entries, _ := os.ReadDir(filepath.Join(a.stateDir, "vols")); len(entries) != 0 {
		t.Errorf("fenced A's stage state left after unstage: %v", entries)
	}

	// B's view is the volume's: unstage (flush), check the filesystem
	// through a block stage on a third node, then mount it again.
	if err := sb.unstage(t); err != nil {
		t.Fatalf("unstage on B: %v", err)
	}
	c := startDriver(t, "node-c")
	sc := e.stage(t, c, vol, blockCap(rwo))
	if out, err := exec.Command("e2fsck", "-f", "-n", sc.path).CombinedOutput(); err != nil {
		t.Errorf("e2fsck -f -n of the volume after the takeover: %v\n%s", err, out)
	}
	if err := sc.unstage(t); err != nil {
		t.Fatalf("unstage on C: %v", err)
	}
	sb2 := e.stage(t, b, vol, mountCap(rwo))
	if _, err := os.Stat(filepath.Join(sb2.path, "after-takeover")); err == nil {
		t.Errorf("a file A wrote after the takeover is on the volume")
	}
	for name, data := range want {
		if got, err := os.ReadFile(filepath.Join(sb2.path, name)); err != nil || !bytes.Equal(got, data) {
			t.Errorf("after remount B reads %s: %d bytes, err %v", name, len(got), err)
		}
	}
}

// readLogs concatenates every file called name under dir.
func readLogs(t *testing.T, dir, name string) string {
	t.Helper()
	var b strings.Builder
	filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.Name() == name {
			data, _ := os.ReadFile(p)
			b.Write(data)
		}
		return nil
	})
	return b.String()
}

// TestUnstageAfterRestart: a driver that restarts (its state directory
// kept) unstages what its predecessor staged: the mount, loop device,
// nbdfuse and serve are all gone afterwards.
func TestUnstageAfterRestart(t *testing.T) {
	requireNodeTools(t)
	e := newEnv(t)
	a := startDriver(t, "node-a")
	vol := e.createVolume(t, a, "pvc-restart", 32<<20, nil)
	s := e.stage(t, a, vol, mountCap(rwo))
	if err := writeSync(s.path, "x", []byte("kept")); err != nil {
		t.Fatal(err)
	}
	state := readLogs(t, a.stateDir, "state.json")
	a.stop()

	a2 := restartDriver(t, a)
	s.n = a2
	if err := s.unstage(t); err != nil {
		t.Fatalf("unstage after restart: %v", err)
	}
	if m, _ := os.ReadFile("/proc/self/mountinfo"); bytes.Contains(m, []byte(s.path+" ")) {
		t.Errorf("staging path still mounted after unstage")
	}
	for _, sub := range []string{"vols", "cache"} {
		if entries, _ := os.ReadDir(filepath.Join(a.stateDir, sub)); len(entries) != 0 {
			t.Errorf("%s left after unstage: %v (state was %s)", sub, entries, state)
		}
	}
	// Nothing lost: stage again and read.
	s2 := e.stage(t, a2, vol, mountCap(rwo))
	if got, err := os.ReadFile(filepath.Join(s2.path, "x")); err != nil || string(got) != "kept" {
		t.Errorf("after restart and restage: %q, %v", got, err)
	}
}

// TestReadersOnly: MULTI_NODE_READER_ONLY stages go through read-only
// serves: two nodes mount the volume at once and read what the writer
// wrote before it unstaged, writes through them fail, and they fence
// nobody: a writer staged meanwhile keeps writing. (A reader mounts ext4
// without journal replay, which would write, so it sees the filesystem as
// last unmounted, not a live writer's newest files.)
func TestReadersOnly(t *testing.T) {
	requireNodeTools(t)
	e := newEnv(t)
	a, b, c := startDriver(t, "node-a"), startDriver(t, "node-b"), startDriver(t, "node-c")
	vol := e.createVolume(t, a, "pvc-readers", 32<<20, nil)
	w := e.stage(t, a, vol, mountCap(rwo))
	if err := writeSync(w.path, "shared", []byte("for every reader")); err != nil {
		t.Fatal(err)
	}
	if err := w.unstage(t); err != nil {
		t.Fatal(err)
	}
	ro := mountCap(csi.VolumeCapability_AccessMode_MULTI_NODE_READER_ONLY)
	var readers []*staging
	for _, n := range []*node{b, c} {
		s := e.stage(t, n, vol, ro)
		readers = append(readers, s)
		if got, err := os.ReadFile(filepath.Join(s.path, "shared")); err != nil || string(got) != "for every reader" {
			t.Errorf("reader %s reads %q, %v", n.id, got, err)
		}
		if err := os.WriteFile(filepath.Join(s.path, "nope"), []byte("x"), 0o644); err == nil {
			t.Errorf("reader %s wrote a file", n.id)
		}
	}
	w = e.stage(t, a, vol, mountCap(rwo))
	if err := writeSync(w.path, "later", []byte("writer still owns it")); err != nil {
		t.Errorf("the writer was disturbed by the readers: %v", err)
	}
	for _, s := range readers {
		if got, err := os.ReadFile(filepath.Join(s.path, "shared")); err != nil || string(got) != "for every reader" {
			t.Errorf("reader %s after a writer staged reads %q, %v", s.n.id, got, err)
		}
	}
}

// TestXFS: a volume asked for as xfs is made xfs on first use (mkfs.xfs,
// which this test requires), keeps its files across an unstage, and is
// refused when later asked for as ext4 rather than reformatted.
func TestXFS(t *testing.T) {
	requireNodeTools(t)
	if _, err := exec.LookPath("mkfs.xfs"); err != nil {
		t.Fatalf("mkfs.xfs not found: install it with apt-get install -y xfsprogs (scripts/install-test-deps.sh)")
	}
	e := newEnv(t)
	n := startDriver(t, "node-a")
	vol := e.createVolume(t, n, "pvc-xfs", 512<<20, nil)
	xfs := mountCap(rwo)
	xfs.GetMount().FsType = "xfs"
	s := e.stage(t, n, vol, xfs)
	if out, err := exec.Command("findmnt", "-n", "-o", "FSTYPE", s.path).Output(); err != nil || strings.TrimSpace(string(out)) != "xfs" {
		t.Errorf("staging path filesystem: %q, %v; want xfs", out, err)
	}
	if err := writeSync(s.path, "x", []byte("on xfs")); err != nil {
		t.Fatal(err)
	}
	if err := s.unstage(t); err != nil {
		t.Fatal(err)
	}
	s = e.stage(t, n, vol, xfs)
	if got, err := os.ReadFile(filepath.Join(s.path, "x")); err != nil || string(got) != "on xfs" {
		t.Errorf("after restage: %q, %v", got, err)
	}
	if err := s.unstage(t); err != nil {
		t.Fatal(err)
	}
	_, err := n.node.NodeStageVolume(context.Background(), &csi.NodeStageVolumeRequest{VolumeId: vol.VolumeId, StagingTargetPath: t.TempDir(),
		VolumeCapability: mountCap(rwo), Secrets: e.secrets, VolumeContext: vol.VolumeContext})
	wantCode(t, "stage an xfs volume as ext4", err, codes.FailedPrecondition, "xfs", "ext4")
}
