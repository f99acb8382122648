package cli

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"github.com/urldisk/urldisk/internal/volume"
)

// TestInfoWriterWhileAttached: a writer attached by a running process on
// this host is shown as running (after it exits: "none (last: ...)", which
// the e2e test checks with the real binary).
func TestInfoWriterWhileAttached(t *testing.T) {
	ctx := context.Background()
	pool := "file://" + filepath.Join(t.TempDir(), "pool")
	mustRun(t, "create", pool+"/v", "--size", "1M")
	if out := mustRun(t, "info", pool+"/v"); !strings.Contains(out, "writer:      none yet") {
		t.Fatalf("info of a never-attached volume:\n%s", out)
	}
	v, err := openTestPool(t, pool).Open(ctx, "v", volume.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close(ctx)
	out := mustRun(t, "info", pool+"/v")
	if !strings.Contains(out, ", running\n") || strings.Contains(out, "none") {
		t.Fatalf("info while this process holds the volume:\n%s", out)
	}
	if js := mustRun(t, "info", "--json", pool+"/v"); !strings.Contains(js, `"running": true`) {
		t.Fatalf("info --json while attached:\n%s", js)
	}
}

// TestNotFoundSaysWhatOnce: a missing volume or checkpoint is named once,
// as what it is (a missing checkpoint used to read "volume not found"), and
// stays errors.Is volume.ErrNotFound.
func TestNotFoundSaysWhatOnce(t *testing.T) {
	pool := "file://" + filepath.Join(t.TempDir(), "pool")
	mustRun(t, "create", pool+"/a", "--size", "1M")
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"info", pool + "/nope"}, `volume not found: "nope"`},
		{[]string{"restore", pool + "/a", "nope"}, `checkpoint not found: "nope"`},
		{[]string{"checkpoint", "rm", pool + "/a", "nope"}, `checkpoint not found: "nope"`},
		{[]string{"clone", pool + "/a@nope", "b"}, `checkpoint not found: "nope"`},
	}
	for _, c := range cases {
		_, err := run(t, context.Background(), c.args...)
		if !errors.Is(err, volume.ErrNotFound) {
			t.Errorf("urldisk %v: %v, want ErrNotFound", c.args, err)
			continue
		}
		if msg := err.Error(); !strings.Contains(msg, c.want) || strings.Count(msg, "not found") != 1 {
			t.Errorf("urldisk %v: %q, want %q said once", c.args, msg, c.want)
		}
	}
}

// TestPolicyCommand: the policy is shown as set, --every must be a
// positive interval, and --off turns it off.
func TestPolicyCommand(t *testing.T) {
	pool := "file://" + filepath.Join(t.TempDir(), "pool")
	mustRun(t, "create", pool+"/a", "--size", "1M")
	if out := mustRun(t, "policy", pool+"/a"); !strings.Contains(out, "a: automatic checkpoints off") {
		t.Fatalf("default policy: %s", out)
	}
	out := mustRun(t, "policy", pool+"/a", "--every", "90m", "--keep-hourly", "2", "--keep-daily", "0")
	if !strings.Contains(out, "checkpoint every 1h30m0s while written; keep 2 hourly, 0 daily") {
		t.Fatalf("policy set: %s", out)
	}
	for _, bad := range [][]string{
		{"--every", "0"},
		{"--every", "500ms"},
		{"--keep-hourly", "0", "--keep-daily", "0"},
		{"--keep-daily", "-1"},
	} {
		_, err := run(t, context.Background(), append([]string{"policy", pool + "/a"}, bad...)...)
		if err == nil {
			t.Errorf("policy %v accepted", bad)
		}
	}
	if out := mustRun(t, "policy", pool+"/a"); !strings.Contains(out, "every 1h30m0s") {
		t.Fatalf("a refused policy changed the stored one: %s", out)
	}
	if out := mustRun(t, "policy", pool+"/a", "--off"); !strings.Contains(out, "automatic checkpoints off") {
		t.Fatalf("policy --off: %s", out)
	}
}
