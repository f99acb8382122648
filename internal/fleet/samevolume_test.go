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
