package cli

import (
	"context"
	"strings"
	"testing"
)

// TestCreateCompressFlag: --compress alone and --compress=lz4 make a
// compressed volume (create and info say so), --compress=none and no flag
// do not, and an unknown compression is refused naming it.
func TestCreateCompressFlag(t *testing.T) {
	pool := "file://" + t.TempDir()
	for _, c := range []struct {
		name string
		args []string
		want string
	}{
		{"bare", []string{"--compress"}, "compression: lz4"},
		{"lz4", []string{"--compress=lz4"}, "compression: lz4"},
		{"none", []string{"--compress=none"}, "compression: off"},
		{"default", nil, "compression: off"},
	} {
		out := mustRun(t, append([]string{"create", pool + "/" + c.name, "--size", "1M"}, c.args...)...)
		if compressed := strings.Contains(out, "compressed: lz4"); compressed != (c.want == "compression: lz4") {
			t.Errorf("create %v: %q", c.args, out)
		}
		if info := mustRun(t, "info", pool+"/"+c.name); !strings.Contains(info, c.want) {
			t.Errorf("info after create %v does not say %q:\n%s", c.args, c.want, info)
		}
	}
	_, err := run(t, context.Background(), "create", pool+"/zstd", "--size", "1M", "--compress=zstd")
	if err == nil || !strings.Contains(err.Error(), `--compress: "zstd" is not a compression (want lz4 or none)`) {
		t.Fatalf("create --compress=zstd: %v", err)
	}
}
