package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/urldisk/urldisk/internal/fleet"
	"github.com/urldisk/urldisk/internal/objstore"
	"github.com/urldisk/urldisk/internal/objstore/faultstore"
	"github.com/urldisk/urldisk/internal/testutil/nbdclient"
	"github.com/urldisk/urldisk/internal/volume"
)

// The test binary doubles as a machine's workload: with helperEnv set in
// its environment it connects to $URLDISK_NBD_URI, writes helperBytes of a
// pattern at offset 0, flushes, reads them back, prints "helper ok" and
// waits to be stopped.
const (
	helperEnv   = "URLDISK_AGENT_TEST_HELPER"
	helperBytes = 1 << 20
	// testToken is the in-process agents' API token (MinTokenLen or more).
	testToken = "agent-test-token-0123456789"
)

func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) != "" {
		os.Exit(helperMain())
	}
	if os.Getenv(probeEnv) != "" {
		os.Exit(probeMain())
	}
	os.Exit(m.Run())
}

func helperMain() int {
	c, err := nbdclient.Dial(os.Getenv("URLDISK_NBD_URI"), 10*time.Second)
	if err != nil {
		fmt.Println("helper:", err)
		return 1
	}
	want := bytes.Repeat([]byte(os.Getenv(helperEnv)), helperBytes/len(os.Getenv(helperEnv)))
	if os.Getenv("URLDISK_AGENT_TEST_WRITE") != "" {
		if err := c.WriteAt(want, 0); err != nil {
			fmt.Println("helper:", err)
			return 1
		}
		if err := c.Flush(); err != nil {
			fmt.Println("helper:", err)
			return 1
		}
	}
	got := make([]byte, len(want))
	if err := c.ReadAt(got, 0); err != nil || !bytes.Equal(got, want) {
		fmt.Println("helper: read back failed:", err)
		return 1
	}
	fmt.Println("helper ok")
	time.Sleep(time.Hour)
	return 0
}

// world is a fleet in temp directories: a file:// store for the fleet and
// the pool, and agents running in this process.
type world struct {
	t       *testing.T
	dir     string
	poolURL string
	store   objstore.Store
	fleet   *fleet.Fleet
	ops     *fleet.Ops
}

func newWorld(t *testing.T) *world {
	t.Helper()
	dir, err := os.MkdirTemp("", "uda") // short: socket paths
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	w := &world{t: t, dir: dir, poolURL: "file://" + filepath.Join(dir, "pool")}
	ctx := context.Background()
	if w.store, err = objstore.Open(ctx, w.poolURL); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.store.Close() })
	if _, err := volume.InitPool(ctx, w.store, volume.PoolOptions{}); err != nil {
		t.Fatal(err)
	}
	w.fleet = fleet.New(w.store, nil)
	w.ops = &fleet.Ops{Fleet: w.fleet, By: "test", ResolveVolume: ResolveVolume}
	return w
}

func (w *world) createVolume(name string) string {
	w.t.Helper()
	p, err := volume.OpenPool(context.Background(), w.store, volume.PoolOptions{})
	if err != nil {
		w.t.Fatal(err)
	}
	if _, err := p.Create(context.Background(), name, volume.CreateOptions{Size: 16 << 20}); err != nil {
		w.t.Fatal(err)
	}
	return w.poolURL + "/" + name
}

// testAgent is an Agent running in this process.
type testAgent struct {
	*Agent
	api    string
	cancel context.CancelFunc
	done   chan error
	logs   *bytes.Buffer
}

type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// startAgent runs an agent on store (the world's, unless given).
func (w *world) startAgent(id string, store objstore.Store) *testAgent {
	w.t.Helper()
	return w.startAgentWith(id, store, nil)
}

// startAgentWith is startAgent with tweak (if not nil) applied to the
// agent's Config first.
func (w *world) startAgentWith(id string, store objstore.Store, tweak func(*Config)) *testAgent {
	w.t.Helper()
	if store == nil {
		store = w.store
	}
	logs := &bytes.Buffer{}
	lw := &lockedWriter{w: logs}
	cfg := Config{
		ID: id, Fleet: store, CacheDir: filepath.Join(w.dir, id+"-cache"), CacheSize: 64 << 20,
		StateDir: filepath.Join(w.dir, id), Listen: "tcp:127.0.0.1:0", Token: testToken,
		HeartbeatInterval: 100 * time.Millisecond, HeartbeatTimeout: time.Second,
		StopGrace: 5 * time.Second, StopWait: 10 * time.Second,
		Logger: slog.New(slog.NewTextHandler(lw, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
	if tweak != nil {
		tweak(&cfg)
	}
	a, err := New(cfg)
	if err != nil {
		w.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ta := &testAgent{Agent: a, cancel: cancel, done: make(chan error, 1), logs: logs}
	ready := make(chan string, 1)
	go func() { ta.done <- a.Run(ctx, func(u string) { ready <- u }) }()
	select {
	case ta.api = <-ready:
	case err := <-ta.done:
		w.t.Fatalf("agent %s: %v", id, err)
	case <-time.After(20 * time.Second):
		w.t.Fatalf("agent %s not ready", id)
	}
	w.t.Cleanup(func() {
		ta.stop(w.t)
		if w.t.Failed() {
			lw.mu.Lock()
			w.t.Logf("agent %s log:\n%s", id, logs.String())
			lw.mu.Unlock()
		}
	})
	return ta
}

func (ta *testAgent) stop(t *testing.T) {
	ta.cancel()
	select {
	case err, ok := <-ta.done:
		if ok && err != nil {
			t.Errorf("agent %s: Run: %v", ta.cfg.ID, err)
		}
	case <-time.After(60 * time.Second):
		t.Errorf("agent %s did not stop", ta.cfg.ID)
	}
	close(ta.done)
}

// console is what machine name printed on host so far.
func (w *world) console(host, name string) string {
	out, _ := os.ReadFile(filepath.Join(w.dir, host, "machines", name, "console.log"))
	return string(out)
}

func (ta *testAgent) machine(name string) (fleet.MachineStatus, bool) {
	return ta.status(false).Machine(name)
}

// counterValue reads a counter's value.
func counterValue(c prometheus.Counter) float64 {
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		return -1
	}
	return m.GetCounter().GetValue()
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func helperSpec(t *testing.T, vol, pattern string, write bool) fleet.Spec {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	env := []string{helperEnv + "=" + pattern}
	if write {
		env = append(env, "URLDISK_AGENT_TEST_WRITE=1")
	}
	return fleet.Spec{Volume: vol, Runtime: fleet.RuntimeProcess, Args: []string{exe}, Env: env}
}

// TestMoveAndFailover: a machine moves between two in-process agents
// (ack, downtime, epoch, prefetch of its working set), then its host's
// heartbeats fail and the other agent takes it over.
func TestMoveAndFailover(t *testing.T) {
	ctx := context.Background()
	w := newWorld(t)
	vol := w.createVolume("v1")
	// b's heartbeats can be cut off.
	var cut atomic.Bool
	bStore := faultstore.New(w.store, faultstore.Hooks{Before: func(op faultstore.Op, key string) error {
		if cut.Load() && op == faultstore.OpPut && key == fleet.AgentKey("b") {
			return faultstore.ErrInjected
		}
		return nil
	}})
	a := w.startAgent("a", nil)
	b := w.startAgent("b", bStore)

	if _, err := w.ops.Run(ctx, "m", helperSpec(t, vol, "urldisk", true), "a"); err != nil {
		t.Fatal(err)
	}
	a.Reconcile()
	waitFor(t, "m running on a with I/O", func() bool {
		st, ok := a.machine("m")
		return ok && st.Phase == fleet.PhaseRunning && !st.FirstIO.IsZero()
	})
	stA, _ := a.machine("m")
	waitFor(t, "helper output on a", func() bool {
		return strings.Contains(w.console("a", "m"), "helper ok")
	})

	// Migrate a → b: a saves the pages m touched, b prefetches them into
	// its cold cache.
	p, err := w.ops.Migrate(ctx, "m", "b")
	if err != nil || p.From != "a" {
		t.Fatalf("migrate: %+v %v", p, err)
	}
	// Nobody nudges a and b: they find out by polling.
	waitFor(t, "m running on b with I/O", func() bool {
		st, ok := b.machine("m")
		return ok && st.Phase == fleet.PhaseRunning && !st.FirstIO.IsZero() && st.Version == p.Version
	})
	stB, _ := b.machine("m")
	if stB.Epoch != stA.Epoch+1 {
		t.Fatalf("epoch on b %d, on a %d: want +1", stB.Epoch, stA.Epoch)
	}
	if stB.Downtime <= 0 || stB.Downtime > 20*time.Second {
		t.Fatalf("downtime %v", stB.Downtime)
	}
	ack, err := w.fleet.GetAck(ctx, "m", p.Version)
	if err != nil || ack == nil || ack.Host != "a" || ack.StopBegan.IsZero() || ack.Epoch != stA.Epoch || ack.Error != "" {
		t.Fatalf("ack = %+v, %v", ack, err)
	}
	if _, ok := a.machine("m"); ok {
		t.Fatal("a still reports m after it moved")
	}
	tr, err := w.fleet.GetTrace(ctx, "m")
	if err != nil || tr == nil || tr.Host != "a" || len(tr.Pages) != helperBytes/tracePageSize {
		t.Fatalf("a's access trace = %+v, %v; want the %d pages the helper touched", tr, err, helperBytes/tracePageSize)
	}
	waitFor(t, "prefetch on b", func() bool {
		return counterValue(b.metrics.prefetched) == float64(len(tr.Pages))
	})
	t.Logf("migrate: downtime %v, epoch %d → %d", stB.Downtime, stA.Epoch, stB.Epoch)

	// b's heartbeats stop: a declares it dead and takes m over, without
	// waiting for an ack. b sees the placement moved and stops its copy.
	cut.Store(true)
	waitFor(t, "failover to a", func() bool {
		st, ok := a.machine("m")
		return ok && st.Phase == fleet.PhaseRunning && !st.FirstIO.IsZero()
	})
	cur, err := w.fleet.Latest(ctx, "m")
	if err != nil || cur.Reason != fleet.ReasonFailover || cur.Host != "a" || cur.From != "" || cur.By != "agent a" {
		t.Fatalf("placement after failover: %+v %v", cur, err)
	}
	waitFor(t, "b to stop its orphan", func() bool {
		_, ok := b.machine("m")
		return !ok
	})
	if n := counterValue(a.metrics.failovers); n != 1 {
		t.Fatalf("failovers metric %v", n)
	}
	cut.Store(false)
}

// TestStartFailureAndExit: a machine whose volume is missing fails with a
// clear error (and is retried); one whose process exits is reported
// exited and not restarted.
func TestStartFailureAndExit(t *testing.T) {
	ctx := context.Background()
	w := newWorld(t)
	a := w.startAgent("a", nil)
	// Bypass Ops' volume check: the placement names a missing volume.
	if _, err := w.fleet.Update(ctx, "ghost", "test", func(cur *fleet.Placement) (*fleet.Placement, error) {
		return fleet.NextRun(cur, "ghost", fleet.Spec{Volume: w.poolURL + "/nope", Runtime: fleet.RuntimeProcess, Args: []string{"true"}}, "a", time.Now())
	}); err != nil {
		t.Fatal(err)
	}
	vol := w.createVolume("v1")
	if _, err := w.ops.Run(ctx, "quick", fleet.Spec{Volume: vol, Runtime: fleet.RuntimeProcess, Args: []string{"sh", "-c", "exit 7"}}, "a"); err != nil {
		t.Fatal(err)
	}
	a.Reconcile()
	waitFor(t, "ghost failed", func() bool {
		st, ok := a.machine("ghost")
		return ok && st.Phase == fleet.PhaseFailed && strings.Contains(st.Error, "volume not found")
	})
	waitFor(t, "quick exited", func() bool {
		st, ok := a.machine("quick")
		return ok && st.Phase == fleet.PhaseExited && st.ExitCode == 7
	})
	time.Sleep(500 * time.Millisecond) // several reconcile rounds
	if st, _ := a.machine("quick"); st.Phase != fleet.PhaseExited {
		t.Fatalf("exited machine restarted: %+v", st)
	}
	if n := counterValue(a.metrics.starts.WithLabelValues("ok")); n != 1 {
		t.Fatalf("%v successful starts, want 1", n)
	}
	// Stopping, starting and removing it works.
	if _, err := w.ops.Stop(ctx, "quick"); err != nil {
		t.Fatal(err)
	}
	if _, err := w.ops.Remove(ctx, "ghost"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "ghost gone", func() bool { _, ok := a.machine("ghost"); return !ok })
}

// TestAPI checks the token and the error mapping in process.
func TestAPI(t *testing.T) {
	w := newWorld(t)
	a := w.startAgent("a", nil)
	vol := w.createVolume("v1")
	do := func(method, path, token, body string) (int, string) {
		req, _ := http.NewRequest(method, a.api+path, strings.NewReader(body))
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	run := fmt.Sprintf(`{"name":"m","spec":{"volume":%q,"runtime":"process","args":["sleep","100"]}}`, vol)
	if code, _ := do("POST", "/v1/machines", "", run); code != 401 {
		t.Fatalf("no token: %d", code)
	}
	if code, _ := do("POST", "/v1/machines", testToken+"2", run); code != 401 {
		t.Fatalf("wrong token: %d", code)
	}
	// The token is accepted only in the header, never from the URL (which
	// ends up in logs and proxies' histories).
	if code, _ := do("GET", "/v1/status?access_token="+testToken+"&token="+testToken, "", ""); code != 401 {
		t.Fatalf("token in the query string: %d, want 401", code)
	}
	if p, _ := w.fleet.Latest(context.Background(), "m"); p != nil {
		t.Fatalf("refused request wrote %+v", p)
	}
	if code, body := do("POST", "/v1/machines", testToken, run); code != 201 {
		t.Fatalf("run: %d %s", code, body)
	}
	if code, body := do("POST", "/v1/machines/m/stop", testToken, ""); code != 200 || !strings.Contains(body, `"state": "stopped"`) {
		t.Fatalf("stop: %d %s", code, body)
	}
	if code, body := do("POST", "/v1/machines/m/stop", testToken, ""); code != 200 || !strings.Contains(body, `"unchanged": true`) {
		t.Fatalf("stop again: %d %s", code, body)
	}
	c := &Client{BaseURL: a.api, Token: testToken}
	if err := c.Reconcile(context.Background()); err != nil {
		t.Fatal(err)
	}
	if st, err := c.Status(context.Background()); err != nil || st.Host != "a" {
		t.Fatalf("status: %+v %v", st, err)
	}
	var ae *APIError
	if err := (&Client{BaseURL: a.api, Token: "x"}).Reconcile(context.Background()); !errors.As(err, &ae) || ae.Status != 401 {
		t.Fatalf("client with a wrong token: %v", err)
	}
}

// TestTwinRefused: a second agent with a live agent's id refuses to run;
// after a crash (fresh heartbeat that no longer changes) a restarted agent
// waits out the timeout and runs.
func TestTwinRefused(t *testing.T) {
	w := newWorld(t)
	w.startAgent("a", nil)
	twin, err := New(Config{ID: "a", Fleet: w.store, CacheDir: filepath.Join(w.dir, "twin-cache"), StateDir: filepath.Join(w.dir, "twin"),
		Listen: "tcp:127.0.0.1:0", Token: testToken, HeartbeatInterval: 100 * time.Millisecond, HeartbeatTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if err := twin.Run(context.Background(), nil); err == nil || !strings.Contains(err.Error(), "another agent with id") {
		t.Fatalf("twin: %v", err)
	}
	// A crashed agent "b": its heartbeat is fresh but frozen.
	if err := w.fleet.PutHeartbeat(context.Background(), &fleet.Heartbeat{Host: "b", Seq: 9, Time: time.Now(), Started: time.Now(), Timeout: time.Second}); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	w.startAgent("b", nil)
	if d := time.Since(start); d < time.Second {
		t.Fatalf("restarted b ran after %v, before its old heartbeat was a timeout old", d)
	}
}
