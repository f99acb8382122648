package csi_test

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
)

// TestExpand grows a filesystem volume the offline way the driver
// advertises: stage ext4 (or xfs), write a file, unstage;
// ControllerExpandVolume; stage on another node id, NodeExpandVolume: the
// filesystem is bigger, the file intact, a file larger than the old volume
// fits; a third node reads everything back.
func TestExpand(t *testing.T) {
	requireNodeTools(t)
	for _, tc := range []struct {
		fs       string
		old, new int64
	}{{"ext4", 64 << 20, 192 << 20}, {"xfs", 320 << 20, 640 << 20}} {
		t.Run(tc.fs, func(t *testing.T) {
			if _, err := exec.LookPath("mkfs." + tc.fs); err != nil {
				t.Fatalf("mkfs.%s not found (scripts/install-test-deps.sh installs it): %v", tc.fs, err)
			}
			e := newEnv(t)
			a, b, c := startDriver(t, "node-a"), startDriver(t, "node-b"), startDriver(t, "node-c")
			vol := e.createVolume(t, a, "pvc-grow-"+tc.fs, tc.old, nil)
			mc := mountCap(rwo)
			mc.GetMount().FsType = tc.fs
			small := bytes.Repeat([]byte("before "), 10_000)
			big := bytes.Repeat([]byte{0xab, 0xcd}, int(tc.old)/2+(1<<20)) // does not fit the old volume

			s := e.stage(t, a, vol, mc)
			before := fsBytes(t, s.path)
			if err := writeSync(s.path, "small", small); err != nil {
				t.Fatal(err)
			}
			if err := s.unstage(t); err != nil {
				t.Fatal(err)
			}
			ctx := context.Background()
			r, err := a.ctl.ControllerExpandVolume(ctx, &csi.ControllerExpandVolumeRequest{VolumeId: vol.VolumeId,
				CapacityRange: &csi.CapacityRange{RequiredBytes: tc.new}, VolumeCapability: mc, Secrets: e.secrets})
			if err != nil {
				t.Fatalf("ControllerExpandVolume: %v", err)
			}
			if r.CapacityBytes != tc.new || !r.NodeExpansionRequired {
				t.Fatalf("ControllerExpandVolume: %d bytes, node expansion %v; want %d, true", r.CapacityBytes, r.NodeExpansionRequired, tc.new)
			}
			// Asked again (a CO retry) or for less: the size it has.
			if r, err := a.ctl.ControllerExpandVolume(ctx, &csi.ControllerExpandVolumeRequest{VolumeId: vol.VolumeId,
				CapacityRange: &csi.CapacityRange{RequiredBytes: tc.old}, VolumeCapability: mc, Secrets: e.secrets}); err != nil || r.CapacityBytes != tc.new {
				t.Fatalf("ControllerExpandVolume for less: %v, %v; want %d bytes", r, err, tc.new)
			}

			s = e.stage(t, b, vol, mc)
			nr, err := b.node.NodeExpandVolume(ctx, &csi.NodeExpandVolumeRequest{VolumeId: vol.VolumeId, VolumePath: s.path,
				StagingTargetPath: s.stagingPath, CapacityRange: &csi.CapacityRange{RequiredBytes: tc.new}, VolumeCapability: mc})
			if err != nil {
				t.Fatalf("NodeExpandVolume: %v", err)
			}
			if nr.CapacityBytes != tc.new {
				t.Fatalf("NodeExpandVolume: device of %d bytes, want %d", nr.CapacityBytes, tc.new)
			}
			after := fsBytes(t, s.path)
			t.Logf("%s: %d -> %d bytes", tc.fs, before, after)
			if after < before+(tc.new-tc.old)*3/4 {
				t.Fatalf("filesystem %d bytes after expansion, was %d: did not grow by about %d", after, before, tc.new-tc.old)
			}
			if got, err := os.ReadFile(filepath.Join(s.path, "small")); err != nil || !bytes.Equal(got, small) {
				t.Fatalf("file written before the expansion: %d bytes, %v", len(got), err)
			}
			if err := writeSync(s.path, "big", big); err != nil {
				t.Fatalf("write %d bytes (more than the old volume) after expansion: %v", len(big), err)
			}
			if err := s.unstage(t); err != nil {
				t.Fatal(err)
			}

			s = e.stage(t, c, vol, mc)
			for name, want := range map[string][]byte{"small": small, "big": big} {
				if got, err := os.ReadFile(filepath.Join(s.path, name)); err != nil || !bytes.Equal(got, want) {
					t.Errorf("node-c reads %s: %d bytes, %v; want %d", name, len(got), err, len(want))
				}
			}
		})
	}
}

// fsBytes is the size of the filesystem mounted at path.
func fsBytes(t *testing.T, path string) int64 {
	t.Helper()
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		t.Fatal(err)
	}
	return int64(st.Blocks) * int64(st.Bsize)
}
