package e2evm

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/urldisk/urldisk/internal/testutil/lockedbuf"

	"github.com/urldisk/urldisk/internal/testutil/vmimage"
)

// TestVMBootRootOnVolume boots a Debian cloud kernel whose root filesystem
// is a urldisk volume (file:// pool) attached as an NVMe disk over NBD. The
// guest's init bumps /data/counter durably and powers off. The second boot
// serves the same URL from a new, empty cache directory, so what it sees
// came from the object store, not from the first run's cache: counter=2.
// Finally the volume is exported and the counter read from the host side.
func TestVMBootRootOnVolume(t *testing.T) {
	start := time.Now()
	need(t, "debugfs", "e2fsprogs")
	need(t, "e2fsck", "e2fsprogs")

	tmp := t.TempDir()
	bin := filepath.Join(tmp, "urldisk")
	vmimage.GoBuild(t, "./cmd/urldisk", bin)
	kernel := vmimage.Kernel(t)
	img := vmimage.BuildRootFS(t, tmp, vmimage.BuildGuestInit(t))
	t.Logf("prepared urldisk, kernel %s and root filesystem in %v", kernel, time.Since(start).Round(time.Millisecond))
	// The bound covers the runs, not the preparation: a cold kernel
	// download and builds on a loaded machine took 9 minutes in CI.
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()

	pool := "file://" + filepath.Join(tmp, "pool")
	url := pool + "/vmroot"
	run(t, ctx, bin, "import", img, url)

	// Unix socket paths are limited to 108 bytes: keep them short.
	sockDir, err := os.MkdirTemp("", "udvm")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sockDir) })

	for i, want := range []int{1, 2} {
		cacheDir := filepath.Join(tmp, fmt.Sprintf("cache%c", 'A'+i))
		s := startServe(t, ctx, bin, url, "unix:"+filepath.Join(sockDir, fmt.Sprintf("s%d.sock", i)), cacheDir)
		serial := filepath.Join(tmp, fmt.Sprintf("serial%d.log", i+1))
		bootErr := vmimage.BootVM(ctx, t, kernel, s.uri, serial)
		log, _ := os.ReadFile(serial)
		c := vmimage.GuestCounters(log)
		if bootErr != nil || !slices.Equal(c, []int{want}) || !vmimage.GuestPoweredOff(log) || vmimage.GuestError(log) != "" {
			t.Fatalf("boot %d: qemu: %v; guest counters %v, want [%d] and a clean power-off; serial log:\n%s\nserve's stderr (with a goroutine dump):\n%s",
				i+1, bootErr, c, want, log, s.dump())
		}
		s.stop(t)
		if err := os.RemoveAll(cacheDir); err != nil {
			t.Fatal(err)
		}
	}

	// The host's view: export the volume and read the guest's file.
	raw := filepath.Join(tmp, "export.img")
	run(t, ctx, bin, "export", url, raw)
	out := run(t, ctx, "debugfs", "-R", "cat /data/counter", raw)
	if got := strings.TrimSpace(out); got != "2" {
		t.Fatalf("debugfs cat /data/counter on the exported volume = %q, want 2", got)
	}
	// The guest remounted / read-only before powering off: the filesystem
	// must be clean, with nothing left to replay.
	run(t, ctx, "e2fsck", "-f", "-n", raw)
	t.Logf("total %v", time.Since(start).Round(time.Millisecond))
}

func need(t *testing.T, cmd, pkg string) {
	t.Helper()
	if _, err := exec.LookPath(cmd); err != nil {
		t.Fatalf("%s not found: install the Debian package %s (scripts/install-test-deps.sh)", cmd, pkg)
	}
}

// run runs a command to completion and returns its stdout; a failure is
// fatal, with its output.
func run(t *testing.T, ctx context.Context, name string, args ...string) string {
	t.Helper()
	cmd := exec.CommandContext(ctx, name, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s %s: %v\nstdout:\n%s\nstderr:\n%s", name, strings.Join(args, " "), err, stdout.String(), stderr.String())
	}
	return stdout.String()
}

// serve is a running `urldisk serve`.
type serve struct {
	cmd     *exec.Cmd
	uri     string
	errb    *lockedbuf.Buffer
	exited  chan struct{} // closed when the process has been waited for
	exitErr error         // cmd.Wait's result, set before exited closes
}

func (s *serve) stderr() string { return s.errb.String() }

// startServe starts `urldisk serve URL --listen LISTEN --cache CACHE` and
// waits for its "ready" line. The process is stopped at cleanup if the test
// did not stop it.
func startServe(t *testing.T, ctx context.Context, bin, url, listen, cacheDir string) *serve {
	t.Helper()
	cmd := exec.Command(bin, "serve", url, "--listen", listen, "--cache", cacheDir, "--log-level", "debug")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	s := &serve{cmd: cmd, errb: &lockedbuf.Buffer{}, exited: make(chan struct{})}
	cmd.Stderr = s.errb
	if err := cmd.Start(); err != nil {
		t.Fatalf("start urldisk serve: %v", err)
	}
	t.Cleanup(func() {
		select {
		case <-s.exited:
		default:
			cmd.Process.Kill()
			<-s.exited
		}
	})
	lines := make(chan string)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
		s.exitErr = cmd.Wait()
		close(s.exited)
	}()
	timeout := time.After(30 * time.Second)
	var got []string
	for {
		select {
		case line, ok := <-lines:
			if !ok {
				t.Fatalf("urldisk serve exited before ready; stdout:\n%s\nstderr:\n%s", strings.Join(got, "\n"), s.stderr())
			}
			got = append(got, line)
			if rest, ok := strings.CutPrefix(line, "serving "); ok {
				if _, uri, ok := strings.Cut(rest, " at "); ok {
					s.uri = uri
				}
			}
			if line == "ready" {
				if s.uri == "" {
					t.Fatalf("urldisk serve printed no URI; stdout:\n%s", strings.Join(got, "\n"))
				}
				go func() { // drain anything later
					for range lines {
					}
				}()
				return s
			}
		case <-timeout:
			t.Fatalf("urldisk serve not ready after 30s; stdout:\n%s\nstderr:\n%s", strings.Join(got, "\n"), s.stderr())
		case <-ctx.Done():
			t.Fatalf("urldisk serve: %v", ctx.Err())
		}
	}
}

// dump makes serve print its goroutines and exit (SIGQUIT), and returns its
// stderr: for failure reports.
func (s *serve) dump() string {
	select {
	case <-s.exited:
	default:
		s.cmd.Process.Signal(syscall.SIGQUIT)
		select {
		case <-s.exited:
		case <-time.After(10 * time.Second):
		}
	}
	return s.stderr()
}

// stop sends SIGTERM and requires a clean exit (0: every write flushed).
func (s *serve) stop(t *testing.T) {
	t.Helper()
	if err := s.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatalf("SIGTERM urldisk serve: %v", err)
	}
	select {
	case <-s.exited:
		if s.exitErr != nil {
			t.Fatalf("urldisk serve after SIGTERM: %v\nstderr:\n%s", s.exitErr, s.stderr())
		}
	case <-time.After(90 * time.Second):
		t.Fatalf("urldisk serve did not exit within 90s of SIGTERM\nstderr:\n%s", s.stderr())
	}
}
