package agent

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/urldisk/urldisk/internal/fleet"
	"github.com/urldisk/urldisk/internal/format"
	"github.com/urldisk/urldisk/internal/objstore"
	"github.com/urldisk/urldisk/internal/volume"
)

// logKeys lists the keys of volume id's log.
func (w *world) logKeys(id string) []string {
	w.t.Helper()
	var keys []string
	if err := w.store.List(context.Background(), format.LogPrefix(id), func(oi objstore.ObjectInfo) error {
		keys = append(keys, oi.Key)
		return nil
	}); err != nil {
		w.t.Fatal(err)
	}
	return keys
}

// Regression: a machine whose volume was removed and another created under
// the same name refuses to start, naming both ids, and never attaches the
// new volume read-write (its log gets no fence record). Before the check
// the agent opened whatever the name bound and ran the machine on it.
func TestStartRefusesReplacedVolume(t *testing.T) {
	ctx := context.Background()
	w := newWorld(t)
	a := w.startAgent("a", nil)
	vol := w.createVolume("v1")
	p, err := w.ops.Run(ctx, "m", helperSpec(t, vol, "urldisk", true), "a")
	if err != nil {
		t.Fatal(err)
	}
	oldID := p.VolumeID
	if oldID == "" {
		t.Fatal("placement recorded no volume id")
	}
	a.Reconcile()
	waitFor(t, "m running", func() bool {
		st, ok := a.machine("m")
		return ok && st.Phase == fleet.PhaseRunning
	})
	if _, err := w.ops.Stop(ctx, "m"); err != nil {
		t.Fatal(err)
	}
	a.Reconcile()
	waitFor(t, "m stopped", func() bool {
		st, ok := a.machine("m")
		return !ok || st.Phase != fleet.PhaseRunning && st.Phase != fleet.PhaseStarting
	})

	pool, err := volume.OpenPool(ctx, w.store, volume.PoolOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := pool.Remove(ctx, "v1"); err != nil {
		t.Fatal(err)
	}
	w.createVolume("v1")
	newID, err := ResolveVolume(ctx, vol)
	if err != nil || newID == oldID {
		t.Fatalf("recreated volume id %q, %v; want one other than %q", newID, err, oldID)
	}
	before := w.logKeys(newID)

	if _, err := w.ops.Start(ctx, "m"); err != nil {
		t.Fatal(err)
	}
	a.Reconcile()
	var st fleet.MachineStatus
	waitFor(t, "m failed to start", func() bool {
		var ok bool
		st, ok = a.machine("m")
		return ok && st.Phase == fleet.PhaseFailed
	})
	if !strings.Contains(st.Error, ErrVolumeReplaced.Error()) || !strings.Contains(st.Error, oldID) || !strings.Contains(st.Error, newID) {
		t.Fatalf("status error %q: want %q naming ids %s and %s", st.Error, ErrVolumeReplaced, oldID, newID)
	}
	if after := w.logKeys(newID); !slices.Equal(after, before) {
		t.Fatalf("the recreated volume's log changed from %v to %v: it was attached read-write", before, after)
	}
	// The error wraps the sentinel for callers in process.
	err = checkVolumeID(ctx, pool, "v1", &fleet.Placement{Name: "m", VolumeID: oldID})
	if !errors.Is(err, ErrVolumeReplaced) {
		t.Fatalf("checkVolumeID: %v, want ErrVolumeReplaced", err)
	}
	// A placement without an id (written before ids were recorded) passes.
	if err := checkVolumeID(ctx, pool, "v1", &fleet.Placement{Name: "m"}); err != nil {
		t.Fatalf("checkVolumeID without an id: %v", err)
	}
}
