package fleet

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"
)

// Regression (issue 16): file:///var/tmp//pool/web-1 and
// file:///var/tmp/./pool/web-1 are one volume, but `machine run` took them
// for two and placed a second machine on it; the two then fenced each other.
func TestRunRefusesSecondSpellingOfAVolume(t *testing.T) {
	ctx := context.Background()
	f := New(memStore(t), nil)
	clk := &fixedClock{t: t0}
	ops := &Ops{Fleet: f, By: "test", Now: clk.Now}
	if err := f.PutHeartbeat(ctx, &Heartbeat{Host: "h1", Seq: 1, Time: clk.Now(), Timeout: 2 * time.Second}); err != nil {
		t.Fatal(err)
	}
	spec := func(vol string) Spec {
		return Spec{Volume: vol, Runtime: RuntimeProcess, Args: []string{"/bin/true"}}
	}
	if _, err := ops.Run(ctx, "m1", spec("file:///var/tmp//pool/web-1"), ""); err != nil {
		t.Fatal(err)
	}
	for _, vol := range []string{
		"file:///var/tmp/./pool/web-1",
		"file:///var/tmp/pool/web-1",
		"file://localhost/var/tmp/pool//web-1",
	} {
		_, err := ops.Run(ctx, "m2", spec(vol), "")
		if !errors.Is(err, ErrVolumeInUse) || !strings.Contains(err.Error(), `machine "m1"`) {
			t.Errorf("run m2 on %s: %v, want ErrVolumeInUse naming m1", vol, err)
		}
	}
	// Another volume in the same pool is free.
	if _, err := ops.Run(ctx, "m2", spec("file:///var/tmp/pool/web-2"), ""); err != nil {
		t.Errorf("run m2 on another volume: %v", err)
	}
}

// Regression (issue 16): placements record the volume's id, and machine run
// compares ids, so spellings that no URL rule can tell are one volume (an
// endpoint by name and by address, a symlinked directory) are refused too.
// Placements without an id (written before ids) still compare URLs.
func TestRunComparesVolumeIDs(t *testing.T) {
	ctx := context.Background()
	f := New(memStore(t), nil)
	clk := &fixedClock{t: t0}
	ids := map[string]string{
		"s3://b/pool/web-1?endpoint=http://localhost:7070": "v1",
		"s3://b/pool/web-1?endpoint=http://127.0.0.1:7070": "v1",
		"s3://b/pool/web-2?endpoint=http://127.0.0.1:7070": "v2",
		"file:///var/tmp//other/web-1":                     "v3",
	}
	ops := &Ops{Fleet: f, By: "test", Now: clk.Now, ResolveVolume: func(_ context.Context, url string) (string, error) {
		return ids[url], nil
	}}
	if err := f.PutHeartbeat(ctx, &Heartbeat{Host: "h1", Seq: 1, Time: clk.Now(), Timeout: 2 * time.Second}); err != nil {
		t.Fatal(err)
	}
	spec := func(vol string) Spec {
		return Spec{Volume: vol, Runtime: RuntimeProcess, Args: []string{"/bin/true"}}
	}
	p, err := ops.Run(ctx, "m1", spec("s3://b/pool/web-1?endpoint=http://localhost:7070"), "")
	if err != nil {
		t.Fatal(err)
	}
	if p.VolumeID != "v1" {
		t.Fatalf("placement VolumeID = %q, want v1", p.VolumeID)
	}
	// Later versions keep the id.
	if p, err = ops.Stop(ctx, "m1"); err != nil || p.VolumeID != "v1" {
		t.Fatalf("stop: %+v, %v; want the id kept", p, err)
	}
	_, err = ops.Run(ctx, "m2", spec("s3://b/pool/web-1?endpoint=http://127.0.0.1:7070"), "")
	if !errors.Is(err, ErrVolumeInUse) || !strings.Contains(err.Error(), `machine "m1"`) {
		t.Errorf("run m2 on m1's volume by another endpoint spelling: %v, want ErrVolumeInUse naming m1", err)
	}
	if _, err := ops.Run(ctx, "m2", spec("s3://b/pool/web-2?endpoint=http://127.0.0.1:7070"), ""); err != nil {
		t.Errorf("run m2 on another volume: %v", err)
	}
	// A placement without an id (an older writer's) is compared by URL.
	old := &Ops{Fleet: f, By: "old", Now: clk.Now}
	if p, err := old.Run(ctx, "m3", spec("file:///var/tmp/other/web-1"), ""); err != nil || p.VolumeID != "" {
		t.Fatalf("run m3 without ResolveVolume: %+v, %v", p, err)
	}
	_, err = ops.Run(ctx, "m4", spec("file:///var/tmp//other/web-1"), "")
	if !errors.Is(err, ErrVolumeInUse) || !strings.Contains(err.Error(), `machine "m3"`) {
		t.Errorf("run m4 on m3's volume (no id recorded): %v, want ErrVolumeInUse naming m3", err)
	}
}
