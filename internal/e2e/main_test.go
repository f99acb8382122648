package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// urldiskBin is the binary TestMain builds.
var urldiskBin string

func TestMain(m *testing.M) { os.Exit(testMain(m)) }

func testMain(m *testing.M) int {
	dir, err := os.MkdirTemp("", "urldisk-e2e-bin-")
	if err != nil {
		fmt.Fprintf(os.Stderr, "e2e: %v\n", err)
		return 1
	}
	defer os.RemoveAll(dir)
	bin, err := buildURLDisk(dir)
	if err != nil {
		fmt.Fprintf(os.Stderr, "e2e: %v\n", err)
		return 1
	}
	urldiskBin = bin
	return m.Run()
}

// goTool returns the go command: from PATH, else $GOROOT/bin (go test sets
// GOROOT for the test binary).
func goTool() (string, error) {
	if p, err := exec.LookPath("go"); err == nil {
		return p, nil
	}
	if r := os.Getenv("GOROOT"); r != "" {
		p := filepath.Join(r, "bin", "go")
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", errors.New("go command not found in PATH or $GOROOT/bin")
}

// buildURLDisk builds ./cmd/urldisk of this module into dir.
func buildURLDisk(dir string) (string, error) {
	goBin, err := goTool()
	if err != nil {
		return "", err
	}
	out, err := exec.Command(goBin, "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		return "", fmt.Errorf("go env GOMOD = %q: not inside the module", gomod)
	}
	bin := filepath.Join(dir, "urldisk")
	cmd := exec.Command(goBin, "build", "-o", bin, "./cmd/urldisk")
	cmd.Dir = filepath.Dir(gomod)
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build ./cmd/urldisk: %w\n%s", err, out)
	}
	return bin, nil
}

// toolPackages maps every external tool the tests run to its Debian package.
var toolPackages = map[string]string{
	"qemu-img":    "qemu-utils",
	"qemu-io":     "qemu-utils",
	"nbdinfo":     "libnbd-bin",
	"nbdcopy":     "libnbd-bin",
	"nbdfuse":     "nbdfuse",
	"fio":         "fio",
	"mkfs.ext4":   "e2fsprogs",
	"fsck.ext4":   "e2fsprogs",
	"fusermount3": "fuse3",
	"losetup":     "mount",
	"mount":       "mount",
	"umount":      "mount",
	"prlimit":     "util-linux",
}

// toolPath finds a tool in PATH or the sbin directories (absent from some
// users' PATH), failing t with the package to install.
func toolPath(t testing.TB, name string) string {
	t.Helper()
	if name == "urldisk" {
		return urldiskBin
	}
	pkg, ok := toolPackages[name]
	if !ok {
		t.Fatalf("toolPath: %s is not in toolPackages", name)
	}
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	for _, d := range []string{"/usr/sbin", "/sbin", "/usr/bin", "/bin"} {
		p := filepath.Join(d, name)
		if fi, err := os.Stat(p); err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0 {
			return p
		}
	}
	t.Fatalf("%s not found: install the Debian package %s (apt-get install -y %s, or scripts/install-test-deps.sh)", name, pkg, pkg)
	return ""
}

// needRoot fails t unless it runs as root (losetup and mount need it).
func needRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("this test needs root (losetup, mount); run the e2e tests as root")
	}
}

// result is a finished command.
type result struct {
	cmdline        string
	stdout, stderr string
	code           int // exit code; -1 if it did not exit normally
	err            error
}

func (r result) String() string {
	return fmt.Sprintf("$ %s\nexit %d (%v)\nstdout:\n%s\nstderr:\n%s", r.cmdline, r.code, r.err, r.stdout, r.stderr)
}

// output is stdout and stderr together.
func (r result) output() string { return r.stdout + r.stderr }

// cmdTimeout bounds every tool run.
const cmdTimeout = 3 * time.Minute

// run runs a tool (a key of toolPackages, or "urldisk") in a fresh
// temporary working directory (fio leaves state files in its cwd) and
// returns what happened; it does not judge the exit code.
func run(t testing.TB, name string, args ...string) result {
	t.Helper()
	path := toolPath(t, name)
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, path, args...)
	cmd.Dir = t.TempDir()
	cmd.WaitDelay = 10 * time.Second
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	start := time.Now()
	err := cmd.Run()
	r := result{
		cmdline: name + " " + strings.Join(args, " "),
		stdout:  stdout.String(), stderr: stderr.String(),
		code: -1, err: err,
	}
	if cmd.ProcessState != nil {
		r.code = cmd.ProcessState.ExitCode()
	}
	if ctx.Err() != nil {
		r.err = fmt.Errorf("killed after %v: %w", cmdTimeout, ctx.Err())
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Logf("%s took %v", name, d.Round(time.Millisecond))
	}
	return r
}

// mustRun runs a tool and fails t unless it exits 0; it returns stdout.
func mustRun(t testing.TB, name string, args ...string) string {
	t.Helper()
	r := run(t, name, args...)
	if r.err != nil || r.code != 0 {
		t.Fatalf("command failed:\n%s", r)
	}
	return r.stdout
}

// lineWriter calls fn for every complete line written to it.
type lineWriter struct {
	mu      sync.Mutex
	partial []byte
	fn      func(line string)
}

func (w *lineWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.partial = append(w.partial, p...)
	for {
		i := bytes.IndexByte(w.partial, '\n')
		if i < 0 {
			break
		}
		line := string(w.partial[:i])
		w.partial = w.partial[i+1:]
		w.fn(line)
	}
	return len(p), nil
}

// filePool returns the file:// URL of a new, not yet initialised pool.
func filePool(t testing.TB) string {
	t.Helper()
	return "file://" + filepath.Join(t.TempDir(), "pool")
}

// volURL joins a pool URL and a volume name, keeping the pool's query
// (s3://bucket?endpoint=... becomes s3://bucket/NAME?endpoint=...).
func volURL(pool, name string) string {
	base, query, hasQuery := strings.Cut(pool, "?")
	u := strings.TrimSuffix(base, "/") + "/" + name
	if hasQuery {
		u += "?" + query
	}
	return u
}

// createVolume runs `urldisk create URL --size SIZE`.
func createVolume(t testing.TB, url, size string) {
	t.Helper()
	out := mustRun(t, "urldisk", "create", url, "--size", size)
	if !strings.HasPrefix(out, "created ") {
		t.Fatalf("urldisk create %s: unexpected output %q", url, out)
	}
}

// randomImage writes a size-byte file of random data with some zero runs
// (so that clients may send WRITE_ZEROES or TRIM) and returns its path and
// SHA-256.
func randomImage(t testing.TB, dir string, size int) (string, [32]byte) {
	t.Helper()
	b := make([]byte, size)
	rand.Read(b)
	clear(b[size/4 : size/4+size/8])       // a long aligned zero run
	clear(b[size/2+12345 : size/2+300001]) // and an unaligned one
	p := filepath.Join(dir, "src.img")
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return p, sha256.Sum256(b)
}

// fileSHA returns the SHA-256 of a file's contents.
func fileSHA(t testing.TB, path string) [32]byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	var sum [32]byte
	h.Sum(sum[:0])
	return sum
}

// copyOut copies an export to a new file with nbdcopy and returns the
// file's path.
func copyOut(t testing.TB, uri string) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), "out.img")
	mustRun(t, "nbdcopy", uri, out)
	return out
}

// fileSHAOf is sha256.Sum256, named for symmetry with fileSHA.
func fileSHAOf(b []byte) [32]byte { return sha256.Sum256(b) }
