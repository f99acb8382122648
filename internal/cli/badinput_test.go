package cli

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/urldisk/urldisk/internal/objstore"
	"github.com/urldisk/urldisk/internal/volume"
)

// Regression (issue 15): `ls` and `info` of a pool that does not exist
// created its directory (opening a file:// store made it) before saying
// there was no pool.
func TestMissingPoolIsReportedNotCreated(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "nope", "pool")
	pool := "file://" + dir
	for _, args := range [][]string{{"ls", pool}, {"info", pool + "/vol"}, {"rm", pool + "/vol"}} {
		_, err := run(t, context.Background(), args...)
		if !errors.Is(err, volume.ErrNoPool) || !strings.Contains(err.Error(), "pool not found or not initialised") {
			t.Errorf("urldisk %s: %v, want ErrNoPool saying the pool is not found or not initialised", strings.Join(args, " "), err)
		}
		if _, err := os.Stat(filepath.Dir(dir)); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("urldisk %s created the pool's directory (stat err %v)", strings.Join(args, " "), err)
		}
	}
	// Writing commands still create the pool.
	mustRun(t, "create", pool+"/vol", "--size", "1M")
	if out := mustRun(t, "ls", pool); !strings.Contains(out, "vol") {
		t.Errorf("ls after create:\n%s", out)
	}
}

// Regression (issue 15): `create POOL/a/b` initialised a new pool POOL/a
// inside POOL and created b there; `--block-size 0` meant 4096 and
// `--block-size 1G` failed with a raw strconv error.
func TestCreateRefusesNestedNamesAndBadBlockSizes(t *testing.T) {
	dir := t.TempDir()
	pool := "file://" + dir
	mustRun(t, "create", pool+"/a", "--size", "1M")
	img := filepath.Join(t.TempDir(), "img")
	if err := os.WriteFile(img, make([]byte, 4096), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{
		{"create", pool + "/sub/b", "--size", "1M"},
		{"create", pool + "/x/y/b", "--size", "1M"},
		{"import", img, pool + "/sub/b"},
		{"pool", "init", pool + "/sub"},
	} {
		_, err := run(t, context.Background(), args...)
		if !errors.Is(err, objstore.ErrBadURL) || !strings.Contains(err.Error(), "pools do not nest") ||
			!strings.Contains(err.Error(), "single path segment") {
			t.Errorf("urldisk %s: %v, want ErrBadURL saying names are a single path segment", strings.Join(args, " "), err)
		}
	}
	for _, sub := range []string{"sub", "x"} {
		if _, err := os.Stat(filepath.Join(dir, sub)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("a refused nested create left %s behind (stat err %v)", sub, err)
		}
	}
	// A pool next to (not inside) another is fine.
	mustRun(t, "create", "file://"+filepath.Join(t.TempDir(), "p2", "b"), "--size", "1M")

	for _, c := range []struct{ bs, want string }{
		{"0", `--block-size: invalid size "0": want a power of two from 512 B to 1 MiB`},
		{"1G", `--block-size: invalid size "1G": want a power of two`},
		{"3000", `--block-size: invalid size "3000": want a power of two`},
		{"256", `--block-size: invalid size "256"`},
		{"4Q", `--block-size: invalid size "4Q"`},
	} {
		_, err := run(t, context.Background(), "create", pool+"/bs", "--size", "1M", "--block-size", c.bs)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("create --block-size %s: %v, want %q", c.bs, err, c.want)
		}
	}
	mustRun(t, "create", pool+"/bs", "--size", "1M", "--block-size", "64K")
	out := mustRun(t, "info", pool+"/bs")
	if !strings.Contains(out, "block size:  65536\n") {
		t.Errorf("create --block-size 64K made:\n%s", out)
	}
}
