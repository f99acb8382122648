package cli

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/urldisk/urldisk/internal/control"
	"github.com/urldisk/urldisk/internal/rundir"
	"github.com/urldisk/urldisk/internal/testutil/otheruser"
)

// Regression: without $XDG_RUNTIME_DIR, serve (and the control sockets)
// used $TMPDIR/urldisk-UID even when another user had created it 0777;
// that user could then swap the socket and serve its own disk to our qemu.
func TestServeRefusesRuntimeDirOfAnotherUser(t *testing.T) {
	other := otheruser.Get(t)
	shared := otheruser.SharedDir(t)
	t.Setenv("TMPDIR", shared)
	t.Setenv("XDG_RUNTIME_DIR", "")
	vol := "file://" + filepath.Join(t.TempDir(), "pool", "a")
	if _, err := runCLI(t, "create", vol, "--size", "1M"); err != nil {
		t.Fatal(err)
	}
	hijacked := filepath.Join(shared, fmt.Sprintf("urldisk-%d", os.Getuid()))
	other.Run(t, "mkdir", "-m", "0777", hijacked)

	_, err := runCLI(t, "serve", "--no-cache", vol)
	if !errors.Is(err, rundir.ErrUnsafe) || !strings.Contains(err.Error(), hijacked) || !strings.Contains(err.Error(), fmt.Sprintf("owned by uid %d", other.UID)) {
		t.Fatalf("serve with a hijacked runtime directory: %v, want ErrUnsafe naming %s and its owner", err, hijacked)
	}
	if epoch, _ := volumeEpoch(t, vol); epoch != 0 {
		t.Errorf("serve refused for its runtime directory attached the volume (epoch %d)", epoch)
	}
	// checkpoint would ask whoever listens in that directory.
	if _, err := runCLI(t, "checkpoint", vol, "c1"); !errors.Is(err, rundir.ErrUnsafe) {
		t.Errorf("checkpoint with a hijacked runtime directory: %v, want ErrUnsafe", err)
	}
}

// serve's default socket and its control socket are 0600 in 0700
// directories of ours.
func TestServeSocketsPrivate(t *testing.T) {
	tmp, err := os.MkdirTemp("", "udsock") // short: socket paths
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(tmp) })
	t.Setenv("TMPDIR", tmp)
	t.Setenv("XDG_RUNTIME_DIR", "")
	vol := "file://" + filepath.Join(tmp, "pool", "d")
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var serveErr error
	wg.Add(1)
	go func() {
		defer wg.Done()
		_, serveErr = run(t, ctx, "serve", vol, "--create", "--size", "1M", "--no-cache")
	}()
	defer func() {
		cancel()
		wg.Wait()
		if serveErr != nil {
			t.Errorf("serve: %v", serveErr)
		}
	}()
	base := rundir.Base()
	sock := filepath.Join(base, "d.sock")
	var ctl []string
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		ctl, _ = filepath.Glob(filepath.Join(control.Dir(), "*.sock"))
		if _, err := os.Stat(sock); err == nil && len(ctl) == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("serve did not create %s and a control socket", sock)
		}
	}
	for path, want := range map[string]fs.FileMode{base: 0o700, control.Dir(): 0o700, sock: 0o600, ctl[0]: 0o600} {
		fi, err := os.Lstat(path)
		if err != nil {
			t.Fatal(err)
		}
		if got := fi.Mode().Perm(); got != want {
			t.Errorf("%s: mode %04o, want %04o", path, got, want)
		}
	}
}
