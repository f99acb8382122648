package agent

import (
	"context"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/urldisk/urldisk/internal/fleet"
	"github.com/urldisk/urldisk/internal/volume"
)

// gatherMachine returns the values of the metrics labelled machine=name
// in reg, by metric name.
func gatherMachine(t *testing.T, reg *prometheus.Registry, name string) map[string]float64 {
	t.Helper()
	fams, err := reg.Gather()
	if err != nil {
		t.Fatalf("gather metrics: %v", err)
	}
	out := map[string]float64{}
	for _, f := range fams {
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "machine" && l.GetValue() == name {
					switch {
					case m.GetGauge() != nil:
						out[f.GetName()] = m.GetGauge().GetValue()
					case m.GetCounter() != nil:
						out[f.GetName()] = m.GetCounter().GetValue()
					}
				}
			}
		}
	}
	return out
}

// The volume collector publishes each machine's volume.Stats under the
// names operators alert on (a stalled object store).
func TestVolumeCollectorValues(t *testing.T) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(newVolumeCollector(func() map[string]volume.Stats {
		return map[string]volume.Stats{"m": {PendingUploads: 3, StalledUploads: 2, OldestPendingAge: 7 * time.Second,
			UploadRetries: 11, RequestTimeouts: 5, FlushTimeouts: 1}}
	}))
	got := gatherMachine(t, reg, "m")
	want := map[string]float64{
		"urldisk_agent_volume_pending_uploads":               3,
		"urldisk_agent_volume_stalled_uploads":               2,
		"urldisk_agent_volume_oldest_pending_upload_seconds": 7,
		"urldisk_agent_volume_upload_retries_total":          11,
		"urldisk_agent_volume_store_request_timeouts_total":  5,
		"urldisk_agent_volume_flush_timeouts_total":          1,
	}
	for k, v := range want {
		if g, ok := got[k]; !ok || g != v {
			t.Errorf("%s = %v (present %v), want %v", k, g, ok, v)
		}
	}
}

// A running machine's volume statistics reach the agent's registry.
func TestVolumeMetricsOfRunningMachine(t *testing.T) {
	ctx := context.Background()
	w := newWorld(t)
	vol := w.createVolume("v1")
	a := w.startAgent("a", nil)
	if _, err := w.ops.Run(ctx, "m", helperSpec(t, vol, "urldisk", true), "a"); err != nil {
		t.Fatal(err)
	}
	a.Reconcile()
	waitFor(t, "m running on a with I/O", func() bool {
		st, ok := a.machine("m")
		return ok && st.Phase == fleet.PhaseRunning && !st.FirstIO.IsZero()
	})
	got := gatherMachine(t, a.metrics.reg, "m")
	if v, ok := got["urldisk_agent_volume_stalled_uploads"]; !ok || v != 0 {
		t.Errorf("stalled uploads of m = %v (present %v), want 0 on a healthy store; metrics: %v", v, ok, got)
	}
	if _, ok := got["urldisk_agent_volume_pending_uploads"]; !ok {
		t.Errorf("no pending-uploads metric for m: %v", got)
	}
}
