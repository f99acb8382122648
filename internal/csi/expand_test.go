package csi_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"

	"github.com/urldisk/urldisk/internal/volref"
	"github.com/urldisk/urldisk/internal/volume"
)

// TestExpand grows a filesystem volume the offline way the driver
// advertises: stage ext4 (or xfs), write a file, unstage;
// ControllerExpandVolume records the request; stage on another node id
// (which applies it as the writer), NodeExpandVolume: the
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
				StagingTargetPath: s.stagingPath, CapacityRange: &csi.CapacityRange{RequiredBytes: tc.new}, VolumeCapability: mc, Secrets: e.secrets})
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

// TestExpandWhileServed asks ControllerExpandVolume to grow a volume node
// A has staged, mounted and is writing: A is not fenced (a write and fsync
// after it succeed, the volume's epoch is unchanged). Then either A's
// NodeExpandVolume applies the request as the writer (the volume grows,
// same epoch; the mounted device keeps the old size) or nothing does until
// the next stage (what Kubernetes does for a volume in use). After
// unstaging and staging again the filesystem is bigger and every file is
// intact.
func TestExpandWhileServed(t *testing.T) {
	requireNodeTools(t)
	const oldSize, newSize = 64 << 20, 192 << 20
	for _, nodeExpand := range []bool{true, false} {
		t.Run(fmt.Sprintf("node-expand-while-staged=%v", nodeExpand), func(t *testing.T) {
			e := newEnv(t)
			a := startDriver(t, "node-a")
			vol := e.createVolume(t, a, "pvc-grow-served", oldSize, nil)
			mc := mountCap(rwo)
			ctx := context.Background()
			s := e.stage(t, a, vol, mc)
			before := fsBytes(t, s.path)
			files := map[string][]byte{}
			write := func(name string, data []byte) {
				t.Helper()
				if err := writeSync(s.path, name, data); err != nil {
					t.Fatalf("A writes %s: %v", name, err)
				}
				files[name] = data
			}
			write("one", bytes.Repeat([]byte("one "), 50_000))
			epoch0, size0 := e.epochSize(t, vol)

			r, err := a.ctl.ControllerExpandVolume(ctx, &csi.ControllerExpandVolumeRequest{VolumeId: vol.VolumeId,
				CapacityRange: &csi.CapacityRange{RequiredBytes: newSize}, VolumeCapability: mc, Secrets: e.secrets})
			if err != nil {
				t.Fatalf("ControllerExpandVolume while A serves the volume: %v", err)
			}
			if r.CapacityBytes != newSize || !r.NodeExpansionRequired {
				t.Fatalf("ControllerExpandVolume: %d bytes, node expansion %v; want %d, true", r.CapacityBytes, r.NodeExpansionRequired, int64(newSize))
			}
			write("two", bytes.Repeat([]byte("two "), 50_000))
			if epoch, size := e.epochSize(t, vol); epoch != epoch0 || size != size0 {
				t.Fatalf("after ControllerExpandVolume: epoch %d, size %d; want %d, %d (nothing attached, nothing resized yet)", epoch, size, epoch0, size0)
			}

			if nodeExpand {
				nr, err := a.node.NodeExpandVolume(ctx, &csi.NodeExpandVolumeRequest{VolumeId: vol.VolumeId, VolumePath: s.path,
					StagingTargetPath: s.stagingPath, CapacityRange: &csi.CapacityRange{RequiredBytes: newSize}, VolumeCapability: mc, Secrets: e.secrets})
				if err != nil {
					t.Fatalf("NodeExpandVolume on A: %v", err)
				}
				if nr.CapacityBytes != oldSize {
					t.Errorf("NodeExpandVolume on A: device of %d bytes; want the %d it was staged with (nbdfuse keeps its size)", nr.CapacityBytes, int64(oldSize))
				}
				write("three", bytes.Repeat([]byte("three "), 50_000))
				if epoch, size := e.epochSize(t, vol); epoch != epoch0 || size != newSize {
					t.Fatalf("after NodeExpandVolume on A: epoch %d, size %d; want %d (A's serve resized it as the writer), %d", epoch, size, epoch0, int64(newSize))
				}
			}

			if err := s.unstage(t); err != nil {
				t.Fatal(err)
			}
			s = e.stage(t, a, vol, mc)
			after := fsBytes(t, s.path)
			t.Logf("ext4: %d -> %d bytes", before, after)
			if after < before+(newSize-oldSize)*3/4 {
				t.Fatalf("filesystem %d bytes after staging again, was %d: did not grow by about %d", after, before, newSize-oldSize)
			}
			if _, size := e.epochSize(t, vol); size != newSize {
				t.Errorf("volume of %d bytes after staging again, want %d", size, int64(newSize))
			}
			for name, want := range files {
				if got, err := os.ReadFile(filepath.Join(s.path, name)); err != nil || !bytes.Equal(got, want) {
					t.Errorf("read %s after staging again: %d bytes, %v; want %d", name, len(got), err, len(want))
				}
			}
		})
	}
}

// epochSize is vol's writer epoch and size, read from the pool.
func (e *env) epochSize(t testing.TB, vol *csi.Volume) (epoch, size uint64) {
	t.Helper()
	ref, err := volref.Parse(vol.VolumeId)
	if err != nil {
		t.Fatal(err)
	}
	withCreds(t, func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		p, err := volume.OpenPoolURL(ctx, e.pool, volume.PoolOptions{})
		if err != nil {
			t.Fatalf("open pool: %v", err)
		}
		defer p.Close()
		in, err := p.Info(ctx, ref.Name)
		if err != nil {
			t.Fatalf("info %s: %v", ref.Name, err)
		}
		epoch, size = in.Epoch, in.Size
	})
	return epoch, size
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
