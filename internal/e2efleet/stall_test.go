package e2efleet

import (
	"bytes"
	"errors"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/urldisk/urldisk/internal/fleet"
	"github.com/urldisk/urldisk/internal/testutil/nbdclient"
)

// machineMetric returns the value of metric for machine name from the
// agent's /metrics (Prometheus text), and whether it is there.
func (e *env) machineMetric(a *agentProc, metric, name string) (float64, bool) {
	e.t.Helper()
	code, body := api(e.t, "GET", a.api+"/metrics", "Bearer "+e.token, "")
	if code != 200 {
		e.t.Fatalf("GET /metrics: %d %s", code, body)
	}
	for line := range strings.SplitSeq(body, "\n") {
		if strings.HasPrefix(line, metric+"{") && strings.Contains(line, `machine="`+name+`"`) {
			f := strings.Fields(line)
			v, err := strconv.ParseFloat(f[len(f)-1], 64)
			if err != nil {
				e.t.Fatalf("metric line %q: %v", line, err)
			}
			return v, true
		}
	}
	return 0, false
}

// TestFleetStalledStoreMetrics is issue 15's finding 6 on a real agent: its
// machine's object store (versitygw) is SIGSTOPped. The agent logs a WARN
// naming the stalled upload, /metrics shows the machine's stalled upload
// within seconds, a FLUSH fails with EIO after the agent's --flush-timeout
// instead of hanging, and once the store runs again the FLUSH succeeds,
// the metric returns to 0 and every write reads back.
func TestFleetStalledStoreMetrics(t *testing.T) {
	const (
		mib          = 1 << 20
		stalled      = "urldisk_agent_volume_stalled_uploads"
		flushTimeout = 6 * time.Second
	)
	e := newEnv(t)
	a := e.startAgent("h1", "--store-timeout", "2s", "--flush-timeout", flushTimeout.String())
	e.mustCLI("create", e.volumeURL("v"), "--size", "16M")
	e.mustCLI("machine", "run", "m", "--volume", e.volumeURL("v"), "--runtime", "process", "--host", "h1", "--", "sleep", "1000")
	e.waitFor("m running", 30*time.Second, func() bool {
		hb := e.heartbeat("h1")
		if hb == nil {
			return false
		}
		st, ok := hb.Machine("m")
		return ok && st.Phase == fleet.PhaseRunning
	})
	cn, err := nbdclient.Dial("nbd+unix:///v?socket="+filepath.Join(a.stateDir, "sock", "m", "nbd"), 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer cn.Close()
	b1, b2 := bytes.Repeat([]byte{0xa1}, mib), bytes.Repeat([]byte{0xb2}, mib)
	if err := cn.WriteAt(b1, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := cn.FlushWithin(time.Minute); err != nil {
		t.Fatalf("FLUSH on a healthy store: %v", err)
	}
	if v, ok := e.machineMetric(a, stalled, "m"); !ok || v != 0 {
		t.Fatalf("%s of m = %v (present %v) on a healthy store, want 0", stalled, v, ok)
	}

	resume := e.s3.Stall(t)
	stalledAt := time.Now()
	if err := cn.WriteAt(b2, mib); err != nil {
		t.Fatalf("write while the store is stopped (buffered): %v", err)
	}
	took, err := cn.FlushWithin(flushTimeout + 30*time.Second)
	var nerr *nbdclient.Error
	if !errors.As(err, &nerr) || nerr.Errno != 5 {
		t.Fatalf("FLUSH on a stopped store after %s: %v, want EIO", took, err)
	}
	if took < flushTimeout-time.Second {
		t.Errorf("FLUSH failed after %s, before --flush-timeout %s", took, flushTimeout)
	}
	// The stall WARN (after 5 s) came before the flush gave up; the metric
	// counts it while the upload waits.
	e.waitFor("m's stalled upload in /metrics", 20*time.Second, func() bool {
		v, _ := e.machineMetric(a, stalled, "m")
		return v >= 1
	})
	if since := time.Since(stalledAt); since > 30*time.Second {
		t.Errorf("stalled upload only visible %s after the store stopped", since)
	}
	if out := a.out.String(); !strings.Contains(out, `level=WARN msg="object store stalled: record upload is waiting`) || !strings.Contains(out, "op=put-if-absent") {
		t.Errorf("agent logged no stall WARN naming the request:\n%s", out)
	}

	if err := resume(); err != nil {
		t.Fatal(err)
	}
	if took, err := cn.FlushWithin(time.Minute); err != nil {
		t.Fatalf("FLUSH after the store resumed (%s): %v", took, err)
	}
	e.waitFor("m's stalled uploads back to 0", 30*time.Second, func() bool {
		v, ok := e.machineMetric(a, stalled, "m")
		return ok && v == 0
	})
	got := make([]byte, 2*mib)
	if err := cn.ReadAt(got, 0); err != nil || !bytes.Equal(got[:mib], b1) || !bytes.Equal(got[mib:], b2) {
		t.Fatalf("read back after the stall: %v (first MiB ok %v, second %v)", err, bytes.Equal(got[:mib], b1), bytes.Equal(got[mib:], b2))
	}
}
