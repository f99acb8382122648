package e2efleet

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/urldisk/urldisk/internal/testutil/lockedbuf"

	"github.com/urldisk/urldisk/internal/fleet"
	"github.com/urldisk/urldisk/internal/fleet/etcdcoord"
	"github.com/urldisk/urldisk/internal/objstore"
	"github.com/urldisk/urldisk/internal/testutil/etcdcluster"
	"github.com/urldisk/urldisk/internal/testutil/s3server"
)

// Binaries TestMain builds; read-only afterwards.
var (
	urldiskBin string
	counterBin string
)

func TestMain(m *testing.M) { os.Exit(testMain(m)) }

func testMain(m *testing.M) int {
	dir, err := os.MkdirTemp("", "urldisk-e2efleet-bin-")
	if err != nil {
		fmt.Fprintf(os.Stderr, "e2efleet: %v\n", err)
		return 1
	}
	defer os.RemoveAll(dir)
	root, err := moduleRoot()
	if err != nil {
		fmt.Fprintf(os.Stderr, "e2efleet: %v\n", err)
		return 1
	}
	urldiskBin = filepath.Join(dir, "urldisk")
	counterBin = filepath.Join(dir, "counter")
	for pkg, out := range map[string]string{"./cmd/urldisk": urldiskBin, "./internal/e2efleet/counter": counterBin} {
		cmd := exec.Command(goTool(), "build", "-o", out, pkg)
		cmd.Dir = root
		if b, err := cmd.CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "e2efleet: go build %s: %v\n%s", pkg, err, b)
			return 1
		}
	}
	return m.Run()
}

// goTool is the go command: from PATH, else $GOROOT/bin (go test sets
// GOROOT for the test binary).
func goTool() string {
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	if r := os.Getenv("GOROOT"); r != "" {
		return filepath.Join(r, "bin", "go")
	}
	return "go"
}

// moduleRoot is the directory of go.mod, from `go env GOMOD`.
func moduleRoot() (string, error) {
	out, err := exec.Command(goTool(), "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w (is the go command on PATH?)", err)
	}
	mod := strings.TrimSpace(string(out))
	if mod == "" || mod == os.DevNull {
		return "", fmt.Errorf("go env GOMOD = %q: not inside the module", mod)
	}
	return filepath.Dir(mod), nil
}

// Test heartbeat settings: fast, so failover takes about two seconds.
const (
	hbInterval = 200 * time.Millisecond
	hbTimeout  = 2 * time.Second
)

// env is a fleet on this machine: one versitygw bucket as pool and fleet
// store, and agents started as separate processes.
type env struct {
	t         testing.TB
	dir       string
	pool      string           // pool URL, also the fleet URL
	s3        *s3server.Server // the versitygw holding pool and fleet (tests SIGSTOP it)
	token     string
	tokenFile string
	store     objstore.Store
	fleet     fleet.Coord
	// coord is the etcd URL agents and commands coordinate through; ""
	// for the fleet store.
	coord string
	// etcd is the cluster coord names (nil on the fleet store).
	etcd *etcdcluster.Cluster

	mu     sync.Mutex
	agents map[string]*agentProc
}

// agentProc is a running `urldisk agent`.
type agentProc struct {
	id       string
	api      string
	cmd      *exec.Cmd
	out      *lockedbuf.Buffer
	exited   chan struct{}
	stateDir string
}

func newEnv(t testing.TB) *env {
	t.Helper()
	s3 := s3server.Start(t)
	// Short paths: unix socket paths are limited to 108 bytes.
	dir, err := os.MkdirTemp("", "udf")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	e := &env{t: t, dir: dir, pool: s3.URL, s3: s3, token: "fleet-test-token-" + strconv.Itoa(os.Getpid()), agents: map[string]*agentProc{}}
	e.tokenFile = filepath.Join(dir, "token")
	if err := os.WriteFile(e.tokenFile, []byte(e.token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	e.mustCLI("pool", "init", e.pool)
	ctx := context.Background()
	if e.store, err = objstore.Open(ctx, e.pool); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.store.Close() })
	e.fleet = fleet.New(e.store, nil)
	t.Cleanup(e.stopAll)
	return e
}

// newEtcdEnv is newEnv with the agents and commands coordinating through
// a real 3-member etcd cluster on loopback (the pool stays on versitygw).
func newEtcdEnv(t testing.TB) *env {
	t.Helper()
	e := newEnv(t)
	e.etcd = etcdcluster.Start(t)
	e.coord = e.etcd.URL("fleet")
	c, err := etcdcoord.Open(context.Background(), e.coord, etcdcoord.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	e.fleet = c
	return e
}

// volumeURL is the URL of volume name in the pool.
func (e *env) volumeURL(name string) string {
	before, query, _ := strings.Cut(e.pool, "?")
	return before + "/" + name + "?" + query
}

// startAgent starts agent id with its own cache, state directory and port,
// and waits until it is ready.
func (e *env) startAgent(id string, extra ...string) *agentProc {
	e.t.Helper()
	a := &agentProc{id: id, out: &lockedbuf.Buffer{}, exited: make(chan struct{}), stateDir: filepath.Join(e.dir, id)}
	args := append([]string{"agent", "--id", id, "--fleet", e.pool, "--token-file", e.tokenFile,
		"--cache", filepath.Join(e.dir, id+"-cache"), "--cache-size", "256M", "--state-dir", a.stateDir,
		"--listen", "tcp:127.0.0.1:0",
		"--heartbeat-interval", hbInterval.String(), "--heartbeat-timeout", hbTimeout.String(),
		"--stop-grace", "5s", "--stop-wait", "10s"}, extra...)
	if e.coord != "" {
		args = append(args, "--coord", e.coord)
	}
	a.cmd = exec.Command(urldiskBin, args...)
	a.cmd.Stdout, a.cmd.Stderr = a.out, a.out
	// Not Pdeathsig: tests SIGSTOP and SIGKILL agents themselves; Cleanup
	// stops the rest.
	if err := a.cmd.Start(); err != nil {
		e.t.Fatalf("start agent %s: %v", id, err)
	}
	go func() { a.cmd.Wait(); close(a.exited) }()
	e.mu.Lock()
	e.agents[id] = a
	e.mu.Unlock()
	deadline := time.Now().Add(30 * time.Second)
	for {
		if i := strings.Index(a.out.String(), "ready: api "); i >= 0 {
			rest := a.out.String()[i+len("ready: api "):]
			a.api = strings.TrimSuffix(strings.Fields(rest)[0], ",")
			return a
		}
		select {
		case <-a.exited:
			e.t.Fatalf("agent %s exited before it was ready:\n%s", id, a.out.String())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("agent %s not ready after 30s:\n%s", id, a.out.String())
		}
	}
}

// signal sends sig to an agent's process.
func (e *env) signal(id string, sig syscall.Signal) {
	e.t.Helper()
	e.mu.Lock()
	a := e.agents[id]
	e.mu.Unlock()
	if err := a.cmd.Process.Signal(sig); err != nil {
		e.t.Fatalf("signal %v to agent %s: %v", sig, id, err)
	}
}

// stopAll stops every agent still running (SIGCONT first, in case one is
// frozen), SIGKILL after 30 s; on failure it logs their output.
func (e *env) stopAll() {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, a := range e.agents {
		select {
		case <-a.exited:
			continue
		default:
		}
		a.cmd.Process.Signal(syscall.SIGCONT)
		a.cmd.Process.Signal(syscall.SIGTERM)
	}
	for _, a := range e.agents {
		select {
		case <-a.exited:
		case <-time.After(30 * time.Second):
			a.cmd.Process.Kill()
			<-a.exited
		}
		if e.t.Failed() {
			e.t.Logf("agent %s output:\n%s", a.id, a.out.String())
		}
	}
}

// cliResult is a finished urldisk command.
type cliResult struct {
	args           []string
	stdout, stderr string
	code           int
}

func (r cliResult) String() string {
	return fmt.Sprintf("$ urldisk %s\nexit %d\nstdout:\n%s\nstderr:\n%s", strings.Join(r.args, " "), r.code, r.stdout, r.stderr)
}

// cli runs urldisk with the fleet and token in its environment.
func (e *env) cli(args ...string) cliResult {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, urldiskBin, args...)
	cmd.Env = append(os.Environ(), "URLDISK_FLEET="+e.pool, "URLDISK_TOKEN="+e.token, "URLDISK_COORD="+e.coord)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.Run()
	r := cliResult{args: args, stdout: stdout.String(), stderr: stderr.String(), code: -1}
	if cmd.ProcessState != nil {
		r.code = cmd.ProcessState.ExitCode()
	}
	return r
}

func (e *env) mustCLI(args ...string) string {
	e.t.Helper()
	r := e.cli(args...)
	if r.code != 0 {
		e.t.Fatalf("command failed:\n%s", r)
	}
	return r.stdout
}

// waitFor polls cond every 50 ms until it holds or timeout passes.
func (e *env) waitFor(what string, timeout time.Duration, cond func() bool) {
	e.t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			e.t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// placement returns a machine's newest placement.
func (e *env) placement(name string) *fleet.Placement {
	e.t.Helper()
	p, err := e.fleet.Latest(context.Background(), name)
	if err != nil {
		e.t.Fatal(err)
	}
	return p
}

// heartbeat returns an agent's last heartbeat.
func (e *env) heartbeat(id string) *fleet.Heartbeat {
	e.t.Helper()
	hbs, err := e.fleet.Heartbeats(context.Background())
	if err != nil {
		e.t.Fatal(err)
	}
	for _, h := range hbs {
		if h.Host == id {
			return h
		}
	}
	return nil
}

// api sends an HTTP request to an agent with the given Authorization
// header value ("" for none) and returns the status and body.
func api(t testing.TB, method, url, auth, body string) (int, string) {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		t.Fatal(err)
	}
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	resp, err := (&http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{Proxy: nil}}).Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// ackLine is one line of the counter's acks file.
type ackLine struct {
	kind   string // start, ack, error
	value  uint64 // ack: the value; start: the header value it read
	writer string
	host   string
	pid    int
	text   string
}

// readAcks parses the counter's acks file.
func readAcks(t testing.TB, path string) []ackLine {
	t.Helper()
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []ackLine
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) < 2 {
			continue // a line being written
		}
		l := ackLine{kind: fs[0], writer: fs[1], text: sc.Text()}
		switch {
		case l.kind == "ack" && len(fs) == 4:
			l.value, _ = strconv.ParseUint(fs[1], 10, 64)
			l.writer, l.host = fs[2], fs[3]
		case l.kind == "start" && len(fs) == 5:
			l.host = fs[2]
			l.pid, _ = strconv.Atoi(fs[3])
			l.value, _ = strconv.ParseUint(fs[4], 10, 64)
		case l.kind == "error":
		default:
			continue
		}
		out = append(out, l)
	}
	return out
}

// infoEpoch returns the volume's epoch as `urldisk info --json` shows it.
func (e *env) infoEpoch(volURL string) uint64 {
	e.t.Helper()
	var in struct {
		Epoch uint64 `json:"epoch"`
	}
	if err := json.Unmarshal([]byte(e.mustCLI("info", "--json", volURL)), &in); err != nil {
		e.t.Fatalf("urldisk info --json: %v", err)
	}
	return in.Epoch
}
