package cli

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

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
