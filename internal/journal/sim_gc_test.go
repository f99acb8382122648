package journal

import (
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/urldisk/urldisk/internal/format"
)

// A model of volume.Pool.GC (internal/volume/gc.go: scan, markVolume,
// plan), run as a sequence of steps the scheduler interleaves with
// writers, zombies, clones and removals:
//
//	stage 0  take "now", list names                        scan
//	stage 1  list vols/ (within listGap steps of stage 0)  scan
//	         then mark one volume per step                 markVolume
//	         then plan                                     plan
//	stage 2  delete one object per step                    GC
//
// Each step reads the store as it is at that step, as the real code's
// separate requests do. A volume is live (named, no tombstone), protected
// (tombstone younger than the grace period, or no tombstone and some
// object younger than it: being created; marked if its descriptor and a
// snapshot can be read, nothing of it deleted) or deleted (removed long
// ago, or an orphaned prefix: collectable except what others' maps
// reference). Grace: an object is young if it landed fewer than grace
// steps before "now"; a record is also kept (at delete time) while a
// request or live writer may still create or read its slot, the stand-in
// for "no request outlives the grace period".
//
// The checker (liveRefs, checkRecordDelete, checkSnapDelete) states I4/I5
// independently, at the moment of each deletion: the maps of every point
// of every existing volume from the oldest point the retention window
// promises to its head, every checkpoint's, every clone's (their maps name
// their ancestors' records) and every clone in progress.

type simGCState uint8

const (
	gcLive simGCState = iota
	gcProtected
	gcDeleted
)

func (st simGCState) String() string { return [...]string{"live", "protected", "deleted"}[st] }

type simGCVol struct {
	v        *simVol
	named    bool
	state    simGCState
	logs     map[uint64]int // seq -> ModTime, as listed
	snaps    map[uint64]int
	ckpts    []string
	rmCkpts  map[string]int // ckpt-removed/<label> -> ModTime, as listed
	young    []string       // ckpt-removed/ labels younger than the grace period at the listing
	desc     bool
	tomb     bool
	tombBorn int
	base     uint64
	hasBase  bool
	keepSnap map[uint64]string
}

type simGCDel struct {
	g   *simGCVol
	key simKey
	why string
}

type simGC struct {
	n       int
	stage   int
	now     int            // the scan's "now", taken before the names are listed
	listed  map[simRef]int // ModTime of each listed snapshot
	names   map[int]bool
	vols    []*simGCVol
	mark    []*simGCVol // still to mark
	marks   map[simRef]map[int]bool
	dels    []simGCDel
	next    int
	deleted int
}

func (s *sim) startGC() bool {
	g := &simGC{n: s.nGC, now: s.step, names: map[int]bool{}, marks: map[simRef]map[int]bool{}, listed: map[simRef]int{}}
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

// gcListVols lists vols/: every volume with an object, in id order, and
// judges its state.
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
	young := func(born int) bool { return g.now-born < s.p.grace }
	for _, v := range vs {
		if !v.hasObjects() {
			continue
		}
		gv := &simGCVol{v: v, named: g.names[v.idx], logs: maps.Clone(v.store.born), snaps: map[uint64]int{}, rmCkpts: map[string]int{},
			desc: v.desc, tomb: v.tomb, tombBorn: v.tombBorn, keepSnap: map[uint64]string{}}
		anyYoung := v.desc && young(v.descBorn) || v.tomb && young(v.tombBorn)
		for _, born := range gv.logs {
			anyYoung = anyYoung || young(born)
		}
		for _, sn := range v.store.snaps {
			gv.snaps[sn.seq] = sn.born
			g.listed[simRef{v.idx, sn.seq}] = sn.born
			anyYoung = anyYoung || young(sn.born)
		}
		for _, c := range v.ckpts {
			gv.ckpts = append(gv.ckpts, c.label)
			anyYoung = anyYoung || young(c.born)
		}
		for _, c := range v.rmCkpts {
			gv.rmCkpts[c.label] = c.born
			if young(c.born) {
				gv.young = append(gv.young, c.label)
				anyYoung = true
			}
		}
		switch {
		case gv.named && !gv.tomb:
			gv.state = gcLive
		case gv.tomb && young(gv.tombBorn):
			gv.state = gcProtected // recently removed: a clone may be reading it
		case !gv.tomb && anyYoung:
			gv.state = gcProtected // being created
		default:
			gv.state = gcDeleted // removed long ago, or orphaned objects
		}
		g.vols = append(g.vols, gv)
		switch {
		case gv.state == gcProtected:
			s.stats.gcProtected++
		case gv.state == gcDeleted && !gv.desc && !gv.tomb:
			s.stats.gcOrphans++
		}
		if gv.state == gcDeleted || !gv.desc {
			s.tracef("gc %d: %s is %s; not marked", g.n, v.id, gv.state)
			continue
		}
		g.mark = append(g.mark, gv)
	}
	s.tracef("gc %d: %d volumes listed", g.n, len(g.vols))
}

func (g *simGC) markRef(r simRef, by int) {
	m := g.marks[r]
	if m == nil {
		m = map[int]bool{}
		g.marks[r] = m
	}
	m[by] = true
}

func (g *simGC) markMap(cells map[uint64]simCell, by int) {
	for _, c := range cells {
		if !c.zero {
			g.markRef(simRef{c.vol, c.seq}, by)
		}
	}
}

// gcMark is markVolume: the descriptor is read now (gone: not marked);
// the retention base is the newest listed snapshot whose header time is
// before the window (none: the oldest, and every record is kept); the base
// map and every record applied from the base to the head are marked, then
// the map of every checkpoint (listed now) and of every checkpoint removed
// less than the grace period ago (listed with the volume).
func (s *sim) gcMark(g *simGC, gv *simGCVol) string {
	v := gv.v
	if !v.desc {
		return ""
	}
	windowStart := int64(g.now - s.p.retention)
	snaps := slices.Sorted(maps.Keys(gv.snaps))
	var (
		st    State
		cells = map[uint64]simCell{}
	)
	for i := len(snaps) - 1; i >= 0 && !gv.hasBase; i-- {
		sn := v.store.snapAt(snaps[i])
		if sn == nil {
			return fmt.Sprintf("read snapshot %d of %s: not found", snaps[i], v.id)
		}
		if sn.time >= windowStart {
			continue
		}
		gv.base, gv.hasBase = sn.seq, true
		st, cells = sn.st, maps.Clone(sn.cells)
	}
	loaded := gv.hasBase
	if !loaded && len(snaps) > 0 {
		sn := v.store.snapAt(snaps[0])
		if sn == nil {
			return fmt.Sprintf("read snapshot %d of %s: not found", snaps[0], v.id)
		}
		gv.base, loaded = sn.seq, true
		st, cells = sn.st, maps.Clone(sn.cells)
	}
	if !loaded && v.parent != nil {
		if gv.state == gcProtected {
			return "" // being created (snapshot 0 not written yet) or partly collected; everything of it is kept
		}
		s.failf("gc %d: clone %s has no usable snapshot (listed %v)", g.n, v.id, snaps)
		return "clone has no usable snapshot"
	}
	gv.keepSnap[gv.base] = "retention base snapshot"
	g.markMap(cells, v.idx)
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
			g.markRef(simRef{v.idx, seq}, v.idx)
		}
	}
	s.tracef("gc %d: %s (%s) marked: window from %d, base %d (has base %v; snapshots %v), head %d",
		g.n, v.id, gv.state, windowStart, gv.base, gv.hasBase, snaps, st.Seq)
	for _, sq := range snaps {
		if sq >= gv.base {
			if _, ok := gv.keepSnap[sq]; !ok {
				gv.keepSnap[sq] = "snapshot inside retention"
			}
		}
	}
	ckpts := slices.Clone(v.ckpts)
	for _, l := range gv.young {
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
		g.markMap(cells, v.idx)
		if _, ok := gv.snaps[c.seq]; ok {
			gv.keepSnap[c.seq] = "checkpoint " + c.label
		}
		if _, ok := gv.keepSnap[snapSeq]; !ok {
			gv.keepSnap[snapSeq] = "checkpoint " + c.label
		}
		for sq := snapSeq + 1; sq <= c.seq; sq++ {
			g.markRef(simRef{v.idx, sq}, v.idx)
		}
	}
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

// gcPlan is plan: per listed object, delete or keep.
func (s *sim) gcPlan(g *simGC) string {
	for _, gv := range g.vols {
		v := gv.v
		if gv.state == gcProtected {
			continue
		}
		deleted := gv.state == gcDeleted
		remaining := 0
		young := func(born int) bool { return g.now-born < s.p.grace }
		for _, seq := range slices.Sorted(maps.Keys(gv.logs)) {
			if !deleted && (!gv.hasBase || seq > gv.base) {
				remaining++
				continue
			}
			if by := g.marks[simRef{v.idx, seq}]; len(by) > 0 {
				s.stats.gcKeptMarked++
				if !by[v.idx] {
					s.stats.gcKeptForOthers++
				}
				remaining++
				continue
			}
			if young(gv.logs[seq]) {
				s.stats.gcKeptYoung++
				remaining++
				continue
			}
			if !deleted {
				r, err := s.readLive(v, seq)
				if err != "" {
					return err
				}
				if r.r.Type == format.RecordFence {
					remaining++
					continue
				}
			}
			why := "unreferenced, below the retention base snapshot"
			if deleted {
				why = "volume deleted, no clone needs it"
			}
			g.dels = append(g.dels, simGCDel{gv, simKey{kind: 'l', seq: seq}, why})
		}
		for _, sq := range slices.Sorted(maps.Keys(gv.snaps)) {
			if _, ok := gv.keepSnap[sq]; ok && !deleted {
				remaining++
			} else if young(gv.snaps[sq]) {
				remaining++
			} else {
				g.dels = append(g.dels, simGCDel{gv, simKey{kind: 's', seq: sq}, "snapshot superseded"})
			}
		}
		for _, l := range slices.Sorted(maps.Keys(gv.rmCkpts)) {
			if young(gv.rmCkpts[l]) && !deleted {
				remaining++
			} else {
				g.dels = append(g.dels, simGCDel{gv, simKey{kind: 'r', label: l}, "removed checkpoint"})
			}
		}
		for _, l := range gv.ckpts {
			if deleted {
				g.dels = append(g.dels, simGCDel{gv, simKey{kind: 'c', label: l}, "volume deleted"})
			} else {
				remaining++
			}
		}
		// The tombstone ("deleted") lists before the descriptor ("volume.json").
		var tail []simKey
		for _, k := range []simKey{{kind: 't'}, {kind: 'd'}} {
			if k.kind == 't' && !gv.tomb || k.kind == 'd' && !gv.desc {
				continue
			}
			if deleted {
				tail = append(tail, k)
			} else {
				remaining++
			}
		}
		if deleted && remaining == 0 {
			for _, k := range tail {
				g.dels = append(g.dels, simGCDel{gv, k, "volume deleted, nothing left"})
			}
		}
	}
	s.tracef("gc %d: planned %d deletions", g.n, len(g.dels))
	return ""
}

func (s *sim) gcDelete(g *simGC, d simGCDel) {
	v := d.g.v
	if d.key.kind == 'l' && !s.unsafeGC && d.key.seq >= s.gcLow(v) {
		s.stats.gcKeptGuard++
		s.tracef("gc %d keeps %s/%s: a request may still create it", g.n, v.id, d.key)
		return
	}
	g.deleted++
	if d.key.kind == 's' && !s.known[knownSnapRewrite] {
		if sn := v.store.snapAt(d.key.seq); sn != nil && sn.born != g.listed[simRef{v.idx, d.key.seq}] {
			// The key was written again (by a zombie, at a point below the
			// base) after this run listed it: the delete removes the new,
			// young object. Nothing needs a snapshot there; not an I5 case.
			s.stats.gcSnapRewritten++
			s.tracef("gc %d: %s/%s was rewritten since the listing; deleted young", g.n, v.id, d.key)
			v.store.snaps = slices.DeleteFunc(v.store.snaps, func(o *simSnap) bool { return o == sn })
			return
		}
	}
	s.deleteKey(v, d.key, fmt.Sprintf("gc %d at step %d (%s)", g.n, s.step, d.why), true)
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
