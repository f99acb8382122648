package volume

// Shared plumbing for the tests that run the engine in real child processes
// (crash_test.go, takeover_test.go) and for the in-process fault tests: the
// helper-process entry point, a child process handle, a gate that holds
// object-store operations, and small read/fill helpers.

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/urldisk/urldisk/internal/testutil/lockedbuf"

	"github.com/urldisk/urldisk/internal/blockdev"
	"github.com/urldisk/urldisk/internal/cache"
	"github.com/urldisk/urldisk/internal/objstore"
)

// Environment of a helper process.
const (
	helperModeEnv  = "URLDISK_HELPER_MODE" // "crash" or "cmd"
	helperPoolEnv  = "URLDISK_HELPER_POOL"
	helperVolEnv   = "URLDISK_HELPER_VOL"
	helperSeedEnv  = "URLDISK_HELPER_SEED"
	helperCacheEnv = "URLDISK_HELPER_CACHE"
	helperStartEnv = "URLDISK_HELPER_START"

	// helperTag prefixes every protocol line a helper prints on stdout, so
	// stray output cannot be mistaken for protocol.
	helperTag = "URLDISK "
)

// TestHelperWriterProcess is the entry point of the child processes that
// the crash and takeover tests start (os.Args[0] -test.run=^TestHelperWriterProcess$
// with URLDISK_HELPER_MODE set). Run directly it has nothing to do: the
// assertions live in the parent tests that drive it.
func TestHelperWriterProcess(t *testing.T) {
	mode := os.Getenv(helperModeEnv)
	if mode == "" {
		return
	}
	var code int
	switch mode {
	case "crash":
		code = crashWriterMain()
	case "cmd":
		code = cmdMain()
	default:
		fmt.Fprintf(os.Stderr, "unknown helper mode %q\n", mode)
		code = 2
	}
	os.Exit(code)
}

// helperLogger logs warnings and errors of a helper process to its stderr,
// which the parent shows when a test fails.
func helperLogger() *slog.Logger {
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

// helperOpenPool opens the pool named by the helper environment.
func helperOpenPool(ctx context.Context, log *slog.Logger) (*Pool, error) {
	store, err := objstore.Open(ctx, os.Getenv(helperPoolEnv))
	if err != nil {
		return nil, err
	}
	return OpenPool(ctx, store, PoolOptions{Logger: log})
}

// cmdMain is a helper process driven line by line over stdin. Commands:
//
//	open                  attach read-write      -> OK epoch=N
//	write OFF LEN BYTE    write LEN copies of BYTE (hex) at OFF
//	flush | close
//	read OFF LEN BYTE     read and compare every byte with BYTE
//	exit
//
// Each command gets exactly one reply line: "OK ..." or
// "ERR fenced=<errors.Is(err, blockdev.ErrFenced)> <error text>".
func cmdMain() int {
	ctx := context.Background()
	log := helperLogger()
	pool, err := helperOpenPool(ctx, log)
	if err != nil {
		fmt.Printf(helperTag+"ERR fenced=false open pool: %v\n", err)
		return 1
	}
	name := os.Getenv(helperVolEnv)
	var v *Volume
	reply := func(err error, ok string) {
		if err != nil {
			fmt.Printf(helperTag+"ERR fenced=%t %s\n", errors.Is(err, blockdev.ErrFenced), strings.ReplaceAll(err.Error(), "\n", " "))
			return
		}
		fmt.Printf(helperTag+"OK %s\n", ok)
	}
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 0 {
			continue
		}
		var off, n int64
		var b uint64
		if len(f) == 4 {
			off, _ = strconv.ParseInt(f[1], 10, 64)
			n, _ = strconv.ParseInt(f[2], 10, 64)
			b, _ = strconv.ParseUint(f[3], 16, 8)
		}
		if f[0] != "open" && f[0] != "exit" && v == nil {
			reply(errors.New("not open"), "")
			continue
		}
		switch f[0] {
		case "open":
			v, err = pool.Open(ctx, name, Options{SegmentBytes: 64 << 10, Uploads: 8, IdleFlush: -1, Logger: log})
			if err != nil {
				reply(err, "")
			} else {
				reply(nil, fmt.Sprintf("epoch=%d", v.Epoch()))
			}
		case "write":
			reply(v.WriteAt(ctx, bytes.Repeat([]byte{byte(b)}, int(n)), off), "")
		case "flush":
			reply(v.Flush(ctx), "")
		case "read":
			p := make([]byte, n)
			err := v.ReadAt(ctx, p, off)
			if err == nil {
				if j := firstNot(p, byte(b)); j >= 0 {
					err = fmt.Errorf("mismatch at byte %d: got %#x, want %#x", off+int64(j), p[j], b)
				}
			}
			reply(err, "")
		case "close":
			reply(v.Close(ctx), "")
		case "exit":
			return 0
		default:
			reply(fmt.Errorf("unknown command %q", f[0]), "")
		}
	}
	return 0
}

// firstNot returns the index of the first byte of p that is not b, or -1.
func firstNot(p []byte, b byte) int {
	for i, c := range p {
		if c != b {
			return i
		}
	}
	return -1
}

// proc is a running helper process.
type proc struct {
	t      *testing.T
	name   string
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	lines  chan string // protocol lines (tag stripped); closed at EOF
	stderr *lockedbuf.Buffer
	waited bool
}

// startProc starts this test binary as a helper process in mode with the
// extra environment env (KEY=value). It is killed when the test ends.
func startProc(t *testing.T, name, mode string, env ...string) *proc {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperWriterProcess$", "-test.count=1", "-test.timeout=3m")
	cmd.Env = append(append(os.Environ(), helperModeEnv+"="+mode), env...)
	// The child dies with the test binary even if the test is killed.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	p := &proc{t: t, name: name, cmd: cmd, lines: make(chan string, 1<<16), stderr: &lockedbuf.Buffer{}}
	cmd.Stderr = p.stderr
	var err error
	if p.stdin, err = cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start helper %s: %v", name, err)
	}
	go func() {
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			if rest, ok := strings.CutPrefix(sc.Text(), helperTag); ok {
				p.lines <- rest
			}
		}
		close(p.lines)
	}()
	t.Cleanup(func() {
		if !p.waited {
			p.kill()
		}
		if t.Failed() {
			t.Logf("helper %s stderr:\n%s", p.name, p.stderr.String())
		}
	})
	return p
}

// kill SIGKILLs the process, drains its remaining output into the returned
// slice and reaps it.
func (p *proc) kill() []string {
	_ = p.cmd.Process.Kill()
	return p.wait()
}

// dump makes a stuck child print its goroutines (SIGQUIT), reaps it and
// returns its stderr, for the failure message.
func (p *proc) dump() string {
	_ = p.cmd.Process.Signal(syscall.SIGQUIT)
	done := make(chan struct{})
	go func() {
		for range p.lines {
		}
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = p.cmd.Process.Kill()
		<-done
	}
	p.waited = true
	_ = p.cmd.Wait()
	return p.stderr.String()
}

// wait drains the remaining output and reaps the process.
func (p *proc) wait() []string {
	var rest []string
	timeout := time.After(30 * time.Second)
	for {
		select {
		case l, ok := <-p.lines:
			if !ok {
				if !p.waited {
					p.waited = true
					_ = p.cmd.Wait()
				}
				return rest
			}
			rest = append(rest, l)
		case <-timeout:
			p.t.Fatalf("helper %s: output did not end within 30s", p.name)
		}
	}
}

// next returns the next protocol line, failing the test on EOF or timeout.
func (p *proc) next(timeout time.Duration) string {
	p.t.Helper()
	select {
	case l, ok := <-p.lines:
		if !ok {
			p.t.Fatalf("helper %s exited unexpectedly; stderr:\n%s", p.name, p.stderr.String())
		}
		return l
	case <-time.After(timeout):
		p.t.Fatalf("helper %s: no reply within %v; stderr and goroutines:\n%s", p.name, timeout, p.dump())
	}
	return ""
}

// reply is a parsed cmd-mode answer.
type reply struct {
	ok     bool
	fenced bool   // errors.Is(err, blockdev.ErrFenced) in the child
	text   string // "epoch=N" or the error text
}

// call sends one cmd-mode command and returns its reply.
func (p *proc) call(command string) reply {
	p.t.Helper()
	if _, err := fmt.Fprintln(p.stdin, command); err != nil {
		p.t.Fatalf("helper %s: send %q: %v", p.name, command, err)
	}
	l := p.next(60 * time.Second)
	if rest, ok := strings.CutPrefix(l, "OK"); ok {
		return reply{ok: true, text: strings.TrimSpace(rest)}
	}
	if rest, ok := strings.CutPrefix(l, "ERR fenced="); ok {
		flag, text, _ := strings.Cut(rest, " ")
		return reply{fenced: flag == "true", text: text}
	}
	p.t.Fatalf("helper %s: bad reply %q to %q", p.name, l, command)
	return reply{}
}

// exit tells a cmd-mode helper to exit and reaps it.
func (p *proc) exit() {
	p.t.Helper()
	if _, err := fmt.Fprintln(p.stdin, "exit"); err != nil {
		p.t.Fatalf("helper %s: send exit: %v", p.name, err)
	}
	if rest := p.wait(); len(rest) > 0 {
		p.t.Fatalf("helper %s: unexpected output before exit: %q", p.name, rest)
	}
	if !p.cmd.ProcessState.Success() {
		p.t.Fatalf("helper %s exited with %v; stderr:\n%s", p.name, p.cmd.ProcessState, p.stderr.String())
	}
}

// must sends command and fails the test unless it succeeds.
func (p *proc) must(command string) reply {
	p.t.Helper()
	r := p.call(command)
	if !r.ok {
		p.t.Fatalf("helper %s: %q failed: %s", p.name, command, r.text)
	}
	return r
}

// gate holds the calls that pass through it while it is closed.
type gate struct {
	mu      sync.Mutex
	ch      chan struct{} // nil: open
	waiting int
}

func (g *gate) close() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.ch == nil {
		g.ch = make(chan struct{})
	}
}

func (g *gate) open() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.ch != nil {
		close(g.ch)
		g.ch = nil
	}
}

func (g *gate) pass() {
	g.mu.Lock()
	ch := g.ch
	if ch != nil {
		g.waiting++
	}
	g.mu.Unlock()
	if ch != nil {
		<-ch
		g.mu.Lock()
		g.waiting--
		g.mu.Unlock()
	}
}

// waitHeld waits until n calls are held at the gate.
func (g *gate) waitHeld(t *testing.T, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		g.mu.Lock()
		w := g.waiting
		g.mu.Unlock()
		if w >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("only %d of %d calls reached the gate", w, n)
		}
		time.Sleep(time.Millisecond)
	}
}

// isLogKey reports whether key is a log record of some volume.
func isLogKey(key string) bool { return strings.Contains(key, "/log/") }

// readAll reads the whole volume.
func readAll(t *testing.T, v *Volume) []byte {
	t.Helper()
	p := make([]byte, v.Size())
	if err := v.ReadAt(context.Background(), p, 0); err != nil {
		t.Fatalf("read whole volume: %v", err)
	}
	return p
}

// expectRegions checks that each region of v reads as its byte.
type region struct {
	off, n int64
	b      byte
}

func expectRegions(t *testing.T, who string, v *Volume, regions []region) {
	t.Helper()
	for _, r := range regions {
		p := make([]byte, r.n)
		if err := v.ReadAt(context.Background(), p, r.off); err != nil {
			t.Fatalf("%s: read [%d,+%d): %v", who, r.off, r.n, err)
		}
		if i := firstNot(p, r.b); i >= 0 {
			t.Fatalf("%s: byte %d is %#x, want %#x (region [%d,+%d))", who, r.off+int64(i), p[i], r.b, r.off, r.n)
		}
	}
}

// openCacheOrNil opens a cache in dir when dir is not empty.
func openCacheOrNil(dir string) (*cache.Cache, error) {
	if dir == "" {
		return nil, nil
	}
	return cache.Open(dir, 2<<20, cache.Options{IndexSyncInterval: 50 * time.Millisecond})
}
