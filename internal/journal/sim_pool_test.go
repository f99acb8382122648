package journal

import (
	"fmt"
	"maps"
	"math"
	"slices"
	"strings"

	"github.com/urldisk/urldisk/internal/format"
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
		// Resolve only needs the name and the descriptor: a Remove that
		// wrote its tombstone but has not unbound the name yet races it
		// (the tombstone protects the source's maps for the grace period).
		if v.named && v.desc {
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
	op.dst = s.newVol(v, st.Seq, cells, fmt.Sprintf("clone of %s@%s", v.id, op.point))
	op.dst.baseTime = int64(s.step) // Clone dates snapshot 0 before binding
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
		d.store.snaps = append(d.store.snaps, &simSnap{seq: 0, cells: op.cells, by: -1, born: s.step, time: d.baseTime})
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
		w := ws[s.rng.IntN(len(ws))]
		if sn = s.writerSnapshot(w); sn == nil {
			return true
		}
		// stillOwner: a writer that has not learned it is fenced would
		// label its stale prefix, which GC may be collecting; it lists the
		// records after the point and gives up if one is a newer fence.
		for _, seq := range slices.Sorted(maps.Keys(v.store.objs)) {
			if seq <= sn.seq {
				continue
			}
			r, err := s.decoded(v, seq, v.store.objs[seq])
			if err != nil {
				s.failf("checkpoint: %v", err)
				return true
			}
			if r.r.Type == format.RecordFence && r.r.Epoch > w.w.Epoch() {
				s.stats.ckptFenced++
				s.tracef("%s: w%d's checkpoint at %d refused: fence %d of epoch %d follows it", v.id, w.idx, sn.seq, seq, r.r.Epoch)
				return true
			}
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

// removeCheckpoint is Pool.RemoveCheckpoint: it copies the document to
// ckpt-removed/<label> (GC keeps marking it for the grace period: a clone
// of it may be in progress, or invisible to a running GC) and deletes the
// original. Its snapshot stays for GC to judge. Clones of the checkpoint
// may be in progress; GC runs may have listed the volume.
func (s *sim) removeCheckpoint() bool {
	var cand []*simCkpt
	var of []*simVol
	for _, v := range s.vols {
		if !v.usable() {
			continue
		}
		for _, c := range v.ckpts {
			cand, of = append(cand, c), append(of, v)
		}
	}
	if len(cand) == 0 {
		return false
	}
	i := s.rng.IntN(len(cand))
	s.removeCkpt(of[i], cand[i])
	return true
}

func (s *sim) removeCkpt(v *simVol, c *simCkpt) {
	if slices.ContainsFunc(s.clones, func(op *simCloneOp) bool { return op.ckpt == c }) {
		s.stats.ckptRmVsClone++
	}
	v.ckpts = slices.DeleteFunc(v.ckpts, func(o *simCkpt) bool { return o == c })
	v.rmCkpts = append(v.rmCkpts, &simCkpt{label: c.label, seq: c.seq, snap: c.snap, born: s.step})
	s.version++
	s.stats.ckptRemoved++
	s.tracef("%s checkpoint %s (at %d) removed (copied to ckpt-removed/)", v.id, c.label, c.seq)
}

// raceClone makes the races the lazy removals exist for likely: while a
// clone is in progress, remove its source (its tombstone must protect the
// records the clone is about to reference), remove the checkpoint it is
// made from (the ckpt-removed/ copy must), or start a GC run (which may
// list the clone before its snapshot 0 exists, or not at all).
func (s *sim) raceClone() bool {
	op := s.clones[s.rng.IntN(len(s.clones))]
	did := false
	switch s.rng.IntN(3) {
	case 0:
		if op.src.usable() && s.nRemove < max(s.p.removes, 1) {
			s.nRemove++
			s.stats.rmVsClone++
			s.tracef("race: remove %s while clone %d of it runs", op.src.id, op.n)
			s.beginRemove(op.src)
			did = true
		}
	case 1:
		if op.ckpt != nil && op.src.usable() && slices.Contains(op.src.ckpts, op.ckpt) {
			s.tracef("race: remove checkpoint %s while clone %d of it runs", op.ckpt.label, op.n)
			s.removeCkpt(op.src, op.ckpt)
			did = true
		}
	}
	if s.p.gc && len(s.gcs) < s.p.gcConc && s.nGC < 40 && s.rng.IntN(2) == 0 {
		s.tracef("race: gc while clone %d runs", op.n)
		did = s.startGC()
	}
	return did
}

// --- removal -------------------------------------------------------------

type simKey struct {
	kind  byte // 'l' log, 's' snapshot, 'c' checkpoint, 'r' removed checkpoint, 't' tombstone, 'd' descriptor
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
	case 'r':
		return "ckpt-removed/" + k.label
	case 't':
		return "deleted"
	}
	return "volume.json"
}

// simRemoveOp is a Pool.Remove in progress: the tombstone is written (at
// start), then the name is unbound (stage 0). Nothing is deleted: GC
// protects a volume whose tombstone is younger than the grace period (a
// clone of it may be in progress) and collects it afterwards, except the
// records clones reference. Remove runs Put then Delete back to back: the
// unbind happens within listGap steps of the tombstone.
type simRemoveOp struct {
	v *simVol
}

func (s *sim) startRemove() bool {
	var cand []*simVol
	for _, v := range s.vols {
		if v.usable() {
			cand = append(cand, v)
		}
	}
	if len(cand) == 0 {
		return false
	}
	s.nRemove++
	v := cand[s.rng.IntN(len(cand))]
	if slices.ContainsFunc(s.clones, func(op *simCloneOp) bool { return op.src == v }) {
		s.stats.rmVsClone++
	}
	if slices.ContainsFunc(s.queue, func(m *simMsg) bool { return m.vol == v }) {
		s.stats.rmInFlight++
	}
	s.beginRemove(v)
	return true
}

// beginRemove: whoever serves the volume is stopped (crashed: its requests
// may still fly and land after the removal), then the tombstone is
// written.
func (s *sim) beginRemove(v *simVol) {
	v.removing = true
	v.nWriters = v.started
	for _, w := range v.writers {
		if w.phase == phAttach || w.phase == phWrite {
			s.crash(w, s.rng.IntN(2) == 0)
		}
	}
	v.tomb, v.tombBorn = true, s.step
	s.removes = append(s.removes, &simRemoveOp{v: v})
	s.version++
	s.stats.removes++
	s.tracef("remove %s: tombstone written", v.id)
}

func (s *sim) removeStep(op *simRemoveOp) {
	op.v.named = false
	s.removes = slices.DeleteFunc(s.removes, func(o *simRemoveOp) bool { return o == op })
	s.version++
	s.tracef("remove %s: name unbound; left to GC", op.v.id)
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
	case 'r':
		i := slices.IndexFunc(v.rmCkpts, func(c *simCkpt) bool { return c.label == k.label })
		if i < 0 {
			return
		}
		if age := s.step - v.rmCkpts[i].born; gc && age < s.p.grace && v.exists() {
			s.failf("%s deleted %s/%s, removed %d steps ago (grace %d)", who, v.id, k, age, s.p.grace)
		}
		v.rmCkpts = slices.Delete(v.rmCkpts, i, i+1)
		s.stats.gcRmCkptDeleted++
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
	for _, op := range s.removes {
		if s.step >= op.v.tombBorn+s.p.listGap {
			s.removeStep(op)
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
		for _, c := range v.rmCkpts {
			left = append(left, "ckpt-removed/"+c.label)
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
			why = " (no descriptor, tombstone or name: an orphaned prefix, which GC collects once it is older than the grace period)"
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
		if v.hasObjects() || v.named {
			return false
		}
	}
	return true
}
