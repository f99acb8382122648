package fleet

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/urldisk/urldisk/internal/objstore"
)

// TestWatchSet: each host watches its k next live hosts on the ring, and
// every dead host met on the way; so a dead host is always watched by its
// nearest live predecessor, however many died in a row.
func TestWatchSet(t *testing.T) {
	members := []string{"e", "a", "d", "b", "c", "f"}
	none := func(string) bool { return false }
	if got := WatchSet(members, "a", 2, none); !slices.Equal(got, []string{"b", "c"}) {
		t.Fatalf("a watches %v, want [b c]", got)
	}
	if got := WatchSet(members, "f", 3, none); !slices.Equal(got, []string{"a", "b", "c"}) {
		t.Fatalf("f watches %v (ring wraps), want [a b c]", got)
	}
	if got := WatchSet(members, "zz", 1, none); !slices.Equal(got, []string{"a"}) {
		t.Fatalf("a host not in the list watches %v, want [a]", got)
	}
	dead := map[string]bool{"b": true, "c": true, "d": true}
	got := WatchSet(members, "a", 2, func(h string) bool { return dead[h] })
	if !slices.Equal(got, []string{"b", "c", "d", "e", "f"}) {
		t.Fatalf("a with b, c, d dead watches %v, want [b c d e f]", got)
	}
	// All others dead: the whole ring, once.
	if got := WatchSet(members, "a", 2, func(h string) bool { return h != "a" }); len(got) != 5 {
		t.Fatalf("a alone alive watches %v, want the 5 others", got)
	}
	// Every dead host is watched by some live host, for every set of dead.
	for mask := range 1 << len(members) {
		isDead := func(h string) bool { return mask&(1<<(h[0]-'a')) != 0 }
		watched := map[string]bool{}
		for _, h := range members {
			if !isDead(h) {
				for _, w := range WatchSet(members, h, 2, isDead) {
					watched[w] = true
				}
			}
		}
		for _, h := range members {
			if isDead(h) && mask != 1<<len(members)-1 && !watched[h] {
				t.Fatalf("dead set %06b: %s watched by no live host", mask, h)
			}
		}
	}
}

// TestAssignedIndex: a host finds, from its index alone, the machines
// placed on it and those moving off it; entries of older versions go, a
// machine that left is forgotten after ForgetAfter, and a placement
// written without an index entry is found by the resync.
func TestAssignedIndex(t *testing.T) {
	ctx := context.Background()
	store := memStore(t)
	now := t0
	clock := func() time.Time { return now }
	f := NewWithOptions(store, Options{Now: clock, ResyncEvery: time.Hour, ForgetAfter: time.Minute})
	run := func(name, host string) {
		t.Helper()
		if _, err := f.Update(ctx, name, "t", func(cur *Placement) (*Placement, error) {
			return NextRun(cur, name, procSpec(name), host, now)
		}); err != nil {
			t.Fatal(err)
		}
	}
	run("m1", "h1")
	run("m2", "h2")
	assigned := func(host string) map[string]*Placement {
		t.Helper()
		got, err := f.Assigned(ctx, host)
		if err != nil {
			t.Fatal(err)
		}
		return got
	}
	if got := assigned("h1"); len(got) != 1 || got["m1"] == nil || got["m1"].Version != 1 {
		t.Fatalf("h1 assigned %v", got)
	}
	if _, err := f.Update(ctx, "m1", "t", func(cur *Placement) (*Placement, error) {
		return NextMove(cur, "m1", "h2", ReasonMigrate, now)
	}); err != nil {
		t.Fatal(err)
	}
	if got := assigned("h1"); got["m1"] == nil || got["m1"].Version != 2 || got["m1"].From != "h1" {
		t.Fatalf("h1 (moving m1 off) assigned %v", got)
	}
	if got := assigned("h2"); len(got) != 2 || got["m1"].Version != 2 {
		t.Fatalf("h2 assigned %v", got)
	}
	// h1's entry of version 1 is gone; version 2 stays until ForgetAfter.
	keys := func(host string) []string {
		var out []string
		if err := store.List(ctx, HostAssignPrefix(host), func(oi objstore.ObjectInfo) error {
			out = append(out, oi.Key)
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		return out
	}
	if got := keys("h1"); !slices.Equal(got, []string{AssignKey("h1", "m1", 2)}) {
		t.Fatalf("h1's index %v", got)
	}
	now = now.Add(2 * time.Minute)
	assigned("h1")
	if got := keys("h1"); len(got) != 0 {
		t.Fatalf("h1's index %v after ForgetAfter, want empty", got)
	}
	// A placement written without the index (a writer before it): the
	// next resync finds it.
	p := &Placement{Name: "m3", Version: 1, Spec: procSpec("m3"), Host: "h1", State: Running, Reason: ReasonRun, Time: now, By: "old", Nonce: "n"}
	b, err := EncodePlacement(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := store.PutIfAbsent(ctx, PlacementKey("m3", 1), b); err != nil {
		t.Fatal(err)
	}
	if got := assigned("h1"); got["m3"] != nil {
		t.Fatalf("found m3 before the resync was due: %v", got)
	}
	if got := NewWithOptions(store, Options{Now: clock}).mustAssigned(t, "h1"); got["m3"] == nil {
		t.Fatalf("a new Fleet's first Assigned (a resync) misses m3: %v", got)
	}
	now = now.Add(time.Hour)
	if got := assigned("h1"); got["m3"] == nil {
		t.Fatalf("resync after ResyncEvery misses m3: %v", got)
	}
}

func (f *Fleet) mustAssigned(t *testing.T, host string) map[string]*Placement {
	t.Helper()
	got, err := f.Assigned(context.Background(), host)
	if err != nil {
		t.Fatal(err)
	}
	return got
}

// TestHistoryPruned: a machine keeps its KeepVersions newest versions (and
// their acks); older ones, also leftovers from before pruning, are deleted,
// never the newest.
func TestHistoryPruned(t *testing.T) {
	ctx := context.Background()
	store := memStore(t)
	// A leftover version 1 that nothing pruned: written first by a Fleet
	// that keeps everything.
	old := NewWithOptions(store, Options{KeepVersions: 1000})
	if _, err := old.Update(ctx, "m", "t", func(cur *Placement) (*Placement, error) {
		return NextRun(cur, "m", procSpec("v"), "h0", t0)
	}); err != nil {
		t.Fatal(err)
	}
	f := NewWithOptions(store, Options{KeepVersions: 4})
	for i := range 9 {
		host := []string{"h1", "h2"}[i%2]
		p, err := f.Update(ctx, "m", "t", func(cur *Placement) (*Placement, error) {
			return NextMove(cur, "m", host, ReasonMigrate, t0)
		})
		if err != nil {
			t.Fatal(err)
		}
		if err := f.PutAck(ctx, &Ack{Name: "m", Version: p.Version, Host: p.From, Stopped: t0}); err != nil {
			t.Fatal(err)
		}
	}
	hist, err := f.History(ctx, "m")
	if err != nil {
		t.Fatal(err)
	}
	var vs []uint64
	for _, p := range hist {
		vs = append(vs, p.Version)
	}
	if !slices.Equal(vs, []uint64{7, 8, 9, 10}) {
		t.Fatalf("versions kept %v, want [7 8 9 10]", vs)
	}
	for v := uint64(1); v <= 10; v++ {
		a, err := f.GetAck(ctx, "m", v)
		if err != nil {
			t.Fatal(err)
		}
		if (a != nil) != (v >= 7) {
			t.Fatalf("ack of v%d present=%v", v, a != nil)
		}
	}
	// KeepVersions 1 keeps the newest.
	one := NewWithOptions(store, Options{KeepVersions: 1})
	if p, err := one.Latest(ctx, "m"); err != nil || p == nil || p.Version != 10 {
		t.Fatalf("latest with KeepVersions 1: %+v %v", p, err)
	}
	if hist, err := one.History(ctx, "m"); err != nil || len(hist) != 1 {
		t.Fatalf("history with KeepVersions 1: %d versions, %v", len(hist), err)
	}
}
