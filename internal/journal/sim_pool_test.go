package journal

import (
	"fmt"
	"maps"
	"math"
	"slices"
	"strings"
)

// The pool around the log: clones (volume.Pool.Clone), checkpoints,
// volume removal (volume.Pool.Remove) and the teardown that removes every
// volume and collects until nothing is left. Every operation is a sequence
// of steps the scheduler interleaves with writers, zombies and GC runs.

// --- clones --------------------------------------------------------------

// simCloneOp is a Pool.Clone in progress: it replayed the source to a
// point (stage 0), then writes the clone's descriptor (1), its snapshot 0
// whose cells reference the source's records (2) and binds its name (3).
type simCloneOp struct {
	n     int
	src   *simVol
	point string
	seq   uint64
	cells map[uint64]simCell
	ckpt  *simCkpt
	dst   *simVol
	stage int
	start int
}

// startClone resolves a source by name, replays it to a point (its head, a
// checkpoint, or a seq the retention window still promises) and starts
// creating the clone.
func (s *sim) startClone() bool {
	var cand []*simVol
	for _, v := range s.vols {
		// Resolve only needs the name and the descriptor; a Remove that
		// wrote its tombstone but has not unbound the name yet is a race.
		if v.named && v.desc && (s.known[knownRmVsClone] || !v.removing) {
			cand = append(cand, v)
		}
	}
	if len(cand) == 0 {
		return false
	}
	v := cand[s.rng.IntN(len(cand))]
	op := &simCloneOp{n: s.nClones, src: v, start: s.step}
	var (
		st   State
		seq  = uint64(math.MaxUint64)
		kind = s.rng.IntN(3)
	)
	switch {
	case kind == 1 && len(v.ckpts) > 0:
		op.ckpt = v.ckpts[s.rng.IntN(len(v.ckpts))]
		op.point, seq = "checkpoint "+op.ckpt.label, op.ckpt.seq
	case kind == 2:
		h, err := s.oracle(v, math.MaxUint64)
		if err != nil {
			s.failf("clone: %v", err)
			return true
		}
		if h.st.Seq > 0 {
			seq = 1 + s.rng.Uint64N(h.st.Seq)
			op.point = fmt.Sprintf("seq %d", seq)
		}
	}
	if op.point == "" {
		op.point = "head"
	}
	st, cells, t, _, err := s.loadLive(v, seq)
	if err != nil {
		s.stats.cloneRefused++
		s.tracef("clone of %s@%s fails: %v", v.id, op.point, err)
		return true
	}
	if seq != math.MaxUint64 && st.Seq != seq {
		// loadPoint: "history ends at seq st.Seq or was collected".
		s.stats.cloneRefused++
		s.tracef("clone of %s@%s refused: the replay stops at %d", v.id, op.point, st.Seq)
		return true
	}
	if op.ckpt == nil && seq != math.MaxUint64 && t != 0 && t < int64(s.step-s.p.retention+s.p.margin) {
		// checkRetained: too close to the edge of the retention window.
		s.stats.cloneRefused++
		s.tracef("clone of %s@%s refused: written at %d, outside the retention window", v.id, op.point, t)
		return true
	}
	if op.ckpt == nil && seq != math.MaxUint64 && !s.known[knownTimeOrder] && seq < s.retainFrom(v, s.hist(v)) {
		// A point checkRetained lets through, but that markVolume's binary
		// search may not keep (see retainFrom).
		s.stats.cloneRefused++
		s.tracef("clone of %s@%s refused: a zombie's older records follow it", v.id, op.point)
		return true
	}
	if v.exists() {
		want, err := s.oracle(v, st.Seq)
		if err != nil {
			s.failf("clone: %v", err)
			return true
		}
		if want.st != st || !cellsEqual(want.cells, cells) {
			s.failf("clone of %s@%s: the replay (to %d) disagrees with a replay from scratch (to %d): %s", v.id, op.point, st.Seq, want.st.Seq, cellsDiff(want.cells, cells))
			return true
		}
	}
	op.seq, op.cells = st.Seq, cells
	if op.ckpt != nil {
		op.ckpt.clonedAt = s.step
	}
	op.dst = s.newVol(v, st.Seq, cells, fmt.Sprintf("clone of %s@%s", v.id, op.point))
	s.vols = append(s.vols, op.dst) // no objects yet: invisible to listings
	s.nClones++
	s.clones = append(s.clones, op)
	s.version++
	switch {
	case op.ckpt != nil:
		s.stats.clonesCkpt++
	case strings.HasPrefix(op.point, "seq"):
		s.stats.clonesSeq++
	default:
		s.stats.clonesHead++
	}
	if v.parent != nil {
		s.stats.clonesOfClones++
	}
	s.tracef("clone %d: %s replayed %s@%s (seq %d, %d blocks) for %s", op.n, op.dst.id, v.id, op.point, st.Seq, len(cells), op.dst.id)
	return true
}

func (s *sim) cloneDeadline(op *simCloneOp) int {
	return op.start + s.p.cloneDur - (3 - op.stage)
}

func (s *sim) cloneStep(op *simCloneOp) {
	d := op.dst
	switch op.stage {
	case 0:
		d.desc, d.descBorn = true, s.step
		s.tracef("clone %d: %s descriptor written (parent %s@%d)", op.n, d.id, op.src.id, op.seq)
	case 1:
		d.store.snaps = append(d.store.snaps, &simSnap{seq: 0, cells: op.cells, by: -1, born: s.step, time: int64(s.step)})
		s.tracef("clone %d: %s snapshot 0 written", op.n, d.id)
	case 2:
		d.named = true
		d.nWriters = s.rng.IntN(s.p.cloneWriters + 1)
		if s.teardown {
			d.nWriters = 0
		}
		s.clones = slices.DeleteFunc(s.clones, func(o *simCloneOp) bool { return o == op })
		s.stats.clones++
		if len(s.gcs) > 0 {
			s.stats.clonesDuringGC++
		}
		s.tracef("clone %d: %s named (%s), %d writers to come; took %d steps", op.n, d.id, d.how, d.nWriters, s.step-op.start)
		s.checkAll(d, fmt.Sprintf("clone %d made %s", op.n, d.id))
	}
	op.stage++
	s.version++
}

// --- checkpoints ---------------------------------------------------------

// checkpoint labels a volume's durable point: a writer's (Volume.Checkpoint:
// its resolved prefix) or, offline, the head a replay finds
// (Pool.Checkpoint). Both write a snapshot at the point, then the label.
func (s *sim) checkpoint() bool {
	var cand []*simVol
	for _, v := range s.vols {
		if v.usable() {
			cand = append(cand, v)
		}
	}
	if len(cand) == 0 {
		return false
	}
	v := cand[s.rng.IntN(len(cand))]
	var ws []*simWriter
	for _, w := range v.writers {
		if w.phase == phWrite && !w.fenced {
			ws = append(ws, w)
		}
	}
	var sn *simSnap
	if len(ws) > 0 && s.rng.IntN(2) == 0 {
		if sn = s.writerSnapshot(ws[s.rng.IntN(len(ws))]); sn == nil {
			return true
		}
		// A writer that has not learned it is fenced labels its stale
		// prefix without touching the log. Below the newest snapshot and
		// older than the retention window, GC may already have collected
		// (or be collecting) what that map needs: a race outside the
		// real system's assumptions (a writer paused for longer than the
		// retention window).
		if nw := v.store.newest(); !s.known[knownStaleCkpt] && nw != nil && sn.seq < nw.seq && sn.time < int64(s.step-s.p.retention+s.p.margin) {
			s.stats.ckptStale++
			s.tracef("%s: w%d's checkpoint at %d (below snapshot %d, written at %d) skipped: outside the window", v.id, sn.by, sn.seq, nw.seq, sn.time)
			return true
		}
	} else {
		st, cells, t, _, err := s.loadLive(v, math.MaxUint64)
		if err != nil {
			s.failf("checkpoint of %s: %v", v.id, err)
			return true
		}
		want, err := s.oracle(v, st.Seq)
		if err != nil {
			s.failf("checkpoint: %v", err)
			return true
		}
		if want.st != st || !cellsEqual(want.cells, cells) {
			s.failf("offline checkpoint of %s at %d disagrees with a replay from scratch: %s", v.id, st.Seq, cellsDiff(want.cells, cells))
			return true
		}
		sn = &simSnap{seq: st.Seq, st: st, cells: cells, by: -1, time: t}
	}
	sn = s.addSnap(v, sn)
	c := &simCkpt{label: fmt.Sprintf("c%d", s.nCkpt), seq: sn.seq, snap: sn, born: s.step}
	s.nCkpt++
	v.ckpts = append(v.ckpts, c)
	s.version++
	s.stats.checkpoints++
	s.tracef("%s checkpoint %s at %d", v.id, c.label, c.seq)
	return true
}

// removeCheckpoint deletes a checkpoint document (its snapshot stays for
// GC to judge).
func (s *sim) removeCheckpoint() bool {
	var cand []*simCkpt
	var of []*simVol
	for _, v := range s.vols {
		if !v.usable() {
			continue
		}
	next:
		for _, c := range v.ckpts {
			for _, op := range s.clones {
				if op.ckpt == c && !s.known[knownRmVsClone] {
					continue next // racing a clone of that checkpoint
				}
			}
			for _, g := range s.gcs {
				if c.clonedAt >= g.now-s.p.cloneDur && !s.known[knownCkptRmVsGC] {
					// A clone of it may be invisible to a running GC (made
					// after its listing), which then relies on this
					// checkpoint to keep the clone's records.
					continue next
				}
			}
			cand, of = append(cand, c), append(of, v)
		}
	}
	if len(cand) == 0 {
		return false
	}
	i := s.rng.IntN(len(cand))
	c, v := cand[i], of[i]
	v.ckpts = slices.DeleteFunc(v.ckpts, func(o *simCkpt) bool { return o == c })
	s.version++
	s.stats.ckptRemoved++
	s.tracef("%s checkpoint %s (at %d) removed", v.id, c.label, c.seq)
	return true
}

// --- removal -------------------------------------------------------------

type simKey struct {
	kind  byte // 'l' log, 's' snapshot, 'c' checkpoint, 't' tombstone, 'd' descriptor
	seq   uint64
	label string
}

func (k simKey) String() string {
	switch k.kind {
	case 'l':
		return fmt.Sprintf("log/%d", k.seq)
	case 's':
		return fmt.Sprintf("snap/%d", k.seq)
	case 'c':
		return "ckpt/" + k.label
	case 't':
		return "deleted"
	}
	return "volume.json"
}

// simRemoveOp is a Pool.Remove in progress: tombstone (at start), unbind
// the name (stage 0), look for descendants (1); with none, list (2) and
// delete every object, the descriptor last (3...).
type simRemoveOp struct {
	v     *simVol
	stage int
	keys  []simKey
	next  int
}

func (s *sim) startRemove() bool {
	var cand []*simVol
	for _, v := range s.vols {
		if !v.usable() {
			continue
		}
		if !s.known[knownRmVsClone] && slices.ContainsFunc(s.clones, func(op *simCloneOp) bool { return op.src == v }) {
			continue // racing a clone of it
		}
		if !s.known[knownRmOrphans] && slices.ContainsFunc(s.queue, func(m *simMsg) bool { return m.vol == v }) {
			continue // its writers' requests still fly: they would land after the removal
		}
		cand = append(cand, v)
	}
	if len(cand) == 0 {
		return false
	}
	s.nRemove++
	s.beginRemove(cand[s.rng.IntN(len(cand))])
	return true
}

// beginRemove: whoever serves the volume is stopped (crashed: its requests
// may still fly), then the tombstone is written.
func (s *sim) beginRemove(v *simVol) {
	v.removing = true
	v.nWriters = v.started
	for _, w := range v.writers {
		if w.phase == phAttach || w.phase == phWrite {
			s.crash(w, s.known[knownRmOrphans] && s.rng.IntN(2) == 0)
		}
	}
	v.tomb, v.tombBorn = true, s.step
	s.removes = append(s.removes, &simRemoveOp{v: v})
	s.version++
	s.stats.removes++
	s.tracef("remove %s: tombstone written", v.id)
}

func (s *sim) removeStep(op *simRemoveOp) {
	v := op.v
	done := func() { s.removes = slices.DeleteFunc(s.removes, func(o *simRemoveOp) bool { return o == op }) }
	switch op.stage {
	case 0:
		v.named = false
		s.tracef("remove %s: name unbound", v.id)
	case 1:
		if s.hasDescendants(v) {
			s.stats.removeKept++
			s.tracef("remove %s: clones may need it; left to GC", v.id)
			done()
			return
		}
		s.tracef("remove %s: no descendants", v.id)
	case 2:
		for _, seq := range slices.Sorted(maps.Keys(v.store.objs)) {
			op.keys = append(op.keys, simKey{kind: 'l', seq: seq})
		}
		for _, sn := range v.store.snaps {
			op.keys = append(op.keys, simKey{kind: 's', seq: sn.seq})
		}
		for _, c := range v.ckpts {
			op.keys = append(op.keys, simKey{kind: 'c', label: c.label})
		}
		if v.tomb {
			op.keys = append(op.keys, simKey{kind: 't'})
		}
		if v.desc {
			op.keys = append(op.keys, simKey{kind: 'd'})
		}
		s.tracef("remove %s: listed %d objects to delete", v.id, len(op.keys))
	default:
		if op.next == len(op.keys) {
			s.tracef("remove %s: done", v.id)
			done()
			return
		}
		k := op.keys[op.next]
		op.next++
		s.deleteKey(v, k, fmt.Sprintf("remove of %s at step %d", v.id, s.step), false)
	}
	op.stage++
}

// hasDescendants is Pool.hasDescendants: some volume with a descriptor
// whose ancestry reaches v, or is broken (an ancestor's descriptor gone).
func (s *sim) hasDescendants(v *simVol) bool {
	for _, u := range s.vols {
		if !u.desc || u == v {
			continue
		}
		for cur := u.parent; cur != nil; cur = cur.parent {
			if cur == v || !cur.desc {
				return true
			}
		}
	}
	return false
}

// deleteKey deletes one object of v, after checking the deletion against
// the independent statement of I4/I5 (for GC) or against every live map
// (for Remove, which must keep what clones need).
func (s *sim) deleteKey(v *simVol, k simKey, who string, gc bool) {
	switch k.kind {
	case 'l':
		obj, ok := v.store.objs[k.seq]
		if !ok {
			return
		}
		s.checkRecordDelete(v, k.seq, who, gc)
		ref := simRef{v.idx, k.seq}
		v.store.archive[k.seq] = obj
		delete(v.store.objs, k.seq)
		delete(v.store.born, k.seq)
		s.deletedBy[ref] = fmt.Sprintf("deleted by %s", who)
		if gc {
			v.store.byGC[k.seq] = s.step
			s.stats.gcDeleted++
			if v.tomb {
				s.stats.gcDeletedRemoved++
			}
		} else {
			s.stats.rmDeleted++
		}
		s.tracef("%s deletes %s/%s", who, v.id, k)
	case 's':
		sn := v.store.snapAt(k.seq)
		if sn == nil {
			return
		}
		if gc {
			s.checkSnapDelete(v, sn, who)
			s.stats.gcSnapsDeleted++
		}
		v.store.snaps = slices.DeleteFunc(v.store.snaps, func(o *simSnap) bool { return o == sn })
		s.tracef("%s deletes %s/%s", who, v.id, k)
	case 'c':
		i := slices.IndexFunc(v.ckpts, func(c *simCkpt) bool { return c.label == k.label })
		if i < 0 {
			return
		}
		if gc && v.exists() {
			s.failf("%s deleted checkpoint %s of %s, which exists", who, k.label, v.id)
		}
		v.ckpts = slices.Delete(v.ckpts, i, i+1)
		s.version++
		s.tracef("%s deletes %s/%s", who, v.id, k)
	case 't':
		v.tomb = false
		s.tracef("%s deletes %s/%s", who, v.id, k)
	case 'd':
		if gc && !v.removing && (v.named || slices.ContainsFunc(s.clones, func(op *simCloneOp) bool { return op.dst == v })) {
			s.failf("%s deleted the descriptor of %s (%s), which is live", who, v.id, v.how)
		}
		v.desc = false
		s.version++
		s.tracef("%s deletes %s/%s", who, v.id, k)
	}
}

// --- operations ------------------------------------------------------------

// forcedOp advances operations whose time is up: a clone completes within
// cloneDur steps of its replay, a GC lists the volumes within listGap steps
// of listing the names.
func (s *sim) forcedOp() bool {
	for _, op := range s.clones {
		if s.step >= s.cloneDeadline(op) {
			s.cloneStep(op)
			return true
		}
	}
	for _, g := range s.gcs {
		if g.stage == 0 && s.step >= g.now+s.p.listGap {
			s.gcStep(g)
			return true
		}
	}
	return false
}

// opStep advances one pool operation in progress, chosen by the seed.
func (s *sim) opStep() bool {
	n := len(s.clones) + len(s.removes) + len(s.gcs)
	if n == 0 {
		return false
	}
	i := s.rng.IntN(n)
	switch {
	case i < len(s.clones):
		s.cloneStep(s.clones[i])
	case i < len(s.clones)+len(s.removes):
		s.removeStep(s.removes[i-len(s.clones)])
	default:
		s.gcStep(s.gcs[i-len(s.clones)-len(s.removes)])
	}
	return true
}

// --- teardown --------------------------------------------------------------

// teardownAll removes every volume (interleaved with GC runs), then lets
// time pass and collects until a run finds nothing to delete: nothing of
// any volume may be left.
func (s *sim) teardownAll() {
	s.teardown = true
	s.tracef("teardown: remove every volume, collect everything")
	quiet := 0
	for guard := 0; s.err == nil; guard++ {
		if guard > 200_000 {
			s.failf("teardown: no end after %d steps", guard)
			return
		}
		s.step++
		if s.forcedOp() {
			continue
		}
		var cand []*simVol
		for _, v := range s.vols {
			if v.usable() {
				cand = append(cand, v)
			}
		}
		if len(cand) > 0 && (len(s.removes)+len(s.gcs) == 0 || s.rng.IntN(3) == 0) {
			s.beginRemove(cand[s.rng.IntN(len(cand))])
			continue
		}
		if len(s.gcs) == 0 && len(s.removes) > 0 && s.rng.IntN(4) == 0 {
			s.startGC()
			continue
		}
		if s.opStep() {
			continue
		}
		if len(s.queue) > 0 {
			s.release = true
			s.deliver()
			continue
		}
		if s.poolEmpty() || quiet >= 3 {
			break
		}
		if s.gcLastDeleted == 0 {
			quiet++
		} else {
			quiet = 0
		}
		s.step += s.p.grace + 1 // everything ages past the grace period
		s.startGC()
	}
	if s.err != nil {
		return
	}
	for _, v := range s.vols {
		var left []string
		for _, seq := range slices.Sorted(maps.Keys(v.store.objs)) {
			left = append(left, simKey{kind: 'l', seq: seq}.String())
		}
		for _, sn := range v.store.snaps {
			left = append(left, simKey{kind: 's', seq: sn.seq}.String())
		}
		for _, c := range v.ckpts {
			left = append(left, "ckpt/"+c.label)
		}
		if v.tomb {
			left = append(left, "deleted")
		}
		if v.desc {
			left = append(left, "volume.json")
		}
		if v.named {
			left = append(left, "names/"+v.id)
		}
		if len(left) == 0 {
			continue
		}
		why := ""
		if !v.desc && !v.tomb && !v.named {
			why = " (no descriptor, tombstone or name: GC takes it for a volume being created and never collects it)"
		}
		if len(left) > 8 {
			left = append(left[:8], "...")
		}
		s.failf("teardown: every volume removed and GC run to completion, but %s (%s) still has %s%s", v.id, v.how, strings.Join(left, " "), why)
		return
	}
}

func (s *sim) poolEmpty() bool {
	for _, v := range s.vols {
		if !v.store.empty() || len(v.ckpts) > 0 || v.desc || v.tomb || v.named {
			return false
		}
	}
	return true
}
