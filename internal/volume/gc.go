package volume

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/urldisk/urldisk/internal/format"
	"github.com/urldisk/urldisk/internal/gcplan"
	"github.com/urldisk/urldisk/internal/journal"
	"github.com/urldisk/urldisk/internal/objstore"
)

// GCOptions configure a pool garbage collection.
type GCOptions struct {
	// DryRun reports what would be deleted without deleting.
	DryRun bool
	// Grace: objects younger than this are never deleted (in-flight readers,
	// volumes being created). Default 1h; negative means 0.
	Grace time.Duration
	// Retention: every point of the last Retention stays readable and
	// clonable. Default 24h; negative means 0 (head and checkpoints only).
	Retention time.Duration
}

func (o GCOptions) withDefaults() GCOptions {
	if o.Grace == 0 {
		o.Grace = time.Hour
	}
	if o.Grace < 0 {
		o.Grace = 0
	}
	if o.Retention == 0 {
		o.Retention = DefaultRetention
	}
	if o.Retention < 0 {
		o.Retention = 0
	}
	return o
}

// GCItem is one object GC deleted or kept, with the reason.
type GCItem struct {
	Key    string `json:"key"`
	Volume string `json:"volume"` // name, or id for deleted volumes
	Size   int64  `json:"size"`
	Reason string `json:"reason"`
}

// GCReport says what a GC run did.
type GCReport struct {
	Deleted      []GCItem       `json:"deleted"`
	KeptByReason map[string]int `json:"kept_by_reason"`
	// Kept lists kept objects that were eligible by age and position but
	// referenced (the interesting ones).
	Kept         []GCItem `json:"kept"`
	DeletedBytes int64    `json:"deleted_bytes"`
	DryRun       bool     `json:"dry_run"`
}

// poolScan is the mark phase's result: every volume's listing and, for
// those GC marks, the records their live maps reference.
type poolScan struct {
	vols   []*gcplan.Volume
	params gcplan.Params
}

// listedObject says what a listed object of a volume is; sub is its key
// below vols/<id>/.
func listedObject(oi objstore.ObjectInfo, sub string) gcplan.Object {
	o := gcplan.Object{Key: oi.Key, Size: oi.Size, ModTime: oi.ModTime, Kind: gcplan.Metadata}
	switch {
	case strings.HasPrefix(sub, "log/"), strings.HasPrefix(sub, "snap/"):
		o.Kind = gcplan.Unrecognised
		if seq, err := format.ParseSeqKey(oi.Key); err == nil {
			o.Kind, o.Seq = gcplan.Log, seq
			if strings.HasPrefix(sub, "snap/") {
				o.Kind = gcplan.Snap
			}
		}
	case strings.HasPrefix(sub, removedCkptDir):
		o.Kind, o.Label = gcplan.RemovedCheckpoint, strings.TrimPrefix(sub, removedCkptDir)
	case strings.HasPrefix(sub, "ckpt/"):
		o.Kind, o.Label = gcplan.Checkpoint, strings.TrimPrefix(sub, "ckpt/")
	case sub == tombstoneName:
		o.Kind = gcplan.Tombstone
	case sub == "volume.json":
		o.Kind = gcplan.Descriptor
	}
	return o
}

// scan lists the pool and marks every record referenced by the head,
// checkpoints and retention window of every live volume, and by the
// snapshots of volumes being created or recently deleted (a clone may be
// copying their maps right now). What is live is gcplan's decision.
func (p *Pool) scan(ctx context.Context, o GCOptions) (*poolScan, error) {
	s := &poolScan{params: gcplan.Params{Now: p.clock.Now(), Grace: o.Grace}}
	names := map[string]string{} // id -> name
	if err := p.store.List(ctx, format.NamesPrefix, func(oi objstore.ObjectInfo) error {
		name := strings.TrimPrefix(oi.Key, format.NamesPrefix)
		var nb format.NameBinding
		switch err := getDoc(ctx, p.store, oi.Key, format.KindName, &nb); {
		case errors.Is(err, objstore.ErrNotFound):
			return nil // removed since the listing
		case err != nil:
			return fmt.Errorf("name %q: %w", name, err)
		}
		names[nb.ID] = name
		return nil
	}); err != nil {
		return nil, fmt.Errorf("gc: list names: %w", err)
	}
	byID := map[string]*gcplan.Volume{}
	if err := p.store.List(ctx, format.VolsPrefix, func(oi objstore.ObjectInfo) error {
		rest := strings.TrimPrefix(oi.Key, format.VolsPrefix)
		id, sub, ok := strings.Cut(rest, "/")
		if !ok {
			return nil
		}
		g := byID[id]
		if g == nil {
			g = &gcplan.Volume{ID: id, Name: names[id]}
			byID[id] = g
			s.vols = append(s.vols, g)
		}
		g.Objects = append(g.Objects, listedObject(oi, sub))
		return nil
	}); err != nil {
		return nil, fmt.Errorf("gc: list volumes: %w", err)
	}
	for _, g := range s.vols {
		st := gcplan.Classify(g, s.params)
		if !gcplan.NeedsMark(g, st) {
			continue
		}
		d, err := p.descriptor(ctx, g.ID)
		if errors.Is(err, objstore.ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		m, err := p.markVolume(ctx, s.params, g, d, st, o)
		if err != nil {
			return nil, fmt.Errorf("gc: volume %s: %w", g.Label(), err)
		}
		g.Mark = m
	}
	return s, nil
}

// snapTime reads the time a snapshot was taken at (the time of its record)
// from its header, without fetching the whole snapshot.
func (p *Pool) snapTime(ctx context.Context, key string) (int64, error) {
	var head [128]byte
	n, err := p.store.GetRange(ctx, key, 0, head[:])
	if err != nil {
		return 0, err
	}
	h, err := format.PeekSnapshotHeader(head[:n])
	if err != nil {
		return 0, err
	}
	return h.Time, nil
}

// gcBase loads the retention base into img: the newest snapshot taken
// before the window (record times of valid records never go back), or,
// without one, the oldest loadable snapshot (replayed from for marking, but
// every record is kept: hasBase false). loaded is false if no snapshot
// could be loaded.
func (p *Pool) gcBase(ctx context.Context, img *image, d *format.VolumeDesc, snaps []uint64, keys map[uint64]string, windowStart int64) (_ *image, base uint64, hasBase, loaded bool, _ error) {
	for i := len(snaps) - 1; i >= 0 && !hasBase; i-- {
		t, err := p.snapTime(ctx, keys[snaps[i]])
		if err != nil {
			if errors.Is(err, format.ErrCorrupt) {
				continue
			}
			return nil, 0, false, false, err
		}
		if t >= windowStart {
			continue
		}
		if err := p.loadSnapshot(ctx, img, d.ID, snaps[i], true); err != nil {
			if errors.Is(err, format.ErrCorrupt) {
				img = newImage(d)
				continue
			}
			return nil, 0, false, false, err
		}
		base, hasBase = snaps[i], true
	}
	loaded = hasBase
	for _, sq := range snaps {
		if loaded {
			break
		}
		if err := p.loadSnapshot(ctx, img, d.ID, sq, true); err == nil {
			base, loaded = sq, true
		} else if !errors.Is(err, format.ErrCorrupt) {
			return nil, 0, false, false, err
		} else {
			img = newImage(d)
		}
	}
	return img, base, hasBase, loaded, nil
}

// markVolume loads the maps volume g needs: every map from its retention
// base to its head (base snapshot, applied records, restore targets) and
// every checkpoint's map (removed ones too, for a while). A nil marking
// means nothing to mark (a protected clone that never got a snapshot).
func (p *Pool) markVolume(ctx context.Context, pp gcplan.Params, g *gcplan.Volume, d *format.VolumeDesc, st gcplan.State, o GCOptions) (*gcplan.Marking, error) {
	windowStart := pp.Now.Add(-o.Retention).UnixNano()
	keys := map[uint64]string{}
	var snaps []uint64
	for _, ob := range g.Objects {
		if ob.Kind == gcplan.Snap {
			keys[ob.Seq] = ob.Key
			snaps = append(snaps, ob.Seq)
		}
	}
	sort.Slice(snaps, func(i, j int) bool { return snaps[i] < snaps[j] })
	img, base, hasBase, loaded, err := p.gcBase(ctx, newImage(d), d, snaps, keys, windowStart)
	if err != nil {
		return nil, err
	}
	if !loaded && d.Parent != nil {
		if st == gcplan.Protected {
			return nil, nil // removed and partly collected already; everything of it is kept anyway
		}
		return nil, fmt.Errorf("clone has no usable snapshot; refusing to guess what its parent must keep")
	}
	m := &gcplan.Marking{Base: base, HasBase: hasBase}
	markMap := func(im *image) {
		for e := range im.m.All() {
			m.Refs = append(m.Refs, gcplan.Ref{Vol: im.vols[e.Loc.Vol], Seq: e.Loc.Seq})
		}
	}
	markMap(img)
	// Replay base..head: every applied record and every restore target is live.
	recs, err := p.fetchRecords(ctx, img, ^uint64(0))
	if err != nil {
		return nil, err
	}
	for _, r := range recs {
		st, v, err := journal.Replay(img.st, r)
		if err != nil {
			return nil, err
		}
		img.st = st
		if v != journal.Apply {
			continue
		}
		if r.Type == format.RecordRestore {
			t := newImage(d)
			if err := p.loadSnapshot(ctx, t, r.RestoreVol, r.RestoreSeq, false); err != nil {
				return nil, err
			}
			markMap(t)
			if r.RestoreVol == d.ID {
				m.RestoreTargets = append(m.RestoreTargets, r.RestoreSeq)
			}
			continue
		}
		m.Refs = append(m.Refs, gcplan.Ref{Vol: d.ID, Seq: r.Seq})
	}
	docs, err := p.listCheckpoints(ctx, d.ID)
	if err != nil {
		return nil, err
	}
	for _, l := range gcplan.RemovedToMark(g, pp) {
		c, err := p.readCheckpointAt(ctx, format.VolsPrefix+d.ID+"/"+removedCkptDir+l)
		if errors.Is(err, ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		docs = append(docs, c)
	}
	for _, c := range docs {
		ci, err := p.loadImage(ctx, d, c.Seq)
		if err != nil {
			return nil, fmt.Errorf("checkpoint %q: %w", c.Label, err)
		}
		markMap(ci)
		m.Checkpoints = append(m.Checkpoints, gcplan.CheckpointMark{Label: c.Label, Seq: c.Seq, SnapSeq: ci.snapSeq})
	}
	return m, nil
}

// plan asks gcplan what to delete, reading the type of the records it
// would delete but cannot judge from their size (fences stay, I4).
func (p *Pool) plan(ctx context.Context, s *poolScan, o GCOptions) (*GCReport, *gcplan.Plan, error) {
	in := gcplan.Input{Params: s.params, Volumes: s.vols, Fence: map[gcplan.Ref]bool{}}
	pl := gcplan.Make(in)
	if len(pl.NeedType) > 0 {
		for _, c := range pl.NeedType {
			r, err := p.readRecord(ctx, c.Object.Key, c.Object.Size)
			if err != nil {
				return nil, nil, fmt.Errorf("gc: %w", err)
			}
			in.Fence[gcplan.Ref{Vol: c.Volume.ID, Seq: c.Object.Seq}] = r.Type == format.RecordFence
		}
		pl = gcplan.Make(in)
	}
	rep := &GCReport{KeptByReason: pl.KeptByReason, DryRun: o.DryRun}
	item := func(d gcplan.Decision) GCItem {
		return GCItem{Key: d.Object.Key, Volume: d.Volume.Label(), Size: d.Object.Size, Reason: d.Reason}
	}
	for _, d := range pl.Deleted {
		rep.Deleted = append(rep.Deleted, item(d))
		rep.DeletedBytes += d.Object.Size
	}
	for _, d := range pl.Kept {
		rep.Kept = append(rep.Kept, item(d))
	}
	return rep, pl, nil
}

// GC marks every record referenced by a live map of any volume in the pool
// (heads, checkpoints, clones' bases, the retention window) and deletes the
// rest under invariant I5: only at or below a durable snapshot, never a
// fence of an existing volume, never younger than the grace period. It is
// safe to run concurrently with writers, clone creation and other GC runs.
func (p *Pool) GC(ctx context.Context, o GCOptions) (*GCReport, error) {
	o = o.withDefaults()
	s, err := p.scan(ctx, o)
	if err != nil {
		return nil, err
	}
	rep, _, err := p.plan(ctx, s, o)
	if err != nil {
		return nil, err
	}
	if o.DryRun {
		return rep, nil
	}
	for _, it := range rep.Deleted {
		if err := p.store.Delete(ctx, it.Key); err != nil {
			return rep, fmt.Errorf("gc: delete %s: %w", it.Key, err)
		}
	}
	return rep, nil
}

// tombstoneName marks a volume as deleted (vols/<id>/deleted).
const tombstoneName = "deleted"

// removedCkptDir holds removed checkpoints (vols/<id>/ckpt-removed/<label>)
// for the grace period, so a clone being made from one keeps its data.
const removedCkptDir = "ckpt-removed/"

// DUEntry is one volume's storage as `urldisk du` shows it.
type DUEntry struct {
	Name string `json:"name"`
	ID   string `json:"id"`
	// StoredBytes: all of the volume's objects.
	StoredBytes int64 `json:"stored_bytes"`
	// LogicalBytes: the data its log records hold (their size less frame
	// headers and, encrypted, nonces and tags).
	LogicalBytes int64 `json:"logical_bytes"`
	// ExclusiveBytes: its records referenced only by its own maps.
	ExclusiveBytes int64 `json:"exclusive_bytes"`
	// SharedBytes: its records also referenced by other volumes (clones).
	SharedBytes int64 `json:"shared_bytes"`
	// HistoryBytes: its records kept only for replay or retained history.
	HistoryBytes int64 `json:"history_bytes"`
	// GarbageBytes: what `urldisk gc` would delete now (grace ignored).
	GarbageBytes int64 `json:"garbage_bytes"`
}

// DU reports per-volume storage: exclusive vs shared bytes and reclaimable
// garbage, under the same rules as GC (with the grace period ignored).
func (p *Pool) DU(ctx context.Context, o GCOptions) ([]DUEntry, error) {
	o = o.withDefaults()
	o.Grace = 0
	s, err := p.scan(ctx, o)
	if err != nil {
		return nil, err
	}
	rep, pl, err := p.plan(ctx, s, o)
	if err != nil {
		return nil, err
	}
	garbage := map[string]bool{}
	for _, it := range rep.Deleted {
		garbage[it.Key] = true
	}
	var out []DUEntry
	for _, g := range s.vols {
		id := g.ID
		e := DUEntry{Name: g.Label(), ID: id}
		// A removed volume's descriptor may be gone: count it unsealed.
		d, derr := p.descriptor(ctx, id)
		if derr != nil {
			d = nil
		}
		logs := map[uint64]int64{}
		for _, oi := range g.Objects {
			e.StoredBytes += oi.Size
			if oi.Kind == gcplan.Log {
				logs[oi.Seq] = oi.Size
			}
			if garbage[oi.Key] {
				e.GarbageBytes += oi.Size
				continue
			}
			if oi.Kind != gcplan.Log {
				continue
			}
			by := pl.Marks[gcplan.Ref{Vol: id, Seq: oi.Seq}]
			switch {
			case len(by) == 0:
				e.HistoryBytes += oi.Size
			case len(by) == 1 && by[id]:
				e.ExclusiveBytes += oi.Size
			default:
				e.SharedBytes += oi.Size
			}
		}
		if e.LogicalBytes, err = p.logicalLogBytes(ctx, id, d, logs); err != nil {
			return nil, err
		}
		out = append(out, e)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}
