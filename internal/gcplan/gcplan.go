// Package gcplan decides what pool GC deletes (DESIGN.md invariants I4 and
// I5) from what a scan found: each volume's listed objects and the records
// its live maps reference. It does no I/O, reads no clock and keeps no
// state: internal/volume lists, reads and deletes around it (Pool.GC, DU),
// and the journal simulation drives the very same functions at every
// interleaving it explores, so the rules the simulation checks at each
// deletion are the rules that delete data.
//
// A GC run is: list the volumes (Classify each), mark the ones that need it
// (the caller loads their maps and fills Volume.Mark; RemovedToMark says
// which removed checkpoints still count), then Make a plan. A record that
// Make would delete but whose type it does not know is returned in
// Plan.NeedType: the caller reads it, fills Input.Fence and calls Make
// again (a fence is never deleted while its volume exists).
package gcplan

import (
	"slices"
	"sort"
	"strings"
	"time"
)

// Kind is what a listed object of a volume is.
type Kind uint8

const (
	// Metadata is any other object of the volume (descriptor, policy): kept
	// while the volume is live, deleted last once it is gone.
	Metadata Kind = iota
	Log
	Snap
	Checkpoint
	RemovedCheckpoint
	Tombstone
	Descriptor
	// Unrecognised is a key under log/ or snap/ that names no seq: never
	// deleted, as GC cannot tell what it is.
	Unrecognised
)

// Object is one listed object of a volume.
type Object struct {
	Key     string
	Kind    Kind
	Seq     uint64 // Log, Snap
	Label   string // Checkpoint, RemovedCheckpoint
	Size    int64
	ModTime time.Time
}

// Params are a run's clock reading and grace period.
type Params struct {
	Now time.Time
	// Grace: objects younger than this are never deleted (in-flight
	// readers and writers, volumes being created).
	Grace time.Duration
}

// Young says an object is inside the grace period.
func (p Params) Young(modTime time.Time) bool { return p.Now.Sub(modTime) < p.Grace }

// Ref names a record: volume id and seq.
type Ref struct {
	Vol string
	Seq uint64
}

// CheckpointMark is a checkpoint whose map the volume keeps: the
// checkpoint's seq and the snapshot its map was loaded from.
type CheckpointMark struct {
	Label   string
	Seq     uint64
	SnapSeq uint64
}

// Marking is what the caller learned by loading a volume's live maps.
type Marking struct {
	// Base is the retention base snapshot: the newest one taken before the
	// retention window (HasBase), or else the oldest loadable one, from
	// which the caller replayed. Records at or below Base are not needed
	// to replay any retained point only if HasBase.
	Base    uint64
	HasBase bool
	// Refs are the records some map of the volume references: the base
	// map, every record applied from the base to the head, every restore
	// target's map and every checkpoint's map.
	Refs []Ref
	// RestoreTargets are the volume's own snapshots that a restore record
	// applied from the base to the head starts from.
	RestoreTargets []uint64
	// Checkpoints are the checkpoints (and removed checkpoints still
	// inside the grace period) whose maps are in Refs.
	Checkpoints []CheckpointMark
}

// Volume is a volume's listing and, if it was marked, its marking.
type Volume struct {
	ID      string
	Name    string   // bound name, "" if none
	Objects []Object // in listing (key) order
	Mark    *Marking // nil if not marked
}

// Label names the volume in reports.
func (v *Volume) Label() string {
	if v.Name != "" {
		return v.Name
	}
	return v.ID + " (deleted)"
}

// State is what GC makes of a volume.
type State uint8

const (
	// Live: named and not removed; marked, and collected below its
	// retention base.
	Live State = iota
	// Protected: being created, or removed less than the grace period ago
	// (a clone may be copying its maps): marked, nothing of it deleted.
	Protected
	// Deleted: removed long ago, or an orphaned prefix: collectable except
	// what other volumes' maps reference.
	Deleted
)

func (s State) String() string {
	switch s {
	case Live:
		return "live"
	case Protected:
		return "protected"
	case Deleted:
		return "deleted"
	}
	return "unknown"
}

// Classify judges a volume's state from its listing.
func Classify(v *Volume, p Params) State {
	var tomb *Object
	young, desc := false, false
	for i := range v.Objects {
		o := &v.Objects[i]
		young = young || p.Young(o.ModTime)
		switch o.Kind {
		case Tombstone:
			tomb = o
		case Descriptor:
			desc = true
		}
	}
	var st State
	switch {
	case v.Name != "" && tomb == nil:
		st = Live
	case tomb != nil && p.Young(tomb.ModTime):
		st = Protected // recently removed: a clone may be reading it
	case tomb == nil && young:
		st = Protected // being created
	default:
		st = Deleted // removed long ago, or orphaned objects
	}
	if !desc && st == Live {
		// A name whose descriptor is gone names nothing GC can mark.
		st = Deleted
	}
	return st
}

// NeedsMark says whether the caller must load the volume's maps.
func NeedsMark(v *Volume, st State) bool {
	return st != Deleted && slices.ContainsFunc(v.Objects, func(o Object) bool { return o.Kind == Descriptor })
}

// RemovedToMark lists the removed checkpoints whose maps still count: those
// removed less than the grace period ago, as a clone may be reading them.
func RemovedToMark(v *Volume, p Params) []string {
	var out []string
	for _, o := range v.Objects {
		if o.Kind == RemovedCheckpoint && p.Young(o.ModTime) {
			out = append(out, o.Label)
		}
	}
	return out
}

// Input is everything a plan is made from.
type Input struct {
	Params
	Volumes []*Volume
	// Fence says, for records whose type the caller read, whether each is
	// a fence. A record Make would delete is looked up here; if absent it
	// is kept and listed in Plan.NeedType.
	Fence map[Ref]bool
}

// Rule is why an object was kept or deleted.
type Rule uint8

const (
	KeepProtected Rule = iota
	KeepReplay
	KeepReferenced
	KeepYoung
	KeepFence
	KeepTypeUnread
	KeepUnrecognised
	KeepSnapshot
	KeepCheckpoint
	KeepMetadata
	DeleteRecord
	DeleteSnapshot
	DeleteRemovedCheckpoint
	DeleteCheckpoint
	DeleteMetadata
)

// Decision is one object kept or deleted, with the reason.
type Decision struct {
	Volume *Volume
	Object Object
	Rule   Rule
	Reason string
}

// Plan is a run's decisions.
type Plan struct {
	// Deleted, in the order to delete: a deleted volume's descriptor and
	// tombstone come after everything else of it.
	Deleted []Decision
	// Kept are records kept although old enough and below the base: the
	// interesting ones (referenced by a live map, or young).
	Kept         []Decision
	KeptByReason map[string]int
	// NeedType are records Make would delete but whose type it does not
	// know: read them, fill Input.Fence, and Make again.
	NeedType []Decision
	// Marks: every referenced record, with the ids of the volumes whose
	// maps reference it.
	Marks map[Ref]map[string]bool
	// States: each volume's state, by id.
	States map[string]State
}

// FenceMaxSize: a record at least this big is data, not a fence, so GC
// need not read it to know it may go.
const FenceMaxSize = 128 << 10

// marks collects every volume's references, and the records between each
// checkpoint's snapshot and the checkpoint (its map is replayed from them).
func marks(vols []*Volume) map[Ref]map[string]bool {
	out := map[Ref]map[string]bool{}
	mark := func(r Ref, by string) {
		m := out[r]
		if m == nil {
			m = map[string]bool{}
			out[r] = m
		}
		m[by] = true
	}
	for _, v := range vols {
		if v.Mark == nil {
			continue
		}
		for _, r := range v.Mark.Refs {
			mark(r, v.ID)
		}
		for _, c := range v.Mark.Checkpoints {
			for sq := c.SnapSeq + 1; sq <= c.Seq; sq++ {
				mark(Ref{v.ID, sq}, v.ID)
			}
		}
	}
	return out
}

// keepSnaps says which snapshots of a marked volume stay, and why: the
// retention base, restore targets, those inside retention and checkpoints'.
func keepSnaps(v *Volume) map[uint64]string {
	keep := map[uint64]string{}
	m := v.Mark
	if m == nil {
		return keep
	}
	snaps := map[uint64]bool{}
	for _, o := range v.Objects {
		if o.Kind == Snap {
			snaps[o.Seq] = true
		}
	}
	keep[m.Base] = "retention base snapshot"
	for _, sq := range m.RestoreTargets {
		keep[sq] = "restore target"
	}
	for sq := range snaps {
		if _, ok := keep[sq]; !ok && sq >= m.Base {
			keep[sq] = "snapshot inside retention"
		}
	}
	for _, c := range m.Checkpoints {
		if snaps[c.Seq] {
			keep[c.Seq] = "checkpoint " + c.Label
		}
		if _, ok := keep[c.SnapSeq]; !ok {
			keep[c.SnapSeq] = "checkpoint " + c.Label
		}
	}
	return keep
}

// Make decides, per listed object, delete or keep (I4, I5).
func Make(in Input) *Plan {
	vols := slices.Clone(in.Volumes)
	sort.Slice(vols, func(i, j int) bool { return vols[i].ID < vols[j].ID })
	pl := &Plan{KeptByReason: map[string]int{}, Marks: marks(vols), States: map[string]State{}}
	byID := map[string]*Volume{}
	for _, v := range vols {
		byID[v.ID] = v
	}
	for _, v := range vols {
		st := Classify(v, in.Params)
		pl.States[v.ID] = st
		if st == Protected {
			why := "volume being created"
			if slices.ContainsFunc(v.Objects, func(o Object) bool { return o.Kind == Tombstone }) {
				why = "volume removed less than the grace period ago"
			}
			for _, o := range v.Objects {
				pl.keep(v, o, KeepProtected, why, false)
			}
			continue
		}
		pl.volume(in, v, st == Deleted, byID)
	}
	return pl
}

func (pl *Plan) keep(v *Volume, o Object, r Rule, why string, interesting bool) {
	pl.KeptByReason[why]++
	if interesting {
		pl.Kept = append(pl.Kept, Decision{v, o, r, why})
	}
}

func (pl *Plan) del(v *Volume, o Object, r Rule, why string) {
	pl.Deleted = append(pl.Deleted, Decision{v, o, r, why})
}

// volume plans one live or deleted volume.
func (pl *Plan) volume(in Input, v *Volume, deleted bool, byID map[string]*Volume) {
	keepSnap := keepSnaps(v)
	remaining := 0
	var tail []Object // descriptor and tombstone go last
	keep := func(o Object, r Rule, why string, interesting bool) {
		pl.keep(v, o, r, why, interesting)
		remaining++
	}
	for _, o := range v.Objects {
		young := in.Young(o.ModTime)
		switch o.Kind {
		case Unrecognised:
			keep(o, KeepUnrecognised, "unrecognised key", false)
		case Log:
			pl.record(in, v, o, deleted, keep, byID)
		case Snap:
			if why, ok := keepSnap[o.Seq]; ok && !deleted {
				keep(o, KeepSnapshot, why, false)
			} else if young {
				keep(o, KeepYoung, "younger than the grace period", false)
			} else {
				pl.del(v, o, DeleteSnapshot, "snapshot superseded")
			}
		case RemovedCheckpoint:
			if young && !deleted {
				keep(o, KeepYoung, "checkpoint removed less than the grace period ago", false)
			} else {
				pl.del(v, o, DeleteRemovedCheckpoint, "removed checkpoint")
			}
		case Checkpoint:
			if deleted {
				pl.del(v, o, DeleteCheckpoint, "volume deleted")
			} else {
				keep(o, KeepCheckpoint, "checkpoint", false)
			}
		default:
			if deleted {
				tail = append(tail, o)
			} else {
				keep(o, KeepMetadata, "volume metadata", false)
			}
		}
	}
	if deleted && remaining == 0 {
		for _, o := range tail {
			pl.del(v, o, DeleteMetadata, "volume deleted, nothing left")
		}
	}
}

// record plans one log record under I5: only at or below the retention base
// (of a live volume), unreferenced, older than the grace period, and (I4)
// not a fence of an existing volume.
func (pl *Plan) record(in Input, v *Volume, o Object, deleted bool, keep func(Object, Rule, string, bool), byID map[string]*Volume) {
	ref := Ref{v.ID, o.Seq}
	if !deleted && (v.Mark == nil || !v.Mark.HasBase || o.Seq > v.Mark.Base) {
		keep(o, KeepReplay, "needed to replay the head or retained history", false)
		return
	}
	if by := pl.Marks[ref]; len(by) > 0 {
		keep(o, KeepReferenced, "referenced by a live map"+referrers(byID, by), true)
		return
	}
	if in.Young(o.ModTime) {
		keep(o, KeepYoung, "younger than the grace period", true)
		return
	}
	if !deleted && o.Size < FenceMaxSize {
		fence, known := in.Fence[ref]
		switch {
		case !known:
			pl.NeedType = append(pl.NeedType, Decision{v, o, KeepTypeUnread, "record type not read"})
			keep(o, KeepTypeUnread, "record type not read", false)
			return
		case fence:
			keep(o, KeepFence, "fence (never deleted while the volume exists)", false)
			return
		}
	}
	why := "unreferenced, below the retention base snapshot"
	if deleted {
		why = "volume deleted, no clone needs it"
	}
	pl.del(v, o, DeleteRecord, why)
}

func referrers(byID map[string]*Volume, by map[string]bool) string {
	var names []string
	for id := range by {
		if v := byID[id]; v != nil {
			names = append(names, v.Label())
		} else {
			names = append(names, id)
		}
	}
	sort.Strings(names)
	return " (" + strings.Join(names, ", ") + ")"
}
