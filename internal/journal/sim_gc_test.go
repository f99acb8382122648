package journal

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/urldisk/urldisk/internal/format"
	"github.com/urldisk/urldisk/internal/gcplan"
)

// Pool GC as a sequence of steps the scheduler interleaves with writers,
// zombies, clones and removals. The decisions are the real ones: every
// state, mark and keep/delete verdict comes from internal/gcplan, the
// package volume.Pool.GC calls; what is simulated here is only the I/O
// around it (volume/gc.go: scan, markVolume, plan), one request per step:
//
//	stage 0  take "now", list names                        scan
//	stage 1  list vols/ (within listGap steps of stage 0)  scan
//	         then mark one volume per step                 markVolume
//	         then plan (reading candidates' types)         plan
//	stage 2  delete one object per step                    GC
//
// Each step reads the store as it is at that step, as the real code's
// separate requests do. Time is the step: an object's ModTime is the step
// it landed at (as nanoseconds), and so are the grace period and "now". A
// record is also kept (at delete time) while a request or live writer may
// still create or read its slot, the stand-in for "no request outlives
// the grace period".
//
// The checker (liveRefs, checkRecordDelete, checkSnapDelete) states I4/I5
// independently, at the moment of each deletion: the maps of every point
// of every existing volume from the oldest point the retention window
// promises to its head, every checkpoint's, every clone's (their maps name
// their ancestors' records) and every clone in progress.

// simGCVol is one listed volume: the planner's view and the sim's.
type simGCVol struct {
	v  *simVol
	pv *gcplan.Volume
}

type simGC struct {
	n       int
	stage   int
	now     int            // the scan's "now", taken before the names are listed
	listed  map[simRef]int // ModTime of each listed snapshot
	names   map[int]bool
	params  gcplan.Params
	vols    []*simGCVol
	byID    map[string]*simVol
	mark    []*simGCVol // still to mark
	dels    []gcplan.Decision
	next    int
	deleted int
}

// simGCID is a volume's id as the planner sees it: the listing order.
func simGCID(v *simVol) string { return fmt.Sprintf("%016x", v.key) }

// simAt is a step as a time, for the planner.
func simAt(step int) time.Time { return time.Unix(0, int64(step)) }

func (s *sim) startGC() bool {
	g := &simGC{n: s.nGC, now: s.step, names: map[int]bool{}, listed: map[simRef]int{}, byID: map[string]*simVol{}}
	g.params = gcplan.Params{Now: simAt(g.now), Grace: time.Duration(s.p.grace)}
	s.nGC++
	for _, v := range s.vols {
		if v.named {
			g.names[v.idx] = true
		}
	}
	s.gcs = append(s.gcs, g)
	s.stats.gcRuns++
	s.tracef("gc %d: names listed (%d)", g.n, len(g.names))
	return true
}

func (s *sim) gcEnd(g *simGC, aborted string) {
	s.gcs = slices.DeleteFunc(s.gcs, func(o *simGC) bool { return o == g })
	if aborted != "" {
		s.stats.gcAborted++
		s.tracef("gc %d fails: %s", g.n, aborted)
		return
	}
	s.gcLastDeleted = g.deleted
	s.tracef("gc %d done: %d objects deleted", g.n, g.deleted)
	s.checkHeads(fmt.Sprintf("after gc %d", g.n))
}

func (s *sim) gcStep(g *simGC) {
	switch g.stage {
	case 0:
		s.gcListVols(g)
		g.stage = 1
	case 1:
		if len(g.mark) > 0 {
			gv := g.mark[0]
			g.mark = g.mark[1:]
			if err := s.gcMark(g, gv); err != "" {
				s.gcEnd(g, err)
			}
			return
		}
		if err := s.gcPlan(g); err != "" {
			s.gcEnd(g, err)
			return
		}
		g.stage = 2
	case 2:
		if g.next == len(g.dels) {
			s.gcEnd(g, "")
			return
		}
		d := g.dels[g.next]
		g.next++
		s.gcDelete(g, d)
	}
}

// simListing is v's objects as a listing of vols/<id>/ returns them, in
// key order.
func simListing(v *simVol, id string, listed map[simRef]int) []gcplan.Object {
	var out []gcplan.Object
	add := func(sub string, k gcplan.Kind, seq uint64, label string, size, born int) {
		out = append(out, gcplan.Object{Key: format.VolsPrefix + id + "/" + sub, Kind: k, Seq: seq, Label: label, Size: int64(size), ModTime: simAt(born)})
	}
	for _, c := range v.rmCkpts {
		add("ckpt-removed/"+c.label, gcplan.RemovedCheckpoint, 0, c.label, 64, c.born)
	}
	for _, c := range v.ckpts {
		add("ckpt/"+c.label, gcplan.Checkpoint, 0, c.label, 64, c.born)
	}
	if v.tomb {
		add("deleted", gcplan.Tombstone, 0, "", 64, v.tombBorn)
	}
	for seq, born := range v.store.born {
		add(fmt.Sprintf("log/%016x", seq), gcplan.Log, seq, "", len(v.store.objs[seq]), born)
	}
	for _, sn := range v.store.snaps {
		add(fmt.Sprintf("snap/%016x", sn.seq), gcplan.Snap, sn.seq, "", 64, sn.born)
		listed[simRef{v.idx, sn.seq}] = sn.born
	}
	if v.desc {
		add("volume.json", gcplan.Descriptor, 0, "", 64, v.descBorn)
	}
	slices.SortFunc(out, func(a, b gcplan.Object) int { return strings.Compare(a.Key, b.Key) })
	return out
}

// gcListVols lists vols/: every volume with an object, in id order, and
// has the planner judge its state.
func (s *sim) gcListVols(g *simGC) {
	vs := slices.Clone(s.vols)
	slices.SortFunc(vs, func(a, b *simVol) int {
		switch {
		case a.key < b.key:
			return -1
		case a.key > b.key:
			return 1
		}
		return 0
	})
	for _, v := range vs {
		if !v.hasObjects() {
			continue
		}
		id := simGCID(v)
		pv := &gcplan.Volume{ID: id, Objects: simListing(v, id, g.listed)}
		if g.names[v.idx] {
			pv.Name = v.id
		}
		g.byID[id] = v
		gv := &simGCVol{v: v, pv: pv}
		g.vols = append(g.vols, gv)
		st := gcplan.Classify(pv, g.params)
		switch {
		case st == gcplan.Protected:
			s.stats.gcProtected++
		case st == gcplan.Deleted && !v.desc && !v.tomb:
			s.stats.gcOrphans++
		}
		if !gcplan.NeedsMark(pv, st) {
			s.tracef("gc %d: %s is %s; not marked", g.n, v.id, st)
			continue
		}
		g.mark = append(g.mark, gv)
	}
	s.tracef("gc %d: %d volumes listed", g.n, len(g.vols))
}

// simMarker collects a volume's marking from the sim's maps.
type simMarker struct {
	s *sim
	m *gcplan.Marking
}

func (mk simMarker) ref(vol int, seq uint64) {
	mk.m.Refs = append(mk.m.Refs, gcplan.Ref{Vol: simGCID(mk.s.vols[vol]), Seq: seq})
}

func (mk simMarker) cells(cells map[uint64]simCell) {
	for _, c := range cells {
		if !c.zero {
			mk.ref(c.vol, c.seq)
		}
	}
}

// gcMark is markVolume's I/O: the descriptor is read now (gone: not
// marked); the retention base is the newest listed snapshot whose header
// time is before the window (none: the oldest, and HasBase is false); the
// base map and every record applied from the base to the head are marked,
// then the map of every checkpoint (listed now) and of every checkpoint
// the planner says was removed less than the grace period ago.
func (s *sim) gcMark(g *simGC, gv *simGCVol) string {
	v := gv.v
	if !v.desc {
		return ""
	}
	windowStart := int64(g.now - s.p.retention)
	var snaps []uint64
	for _, o := range gv.pv.Objects {
		if o.Kind == gcplan.Snap {
			snaps = append(snaps, o.Seq)
		}
	}
	slices.Sort(snaps)
	m := &gcplan.Marking{}
	var (
		st    State
		cells = map[uint64]simCell{}
	)
	for i := len(snaps) - 1; i >= 0 && !m.HasBase; i-- {
		sn := v.store.snapAt(snaps[i])
		if sn == nil {
			return fmt.Sprintf("read snapshot %d of %s: not found", snaps[i], v.id)
		}
		if sn.time >= windowStart {
			continue
		}
		m.Base, m.HasBase = sn.seq, true
		st, cells = sn.st, maps.Clone(sn.cells)
	}
	loaded := m.HasBase
	if !loaded && len(snaps) > 0 {
		sn := v.store.snapAt(snaps[0])
		if sn == nil {
			return fmt.Sprintf("read snapshot %d of %s: not found", snaps[0], v.id)
		}
		m.Base, loaded = sn.seq, true
		st, cells = sn.st, maps.Clone(sn.cells)
	}
	if !loaded && v.parent != nil {
		if gcplan.Classify(gv.pv, g.params) == gcplan.Protected {
			return "" // being created (snapshot 0 not written yet) or partly collected; everything of it is kept
		}
		s.failf("gc %d: clone %s has no usable snapshot (listed %v)", g.n, v.id, snaps)
		return "clone has no usable snapshot"
	}
	mk := simMarker{s, m}
	mk.cells(cells)
	// Replay base..head: a fresh listing, up to the first gap.
	for seq := st.Seq + 1; ; seq++ {
		if _, ok := v.store.objs[seq]; !ok {
			break
		}
		r, err := s.readLive(v, seq)
		if err != "" {
			return err
		}
		var vd Verdict
		var rerr error
		st, vd, rerr = Replay(st, r.r)
		if rerr != nil {
			return rerr.Error()
		}
		if vd == Apply {
			mk.ref(v.idx, seq)
		}
	}
	s.tracef("gc %d: %s marked: window from %d, base %d (has base %v; snapshots %v), head %d",
		g.n, v.id, windowStart, m.Base, m.HasBase, snaps, st.Seq)
	ckpts := slices.Clone(v.ckpts)
	for _, l := range gcplan.RemovedToMark(gv.pv, g.params) {
		i := slices.IndexFunc(v.rmCkpts, func(c *simCkpt) bool { return c.label == l })
		if i < 0 {
			continue
		}
		ckpts = append(ckpts, v.rmCkpts[i])
		s.stats.gcRmCkptMarked++
	}
	for _, c := range ckpts {
		sn := v.store.newestAtOrBelow(c.seq)
		var snapSeq uint64
		cst, cells := State{}, map[uint64]simCell{}
		if sn != nil {
			snapSeq, cst, cells = sn.seq, sn.st, maps.Clone(sn.cells)
		} else if v.parent != nil {
			return fmt.Sprintf("checkpoint %q: clone %s has no usable initial snapshot", c.label, v.id)
		}
		_, cells, _, err := s.replayLive(v, cst, cells, c.seq)
		if err != nil {
			return err.Error()
		}
		mk.cells(cells)
		m.Checkpoints = append(m.Checkpoints, gcplan.CheckpointMark{Label: c.label, Seq: c.seq, SnapSeq: snapSeq})
	}
	gv.pv.Mark = m
	return ""
}

// readLive reads a live record (a GC's GET); a missing one fails the run.
func (s *sim) readLive(v *simVol, seq uint64) (*simRec, string) {
	obj, ok := v.store.objs[seq]
	if !ok {
		return nil, fmt.Sprintf("read %s record %d: not found", v.id, seq)
	}
	r, err := s.decoded(v, seq, obj)
	if err != nil {
		s.failf("gc: %v", err)
		return nil, err.Error()
	}
	return r, ""
}

// gcPlan is plan: the planner decides; the types of the records it asks
// about are read now, as the real plan reads them.
func (s *sim) gcPlan(g *simGC) string {
	in := gcplan.Input{Params: g.params, Fence: map[gcplan.Ref]bool{}}
	for _, gv := range g.vols {
		in.Volumes = append(in.Volumes, gv.pv)
	}
	pl := gcplan.Make(in)
	if len(pl.NeedType) > 0 {
		for _, c := range pl.NeedType {
			r, err := s.readLive(g.byID[c.Volume.ID], c.Object.Seq)
			if err != "" {
				return err
			}
			in.Fence[gcplan.Ref{Vol: c.Volume.ID, Seq: c.Object.Seq}] = r.r.Type == format.RecordFence
		}
		pl = gcplan.Make(in)
	}
	if len(pl.NeedType) > 0 {
		s.failf("gc %d: the planner still asks for %d record types after reading them", g.n, len(pl.NeedType))
		return "planner loops"
	}
	for _, k := range pl.Kept {
		switch k.Rule {
		case gcplan.KeepReferenced:
			s.stats.gcKeptMarked++
			if !pl.Marks[gcplan.Ref{Vol: k.Volume.ID, Seq: k.Object.Seq}][k.Volume.ID] {
				s.stats.gcKeptForOthers++
			}
		case gcplan.KeepYoung:
			s.stats.gcKeptYoung++
		}
	}
	g.dels = pl.Deleted
	s.tracef("gc %d: planned %d deletions", g.n, len(g.dels))
	return ""
}

// simKeyOf is the sim's name for a planned deletion.
func simKeyOf(o gcplan.Object) simKey {
	switch o.Kind {
	case gcplan.Log:
		return simKey{kind: 'l', seq: o.Seq}
	case gcplan.Snap:
		return simKey{kind: 's', seq: o.Seq}
	case gcplan.Checkpoint:
		return simKey{kind: 'c', label: o.Label}
	case gcplan.RemovedCheckpoint:
		return simKey{kind: 'r', label: o.Label}
	case gcplan.Tombstone:
		return simKey{kind: 't'}
	}
	return simKey{kind: 'd'}
}

func (s *sim) gcDelete(g *simGC, d gcplan.Decision) {
	v := g.byID[d.Volume.ID]
	key := simKeyOf(d.Object)
	if key.kind == 'l' && !s.unsafeGC && key.seq >= s.gcLow(v) {
		s.stats.gcKeptGuard++
		s.tracef("gc %d keeps %s/%s: a request may still create it", g.n, v.id, key)
		return
	}
	g.deleted++
	if key.kind == 's' && !s.known[knownSnapRewrite] {
		if sn := v.store.snapAt(key.seq); sn != nil && sn.born != g.listed[simRef{v.idx, key.seq}] {
			// The key was written again (by a zombie, at a point below the
			// base) after this run listed it: the delete removes the new,
			// young object. Nothing needs a snapshot there; not an I5 case.
			s.stats.gcSnapRewritten++
			s.tracef("gc %d: %s/%s was rewritten since the listing; deleted young", g.n, v.id, key)
			v.store.snaps = slices.DeleteFunc(v.store.snaps, func(o *simSnap) bool { return o == sn })
			return
		}
	}
	s.deleteKey(v, key, fmt.Sprintf("gc %d at step %d (%s)", g.n, s.step, d.Reason), true)
}

// --- the independent checker -------------------------------------------------

// simHist is a volume's whole history to its head, replayed from scratch
// with the model of DESIGN.md §5 (not journal.Replay).
type simHist struct {
	head    uint64
	times   []int64 // times[seq-1]: the newest time of the non-void records up to seq
	applied []*simRec
}

type simMarkCache struct {
	version int
	hist    map[int]*simHist
}

func (s *sim) hist(v *simVol) *simHist {
	if s.marks == nil || s.marks.version != s.version {
		s.marks = &simMarkCache{version: s.version, hist: map[int]*simHist{}}
	}
	if h := s.marks.hist[v.idx]; h != nil {
		return h
	}
	h := &simHist{}
	var m simModel
	last := v.baseTime
	for seq := uint64(1); ; seq++ {
		obj, ok := v.store.get(seq, true)
		if !ok {
			break
		}
		r, err := s.decoded(v, seq, obj)
		if err != nil {
			s.failf("checker: %v", err)
			break
		}
		h.head = seq
		vd := m.step(r.r)
		if vd != Void {
			last = max(last, r.r.Time)
		}
		h.times = append(h.times, last)
		var a *simRec
		if vd == Apply {
			a = r
		}
		h.applied = append(h.applied, a)
	}
	s.marks.hist[v.idx] = h
	return h
}

// retainFrom is the oldest point of v the retention window promises now:
// the first whose time (as replay keeps it: the newest time of the
// non-void records up to it, never going back) is young enough for
// checkRetained to let a clone or an open at it through (DESIGN.md §7);
// the head if none is.
func (s *sim) retainFrom(v *simVol, h *simHist) uint64 {
	edge := int64(s.step - s.p.retention + s.p.margin)
	if v.baseTime >= edge {
		return 0
	}
	for i, t := range h.times {
		if t >= edge {
			return uint64(i + 1)
		}
	}
	return h.head
}

// simWhy says which live map references a record.
type simWhy struct {
	vol  int
	what string
	at   uint64
}

func (w simWhy) String(s *sim) string {
	v := s.vols[w.vol]
	how := ""
	if v.parent != nil {
		how = " (" + v.how + ")"
	}
	return fmt.Sprintf("%s%s's %s (at %d)", v.id, how, w.what, w.at)
}

// liveRefs: every record some live map references now, with the first
// map found to reference it (all of them, for one record, if only is set).
func (s *sim) liveRefs(only *simRef, all *[]simWhy) map[simRef]simWhy {
	refs := map[simRef]simWhy{}
	put := func(r simRef, why simWhy) {
		if only != nil && r == *only {
			*all = append(*all, why)
		}
		if _, ok := refs[r]; !ok {
			refs[r] = why
		}
	}
	add := func(cells map[uint64]simCell, why simWhy) {
		for _, c := range cells {
			if !c.zero {
				put(simRef{c.vol, c.seq}, why)
			}
		}
	}
	for _, v := range s.vols {
		if !v.exists() || v.parent != nil && len(v.store.snaps) == 0 {
			continue
		}
		h := s.hist(v)
		rf := s.retainFrom(v, h)
		cells := maps.Clone(v.base)
		if cells == nil {
			cells = map[uint64]simCell{}
		}
		for seq := uint64(1); seq <= rf; seq++ {
			if r := h.applied[seq-1]; r != nil {
				applyCells(cells, v.idx, seq, r)
			}
		}
		add(cells, simWhy{v.idx, "map at the oldest retained point", rf})
		for seq := rf + 1; seq <= h.head; seq++ {
			r := h.applied[seq-1]
			if r == nil || !slices.ContainsFunc(r.writes, func(w simWrite) bool { return !w.zero }) {
				continue
			}
			put(simRef{v.idx, seq}, simWhy{v.idx, "map at a retained point", seq})
		}
		for _, c := range v.ckpts {
			add(c.snap.cells, simWhy{v.idx, "checkpoint " + c.label, c.seq})
		}
	}
	for _, op := range s.clones {
		add(op.cells, simWhy{op.src.idx, fmt.Sprintf("clone in progress (op %d, for %s)", op.n, op.dst.id), op.seq})
	}
	return refs
}

// checkRecordDelete is I4 and I5, stated independently, for a record about
// to be deleted by GC (or by Remove: then only "no live map needs it").
func (s *sim) checkRecordDelete(v *simVol, seq uint64, who string, gc bool) {
	ref := simRef{v.idx, seq}
	if _, ok := s.liveRefs(nil, nil)[ref]; ok {
		inv := "I5"
		if !gc {
			inv = "remove keeps what clones need"
		}
		var all []simWhy
		s.liveRefs(&ref, &all)
		var whys []string
		for _, w := range all {
			whys = append(whys, w.String(s))
		}
		s.failf("%s: %s deletes %s record %d, which %s reference", inv, who, v.id, seq, strings.Join(whys, " and "))
		return
	}
	if !gc {
		return
	}
	if age := s.step - v.store.born[seq]; age < s.p.grace {
		s.failf("I5: %s deletes %s record %d, which landed %d steps ago (grace %d)", who, v.id, seq, age, s.p.grace)
		return
	}
	if !v.exists() {
		return
	}
	r, err := s.decoded(v, seq, v.store.objs[seq])
	if err != nil {
		s.failf("checker: %v", err)
		return
	}
	if r.r.Type == format.RecordFence {
		s.failf("I4: %s deletes fence %d (epoch %d) of %s, which exists", who, seq, r.r.Epoch, v.id)
		return
	}
	if !slices.ContainsFunc(v.store.snaps, func(sn *simSnap) bool { return sn.seq >= seq }) {
		s.failf("I5: %s deletes %s record %d, above every snapshot", who, v.id, seq)
	}
}

// checkSnapDelete: GC deletes no checkpoint's snapshot, nothing young, and
// leaves a snapshot at or below the oldest retained point.
func (s *sim) checkSnapDelete(v *simVol, sn *simSnap, who string) {
	if age := s.step - sn.born; age < s.p.grace {
		s.failf("I5: %s deletes snapshot %d of %s, written %d steps ago (grace %d)", who, sn.seq, v.id, age, s.p.grace)
		return
	}
	if !v.exists() {
		return
	}
	for _, c := range v.ckpts {
		if c.seq == sn.seq {
			s.failf("%s deletes snapshot %d of %s, checkpoint %s's", who, sn.seq, v.id, c.label)
			return
		}
	}
	rf := s.retainFrom(v, s.hist(v))
	if !slices.ContainsFunc(v.store.snaps, func(o *simSnap) bool { return o.seq > sn.seq && o.seq <= rf }) {
		s.failf("%s deletes snapshot %d of %s, leaving none between it and the oldest retained point %d", who, sn.seq, v.id, rf)
	}
}

func seqAt(seqs []uint64, i int) string {
	if i < len(seqs) {
		return fmt.Sprint(seqs[i])
	}
	return "none"
}
