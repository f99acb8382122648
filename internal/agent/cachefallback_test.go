package agent

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/urldisk/urldisk/internal/fleet"
)

// Regression (issue 15): an unusable cache directory (here a file in its
// place) made the agent exit. It must run its machines without a cache,
// reading and writing through the object store.
func TestUnusableCacheRunsMachinesWithoutCache(t *testing.T) {
	ctx := context.Background()
	w := newWorld(t)
	if err := os.WriteFile(filepath.Join(w.dir, "a-cache"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	a := w.startAgent("a", nil)
	if a.cache != nil {
		t.Fatal("the agent opened a cache in a regular file")
	}
	vol := w.createVolume("v1")
	if _, err := w.ops.Run(ctx, "m", helperSpec(t, vol, "nocache", true), "a"); err != nil {
		t.Fatal(err)
	}
	a.Reconcile()
	waitFor(t, "m's workload to write, flush and read back its volume", func() bool {
		return strings.Contains(w.console("a", "m"), "helper ok")
	})
	if st, ok := a.machine("m"); !ok || st.Phase != fleet.PhaseRunning {
		t.Fatalf("machine m: %+v (known %v), want running", st, ok)
	}
}
