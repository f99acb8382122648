package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestOneShotCommandsQuietAndInfoAfterImport: the real binary's import and
// export print their result, not the volume's "attached read-write" INFO
// line (it is logged at DEBUG for one-shot commands); `info` after the
// import shows no live writer, naming the importer as the last one, since
// its process has exited; a missing volume is named once, not as
// `volume "x": volume not found`.
func TestOneShotCommandsQuietAndInfoAfterImport(t *testing.T) {
	dir := t.TempDir()
	pool := filePool(t)
	img := filepath.Join(dir, "in.raw")
	if err := os.WriteFile(img, []byte(strings.Repeat("urldisk ", 8192)), 0o644); err != nil {
		t.Fatal(err)
	}
	vol := volURL(pool, "v")
	for _, args := range [][]string{
		{"import", img, vol},
		{"export", vol, filepath.Join(dir, "out.raw")},
	} {
		r := run(t, "urldisk", args...)
		if r.code != 0 {
			t.Fatalf("command failed:\n%s", r)
		}
		if strings.Contains(r.stderr, "attached") {
			t.Errorf("%s logs the attach at INFO:\n%s", args[0], r)
		}
		if !strings.Contains(r.stdout, args[0]+"ed ") {
			t.Errorf("%s does not print its result:\n%s", args[0], r)
		}
	}
	r := run(t, "urldisk", "--log-level", "debug", "import", img, vol)
	if r.code != 0 || !strings.Contains(r.stderr, "attached read-write") {
		t.Errorf("import --log-level debug does not log the attach:\n%s", r)
	}

	info := mustRun(t, "urldisk", "info", vol)
	if !strings.Contains(info, "writer:      none (last: ") || !strings.Contains(info, "exited)") {
		t.Errorf("info after import shows a live writer:\n%s", info)
	}

	r = run(t, "urldisk", "info", volURL(pool, "nope"))
	if r.code == 0 || !strings.Contains(r.stderr, `volume not found: "nope"`) || strings.Count(r.stderr, "not found") != 1 {
		t.Errorf("info of a missing volume: want `volume not found: \"nope\"` once:\n%s", r)
	}
}
