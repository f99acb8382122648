package gcplan

import (
	"fmt"
	"testing"
	"time"
)

// The journal simulation drives Make through every interleaving; these
// cases pin the protocol with the caller (ask for types, then decide) and
// the rules a reader of a report relies on.

var (
	t0    = time.Unix(1_700_000_000, 0)
	grace = time.Hour
	old   = t0.Add(-2 * grace)
)

func logObj(id string, seq uint64, size int64, mod time.Time) Object {
	return Object{Key: fmt.Sprintf("vols/%s/log/%016x", id, seq), Kind: Log, Seq: seq, Size: size, ModTime: mod}
}

func kinds(ds []Decision) []string {
	var out []string
	for _, d := range ds {
		out = append(out, fmt.Sprintf("%s/%d:%s", d.Volume.ID, d.Object.Seq, d.Reason))
	}
	return out
}

func TestMakeAsksForTypesThenKeepsFences(t *testing.T) {
	v := &Volume{ID: "a", Name: "web", Objects: []Object{
		{Key: "vols/a/deleted", Kind: Metadata, ModTime: old}, // not a tombstone: stays metadata
		logObj("a", 1, 100, old),                              // fence, below base
		logObj("a", 2, 100, old),                              // data, below base
		logObj("a", 3, FenceMaxSize, old),                     // too big to be a fence: no read
		logObj("a", 4, 100, old),                              // referenced
		logObj("a", 5, 100, t0),                               // young
		logObj("a", 7, 100, old),                              // above the base
		{Key: "vols/a/snap/0000000000000006", Kind: Snap, Seq: 6, ModTime: old},
		{Key: "vols/a/volume.json", Kind: Descriptor, ModTime: old},
	}, Mark: &Marking{Base: 6, HasBase: true, Refs: []Ref{{"a", 4}}}}
	in := Input{Params: Params{Now: t0, Grace: grace}, Volumes: []*Volume{v}, Fence: map[Ref]bool{}}
	pl := Make(in)
	if got := kinds(pl.NeedType); len(got) != 2 || pl.NeedType[0].Object.Seq != 1 || pl.NeedType[1].Object.Seq != 2 {
		t.Fatalf("first pass asks for %v, want the types of records 1 and 2", got)
	}
	if got := kinds(pl.Deleted); len(got) != 1 || pl.Deleted[0].Object.Seq != 3 {
		t.Fatalf("first pass deletes %v, want only record 3 (too big to be a fence)", got)
	}
	in.Fence[Ref{"a", 1}] = true
	in.Fence[Ref{"a", 2}] = false
	pl = Make(in)
	if len(pl.NeedType) != 0 {
		t.Fatalf("second pass still asks for %v", kinds(pl.NeedType))
	}
	got := kinds(pl.Deleted)
	want := []string{"a/2:unreferenced, below the retention base snapshot", "a/3:unreferenced, below the retention base snapshot"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("deleted %v, want %v", got, want)
	}
	if n := pl.KeptByReason["fence (never deleted while the volume exists)"]; n != 1 {
		t.Errorf("fences kept: %d, want 1 (%v)", n, pl.KeptByReason)
	}
	if got := kinds(pl.Kept); fmt.Sprint(got) != "[a/4:referenced by a live map (web) a/5:younger than the grace period]" {
		t.Errorf("interesting kept: %v", got)
	}
}

func TestMakeDeletedVolumeKeepsWhatClonesUseAndItsTail(t *testing.T) {
	parent := &Volume{ID: "p", Objects: []Object{
		{Key: "vols/p/ckpt/c1", Kind: Checkpoint, Label: "c1", ModTime: old},
		{Key: "vols/p/deleted", Kind: Tombstone, ModTime: old},
		logObj("p", 1, 100, old),
		logObj("p", 2, 100, old),
		{Key: "vols/p/volume.json", Kind: Descriptor, ModTime: old},
	}}
	clone := &Volume{ID: "c", Name: "clone", Objects: []Object{
		{Key: "vols/c/snap/0000000000000000", Kind: Snap, Seq: 0, ModTime: old},
		{Key: "vols/c/volume.json", Kind: Descriptor, ModTime: old},
	}, Mark: &Marking{Base: 0, Refs: []Ref{{"p", 2}}}}
	p := Params{Now: t0, Grace: grace}
	if st := Classify(parent, p); st != Deleted {
		t.Fatalf("parent is %v, want deleted (tombstone older than the grace period)", st)
	}
	pl := Make(Input{Params: p, Volumes: []*Volume{parent, clone}})
	var keys []string
	for _, d := range pl.Deleted {
		keys = append(keys, d.Object.Key)
	}
	want := "[vols/p/ckpt/c1 vols/p/log/0000000000000001]"
	if fmt.Sprint(keys) != want {
		t.Fatalf("deleted %v, want %v: record 2 is the clone's, and the tombstone and descriptor stay while anything of the volume does", keys, want)
	}
	// Once the clone no longer needs record 2, the volume goes entirely,
	// tombstone and descriptor last.
	clone.Mark.Refs = nil
	parent.Objects = parent.Objects[1:]
	parent.Objects = append(parent.Objects[:1], parent.Objects[2:]...)
	keys = nil
	for _, d := range Make(Input{Params: p, Volumes: []*Volume{parent, clone}}).Deleted {
		keys = append(keys, d.Object.Key)
	}
	want = "[vols/p/log/0000000000000002 vols/p/deleted vols/p/volume.json]"
	if fmt.Sprint(keys) != want {
		t.Fatalf("deleted %v, want %v", keys, want)
	}
}

func TestClassify(t *testing.T) {
	p := Params{Now: t0, Grace: grace}
	desc := Object{Kind: Descriptor, ModTime: old}
	for _, c := range []struct {
		name string
		v    Volume
		want State
	}{
		{"named", Volume{Name: "n", Objects: []Object{desc}}, Live},
		{"named without descriptor", Volume{Name: "n", Objects: []Object{logObj("x", 1, 1, old)}}, Deleted},
		{"being created", Volume{Objects: []Object{{Kind: Descriptor, ModTime: t0}}}, Protected},
		{"removed recently", Volume{Name: "n", Objects: []Object{desc, {Kind: Tombstone, ModTime: t0}}}, Protected},
		{"removed long ago", Volume{Objects: []Object{desc, {Kind: Tombstone, ModTime: old}}}, Deleted},
		{"orphaned", Volume{Objects: []Object{logObj("x", 1, 1, old)}}, Deleted},
	} {
		if got := Classify(&c.v, p); got != c.want {
			t.Errorf("%s: %v, want %v", c.name, got, c.want)
		}
	}
}
