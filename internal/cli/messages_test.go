package cli

import (
	"bytes"
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

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
		{"--off", "--every", "1h"},
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

// TestPrintInfo: the human form of info names lineage (a deleted ancestor
// as such), redacts the URL, and says whether the last writer still runs.
func TestPrintInfo(t *testing.T) {
	yes, no := true, false
	at := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	in := &volume.Info{Name: "kid", ID: "k1", Size: 1 << 20, BlockSize: 4096, Created: at, Epoch: 3,
		Lineage: []volume.Ancestor{{ID: "p1", Name: "parent", Seq: 7}, {ID: "g1", Seq: 2, Gone: true}}}
	for _, c := range []struct {
		writer *volume.WriterInfo
		want   string
	}{
		{nil, "writer:      none yet\n"},
		{&volume.WriterInfo{ID: "w", Host: "h", PID: 42, Attached: at, Running: &yes}, "writer:      w (host h, pid 42, attached 2026-12-01T10:00:00Z), running\n"},
		{&volume.WriterInfo{ID: "w", Host: "h", PID: 42, Attached: at, Running: &no}, "writer:      none (last: w (host h, pid 42, attached 2026-12-01T10:00:00Z), exited)\n"},
		{&volume.WriterInfo{ID: "w", Host: "other", PID: 42, Attached: at}, "writer:      w (host other, pid 42, attached 2026-12-01T10:00:00Z)\n"},
	} {
		in.Writer = c.writer
		var b bytes.Buffer
		printInfo(&b, "s3://b/p/kid?endpoint=http://h:1", in)
		out := b.String()
		if !strings.Contains(out, c.want) {
			t.Errorf("writer %+v: info lacks %q:\n%s", c.writer, c.want, out)
		}
		for _, want := range []string{"parent:      parent (p1) at seq 7\n", "  ancestor:  (deleted) (g1) at seq 2\n", "size:        1 MiB (1048576 bytes)\n"} {
			if !strings.Contains(out, want) {
				t.Errorf("info lacks %q:\n%s", want, out)
			}
		}
	}
}

// TestRmSaysObjectsStayUntilGC: rm's help and output say that its objects
// stay until gc (it said "Delete a volume and its objects").
func TestRmSaysObjectsStayUntilGC(t *testing.T) {
	pool := "file://" + filepath.Join(t.TempDir(), "pool")
	mustRun(t, "create", pool+"/a", "--size", "1M")
	if help := mustRun(t, "rm", "--help"); !strings.Contains(help, "its objects at the next gc") {
		t.Errorf("rm --help:\n%s", help)
	}
	if out := mustRun(t, "rm", pool+"/a"); !strings.Contains(out, "`urldisk gc` frees its objects") {
		t.Errorf("rm: %q", out)
	}
}
