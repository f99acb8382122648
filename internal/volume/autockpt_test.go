package volume

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/urldisk/urldisk/internal/format"
)

func TestPruneAuto(t *testing.T) {
	start := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	var cps []*format.CheckpointDoc
	// One every 30 minutes for 10 days, plus a manual one.
	for i := 0; i < 480; i++ {
		tm := start.Add(time.Duration(i) * 30 * time.Minute)
		cps = append(cps, &format.CheckpointDoc{Label: autoLabel(tm), Time: tm})
	}
	cps = append(cps, &format.CheckpointDoc{Label: "manual", Time: start})
	del := pruneAuto(cps, format.CheckpointPolicy{EverySeconds: 1800, KeepHourly: 24, KeepDaily: 7})
	deleted := map[string]bool{}
	for _, l := range del {
		deleted[l] = true
	}
	if deleted["manual"] {
		t.Fatal("pruned a manual checkpoint")
	}
	var kept []time.Time
	for _, c := range cps[:480] {
		if !deleted[c.Label] {
			kept = append(kept, c.Time)
		}
	}
	sort.Slice(kept, func(i, j int) bool { return kept[i].After(kept[j]) })
	// 24 hourly (the newest of each of the last 24 hours) + daily ones of the
	// 6 earlier days (today's newest is already kept).
	if len(kept) != 24+6 {
		t.Fatalf("kept %d: %v", len(kept), kept)
	}
	newest := cps[479].Time
	if !kept[0].Equal(newest) {
		t.Fatalf("newest not kept: %v", kept[0])
	}
	for i := 0; i < 24; i++ {
		if kept[i].Truncate(time.Hour) != newest.Truncate(time.Hour).Add(-time.Duration(i)*time.Hour) {
			t.Fatalf("hourly %d is %v", i, kept[i])
		}
	}
}

func TestAutoCheckpoints(t *testing.T) {
	ctx := context.Background()
	clock := &fakeClock{t: time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)}
	p, err := InitPool(ctx, openStore(t, "mem://auto"), PoolOptions{Clock: clock, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.Create(ctx, "a", CreateOptions{Size: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	if err := p.SetPolicy(ctx, "a", Policy{Every: time.Hour, KeepHourly: 3}); err != nil {
		t.Fatal(err)
	}
	if err := p.SetPolicy(ctx, "a", Policy{Every: time.Minute}); err == nil {
		t.Fatal("policy keeping nothing accepted")
	}
	v, err := p.Open(ctx, "a", Options{PolicyPoll: -1, Clock: clock})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close(ctx)
	var last time.Time
	for h := 0; h < 6; h++ {
		if h != 2 { // hour 2: no writes, so no checkpoint
			if err := v.WriteAt(ctx, []byte(fmt.Sprint(h)), 0); err != nil {
				t.Fatal(err)
			}
		}
		clock.Advance(time.Hour)
		if err := v.autoCheckpointOnce(ctx, &last); err != nil {
			t.Fatal(err)
		}
	}
	cps, err := p.Checkpoints(ctx, "a")
	if err != nil {
		t.Fatal(err)
	}
	var labels []string
	for _, c := range cps {
		labels = append(labels, c.Label)
	}
	// Checkpoints at hours 1,2,4,5,6 (none after the idle hour 2->3); keep 3.
	if len(labels) != 3 || !strings.HasPrefix(labels[0], AutoPrefix) {
		t.Fatalf("automatic checkpoints: %v", labels)
	}
	ro, err := p.OpenAt(ctx, "a", Point{Label: labels[2]}, Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close(ctx)
	if got := mustRead(t, ro, 0, 1); string(got) != "5" {
		t.Fatalf("newest automatic checkpoint reads %q", got)
	}
}
