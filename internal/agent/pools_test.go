package agent

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/urldisk/urldisk/internal/fleet"
	"github.com/urldisk/urldisk/internal/volume"
)

// Regression (issue 16): two URL spellings of one volume are one volume,
// and machine run refuses a second machine on it. Here the spellings are a
// directory and a symlink to it, which no URL rule can equate: only the
// volume id, resolved through the real pool's name binding and recorded in
// the placement, tells. Before ids were recorded, the second run was
// accepted and the two machines fenced each other.
func TestRunRefusesOneVolumeThroughASymlinkedPool(t *testing.T) {
	w := newWorld(t)
	ctx := context.Background()
	url := w.createVolume("web-1")
	link := filepath.Join(w.dir, "link")
	if err := os.Symlink(w.dir, link); err != nil {
		t.Fatal(err)
	}
	alias := "file://" + filepath.Join(link, "pool", "web-1")

	id1, err := ResolveVolume(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	if id2, err := ResolveVolume(ctx, alias); err != nil || id2 != id1 {
		t.Fatalf("ResolveVolume(alias) = %q, %v; want %q, the same volume", id2, err, id1)
	}
	if _, err := ResolveVolume(ctx, w.poolURL+"/nope"); !errors.Is(err, volume.ErrNotFound) {
		t.Fatalf("ResolveVolume of a missing volume: %v, want ErrNotFound", err)
	}

	if err := w.fleet.PutHeartbeat(ctx, &fleet.Heartbeat{Host: "h1", Seq: 1, Time: time.Now(), Started: time.Now(), Timeout: time.Minute}); err != nil {
		t.Fatal(err)
	}
	spec := func(vol string) fleet.Spec {
		return fleet.Spec{Volume: vol, Runtime: fleet.RuntimeProcess, Args: []string{"/bin/true"}}
	}
	p, err := w.ops.Run(ctx, "m1", spec(url), "h1")
	if err != nil {
		t.Fatal(err)
	}
	if p.VolumeID != id1 {
		t.Fatalf("placement VolumeID = %q, want %q", p.VolumeID, id1)
	}
	_, err = w.ops.Run(ctx, "m2", spec(alias), "h1")
	if !errors.Is(err, fleet.ErrVolumeInUse) || !strings.Contains(err.Error(), `machine "m1"`) {
		t.Fatalf("run m2 on m1's volume through a symlink: %v, want ErrVolumeInUse naming m1", err)
	}
	// Another volume of the same pool, spelled through the symlink, is free.
	w.createVolume("web-2")
	if _, err := w.ops.Run(ctx, "m2", spec("file://"+filepath.Join(link, "pool", "web-2")), "h1"); err != nil {
		t.Fatalf("run m2 on another volume: %v", err)
	}
}

// A pool opened from a URL owns its store: closing the pools closes them,
// and a pool opened over a caller's store leaves it open.
func TestPoolsCloseTheirStores(t *testing.T) {
	w := newWorld(t)
	ctx := context.Background()
	url := w.createVolume("v")
	ps := newPools(nil, nil)
	p, name, err := ps.open(ctx, url)
	if err != nil || name != "v" {
		t.Fatalf("open = %v, %q, %v", p, name, err)
	}
	if q, _, err := ps.open(ctx, strings.Replace(url, "/pool/", "//pool/", 1)); err != nil || q != p {
		t.Fatalf("a second spelling of the pool opened another pool (%p, %p, %v)", q, p, err)
	}
	if err := ps.close(); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Resolve(ctx, "v"); err == nil {
		t.Fatal("Resolve after the pools closed succeeded: the store was left open")
	}
	shared, err := volume.OpenPool(ctx, w.store, volume.PoolOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := shared.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := shared.Resolve(ctx, "v"); err != nil {
		t.Fatalf("Close of a pool over the caller's store closed it: %v", err)
	}
}
