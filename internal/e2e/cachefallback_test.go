package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// readOnlyDir returns a new directory on a read-only bind mount (root
// ignores permission bits, a read-only mount it cannot ignore), unmounted at
// cleanup.
func readOnlyDir(t *testing.T) string {
	t.Helper()
	needRoot(t)
	dir := filepath.Join(t.TempDir(), "ro")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	mustRun(t, "mount", "--bind", dir, dir)
	t.Cleanup(func() {
		if out, err := exec.Command("umount", dir).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v\n%s", dir, err, out)
		}
	})
	mustRun(t, "mount", "-o", "remount,bind,ro", dir)
	if err := os.Mkdir(filepath.Join(dir, "probe"), 0o700); err == nil {
		t.Fatalf("%s is writable after remount,ro", dir)
	}
	return dir
}

// Regression (issue 15): a cache directory that cannot be used (here on a
// read-only filesystem) made serve and export exit; the cache only saves
// GETs, so both must warn and read everything from the object store.
func TestUnusableCacheFallsBackToStoreReads(t *testing.T) {
	ro := readOnlyDir(t)
	vol := volURL(filePool(t), "disk")
	img, sum := randomImage(t, t.TempDir(), 4<<20)
	mustRun(t, "urldisk", "import", img, vol)

	s := startServe(t, "--cache", filepath.Join(ro, "cache"), "--read-only", vol)
	if !s.StderrHas("cache unusable; serving every read from the object store") {
		t.Errorf("serve with a read-only cache dir did not warn that it runs without a cache")
	}
	if got := fileSHA(t, copyOut(t, s.URI("disk"))); got != sum {
		t.Errorf("export read through serve without a cache differs from the imported image")
	}
	s.StopOK()

	// export makes its private cache under $TMPDIR.
	out := filepath.Join(t.TempDir(), "out.img")
	cmd := exec.Command(urldiskBin, "export", vol, out)
	cmd.Env = append(os.Environ(), "TMPDIR="+ro)
	b, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("urldisk export with a read-only $TMPDIR: %v\n%s", err, b)
	}
	if !strings.Contains(string(b), "export cache unusable") {
		t.Errorf("export with a read-only $TMPDIR did not warn that it runs without a cache:\n%s", b)
	}
	if got := fileSHA(t, out); got != sum {
		t.Errorf("exported image differs from the imported one")
	}
}
