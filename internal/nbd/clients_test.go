package nbd

// Tests with real NBD clients from Debian packages. A missing binary fails
// the test (with the package to install); these tests never skip.

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/urldisk/urldisk/internal/testutil/lockedbuf"

	"github.com/urldisk/urldisk/internal/nbd/nbdtest"
)

// clientPackages maps each client binary to its Debian package.
var clientPackages = map[string]string{
	"nbdinfo":     "libnbd-bin",
	"nbdcopy":     "libnbd-bin",
	"qemu-io":     "qemu-utils",
	"qemu-img":    "qemu-utils",
	"fio":         "fio",
	"nbdfuse":     "nbdfuse",
	"fusermount3": "fuse3",
}

// run executes a client command with a timeout and returns its stdout,
// failing the test on error.
func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := runErr(t, name, args...)
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return out
}

func runErr(t *testing.T, name string, args ...string) (string, error) {
	t.Helper()
	path, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("%s not found: install it with apt-get install -y %s", name, clientPackages[name])
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, path, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	err = cmd.Run()
	if err != nil {
		return stdout.String() + stderr.String(), err
	}
	if s := stderr.String(); s != "" {
		t.Logf("%s stderr: %s", name, s)
	}
	return stdout.String(), nil
}

// clientFixture is a server on a unix socket with a writable 64 MiB disk,
// a read-only 1 MiB disk, and an export hidden by the allow-list.
type clientFixture struct {
	srv      *Server
	disk, ro *nbdtest.RAMDisk
	socket   string
}

func newClientFixture(t *testing.T) *clientFixture {
	t.Helper()
	f := &clientFixture{
		disk: nbdtest.NewRAMDisk(64<<20, 4096, false),
		ro:   nbdtest.NewRAMDisk(1<<20, 512, true),
	}
	f.srv = newTestServer(t, Options{
		Exports: map[string]Export{
			"disk":   {Device: f.disk, Description: "writable test disk"},
			"ro":     {Device: f.ro, Description: "read-only test disk"},
			"hidden": {Device: f.ro},
		},
		Allow: []string{"disk", "ro"},
	})
	f.socket = serveUnix(t, f.srv)
	t.Cleanup(func() {
		checkNoViolations(t, f.disk)
		checkNoViolations(t, f.ro)
	})
	return f
}

func (f *clientFixture) uri(name string) string {
	return "nbd+unix:///" + name + "?socket=" + f.socket
}

func TestClientNbdinfo(t *testing.T) {
	f := newClientFixture(t)
	out := run(t, "nbdinfo", "--json", f.uri("disk"))
	var info struct {
		Protocol string `json:"protocol"`
		TLS      bool   `json:"TLS"`
		Exports  []map[string]any
	}
	if err := json.Unmarshal([]byte(out), &info); err != nil {
		t.Fatalf("parse nbdinfo --json: %v\n%s", err, out)
	}
	if info.Protocol != "newstyle-fixed" || info.TLS || len(info.Exports) != 1 {
		t.Fatalf("nbdinfo: %s", out)
	}
	e := info.Exports[0]
	want := map[string]any{
		"export-name":          "disk",
		"description":          "writable test disk",
		"export-size":          float64(64 << 20),
		"block_size_minimum":   float64(1),
		"block_size_preferred": float64(4096),
		"block_size_maximum":   float64(DefaultMaxPayload),
		"is_read_only":         false,
		"can_flush":            true,
		"can_fua":              true,
		"can_trim":             true,
		"can_zero":             true,
		"can_multi_conn":       true,
		"can_cache":            false,
	}
	for k, v := range want {
		if e[k] != v {
			t.Errorf("nbdinfo %s = %v, want %v", k, e[k], v)
		}
	}

	out = run(t, "nbdinfo", "--json", f.uri("ro"))
	if err := json.Unmarshal([]byte(out), &info); err != nil {
		t.Fatalf("parse nbdinfo --json: %v\n%s", err, out)
	}
	e = info.Exports[0]
	if e["is_read_only"] != true || e["can_trim"] != false || e["block_size_preferred"] != float64(512) {
		t.Errorf("read-only export: %s", out)
	}

	// Exports outside the allow-list or unknown cannot be opened.
	for _, name := range []string{"hidden", "nope"} {
		if out, err := runErr(t, "nbdinfo", f.uri(name)); err == nil {
			t.Errorf("nbdinfo %s succeeded:\n%s", name, out)
		}
	}
}

func TestClientNbdinfoList(t *testing.T) {
	f := newClientFixture(t)
	out := run(t, "nbdinfo", "--list", "--json", f.uri(""))
	var list struct {
		Exports []struct {
			Name        string `json:"export-name"`
			Description string `json:"description"`
			Size        int64  `json:"export-size"`
		}
	}
	if err := json.Unmarshal([]byte(out), &list); err != nil {
		t.Fatalf("parse nbdinfo --list --json: %v\n%s", err, out)
	}
	var got []string
	for _, e := range list.Exports {
		got = append(got, fmt.Sprintf("%s:%s:%d", e.Name, e.Description, e.Size))
	}
	want := []string{"disk:writable test disk:67108864", "ro:read-only test disk:1048576"}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("nbdinfo --list: %q, want %q", got, want)
	}
}

func TestClientQemuIO(t *testing.T) {
	f := newClientFixture(t)
	// Each -c runs in order on one connection; unaligned offsets included.
	cmds := []string{
		"write -P 0xab 0 64k",
		"read -P 0xab 0 64k",
		"write -P 0xcd 1000 3000",
		"read -P 0xcd 1000 3000",
		"read -P 0xab 0 1000",
		"read -P 0xab 4000 1000",
		"discard 64k 64k",
		"read -P 0 64k 64k",
		"write -P 0x11 200k 100k",
		"write -z 210k 5000",
		"read -P 0 210k 5000",
		"read -P 0x11 200k 10k",
		"write -f -P 0x22 1m 4k", // FUA
		"flush",
		"read -P 0x22 1m 4k",
		"write -P 0x33 67108863 1", // last byte
		"read -P 0x33 67108863 1",
	}
	args := []string{"-f", "raw"}
	for _, c := range cmds {
		args = append(args, "-c", c)
	}
	out := run(t, "qemu-io", append(args, f.uri("disk"))...)
	if strings.Contains(out, "fail") || strings.Contains(out, "error") {
		t.Fatalf("qemu-io reported a failure:\n%s", out)
	}
	// Check against a model too.
	want := make([]byte, 64<<20)
	fill := func(off, n int, b byte) {
		for i := off; i < off+n; i++ {
			want[i] = b
		}
	}
	fill(0, 64<<10, 0xab)
	fill(1000, 3000, 0xcd)
	fill(64<<10, 64<<10, 0)
	fill(200<<10, 100<<10, 0x11)
	fill(210<<10, 5000, 0)
	fill(1<<20, 4<<10, 0x22)
	want[64<<20-1] = 0x33
	if !bytes.Equal(f.disk.Bytes(), want) {
		t.Error("device contents differ from the qemu-io model")
	}
	if f.disk.Flushes() < 2 {
		t.Errorf("FUA write and flush made %d device flushes", f.disk.Flushes())
	}

	// Writes to the read-only export fail; reads work.
	out, err := runErr(t, "qemu-io", "-f", "raw", "-c", "write -P 1 0 4k", f.uri("ro"))
	if err == nil && !strings.Contains(out, "ermission") && !strings.Contains(out, "read-only") && !strings.Contains(out, "read only") {
		t.Errorf("qemu-io write to read-only export did not fail:\n%s", out)
	}
	run(t, "qemu-io", "-f", "raw", "-r", "-c", "read -P 0 0 4k", f.uri("ro"))
}

// randomFile writes n random bytes to a file in dir and returns its path.
func randomFile(t *testing.T, dir string, n int) (string, []byte) {
	t.Helper()
	b := make([]byte, n)
	rand.Read(b)
	// Leave zero runs so that clients may use write-zeroes/trim.
	clear(b[n/4 : n/4+n/8])
	p := filepath.Join(dir, "src.img")
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p, b
}

func fileSum(t *testing.T, path string) [32]byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return sha256.Sum256(b)
}

func TestClientQemuImgConvert(t *testing.T) {
	f := newClientFixture(t)
	dir := t.TempDir()
	src, data := randomFile(t, dir, 64<<20)
	// -n: the target exists; -t none for no host cache on the local side.
	run(t, "qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", src, f.uri("disk"))
	if !bytes.Equal(f.disk.Bytes(), data) {
		t.Fatal("device differs from the source image after qemu-img convert")
	}
	out := filepath.Join(dir, "out.img")
	run(t, "qemu-img", "convert", "-f", "raw", "-O", "raw", f.uri("disk"), out)
	if fileSum(t, out) != sha256.Sum256(data) {
		t.Fatal("image read back with qemu-img convert differs")
	}
	// qemu-img compare uses its own reads.
	run(t, "qemu-img", "compare", "-f", "raw", "-F", "raw", src, f.uri("disk"))
}

func TestClientNbdcopy(t *testing.T) {
	f := newClientFixture(t)
	dir := t.TempDir()
	src, data := randomFile(t, dir, 64<<20)
	run(t, "nbdcopy", "--flush", src, f.uri("disk"))
	if sha256.Sum256(f.disk.Bytes()) != sha256.Sum256(data) {
		t.Fatal("device differs from the source after nbdcopy")
	}
	if f.disk.Flushes() == 0 {
		t.Error("nbdcopy --flush made no device flush")
	}
	out := filepath.Join(dir, "out.img")
	run(t, "nbdcopy", f.uri("disk"), out)
	if fileSum(t, out) != sha256.Sum256(data) {
		t.Fatal("nbdcopy round trip differs")
	}
}

func TestClientFioVerify(t *testing.T) {
	f := newClientFixture(t)
	out := run(t, "fio",
		"--name=verify", "--ioengine=nbd", "--uri="+f.uri("disk"),
		"--rw=randwrite", "--bsrange=4k-64k", "--size=64m", "--iodepth=32",
		"--verify=crc32c", "--do_verify=1", "--verify_fatal=1",
		"--output-format=json")
	var res struct {
		Jobs []struct {
			Error int `json:"error"`
			Write struct {
				IOBytes int64 `json:"io_bytes"`
			} `json:"write"`
			Read struct {
				IOBytes int64 `json:"io_bytes"`
			} `json:"read"`
		} `json:"jobs"`
	}
	// fio may print notes before the JSON.
	if i := strings.Index(out, "{"); i > 0 {
		out = out[i:]
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatalf("parse fio output: %v\n%s", err, out)
	}
	if len(res.Jobs) != 1 || res.Jobs[0].Error != 0 {
		t.Fatalf("fio job failed: %s", out)
	}
	j := res.Jobs[0]
	if j.Write.IOBytes != 64<<20 || j.Read.IOBytes != 64<<20 {
		t.Errorf("fio wrote %d and verified %d bytes, want %d each", j.Write.IOBytes, j.Read.IOBytes, 64<<20)
	}
}

// nbdfuse presents the export as a file through FUSE; ordinary file I/O
// then reaches the device.
func TestClientNbdfuse(t *testing.T) {
	f := newClientFixture(t)
	nbdfuse, err := exec.LookPath("nbdfuse")
	if err != nil {
		t.Fatalf("nbdfuse not found: install it with apt-get install -y %s", clientPackages["nbdfuse"])
	}
	if _, err := exec.LookPath("fusermount3"); err != nil {
		t.Fatalf("fusermount3 not found: install it with apt-get install -y %s", clientPackages["fusermount3"])
	}
	mnt := t.TempDir()
	file := filepath.Join(mnt, "disk")
	log := new(lockedbuf.Buffer)
	cmd := exec.Command(nbdfuse, file, f.uri("disk")) // stays in the foreground until unmounted
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	unmounted := false
	unmount := func() {
		if unmounted {
			return
		}
		unmounted = true
		if out, err := runErr(t, "fusermount3", "-u", mnt); err != nil {
			t.Errorf("fusermount3 -u: %v\n%s", err, out)
			cmd.Process.Kill()
		}
		select {
		case err := <-exited:
			if err != nil {
				t.Errorf("nbdfuse: %v\n%s", err, log.String())
			}
		case <-time.After(testTimeout):
			cmd.Process.Kill()
			t.Errorf("nbdfuse did not exit after unmount")
		}
	}
	t.Cleanup(unmount)

	deadline := time.Now().Add(testTimeout)
	for {
		if fi, err := os.Stat(file); err == nil && fi.Size() == 64<<20 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("nbdfuse did not present %s:\n%s", file, log.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	fh, err := os.OpenFile(file, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	p := make([]byte, 3<<20)
	rand.Read(p)
	if _, err := fh.WriteAt(p, 12345); err != nil {
		t.Fatal(err)
	}
	if err := fh.Sync(); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(p))
	if _, err := fh.ReadAt(got, 12345); err != nil {
		t.Fatal(err)
	}
	if err := fh.Close(); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, p) {
		t.Error("read back through nbdfuse differs")
	}
	if !bytes.Equal(f.disk.Bytes()[12345:12345+len(p)], p) {
		t.Error("device differs from what was written through nbdfuse")
	}
	if f.disk.Flushes() == 0 {
		t.Error("fsync through nbdfuse made no device flush")
	}
	unmount()
}
