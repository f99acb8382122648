package cli

import (
	"bytes"
	"context"
	"path/filepath"
	"regexp"
	"testing"

	"github.com/urldisk/urldisk/internal/volume"
)

// TestOfflineHistoryCommands: with no local holder, checkpoint labels the
// durable head offline, restore and compact attach read-write themselves,
// and each says what it did; the restored volume reads as at the label.
func TestOfflineHistoryCommands(t *testing.T) {
	t.Setenv("XDG_RUNTIME_DIR", t.TempDir()) // no control sockets here
	ctx := context.Background()
	pool := "file://" + filepath.Join(t.TempDir(), "pool")
	mustRun(t, "create", pool+"/a", "--size", "1M")
	p := openTestPool(t, pool)
	write := func(b byte) {
		t.Helper()
		v, err := p.Open(ctx, "a", volume.Options{})
		if err != nil {
			t.Fatal(err)
		}
		if err := v.WriteAt(ctx, bytes.Repeat([]byte{b}, 64<<10), 0); err != nil {
			t.Fatal(err)
		}
		if err := v.Close(ctx); err != nil {
			t.Fatal(err)
		}
	}
	write(1)
	if out := mustRun(t, "checkpoint", pool+"/a", "first"); !regexp.MustCompile(`^checkpoint first of a at seq \d+ \(offline\)\n$`).MatchString(out) {
		t.Fatalf("checkpoint: %q", out)
	}
	write(2)
	if out := mustRun(t, "restore", pool+"/a", "first"); !regexp.MustCompile(`^restored a to first \(seq \d+\)\n$`).MatchString(out) {
		t.Fatalf("restore: %q", out)
	}
	v, err := p.Open(ctx, "a", volume.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 64<<10)
	if err := v.ReadAt(ctx, got, 0); err != nil {
		t.Fatal(err)
	}
	v.Close(ctx)
	if !bytes.Equal(got, bytes.Repeat([]byte{1}, 64<<10)) {
		t.Fatalf("after restore the volume reads %d..., want the checkpoint's 1s", got[0])
	}
	if out := mustRun(t, "compact", pool+"/a"); !regexp.MustCompile(`^compacted a: \d+ records rewritten, .* live copied, .* dead left for gc\n$`).MatchString(out) {
		t.Fatalf("compact: %q", out)
	}
	if _, err := run(t, ctx, "checkpoint", pool+"/a", "bad label"); err == nil {
		t.Fatal("checkpoint with a bad label accepted")
	}
}
