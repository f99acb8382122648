package cli

import (
	"bytes"
	"context"
	"crypto/rand"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/urldisk/urldisk/internal/control"
	"github.com/urldisk/urldisk/internal/objstore"
	"github.com/urldisk/urldisk/internal/volume"
)

// run executes the CLI in-process and returns stdout and the error.
func run(t *testing.T, ctx context.Context, args ...string) (string, error) {
	t.Helper()
	cmd := NewRootCommand()
	var out, errb bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&errb)
	cmd.SetArgs(append([]string{"--log-level", "warn"}, args...))
	err := cmd.ExecuteContext(ctx)
	if testing.Verbose() && errb.Len() > 0 {
		t.Logf("stderr of %v:\n%s", args, errb.String())
	}
	return out.String(), err
}

func mustRun(t *testing.T, args ...string) string {
	t.Helper()
	out, err := run(t, context.Background(), args...)
	if err != nil {
		t.Fatalf("urldisk %s: %v", strings.Join(args, " "), err)
	}
	return out
}

func TestBadInputsGetClearErrors(t *testing.T) {
	pool := "file://" + t.TempDir()
	mustRun(t, "create", pool+"/a", "--size", "1M")
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"create", pool + "/b"}, "--size is required"},
		{[]string{"create", pool + "/b", "--size", "10Q"}, "invalid size"},
		{[]string{"create", pool + "/b", "--size", "1000"}, "multiple of the block size"},
		{[]string{"create", pool + "/a", "--size", "1M"}, "already exists"},
		{[]string{"create", pool + "/bad name", "--size", "1M"}, "name"},
		{[]string{"info", pool + "/missing"}, "not found"},
		{[]string{"info", "ftp://host/pool/v"}, "unknown scheme"},
		{[]string{"info", "s3://AKIAXXX:topsecret@bucket/p/v"}, "credentials"},
		{[]string{"ls", "file://" + t.TempDir()}, "pool init"},
		{[]string{"info"}, "expected a volume URL"},
		{[]string{"serve"}, "at least one volume URL"},
		{[]string{"serve", pool + "/new", "--create"}, "needs --size"},
		{[]string{"clone", pool + "/a@nope", "b"}, "not found"},
		{[]string{"clone", pool + "/a@x:y", "b"}, "neither"},
		{[]string{"restore", pool + "/a", "nope"}, "not found"},
		{[]string{"checkpoint", pool + "/a", "12345"}, "all digits"},
	}
	for _, c := range cases {
		_, err := run(t, context.Background(), c.args...)
		if err == nil {
			t.Errorf("urldisk %v: no error", c.args)
			continue
		}
		if !strings.Contains(err.Error(), c.want) {
			t.Errorf("urldisk %v: error %q does not mention %q", c.args, err, c.want)
		}
		if strings.Contains(err.Error(), "topsecret") {
			t.Errorf("urldisk %v: error leaks the secret: %q", c.args, err)
		}
	}
}

func TestImportExportSparse(t *testing.T) {
	dir := t.TempDir()
	pool := "file://" + filepath.Join(dir, "pool")
	img := filepath.Join(dir, "in.raw")
	data := make([]byte, 3<<20)
	rand.Read(data[1<<20 : 2<<20]) // middle MiB random, rest zero
	if err := os.WriteFile(img, data, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, 40<<20); err != nil { // plus a 37 MiB hole
		t.Fatal(err)
	}
	mustRun(t, "import", img, pool+"/v")
	info := mustRun(t, "info", pool+"/v")
	if !strings.Contains(info, "used:        1 MiB") || !strings.Contains(info, "40 MiB") {
		t.Fatalf("info after sparse import:\n%s", info)
	}
	out := filepath.Join(dir, "out.raw")
	mustRun(t, "export", pool+"/v", out)
	got, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	want := append(data, make([]byte, (40<<20)-len(data))...)
	if !bytes.Equal(got, want) {
		t.Fatal("exported image differs from the imported one")
	}
	if _, err := run(t, context.Background(), "export", pool+"/v", out); err == nil || !strings.Contains(err.Error(), "--force") {
		t.Fatalf("export over an existing file: %v", err)
	}
	if lsOut := mustRun(t, "ls", pool); !strings.Contains(lsOut, "v ") {
		t.Fatalf("ls: %s", lsOut)
	}
	mustRun(t, "rm", pool+"/v")
	if _, err := run(t, context.Background(), "info", pool+"/v"); err == nil {
		t.Fatal("info after rm succeeded")
	}
}

// TestServeCheckpointRestoreClone drives a running serve through its control
// socket: checkpoint and restore are done by the serving writer (no second
// writer fences it), then clone, gc and du work on the pool.
func TestServeCheckpointRestoreClone(t *testing.T) {
	dir := t.TempDir()
	t.Setenv("XDG_RUNTIME_DIR", dir)
	pool := "file://" + filepath.Join(dir, "pool")
	sock := filepath.Join(dir, "nbd.sock")
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var serveErr error
	var serveOut string
	wg.Add(1)
	go func() {
		defer wg.Done()
		serveOut, serveErr = run(t, ctx, "serve", pool+"/d", "--create", "--size", "16M", "--listen", "unix:"+sock, "--no-cache")
	}()
	defer func() {
		cancel()
		wg.Wait()
		if serveErr != nil {
			t.Errorf("serve: %v", serveErr)
		}
	}()
	// Wait for the control socket (it exists once the volume is attached).
	var d string
	deadline := time.Now().Add(10 * time.Second)
	for {
		matches, _ := filepath.Glob(filepath.Join(control.Dir(), "*.sock"))
		if len(matches) == 1 {
			d = strings.TrimSuffix(filepath.Base(matches[0]), ".sock")
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("serve did not start")
		}
		time.Sleep(20 * time.Millisecond)
	}
	_ = d
	out := mustRun(t, "checkpoint", pool+"/d", "empty")
	if !strings.Contains(out, "by the serving process") {
		t.Fatalf("checkpoint did not go through serve: %s", out)
	}
	out = mustRun(t, "restore", pool+"/d", "empty")
	if !regexp.MustCompile(`restored d to empty`).MatchString(out) {
		t.Fatalf("restore: %s", out)
	}
	out = mustRun(t, "checkpoints", pool+"/d")
	if !strings.Contains(out, "empty") {
		t.Fatalf("checkpoints: %s", out)
	}
	mustRun(t, "clone", pool+"/d@empty", "kid")
	info := mustRun(t, "info", pool+"/kid")
	if !strings.Contains(info, "parent:") {
		t.Fatalf("clone info lacks lineage:\n%s", info)
	}
	// The serving writer was never fenced by any of this.
	store, err := objstore.Open(context.Background(), pool)
	if err != nil {
		t.Fatal(err)
	}
	p, err := volume.OpenPool(context.Background(), store, volume.PoolOptions{})
	if err != nil {
		t.Fatal(err)
	}
	in, err := p.Info(context.Background(), "d")
	if err != nil || in.Epoch != 1 {
		t.Fatalf("epoch after checkpoint/restore via serve: %+v %v (want 1: no second writer)", in, err)
	}
	mustRun(t, "gc", pool, "--dry-run")
	if du := mustRun(t, "du", pool); !strings.Contains(du, "kid") {
		t.Fatalf("du: %s", du)
	}
	_ = serveOut
}
