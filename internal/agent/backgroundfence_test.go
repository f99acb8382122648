package agent

import (
	"context"
	"testing"

	"github.com/urldisk/urldisk/internal/control"
	"github.com/urldisk/urldisk/internal/fleet"
	"github.com/urldisk/urldisk/internal/volume"
)

// Regression: the agent noticed a takeover of a machine's volume only
// when one of the workload's NBD requests failed with ErrFenced, so a
// workload that had gone quiet kept running as an orphan (reported
// running, holding an export nobody may write) after the volume learnt it
// was fenced some other way. Its export now checks the volume every
// second, like serve, and the machine is stopped as fenced.
func TestMachineStoppedWhenFencedWithoutRequest(t *testing.T) {
	ctx := context.Background()
	t.Setenv("XDG_RUNTIME_DIR", t.TempDir()) // the machine's control socket
	w := newWorld(t)
	a := w.startAgent("a", nil)
	vol := w.createVolume("quiet")
	if _, err := w.ops.Run(ctx, "quiet", helperSpec(t, vol, "q", true), "a"); err != nil {
		t.Fatal(err)
	}
	a.Reconcile()
	waitFor(t, "machine running", func() bool {
		st, ok := a.machine("quiet")
		return ok && st.Phase == fleet.PhaseRunning && !st.FirstIO.IsZero()
	})
	// The helper wrote, flushed and read; now it sleeps: no more requests.
	p, err := volume.OpenPool(ctx, w.store, volume.PoolOptions{})
	if err != nil {
		t.Fatal(err)
	}
	d, err := p.Resolve(ctx, "quiet")
	if err != nil {
		t.Fatal(err)
	}
	// Another writer takes the volume over behind the agent's back.
	thief, err := p.Open(ctx, "quiet", volume.Options{})
	if err != nil {
		t.Fatalf("second writer: %v", err)
	}
	defer thief.Close(ctx)
	// A checkpoint through the agent's control socket makes its volume
	// find the newer fence: fenced, but no NBD request failed.
	_, served, err := control.Call(ctx, d.ID, "checkpoint", control.Request{Label: "after-takeover"})
	if !served {
		t.Fatalf("the agent's control socket did not answer: %v", err)
	}
	if err == nil {
		t.Fatalf("checkpoint on the fenced holder succeeded")
	}
	waitFor(t, "machine stopped as fenced", func() bool {
		st, ok := a.machine("quiet")
		return ok && st.Phase == fleet.PhaseFenced
	})
}
