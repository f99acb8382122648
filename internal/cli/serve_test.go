package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/urldisk/urldisk/internal/control"
)

// runCLI runs the urldisk command tree in-process and returns its stdout
// and error.
func runCLI(t *testing.T, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := NewRootCommand()
	var out, errOut bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&errOut)
	cmd.SetArgs(args)
	err := cmd.ExecuteContext(ctx)
	return out.String(), err
}

// volumeEpoch returns the volume's epoch and ID from `info --json`.
func volumeEpoch(t *testing.T, url string) (uint64, string) {
	t.Helper()
	out, err := runCLI(t, "info", "--json", url)
	if err != nil {
		t.Fatalf("info %s: %v", url, err)
	}
	var in struct {
		ID    string `json:"id"`
		Epoch uint64 `json:"epoch"`
	}
	if err := json.Unmarshal([]byte(out), &in); err != nil {
		t.Fatalf("info --json: %v\n%s", err, out)
	}
	return in.Epoch, in.ID
}

// Regression: serve used to find two volumes with the same name only after
// attaching both, by which time it had created the second one's pool and
// volume (--create) and fenced both volumes' writers.
func TestServeDuplicateNamesRefusedBeforeAttach(t *testing.T) {
	t.Setenv("XDG_RUNTIME_DIR", t.TempDir())
	dir := t.TempDir()
	vol := "file://" + filepath.Join(dir, "p1", "a")
	other := "file://" + filepath.Join(dir, "p2", "a")
	if _, err := runCLI(t, "create", vol, "--size", "1M"); err != nil {
		t.Fatal(err)
	}
	sock := "unix:" + filepath.Join(t.TempDir(), "s.sock")
	for _, args := range [][]string{{vol, other, "--create", "--size", "1M"}, {vol, vol}} {
		_, err := runCLI(t, append([]string{"serve", "--no-cache", "--listen", sock}, args...)...)
		if err == nil || !strings.Contains(err.Error(), `two volumes named "a"`) {
			t.Fatalf("serve %v: %v, want a duplicate-name error", args, err)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "p2")); err == nil {
		t.Error("the refused serve created the second pool")
	}
	if epoch, _ := volumeEpoch(t, vol); epoch != 0 {
		t.Errorf("the refused serve attached the volume read-write (epoch %d, want 0)", epoch)
	}
}

// Regression: a second read-write serve of a volume on the same host was
// refused (the first one's control socket answers) only after it had
// attached, which fenced the running serve.
func TestServeSecondWriterOnHostRefusedBeforeFencing(t *testing.T) {
	t.Setenv("XDG_RUNTIME_DIR", t.TempDir())
	vol := "file://" + filepath.Join(t.TempDir(), "pool", "a")
	if _, err := runCLI(t, "create", vol, "--size", "1M"); err != nil {
		t.Fatal(err)
	}
	_, id := volumeEpoch(t, vol)
	// A live control socket, as a running read-write serve keeps.
	path := control.Socket(id)
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()

	sock := "unix:" + filepath.Join(t.TempDir(), "s.sock")
	_, err = runCLI(t, "serve", "--no-cache", "--listen", sock, vol)
	if err == nil || !strings.Contains(err.Error(), "served by another process on this host") {
		t.Fatalf("serve: %v, want a refusal naming the other process", err)
	}
	if epoch, _ := volumeEpoch(t, vol); epoch != 0 {
		t.Errorf("the refused serve fenced the volume (epoch %d, want 0)", epoch)
	}
}

// Regression: serve opened its listener only after attaching the volumes,
// so a bad --listen spec or a socket in use failed after fencing their
// writers.
func TestServeListenProblemsRefusedBeforeAttach(t *testing.T) {
	t.Setenv("XDG_RUNTIME_DIR", t.TempDir())
	vol := "file://" + filepath.Join(t.TempDir(), "pool", "a")
	if _, err := runCLI(t, "create", vol, "--size", "1M"); err != nil {
		t.Fatal(err)
	}
	busy := filepath.Join(t.TempDir(), "busy.sock")
	ln, err := net.Listen("unix", busy)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	for _, c := range []struct{ listen, want string }{
		{"bogus", "want unix:/path or tcp:host:port"},
		{"unix:" + busy, "in use by a running server"},
	} {
		_, err := runCLI(t, "serve", "--no-cache", "--listen", c.listen, vol)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("serve --listen %s: %v, want %q", c.listen, err, c.want)
		}
	}
	if epoch, _ := volumeEpoch(t, vol); epoch != 0 {
		t.Errorf("a serve refused for its --listen attached the volume read-write (epoch %d, want 0)", epoch)
	}
}

// Bad stall bounds are refused, naming the flag, before attaching.
func TestServeStallFlagsValidated(t *testing.T) {
	t.Setenv("XDG_RUNTIME_DIR", t.TempDir())
	vol := "file://" + filepath.Join(t.TempDir(), "p", "a")
	if _, err := runCLI(t, "create", vol, "--size", "1M"); err != nil {
		t.Fatal(err)
	}
	sock := "unix:" + filepath.Join(t.TempDir(), "s.sock")
	for flag, val := range map[string]string{"--store-timeout": "0s", "--flush-timeout": "-1s"} {
		_, err := runCLI(t, "serve", "--no-cache", "--listen", sock, flag, val, vol)
		if err == nil || !strings.Contains(err.Error(), flag) {
			t.Errorf("serve %s %s: %v, want an error naming the flag", flag, val, err)
		}
	}
	if epoch, _ := volumeEpoch(t, vol); epoch != 0 {
		t.Errorf("a refused serve attached the volume read-write (epoch %d, want 0)", epoch)
	}
}
