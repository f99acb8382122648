package volume

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/urldisk/urldisk/internal/format"
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

type recRef struct {
	vol string
	seq uint64
}

// gcVol is what the scan learned about one volume.
type gcVol struct {
	id      string
	desc    *format.VolumeDesc // nil if the descriptor is gone
	name    string             // bound name, "" if none
	objects []objstore.ObjectInfo
	logs    map[uint64]objstore.ObjectInfo
	snaps   map[uint64]objstore.ObjectInfo
	// removedCkpts are checkpoint labels removed less than the grace period
	// ago: a clone may still be reading them.
	removedCkpts []string
	tombstone    *objstore.ObjectInfo
	hasDescObj   bool
	young        bool // some object is younger than the grace period
	// state: live (named), protected (being created or recently deleted:
	// marked, nothing deleted), or deleted (collectable).
	state gcState
	// base is the newest snapshot older than the retention window: records
	// at or below it are not needed to replay any retained point.
	base     uint64
	hasBase  bool
	keepSnap map[uint64]string
}

type gcState int

const (
	gcLive gcState = iota
	gcProtected
	gcDeleted
)

func (g *gcVol) label() string {
	if g.name != "" {
		return g.name
	}
	return g.id + " (deleted)"
}

// poolScan is the mark phase's result: every volume and every record some
// live map references, with the volumes referencing it.
type poolScan struct {
	vols  map[string]*gcVol
	marks map[recRef]map[string]bool
	now   time.Time
}

func (s *poolScan) mark(r recRef, by string) {
	m := s.marks[r]
	if m == nil {
		m = map[string]bool{}
		s.marks[r] = m
	}
	m[by] = true
}

// scan lists the pool and marks every record referenced by the head,
// checkpoints and retention window of every live volume, and by the
// snapshots of volumes being created or recently deleted (a clone may be
// copying their maps right now).
func (p *Pool) scan(ctx context.Context, o GCOptions) (*poolScan, error) {
	s := &poolScan{vols: map[string]*gcVol{}, marks: map[recRef]map[string]bool{}, now: p.clock.Now()}
	names := map[string]string{} // id -> name
	if err := p.store.List(ctx, format.NamesPrefix, func(oi objstore.ObjectInfo) error {
		name := strings.TrimPrefix(oi.Key, format.NamesPrefix)
		b, err := p.store.Get(ctx, oi.Key)
		if errors.Is(err, objstore.ErrNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		var nb format.NameBinding
		if err := format.DecodeDoc(format.KindName, b, &nb); err != nil {
			return fmt.Errorf("name %q: %w", name, err)
		}
		names[nb.ID] = name
		return nil
	}); err != nil {
		return nil, fmt.Errorf("gc: list names: %w", err)
	}
	young := func(oi objstore.ObjectInfo) bool { return s.now.Sub(oi.ModTime) < o.Grace }
	if err := p.store.List(ctx, format.VolsPrefix, func(oi objstore.ObjectInfo) error {
		rest := strings.TrimPrefix(oi.Key, format.VolsPrefix)
		id, sub, ok := strings.Cut(rest, "/")
		if !ok {
			return nil
		}
		g := s.vols[id]
		if g == nil {
			g = &gcVol{id: id, name: names[id], logs: map[uint64]objstore.ObjectInfo{}, snaps: map[uint64]objstore.ObjectInfo{}, keepSnap: map[uint64]string{}}
			s.vols[id] = g
		}
		g.objects = append(g.objects, oi)
		g.young = g.young || young(oi)
		switch {
		case strings.HasPrefix(sub, "log/"):
			if seq, err := format.ParseSeqKey(oi.Key); err == nil {
				g.logs[seq] = oi
			}
		case strings.HasPrefix(sub, "snap/"):
			if seq, err := format.ParseSeqKey(oi.Key); err == nil {
				g.snaps[seq] = oi
			}
		case strings.HasPrefix(sub, removedCkptDir):
			if young(oi) {
				g.removedCkpts = append(g.removedCkpts, strings.TrimPrefix(sub, removedCkptDir))
			}
		case sub == tombstoneName:
			t := oi
			g.tombstone = &t
		case sub == "volume.json":
			g.hasDescObj = true
		}
		return nil
	}); err != nil {
		return nil, fmt.Errorf("gc: list volumes: %w", err)
	}
	for _, g := range s.vols {
		switch {
		case g.name != "" && g.tombstone == nil:
			g.state = gcLive
		case g.tombstone != nil && young(*g.tombstone):
			g.state = gcProtected // recently removed: a clone may be reading it
		case g.tombstone == nil && g.young:
			g.state = gcProtected // being created
		default:
			g.state = gcDeleted // removed long ago, or orphaned objects
		}
		if g.state == gcDeleted || !g.hasDescObj {
			if g.state != gcProtected {
				g.state = gcDeleted
			}
			continue
		}
		d, err := p.descriptor(ctx, g.id)
		if errors.Is(err, objstore.ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		g.desc = d
		if err := p.markVolume(ctx, s, g, o); err != nil {
			return nil, fmt.Errorf("gc: volume %s: %w", g.label(), err)
		}
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

// markVolume marks the records volume g needs: every map from its
// retention base to its head (base snapshot, applied records, restore
// targets) and every checkpoint's map (removed ones too, for a while).
func (p *Pool) markVolume(ctx context.Context, s *poolScan, g *gcVol, o GCOptions) error {
	d := g.desc
	windowStart := s.now.Add(-o.Retention).UnixNano()
	// Base: the newest snapshot taken before the window (record times of
	// valid records never go back). Without one, replay from the oldest
	// snapshot for marking but keep every record (hasBase false).
	img := newImage(d)
	snaps := sortedSeqs(g.snaps)
	for i := len(snaps) - 1; i >= 0 && !g.hasBase; i-- {
		t, err := p.snapTime(ctx, g.snaps[snaps[i]].Key)
		if err != nil {
			if errors.Is(err, format.ErrCorrupt) {
				continue
			}
			return err
		}
		if t >= windowStart {
			continue
		}
		if err := p.loadSnapshot(ctx, img, d.ID, snaps[i], true); err != nil {
			if errors.Is(err, format.ErrCorrupt) {
				img = newImage(d)
				continue
			}
			return err
		}
		g.base, g.hasBase = snaps[i], true
	}
	loaded := g.hasBase
	for _, sq := range snaps {
		if loaded {
			break
		}
		if err := p.loadSnapshot(ctx, img, d.ID, sq, true); err == nil {
			g.base, loaded = sq, true
		} else if !errors.Is(err, format.ErrCorrupt) {
			return err
		} else {
			img = newImage(d)
		}
	}
	if !loaded && d.Parent != nil {
		if g.state == gcProtected {
			return nil // removed and partly collected already; everything of it is kept anyway
		}
		return fmt.Errorf("clone has no usable snapshot; refusing to guess what its parent must keep")
	}
	g.keepSnap[g.base] = "retention base snapshot"
	markMap := func(im *image) {
		for e := range im.m.All() {
			s.mark(recRef{im.vols[e.Loc.Vol], e.Loc.Seq}, d.ID)
		}
	}
	markMap(img)
	// Replay base..head: every applied record and every restore target is live.
	recs, err := p.fetchRecords(ctx, img, ^uint64(0))
	if err != nil {
		return err
	}
	for _, r := range recs {
		st, v, err := journal.Replay(img.st, r)
		if err != nil {
			return err
		}
		img.st = st
		if v != journal.Apply {
			continue
		}
		if r.Type == format.RecordRestore {
			t := newImage(d)
			if err := p.loadSnapshot(ctx, t, r.RestoreVol, r.RestoreSeq, false); err != nil {
				return err
			}
			markMap(t)
			if r.RestoreVol == d.ID {
				g.keepSnap[r.RestoreSeq] = "restore target"
			}
			continue
		}
		s.mark(recRef{d.ID, r.Seq}, d.ID)
	}
	// Snapshots at or after the base serve attach and retained points.
	for _, sq := range snaps {
		if sq >= g.base {
			if _, ok := g.keepSnap[sq]; !ok {
				g.keepSnap[sq] = "snapshot inside retention"
			}
		}
	}
	docs, err := p.listCheckpoints(ctx, d.ID)
	if err != nil {
		return err
	}
	for _, l := range g.removedCkpts {
		c, err := p.readCheckpointAt(ctx, format.VolsPrefix+d.ID+"/"+removedCkptDir+l)
		if errors.Is(err, ErrNotFound) {
			continue
		}
		if err != nil {
			return err
		}
		docs = append(docs, c)
	}
	for _, c := range docs {
		ci, err := p.loadImage(ctx, d, c.Seq)
		if err != nil {
			return fmt.Errorf("checkpoint %q: %w", c.Label, err)
		}
		markMap(ci)
		if _, ok := g.snaps[c.Seq]; ok {
			g.keepSnap[c.Seq] = "checkpoint " + c.Label
		}
		if _, ok := g.keepSnap[ci.snapSeq]; !ok {
			g.keepSnap[ci.snapSeq] = "checkpoint " + c.Label
		}
		// Records between the checkpoint's snapshot and the checkpoint.
		for sq := ci.snapSeq + 1; sq <= c.Seq; sq++ {
			s.mark(recRef{d.ID, sq}, d.ID)
		}
	}
	return nil
}

func sortedSeqs(m map[uint64]objstore.ObjectInfo) []uint64 {
	out := make([]uint64, 0, len(m))
	for s := range m {
		out = append(out, s)
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}

// plan decides, per object, delete or keep (I5). It reads small candidate
// records' trailers to keep fences.
func (p *Pool) plan(ctx context.Context, s *poolScan, o GCOptions) (*GCReport, error) {
	rep := &GCReport{KeptByReason: map[string]int{}, DryRun: o.DryRun}
	keep := func(g *gcVol, oi objstore.ObjectInfo, why string, interesting bool) {
		rep.KeptByReason[why]++
		if interesting {
			rep.Kept = append(rep.Kept, GCItem{Key: oi.Key, Volume: g.label(), Size: oi.Size, Reason: why})
		}
	}
	del := func(g *gcVol, oi objstore.ObjectInfo, why string) {
		rep.Deleted = append(rep.Deleted, GCItem{Key: oi.Key, Volume: g.label(), Size: oi.Size, Reason: why})
		rep.DeletedBytes += oi.Size
	}
	ids := make([]string, 0, len(s.vols))
	for id := range s.vols {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	for _, id := range ids {
		g := s.vols[id]
		if g.state == gcProtected {
			why := "volume being created"
			if g.tombstone != nil {
				why = "volume removed less than the grace period ago"
			}
			for _, oi := range g.objects {
				keep(g, oi, why, false)
			}
			continue
		}
		deleted := g.state == gcDeleted
		remaining := 0
		var tail []objstore.ObjectInfo // descriptor and tombstone go last
		for _, oi := range g.objects {
			young := s.now.Sub(oi.ModTime) < o.Grace
			sub := strings.TrimPrefix(oi.Key, format.VolsPrefix+id+"/")
			switch {
			case strings.HasPrefix(sub, "log/"):
				seq, err := format.ParseSeqKey(oi.Key)
				if err != nil {
					keep(g, oi, "unrecognised key", false)
					remaining++
					continue
				}
				if !deleted && (!g.hasBase || seq > g.base) {
					keep(g, oi, "needed to replay the head or retained history", false)
					remaining++
					continue
				}
				if by := s.marks[recRef{id, seq}]; len(by) > 0 {
					keep(g, oi, "referenced by a live map"+referrers(s, by), true)
					remaining++
					continue
				}
				if young {
					keep(g, oi, "younger than the grace period", true)
					remaining++
					continue
				}
				if !deleted && oi.Size < 128<<10 {
					r, err := p.readRecord(ctx, oi.Key, oi.Size)
					if err != nil {
						return nil, fmt.Errorf("gc: %w", err)
					}
					if r.Type == format.RecordFence {
						keep(g, oi, "fence (never deleted while the volume exists)", false)
						remaining++
						continue
					}
				}
				why := "unreferenced, below the retention base snapshot"
				if deleted {
					why = "volume deleted, no clone needs it"
				}
				del(g, oi, why)
			case strings.HasPrefix(sub, "snap/"):
				seq, _ := format.ParseSeqKey(oi.Key)
				if why, ok := g.keepSnap[seq]; ok && !deleted {
					keep(g, oi, why, false)
					remaining++
				} else if young {
					keep(g, oi, "younger than the grace period", false)
					remaining++
				} else {
					del(g, oi, "snapshot superseded")
				}
			case strings.HasPrefix(sub, removedCkptDir):
				if young && !deleted {
					keep(g, oi, "checkpoint removed less than the grace period ago", false)
					remaining++
				} else {
					del(g, oi, "removed checkpoint")
				}
			case strings.HasPrefix(sub, "ckpt/"):
				if deleted {
					del(g, oi, "volume deleted")
				} else {
					keep(g, oi, "checkpoint", false)
					remaining++
				}
			default:
				if deleted {
					tail = append(tail, oi)
				} else {
					keep(g, oi, "volume metadata", false)
					remaining++
				}
			}
		}
		if deleted && remaining == 0 {
			for _, oi := range tail {
				del(g, oi, "volume deleted, nothing left")
			}
		}
	}
	return rep, nil
}

func referrers(s *poolScan, by map[string]bool) string {
	var names []string
	for id := range by {
		if g := s.vols[id]; g != nil {
			names = append(names, g.label())
		} else {
			names = append(names, id)
		}
	}
	sort.Strings(names)
	return " (" + strings.Join(names, ", ") + ")"
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
	rep, err := p.plan(ctx, s, o)
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
	rep, err := p.plan(ctx, s, o)
	if err != nil {
		return nil, err
	}
	garbage := map[string]bool{}
	for _, it := range rep.Deleted {
		garbage[it.Key] = true
	}
	var out []DUEntry
	for id, g := range s.vols {
		e := DUEntry{Name: g.label(), ID: id}
		for _, oi := range g.objects {
			e.StoredBytes += oi.Size
			if garbage[oi.Key] {
				e.GarbageBytes += oi.Size
				continue
			}
			seq, err := format.ParseSeqKey(oi.Key)
			if err != nil || !strings.Contains(oi.Key, "/log/") {
				continue
			}
			by := s.marks[recRef{id, seq}]
			switch {
			case len(by) == 0:
				e.HistoryBytes += oi.Size
			case len(by) == 1 && by[id]:
				e.ExclusiveBytes += oi.Size
			default:
				e.SharedBytes += oi.Size
			}
		}
		out = append(out, e)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}
