package cli

import (
	"bytes"
	"context"
	"encoding/base64"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/urldisk/urldisk/internal/control"
)

// TestResizeCommandOffline grows an encrypted, compressed volume with no
// local holder (resize attaches read-write) and refuses shrinking, sizes
// that are not whole blocks and a missing --size, naming what was wrong.
func TestResizeCommandOffline(t *testing.T) {
	t.Setenv("XDG_RUNTIME_DIR", t.TempDir()) // no control sockets here
	t.Setenv(keyEnv, base64.StdEncoding.EncodeToString([]byte("0123456789abcdef0123456789ABCDEF")))
	ctx := context.Background()
	pool := "file://" + filepath.Join(t.TempDir(), "pool")
	mustRun(t, "create", pool+"/a", "--size", "1M", "--encrypt", "--compress")
	if out := mustRun(t, "resize", pool+"/a", "--size", "3M"); out != "resized a to 3 MiB (3145728 bytes)\n" {
		t.Fatalf("resize: %q", out)
	}
	for args, want := range map[string]string{
		"--size 2M":    "cannot shrink volume a from 3145728 to 2097152 bytes",
		"--size 3073K": "size 3146752 for volume a is not a multiple of its block size 4096",
		"":             "--size is required",
		"--size 3X":    "--size:",
	} {
		_, err := run(t, ctx, append([]string{"resize", pool + "/a"}, strings.Fields(args)...)...)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("resize %s: %v, want an error containing %q", args, err, want)
		}
	}
	in, err := openTestPool(t, pool).Info(ctx, "a")
	if err != nil {
		t.Fatal(err)
	}
	if in.Size != 3<<20 {
		t.Fatalf("info after resize: size %d, want %d", in.Size, 3<<20)
	}
}

// TestResizeCommandServed: with serve holding the volume, resize goes
// through its control socket (no second writer), and a new NBD connection
// sees the new size.
func TestResizeCommandServed(t *testing.T) {
	nbdinfo, err := exec.LookPath("nbdinfo")
	if err != nil {
		t.Fatal("nbdinfo (libnbd-bin) is needed for this test: ", err)
	}
	dir := t.TempDir()
	t.Setenv("XDG_RUNTIME_DIR", dir)
	pool := "file://" + filepath.Join(dir, "pool")
	sock := filepath.Join(dir, "nbd.sock")
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var serveErr error
	wg.Add(1)
	go func() {
		defer wg.Done()
		_, serveErr = run(t, ctx, "serve", pool+"/d", "--create", "--size", "16M", "--listen", "unix:"+sock, "--no-cache")
	}()
	defer func() {
		cancel()
		wg.Wait()
		if serveErr != nil {
			t.Errorf("serve: %v", serveErr)
		}
	}()
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if m, _ := filepath.Glob(filepath.Join(control.Dir(), "*.sock")); len(m) == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("serve did not start its control socket")
		}
	}
	size := func() string {
		t.Helper()
		out, err := exec.Command(nbdinfo, "--size", "nbd+unix:///d?socket="+sock).CombinedOutput()
		if err != nil {
			t.Fatalf("nbdinfo: %v: %s", err, out)
		}
		return strings.TrimSpace(string(out))
	}
	if got := size(); got != "16777216" {
		t.Fatalf("size before resize: %s", got)
	}
	mustRun(t, "resize", pool+"/d", "--size", "32M")
	if got := size(); got != "33554432" {
		t.Fatalf("a new connection after resize sees size %s, want 33554432", got)
	}
	in, err := openTestPool(t, pool).Info(context.Background(), "d")
	if err != nil || in.Epoch != 1 {
		t.Fatalf("epoch after resize via serve: %+v %v (want 1: no second writer)", in, err)
	}
}

// TestImportIntoGrownVolume: import checks a file against the volume's
// size now, not the size it was created with.
func TestImportIntoGrownVolume(t *testing.T) {
	t.Setenv("XDG_RUNTIME_DIR", t.TempDir())
	dir := t.TempDir()
	pool := "file://" + filepath.Join(dir, "pool")
	mustRun(t, "create", pool+"/g", "--size", "1M")
	img := filepath.Join(dir, "img")
	if err := os.WriteFile(img, bytes.Repeat([]byte{7}, 2<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := run(t, context.Background(), "import", img, pool+"/g"); err == nil || !strings.Contains(err.Error(), "does not fit volume g (1048576 bytes)") {
		t.Fatalf("import of 2 MiB into 1 MiB: %v", err)
	}
	mustRun(t, "resize", pool+"/g", "--size", "2M")
	mustRun(t, "import", img, pool+"/g")
}
