package volume

import (
	"context"
	"testing"
	"time"

	"github.com/urldisk/urldisk/internal/format"
	"github.com/urldisk/urldisk/internal/objstore"
)

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestBackgroundLoopsUseTheInjectedClock: idle flush, compaction, automatic
// checkpoints and follow are paced by Options.Clock, so with hour-long
// periods nothing happens until the fake clock moves, and then it happens
// at once (with time.NewTicker it would take a real quarter of an hour).
func TestBackgroundLoopsUseTheInjectedClock(t *testing.T) {
	ctx := context.Background()
	clock := &fakeClock{t: time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)}
	store := openStore(t, "mem://clock")
	p, err := InitPool(ctx, store, PoolOptions{Clock: clock, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	d, err := p.Create(ctx, "a", CreateOptions{Size: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	const hour = time.Hour
	v, err := p.Open(ctx, "a", Options{IdleFlush: hour, PolicyPoll: hour, CompactEvery: hour, SegmentBytes: 1 << 20, Clock: clock, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close(ctx)
	ro, err := p.Open(ctx, "a", Options{ReadOnly: true, Follow: hour / 2, Clock: clock, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close(ctx)
	// The loops start in goroutines: wait until each has its ticker.
	waitFor(t, "the idle-flush ticker on the fake clock", func() bool { return clock.tickersOf(hour/4) == 1 })
	waitFor(t, "the compaction and policy tickers on the fake clock", func() bool { return clock.tickersOf(hour) == 2 })
	waitFor(t, "the follow ticker on the fake clock", func() bool { return clock.tickersOf(hour/2) == 1 })

	records := func() int {
		n := 0
		if err := store.List(ctx, format.LogPrefix(d.ID), func(objstore.ObjectInfo) error { n++; return nil }); err != nil {
			t.Fatal(err)
		}
		return n
	}
	before := records() // the writer's fence
	if err := v.WriteAt(ctx, []byte("tick"), 0); err != nil {
		t.Fatal(err)
	}
	clock.Advance(hour)
	waitFor(t, "the idle flush after the fake clock moved an hour", func() bool { return records() > before })
	// The record is durable; the follower applies it on its next tick.
	clock.Advance(hour / 2)
	waitFor(t, "the follower to apply the flushed record", func() bool {
		b := make([]byte, 4)
		if err := ro.ReadAt(ctx, b, 0); err != nil {
			t.Fatal(err)
		}
		if string(b) == "tick" {
			return true
		}
		clock.Advance(hour / 2) // a tick may have come before the record landed
		return false
	})
}
