package e2e

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/urldisk/urldisk/internal/testutil/azureserver"
	"github.com/urldisk/urldisk/internal/testutil/gcsserver"
	"github.com/urldisk/urldisk/internal/testutil/lockedbuf"
	"github.com/urldisk/urldisk/internal/testutil/s3server"
)

// qemuIOSession is an interactive qemu-io reading commands from a pipe. It
// prints each command's outcome (and flushes stdout) as the command
// completes, so a test can act between commands.
type qemuIOSession struct {
	t      *testing.T
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	lines  chan string
	out    lockedbuf.Buffer
	exited chan struct{}
}

func startQemuIO(t *testing.T, uri string, flags ...string) *qemuIOSession {
	t.Helper()
	q := &qemuIOSession{t: t, lines: make(chan string, 1<<16), exited: make(chan struct{})}
	args := append(append([]string{"-f", "raw"}, flags...), uri)
	q.cmd = exec.Command(toolPath(t, "qemu-io"), args...)
	q.cmd.Dir = t.TempDir()
	w := &lineWriter{fn: func(l string) {
		q.out.Write([]byte(l + "\n"))
		select {
		case q.lines <- l:
		default:
		}
	}}
	q.cmd.Stdout, q.cmd.Stderr = w, w // one pipe: outcomes arrive in order
	q.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	var err error
	if q.stdin, err = q.cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	if err := q.cmd.Start(); err != nil {
		t.Fatalf("start qemu-io: %v", err)
	}
	go func() { q.cmd.Wait(); close(q.exited) }()
	t.Cleanup(func() {
		q.stdin.Close()
		select {
		case <-q.exited:
		case <-time.After(30 * time.Second):
			q.cmd.Process.Kill()
			<-q.exited
		}
		if t.Failed() {
			t.Logf("qemu-io session output:\n%s", q.out.String())
		}
	})
	return q
}

var wroteRE = regexp.MustCompile(`wrote (\d+)/(\d+) bytes at offset (\d+)`)

// write sends one write command and waits for its outcome: nil if qemu-io
// reports the write done, an error if it reports a failure or exits.
func (q *qemuIOSession) write(pattern byte, off, n int64) error {
	if _, err := fmt.Fprintf(q.stdin, "write -P 0x%02x %d %d\n", pattern, off, n); err != nil {
		return fmt.Errorf("send to qemu-io: %w", err)
	}
	timeout := time.After(time.Minute)
	for {
		select {
		case l := <-q.lines:
			if m := wroteRE.FindStringSubmatch(l); m != nil {
				if m[3] != fmt.Sprint(off) || m[1] != fmt.Sprint(n) {
					return fmt.Errorf("unexpected qemu-io output %q", l)
				}
				return nil
			}
			if strings.Contains(l, "failed") || strings.Contains(l, "rror") {
				return fmt.Errorf("qemu-io: %s", l)
			}
		case <-q.exited:
			return fmt.Errorf("qemu-io exited")
		case <-timeout:
			q.t.Fatalf("qemu-io: no outcome for a write after 1 minute; output:\n%s", q.out.String())
		}
	}
}

// TestSIGTERMWithWritesInFlight stops serve with SIGTERM while fio writes
// at queue depth 16 on one connection and qemu-io writes a sequence of
// distinct 64 KiB patterns on another. serve must finish what is in
// flight, flush, and exit 0; afterwards (read-only, empty cache) every
// write qemu-io saw acknowledged must be there, as must data flushed before.
func TestSIGTERMWithWritesInFlight(t *testing.T) {
	const m = 1 << 20
	vol := volURL(filePool(t), "inflight")
	s := startServe(t, vol, "--create", "--size", "128M")
	uri := s.URI("inflight")

	// Flushed before everything else: [96 MiB, 100 MiB) = 0x5a.
	qemuIO(t, uri, nil, fmt.Sprintf("write -P 0x5a %d %d", 96*m, 4*m), "flush")

	// fio hammers [64 MiB, 96 MiB) until serve goes away.
	fioCtx, fioCancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer fioCancel()
	fio := exec.CommandContext(fioCtx, toolPath(t, "fio"), "--name=bg", "--ioengine=nbd", "--uri="+uri,
		"--rw=randwrite", "--bs=64k", fmt.Sprintf("--offset=%d", 64*m), "--size=32m",
		"--iodepth=16", "--time_based", "--runtime=100")
	fio.Dir = t.TempDir()
	var fioOut lockedbuf.Buffer
	fio.Stdout, fio.Stderr = &fioOut, &fioOut
	fio.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := fio.Start(); err != nil {
		t.Fatalf("start fio: %v", err)
	}
	fioDone := make(chan error, 1)
	go func() { fioDone <- fio.Wait() }()
	time.Sleep(time.Second) // let fio get going

	// qemu-io writes slot i of [0, 48 MiB) with pattern i%255+1; serve is
	// sent SIGTERM after sigAt acknowledged writes.
	const slot, slots, sigAt = 64 << 10, 768, 100
	// -t writeback: plain writes, no FUA (qemu-io defaults to writethrough,
	// which flushes after every write).
	q := startQemuIO(t, uri, "-t", "writeback")
	var acked []int
	var failure error
	var nAcked, atSignal, signalled atomic.Int64
	for i := 0; i < slots; i++ {
		if err := q.write(byte(i%255+1), int64(i)*slot, slot); err != nil {
			failure = err
			break
		}
		acked = append(acked, i)
		nAcked.Add(1)
		if i == sigAt-1 {
			// Signal while qemu-io keeps writing.
			go func() {
				time.Sleep(20 * time.Millisecond)
				atSignal.Store(nAcked.Load())
				signalled.Store(time.Now().UnixNano())
				s.Terminate()
			}()
		}
	}
	q.stdin.Close()
	t.Logf("qemu-io: %d writes acknowledged (about %d after SIGTERM), then: %v", len(acked), int64(len(acked))-atSignal.Load(), failure)
	if failure == nil {
		t.Errorf("serve kept acknowledging writes for %d writes after SIGTERM", slots-sigAt)
	}

	if code := s.Wait(stopTimeout); code != 0 {
		t.Fatalf("serve exited %d after SIGTERM with writes in flight, want 0\n%s", code, s.Stderr())
	}
	t.Logf("serve exited %v after SIGTERM", time.Since(time.Unix(0, signalled.Load())).Round(time.Millisecond))
	if !strings.Contains(s.Stderr(), "stopped cleanly") {
		t.Errorf("serve did not log a clean stop:\n%s", s.Stderr())
	}
	select {
	case err := <-fioDone:
		t.Logf("fio ended with %v (expected: the server went away)", err)
	case <-time.After(time.Minute):
		t.Errorf("fio did not exit within a minute of serve's exit")
		fio.Process.Kill()
		<-fioDone
	}
	if len(acked) < sigAt {
		t.Fatalf("only %d writes acknowledged", len(acked))
	}

	// Every acknowledged write is durable.
	r := startServe(t, "--read-only", vol)
	img, err := os.ReadFile(copyOut(t, r.URI("inflight")))
	if err != nil {
		t.Fatal(err)
	}
	for _, i := range acked {
		b := img[i*slot : (i+1)*slot]
		if want := bytes.Repeat([]byte{byte(i%255 + 1)}, slot); !bytes.Equal(b, want) {
			t.Errorf("acknowledged write %d (offset %d) is not durable: first byte %#x, want %#x", i, i*slot, b[0], want[0])
		}
	}
	if !bytes.Equal(img[96*m:100*m], bytes.Repeat([]byte{0x5a}, 4*m)) {
		t.Error("data flushed before the SIGTERM is damaged")
	}
	if !bytes.Equal(img[100*m:], make([]byte, len(img)-100*m)) {
		t.Error("bytes past everything written are not zero")
	}
	r.StopOK()
}

// TestUnflushedWritesDurableAfterSIGTERM: clients write and disconnect
// without FLUSH (nbdcopy without --flush; qemu-io with cache=unsafe, which
// never sends one), and serve is sent SIGTERM at once: it flushes on the way
// out, so a later read-only serve with an empty cache sees every byte.
func TestUnflushedWritesDurableAfterSIGTERM(t *testing.T) {
	const m = 1 << 20
	vol := volURL(filePool(t), "noflush")
	s := startServe(t, vol, "--create", "--size", "64M")
	uri := s.URI("noflush")
	src, _ := randomImage(t, t.TempDir(), 30*m+12345)
	mustRun(t, "nbdcopy", src, uri)
	// A small unaligned write that stays in the open segment: serve seals
	// an idle segment only after a second.
	qemuIO(t, uri, []string{"-t", "unsafe"}, fmt.Sprintf("write -P 0x3c %d 1000", 40*m+777))
	s.StopOK()

	want, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	want = append(want, make([]byte, 64*m-len(want))...)
	copy(want[40*m+777:], bytes.Repeat([]byte{0x3c}, 1000))
	r := startServe(t, "--read-only", vol)
	got, err := os.ReadFile(copyOut(t, r.URI("noflush")))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("writes never flushed by the client were lost: the volume differs at byte %d", firstDiff(got, want))
	}
	r.StopOK()
}

// TestServeBadInput: bad command lines and conflicts make serve exit
// non-zero, before printing "ready", with a message naming the problem.
func TestServeBadInput(t *testing.T) {
	dir := t.TempDir()
	pool := "file://" + filepath.Join(dir, "pool")
	createVolume(t, volURL(pool, "a"), "8M")
	other := "file://" + filepath.Join(dir, "other")
	other2 := "file://" + filepath.Join(dir, "other2")
	certDir := t.TempDir()

	// A running serve, for the socket and cache conflicts.
	busy := startServe(t, volURL(pool, "a"))

	type tc struct {
		name string
		args []string // after "serve"
		want string   // substring of stderr
		// what must not exist afterwards (side effects of a refused command)
		absent string
	}
	sock := func() string { return "unix:" + filepath.Join(t.TempDir(), "s.sock") }
	cache := func() string { return filepath.Join(t.TempDir(), "cache") }
	cases := []tc{
		{"no arguments", nil, "expected at least one volume URL", ""},
		{"not a URL", []string{"not-a-url"}, "no scheme", ""},
		{"unknown scheme", []string{"ftp://host/pool/v"}, `unknown scheme "ftp"`, ""},
		{"another unknown scheme", []string{"sftp://host/pool/v"}, `unknown scheme "sftp"`, ""},
		{"no volume name", []string{pool + "/"}, "no volume name", ""},
		{"invalid volume name", []string{pool + "/bad%20name"}, "invalid volume name", ""},
		{"create without size", []string{"--create", volURL(pool, "b")}, "--create needs --size", filepath.Join(dir, "pool", "names", "b")},
		{"bad size", []string{"--create", "--size", "lots", volURL(pool, "b")}, "--size", filepath.Join(dir, "pool", "names", "b")},
		{"missing volume", []string{volURL(pool, "missing")}, `volume not found: "missing"`, filepath.Join(dir, "pool", "names", "missing")},
		{"missing pool", []string{volURL(other, "v")}, "no urldisk pool", filepath.Join(dir, "other", "names")},
		{"duplicate name", []string{"--create", "--size", "8M", volURL(pool, "a"), volURL(other2, "a")}, `two volumes named "a"`, filepath.Join(dir, "other2")},
		{"same volume twice", []string{volURL(pool, "a"), volURL(pool, "a")}, `two volumes named "a"`, ""},
		{"bad listen spec", []string{"--listen", "bogus", volURL(pool, "a")}, "want unix:/path or tcp:host:port", ""},
		{"socket in use", []string{"--listen", "unix:" + busy.Socket, volURL(pool, "a")}, "in use by a running server", ""},
		{"cache in use", []string{"--cache", busy.CacheDir, volURL(pool, "a")}, "another urldisk process uses it", ""},
		{"bad cache size", []string{"--cache-size", "12Q", volURL(pool, "a")}, "--cache-size", ""},
		{"tls cert without key", []string{"--tls-cert", filepath.Join(certDir, "c.pem"), volURL(pool, "a")}, "--tls-cert and --tls-key go together", ""},
		{"tls files missing", []string{"--tls-cert", filepath.Join(certDir, "c.pem"), "--tls-key", filepath.Join(certDir, "k.pem"), volURL(pool, "a")}, "TLS key pair", ""},
		{"unknown flag", []string{"--no-such-flag", volURL(pool, "a")}, "unknown flag", ""},
	}
	for _, c := range cases {
		t.Run(strings.ReplaceAll(c.name, " ", "_"), func(t *testing.T) {
			args := []string{"serve"}
			if !containsFlag(c.args, "--listen") {
				args = append(args, "--listen", sock())
			}
			if !containsFlag(c.args, "--cache") {
				args = append(args, "--cache", cache(), "--cache-size", "64M")
			}
			args = append(args, c.args...)
			r := runServeBriefly(t, args...)
			if r.code == 0 || r.code == -1 {
				t.Fatalf("want a non-zero exit:\n%s", r)
			}
			if strings.Contains(r.stdout, "ready") {
				t.Errorf("serve printed ready:\n%s", r)
			}
			if !strings.Contains(r.stderr, c.want) {
				t.Errorf("stderr does not mention %q:\n%s", c.want, r)
			}
			if strings.Contains(r.stderr, "panic") {
				t.Errorf("serve panicked:\n%s", r)
			}
			if c.absent != "" {
				if _, err := os.Stat(c.absent); err == nil {
					t.Errorf("the refused command created %s", c.absent)
				}
			}
		})
	}
	// The conflicts did not disturb the running serve.
	qemuIO(t, busy.URI("a"), nil, "write -P 0x61 0 64k", "flush", "read -P 0x61 0 64k")
	if strings.Contains(busy.Stderr(), "FENCED") {
		t.Errorf("the running serve was fenced by a refused command:\n%s", busy.Stderr())
	}
	busy.StopOK()
}

func containsFlag(args []string, flag string) bool {
	for _, a := range args {
		if a == flag || strings.HasPrefix(a, flag+"=") {
			return true
		}
	}
	return false
}

// runServeBriefly runs urldisk with args, SIGTERMing it if it is still
// running after 20 s (a bad command line must fail at once).
func runServeBriefly(t *testing.T, args ...string) result {
	t.Helper()
	cmd := exec.Command(urldiskBin, args...)
	cmd.Dir = t.TempDir()
	cmd.Env = append(os.Environ(), "XDG_RUNTIME_DIR="+newHost(t).runtimeDir)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var err error
	select {
	case err = <-done:
	case <-time.After(20 * time.Second):
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err = <-done:
		case <-time.After(30 * time.Second):
			cmd.Process.Kill()
			err = <-done
		}
		err = fmt.Errorf("still running after 20s: %v", err)
	}
	r := result{cmdline: "urldisk " + strings.Join(args, " "), stdout: stdout.String(), stderr: stderr.String(), code: -1, err: err}
	if cmd.ProcessState != nil && !strings.HasPrefix(fmt.Sprint(err), "still running") {
		r.code = cmd.ProcessState.ExitCode()
	}
	return r
}

// TestTwoWritersFence: a second read-write serve of a volume (on another
// host) fences the first. The first one's next flush fails, its log says
// FENCED, and it exits non-zero on SIGTERM (writes it acknowledged were
// lost); the second serves the data flushed before the takeover, not the
// fenced writer's later write. It runs on every backend of the
// compatibility matrix (docs/object-stores.md): each server starts inside
// its subtest, which sets the environment serve inherits.
func TestTwoWritersFence(t *testing.T) {
	for _, bk := range []struct {
		name string
		pool func(t *testing.T) string
	}{
		{"file", func(t *testing.T) string { return filePool(t) }},
		{"versitygw", func(t *testing.T) string { return s3server.Start(t).URL }},
		{"minio", func(t *testing.T) string { return s3server.StartMinIO(t).URL }},
		{"fake-gcs-server", func(t *testing.T) string { return gcsserver.Start(t).NewBucket(t) }},
		{"azurite", func(t *testing.T) string { return azureserver.Start(t).NewBucket(t) }},
	} {
		t.Run(bk.name, func(t *testing.T) { twoWritersFence(t, bk.pool(t)) })
	}
}

func twoWritersFence(t *testing.T, pool string) {
	vol := volURL(pool, "shared")
	a := startServe(t, vol, "--create", "--size", "64M")
	qemuIO(t, a.URI("shared"), nil, "write -P 0x01 0 1M", "flush")

	b := startServe(t, vol)
	if !b.StderrHas("attached read-write") {
		t.Errorf("second serve did not attach read-write:\n%s", b.Stderr())
	}

	// The first serve's write lands in memory (-t writeback: no FUA; qemu-io
	// defaults to writethrough); its flush finds the fence.
	r := run(t, "qemu-io", "-f", "raw", "-t", "writeback", "-c", "write -P 0x02 0 64k", "-c", "flush", a.URI("shared"))
	// (qemu-io's flush command fails silently, with exit status 1.)
	if r.code != 1 || !strings.Contains(r.stdout, "wrote 65536/65536") {
		t.Errorf("on the fenced serve, want the write accepted and the flush failed:\n%s", r)
	}
	if !a.StderrHas("FENCED") {
		t.Errorf("the fenced serve's log does not say FENCED:\n%s", a.Stderr())
	}
	if !a.StderrHas("errno=ESHUTDOWN type=3") { // NBD_CMD_FLUSH
		t.Errorf("the fenced serve did not answer the flush with ESHUTDOWN:\n%s", a.Stderr())
	}
	// Later requests fail too.
	if r := run(t, "qemu-io", "-f", "raw", "-r", "-c", "read 0 4k", a.URI("shared")); r.code == 0 {
		t.Errorf("read on the fenced serve succeeded:\n%s", r)
	}
	a.expectFailure = true
	if code := a.Stop(); code == 0 {
		t.Errorf("fenced serve exited 0 after losing acknowledged writes; want non-zero")
	} else if !strings.Contains(strings.ToLower(a.Stderr()), "fenced") {
		t.Errorf("fenced serve's exit message does not mention fencing:\n%s", a.Stderr())
	}

	// The new writer has the flushed data, not the fenced write, and works.
	qemuIO(t, b.URI("shared"), nil, "read -P 0x01 0 1M", "write -P 0x03 1M 64k", "flush")
	if strings.Contains(b.Stderr(), "FENCED") {
		t.Errorf("the second serve was fenced:\n%s", b.Stderr())
	}
	b.StopAndDropCache()
	c := startServe(t, "--read-only", vol)
	qemuIO(t, c.URI("shared"), []string{"-r"}, "read -P 0x01 0 1M", "read -P 0x03 1M 64k")
	c.StopOK()
}

// TestSecondWriterSameHostRefused: on one host, a second read-write serve
// of a volume already served read-write is refused (serve keeps a control
// socket per volume in $XDG_RUNTIME_DIR) — and refusing it must not fence
// the running one.
func TestSecondWriterSameHostRefused(t *testing.T) {
	h := newHost(t)
	vol := volURL(filePool(t), "one")
	a := startServeOn(t, h, vol, "--create", "--size", "16M")
	qemuIO(t, a.URI("one"), nil, "write -P 0x0a 0 64k", "flush")

	b := launchServe(t, h, vol)
	if code := b.Wait(time.Minute); code == 0 || code == -1 {
		t.Fatalf("second read-write serve on the same host: exit %d, want a refusal", code)
	}
	b.expectFailure = true
	if !strings.Contains(b.Stderr(), "served by another process on this host") {
		t.Errorf("refusal does not say why:\n%s", b.Stderr())
	}
	// The first serve still works, flushes included.
	qemuIO(t, a.URI("one"), nil, "write -P 0x0b 64k 64k", "flush", "read -P 0x0a 0 64k")
	if strings.Contains(a.Stderr(), "FENCED") {
		t.Errorf("the refused second serve fenced the running one:\n%s", a.Stderr())
	}
	a.StopOK()
}
