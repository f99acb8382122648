package e2e

import (
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"io/fs"
	mrand "math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/urldisk/urldisk/internal/testutil/lockedbuf"
)

// fuseFile is an export presented as a file by nbdfuse.
type fuseFile struct {
	t       *testing.T
	dir     string // the FUSE mountpoint
	File    string // dir/nbd
	cmd     *exec.Cmd
	exited  chan struct{}
	log     lockedbuf.Buffer
	mounted bool
}

// startNbdfuse runs `nbdfuse -P PIDFILE DIR URI` (nbdfuse takes the URI as
// a plain argument and stays in the foreground) and waits until it is
// ready; the export is then the file DIR/nbd. Cleanup unmounts it.
func startNbdfuse(t *testing.T, uri string) *fuseFile {
	t.Helper()
	bin := toolPath(t, "nbdfuse")
	toolPath(t, "fusermount3")
	base := t.TempDir()
	f := &fuseFile{t: t, dir: filepath.Join(base, "fuse"), exited: make(chan struct{})}
	f.File = filepath.Join(f.dir, "nbd")
	if err := os.Mkdir(f.dir, 0o700); err != nil {
		t.Fatal(err)
	}
	pidfile := filepath.Join(base, "nbdfuse.pid")
	f.cmd = exec.Command(bin, "-P", pidfile, f.dir, uri)
	f.cmd.Stdout, f.cmd.Stderr = &f.log, &f.log
	f.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := f.cmd.Start(); err != nil {
		t.Fatalf("start nbdfuse: %v", err)
	}
	go func() { f.cmd.Wait(); close(f.exited) }()
	f.mounted = true
	t.Cleanup(func() {
		if f.mounted {
			f.unmount()
		}
		if t.Failed() {
			t.Logf("nbdfuse output:\n%s", f.log.String())
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		if b, err := os.ReadFile(pidfile); err == nil && len(b) > 0 {
			break
		}
		select {
		case <-f.exited:
			f.mounted = false
			t.Fatalf("nbdfuse exited before it was ready:\n%s", f.log.String())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("nbdfuse not ready after 30s:\n%s", f.log.String())
		}
	}
	if fi, err := os.Stat(f.File); err != nil || !fi.Mode().IsRegular() {
		t.Fatalf("nbdfuse: %s is not a regular file: %v %v", f.File, fi, err)
	}
	return f
}

// unmount runs fusermount3 -u (retrying while the loop device lets go of
// the file) and waits for nbdfuse to exit; it reports failures with Errorf.
func (f *fuseFile) unmount() {
	f.t.Helper()
	f.mounted = false
	var r result
	for i := 0; i < 50; i++ {
		if r = run(f.t, "fusermount3", "-u", f.dir); r.code == 0 {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if r.code != 0 {
		f.t.Errorf("fusermount3 -u failed; unmounting lazily:\n%s", r)
		run(f.t, "fusermount3", "-u", "-z", f.dir)
	}
	select {
	case <-f.exited:
	case <-time.After(30 * time.Second):
		f.t.Errorf("nbdfuse did not exit after unmount; killing it")
		f.cmd.Process.Kill()
		<-f.exited
	}
}

// loopDev is a loop device over a file.
type loopDev struct {
	t        *testing.T
	Dev      string
	attached bool
}

// attachLoop runs losetup -f --show FILE; cleanup detaches it.
func attachLoop(t *testing.T, file string) *loopDev {
	t.Helper()
	dev := strings.TrimSpace(mustRun(t, "losetup", "-f", "--show", file))
	if !strings.HasPrefix(dev, "/dev/loop") {
		t.Fatalf("losetup printed %q, want /dev/loopN", dev)
	}
	l := &loopDev{t: t, Dev: dev, attached: true}
	t.Cleanup(func() {
		if l.attached {
			l.detach()
		}
	})
	return l
}

func (l *loopDev) detach() {
	l.t.Helper()
	l.attached = false
	if r := run(l.t, "losetup", "-d", l.Dev); r.code != 0 {
		l.t.Errorf("losetup -d %s:\n%s", l.Dev, r)
	}
}

// mountPoint is a mounted filesystem.
type mountPoint struct {
	t       *testing.T
	Dir     string
	mounted bool
}

// mountDev mounts dev (ext4) on a new directory; cleanup unmounts it.
func mountDev(t *testing.T, dev string) *mountPoint {
	t.Helper()
	m := &mountPoint{t: t, Dir: filepath.Join(t.TempDir(), "mnt")}
	if err := os.Mkdir(m.Dir, 0o755); err != nil {
		t.Fatal(err)
	}
	mustRun(t, "mount", "-t", "ext4", dev, m.Dir)
	m.mounted = true
	t.Cleanup(func() {
		if m.mounted {
			m.unmount()
		}
	})
	return m
}

func (m *mountPoint) unmount() {
	m.t.Helper()
	m.mounted = false
	if r := run(m.t, "umount", m.Dir); r.code != 0 {
		m.t.Errorf("umount %s:\n%s", m.Dir, r)
		run(m.t, "umount", "-l", m.Dir)
	}
}

// attachedDisk is nbdfuse + losetup over an export.
type attachedDisk struct {
	fuse *fuseFile
	loop *loopDev
}

func attachDisk(t *testing.T, uri string) *attachedDisk {
	t.Helper()
	toolPath(t, "losetup")
	f := startNbdfuse(t, uri)
	return &attachedDisk{fuse: f, loop: attachLoop(t, f.File)}
}

// detach undoes attachDisk in order: loop device, then FUSE.
func (d *attachedDisk) detach() {
	d.loop.detach()
	d.fuse.unmount()
}

// writeTree writes files with random contents and sizes (0 to 340 KiB,
// about 50 MiB in all) in nested directories under root and returns their
// SHA-256 by path relative to root.
func writeTree(t *testing.T, root string, files int, seed uint64) map[string][32]byte {
	t.Helper()
	rng := mrand.New(mrand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	sums := map[string][32]byte{}
	buf := make([]byte, 340<<10)
	for i := 0; i < files; i++ {
		rel := filepath.Join(fmt.Sprintf("d%02d", i%12), fmt.Sprintf("s%d", i%5), fmt.Sprintf("f%04d.bin", i))
		n := rng.IntN(len(buf) + 1)
		if i%50 == 0 {
			n = 0
		}
		data := buf[:n]
		rand.Read(data)
		p := filepath.Join(root, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
		sums[rel] = sha256.Sum256(data)
	}
	return sums
}

// checkTree fails t unless root holds exactly the files of sums (besides
// lost+found) with those contents.
func checkTree(t *testing.T, root string, sums map[string][32]byte) {
	t.Helper()
	seen := 0
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		if d.IsDir() {
			if rel == "lost+found" {
				return filepath.SkipDir
			}
			return nil
		}
		want, ok := sums[rel]
		if !ok {
			t.Errorf("unexpected file %s", rel)
			return nil
		}
		seen++
		if got := fileSHA(t, p); got != want {
			t.Errorf("%s: checksum differs", rel)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if seen != len(sums) {
		t.Errorf("found %d of the %d files written", seen, len(sums))
	}
}

// TestExt4AcrossHosts makes an ext4 filesystem on a volume through
// nbdfuse and a loop device, writes a tree of files, tears everything down,
// stops serve and deletes its cache, then attaches the volume from a new
// serve with a new cache (as a different host would): fsck is clean and
// every file reads back intact.
func TestExt4AcrossHosts(t *testing.T) {
	needRoot(t)
	for _, tool := range []string{"nbdfuse", "fusermount3", "losetup", "mkfs.ext4", "fsck.ext4", "mount", "umount"} {
		toolPath(t, tool)
	}
	vol := volURL(filePool(t), "fs")
	createVolume(t, vol, "256M")

	s := startServe(t, vol)
	d := attachDisk(t, s.URI("fs"))
	mustRun(t, "mkfs.ext4", "-q", d.loop.Dev)
	m := mountDev(t, d.loop.Dev)
	start := time.Now()
	sums := writeTree(t, m.Dir, 300, uint64(time.Now().UnixNano()))
	syscall.Sync()
	var total int64
	filepath.WalkDir(m.Dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			if fi, err := d.Info(); err == nil {
				total += fi.Size()
			}
		}
		return nil
	})
	t.Logf("wrote %d files, %d MiB, in %v", len(sums), total>>20, time.Since(start).Round(time.Millisecond))
	if total < 40<<20 {
		t.Errorf("wrote only %d bytes of files", total)
	}
	checkTree(t, m.Dir, sums) // from the page cache, but the names are all there
	m.unmount()
	d.detach()
	s.StopAndDropCache()

	s2 := startServe(t, vol)
	d2 := attachDisk(t, s2.URI("fs"))
	if r := run(t, "fsck.ext4", "-n", "-f", d2.loop.Dev); r.code != 0 {
		t.Fatalf("fsck.ext4 -n -f found problems (exit %d):\n%s", r.code, r)
	}
	m2 := mountDev(t, d2.loop.Dev)
	checkTree(t, m2.Dir, sums)
	// The filesystem is writable on the new host.
	writeTree(t, filepath.Join(m2.Dir, "more"), 20, 7)
	syscall.Sync()
	m2.unmount()
	if r := run(t, "fsck.ext4", "-n", "-f", d2.loop.Dev); r.code != 0 {
		t.Fatalf("fsck.ext4 after writing on the second host (exit %d):\n%s", r.code, r)
	}
	d2.detach()
	s2.StopOK()
}
