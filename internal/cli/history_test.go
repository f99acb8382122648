package cli

import (
	"bytes"
	"context"
	"path/filepath"
	"regexp"
	"strings"
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

// TestPrintGC: the summary says deleted or would delete, lists objects
// only with -v, and prints kept reasons sorted (map order made the output
// differ from run to run).
func TestPrintGC(t *testing.T) {
	rep := &volume.GCReport{
		Deleted:      []volume.GCItem{{Key: "vols/x/log/1", Volume: "a", Size: 4096, Reason: "overwritten"}},
		Kept:         []volume.GCItem{{Key: "vols/x/log/2", Volume: "a", Reason: "head"}},
		KeptByReason: map[string]int{"zeta": 1, "alpha": 2, "mid": 3},
		DeletedBytes: 4096,
		DryRun:       true,
	}
	var b bytes.Buffer
	printGC(&b, rep, false)
	want := "would delete 1 objects (4 KiB)\nkept 2: alpha\nkept 3: mid\nkept 1: zeta\n"
	if b.String() != want {
		t.Fatalf("gc summary:\n%s\nwant:\n%s", b.String(), want)
	}
	b.Reset()
	rep.DryRun = false
	printGC(&b, rep, true)
	for _, line := range []string{"deleted vols/x/log/1 (4 KiB): overwritten\n", "kept vols/x/log/2 (a): head\n", "deleted 1 objects (4 KiB)\n"} {
		if !strings.Contains(b.String(), line) {
			t.Errorf("gc -v lacks %q:\n%s", line, b.String())
		}
	}
	pool := "file://" + filepath.Join(t.TempDir(), "pool")
	mustRun(t, "pool", "init", pool)
	for _, bad := range [][]string{{"--grace", "-1h"}, {"--retention", "-1s"}} {
		if _, err := run(t, context.Background(), append([]string{"gc", pool}, bad...)...); err == nil || !strings.Contains(err.Error(), "must not be negative") {
			t.Errorf("gc %v: %v", bad, err)
		}
	}
	if out := mustRun(t, "gc", pool, "--dry-run"); !strings.HasPrefix(out, "would delete 0 objects") {
		t.Errorf("gc --dry-run of an empty pool: %q", out)
	}
}

// TestCloneCommand: a clone by name or by URL in the same pool, from a
// checkpoint; a destination in another pool is refused naming both.
func TestCloneCommand(t *testing.T) {
	dir := t.TempDir()
	pool := "file://" + filepath.Join(dir, "pool")
	mustRun(t, "create", pool+"/a", "--size", "1M")
	mustRun(t, "checkpoint", pool+"/a", "c1")
	if out := mustRun(t, "clone", pool+"/a@c1", "b"); !regexp.MustCompile(`^cloned a@c1 to b \(id [0-9a-f]+, parent seq \d+\) in `).MatchString(out) {
		t.Errorf("clone by name: %q", out)
	}
	if out := mustRun(t, "clone", pool+"/a", pool+"/c"); !strings.HasPrefix(out, "cloned a@") || !strings.Contains(out, " to c ") {
		t.Errorf("clone by URL: %q", out)
	}
	other := "file://" + filepath.Join(dir, "other") + "/d"
	if _, err := run(t, context.Background(), "clone", pool+"/a", other); err == nil || !strings.Contains(err.Error(), "is not in the pool of") {
		t.Errorf("clone into another pool: %v", err)
	}
	if out := mustRun(t, "ls", pool); !strings.Contains(out, "\nb ") || !strings.Contains(out, "\nc ") {
		t.Errorf("ls after clones:\n%s", out)
	}
}
