package journal

import (
	"fmt"
	"maps"
	"math"
	"slices"

	"github.com/urldisk/urldisk/internal/format"
)

// simAsserts enables the driver's own cross-checks of the journal's answers
// (durable only what it saw land, Mine only for its own bytes). The
// invariants below are checked regardless; switching this off shows they
// catch the same bugs on their own.
const simAsserts = true

// simReplay is a replay of a volume's log from scratch.
type simReplay struct {
	st    State
	cells map[uint64]simCell
	recs  []*simRec // recs[seq-1]
	times []int64   // times[seq-1]: the newest time of the non-void records up to seq (img.lastTime)
	t0    int64     // snapshot 0's time
	model []Verdict // the verdict DESIGN.md §5's rules give each record
	got   []Verdict // the verdict journal.Replay gave
}

// simModel is an independent statement of DESIGN.md §5's replay rules.
type simModel struct {
	epoch uint64
	owner format.WriterID
}

func (m *simModel) step(r *format.Record) Verdict {
	if r.Type == format.RecordFence {
		if r.Epoch > m.epoch {
			m.epoch, m.owner = r.Epoch, r.Writer
			return Fence
		}
		return Void // a stale fence
	}
	if m.epoch != 0 && r.Epoch == m.epoch && r.Writer == m.owner {
		return Apply
	}
	return Void // a fenced writer's leftover
}

func applyCells(cells map[uint64]simCell, vol int, seq uint64, r *simRec) {
	for _, wr := range r.writes {
		cells[wr.block] = simCell{val: wr.val, vol: vol, seq: seq, w: r.w, seg: r.seg, zero: wr.zero}
	}
}

// timeAt is the time replay keeps at seq (img.lastTime): the newest time
// of the non-void records up to seq, from snapshot 0's.
func (rp *simReplay) timeAt(seq uint64) int64 {
	if seq == 0 || len(rp.times) == 0 {
		return rp.t0
	}
	return rp.times[min(seq, uint64(len(rp.times)))-1]
}

// oracle replays everything ever written to v (live records and deleted
// ones) from its initial map (a clone's snapshot 0) and seq 1 to the first
// gap or limit, with journal.Replay, and checks each verdict against the
// model.
func (s *sim) oracle(v *simVol, limit uint64) (*simReplay, error) {
	rp := &simReplay{cells: maps.Clone(v.base), t0: v.baseTime}
	last := v.baseTime
	if rp.cells == nil {
		rp.cells = map[uint64]simCell{}
	}
	var m simModel
	for seq := uint64(1); seq <= limit; seq++ {
		obj, ok := v.store.get(seq, true)
		if !ok {
			break
		}
		r, err := s.decoded(v, seq, obj)
		if err != nil {
			return nil, fmt.Errorf("%s record %d: %w", v.id, seq, err)
		}
		var vd Verdict
		rp.st, vd, err = Replay(rp.st, r.r)
		if err != nil {
			return nil, fmt.Errorf("replay never errors on a well-formed log, but: %w", err)
		}
		mv := m.step(r.r)
		if vd != Void {
			last = max(last, r.r.Time)
		}
		rp.recs = append(rp.recs, r)
		rp.times = append(rp.times, last)
		rp.model = append(rp.model, mv)
		rp.got = append(rp.got, vd)
		if vd != mv {
			what := "replay rules"
			switch {
			case vd == Apply:
				what = "I2 (void record applied)"
			case mv == Apply:
				what = "I1 (valid record skipped)"
			}
			return nil, fmt.Errorf("%s: journal.Replay says %v for %s record %d (%s epoch %d of w%d), DESIGN.md §5 says %v",
				what, vd, v.id, seq, r.r.Type, r.r.Epoch, r.w, mv)
		}
		if vd == Apply {
			applyCells(rp.cells, v.idx, seq, r)
		}
	}
	if rp.st.Epoch != m.epoch || rp.st.Writer != m.owner {
		return nil, fmt.Errorf("%s: replay state epoch %d writer %x, model epoch %d writer %x", v.id, rp.st.Epoch, rp.st.Writer[:1], m.epoch, m.owner[:1])
	}
	return rp, nil
}

// replayLive replays v's live store from a snapshot's state up to the
// first gap or limit, as an attach or loadImage does; it returns the
// newest time of the non-void records replayed (0: none).
func (s *sim) replayLive(v *simVol, st State, cells map[uint64]simCell, limit uint64) (State, map[uint64]simCell, int64, error) {
	var last int64
	for st.Seq < limit {
		seq := st.Seq + 1
		obj, ok := v.store.get(seq, false)
		if !ok {
			break
		}
		r, err := s.decoded(v, seq, obj)
		if err != nil {
			return st, cells, last, err
		}
		var vd Verdict
		st, vd, err = Replay(st, r.r)
		if err != nil {
			return st, cells, last, err
		}
		if vd != Void {
			last = max(last, r.r.Time)
		}
		if vd == Apply {
			applyCells(cells, v.idx, seq, r)
		}
	}
	return st, cells, last, nil
}

// loadLive is loadImage(limit): the newest live snapshot at or below limit,
// then the live log to the first gap or limit. It returns the time of the
// last record replayed (or the snapshot's), what checkRetained looks at.
func (s *sim) loadLive(v *simVol, limit uint64) (State, map[uint64]simCell, int64, *simSnap, error) {
	sn := v.store.newestAtOrBelow(limit)
	var st State
	cells := map[uint64]simCell{}
	var t int64
	if sn != nil {
		st, cells, t = sn.st, maps.Clone(sn.cells), sn.time
	} else if v.parent != nil {
		return st, nil, 0, nil, fmt.Errorf("clone %s has no snapshot at or below %d", v.id, limit)
	}
	st, cells, last, err := s.replayLive(v, st, cells, limit)
	t = max(t, last)
	return st, cells, t, sn, err
}

// checkAll replays v from scratch and from its newest snapshot, requires
// both to agree, and checks the invariants on the result.
func (s *sim) checkAll(v *simVol, when string) {
	if !v.exists() {
		return
	}
	full, err := s.oracle(v, math.MaxUint64)
	if err != nil {
		s.failf("%s: %v", when, err)
		return
	}
	st, cells, _, sn, err := s.loadLive(v, math.MaxUint64)
	if err != nil {
		s.failf("%s: %s: %v", when, v.id, err)
		return
	}
	if st != full.st || !cellsEqual(cells, full.cells) {
		from := "scratch"
		if sn != nil {
			from = fmt.Sprintf("snapshot %d", sn.seq)
		}
		s.failf("%s: %s: replay from %s (to %d) disagrees with replay of everything ever written (to %d): %s",
			when, v.id, from, st.Seq, full.st.Seq, cellsDiff(full.cells, cells))
		return
	}
	s.checkInvariants(v, when, full)
	s.checkReads(v, when, cells)
	s.checkNoLoss(v, when, sn)
}

// checkNoLoss: whatever the crashes, lost responses, zombies, moves and GC
// did, Gaps never calls a gap in v's live log (after the snapshot an
// attach replays from) lost: nothing in the simulation deletes an
// unsnapshotted record, so a loss report would be false and would refuse a
// healthy volume's attach.
func (s *sim) checkNoLoss(v *simVol, when string, sn *simSnap) {
	var base uint64
	if sn != nil {
		base = sn.seq
	}
	var present []Mark
	for seq := range v.store.objs {
		if seq <= base {
			continue
		}
		r, err := s.decoded(v, seq, v.store.objs[seq])
		if err != nil {
			s.failf("%s: %s record %d: %v", when, v.id, seq, err)
			return
		}
		present = append(present, Mark{Seq: seq, Durable: r.r.Durable})
	}
	snaps := make([]uint64, 0, len(v.store.snaps))
	for _, x := range v.store.snaps {
		snaps = append(snaps, x.seq)
	}
	gaps := Gaps(base, math.MaxUint64, present, snaps)
	if g, lost := FirstLoss(gaps); lost {
		s.failf("%s: %s: false loss report: %v", when, v.id, g)
		return
	}
	s.stats.leftoverGaps += len(gaps)
}

// checkReads: every block of a map reads a record that exists (a clone's
// inherited blocks included: they read an ancestor's record).
func (s *sim) checkReads(v *simVol, when string, cells map[uint64]simCell) {
	for _, b := range slices.Sorted(maps.Keys(cells)) {
		c := cells[b]
		if c.zero {
			continue
		}
		u := s.vols[c.vol]
		if _, ok := u.store.objs[c.seq]; !ok {
			what := "I1"
			if u != v {
				what = "clone read"
			}
			s.failf("%s: %s: %s block %d reads %s of %s, which is gone (%s)", when, what, v.id, b, cellString(c, true), u.id, s.deletedBy[simRef{c.vol, c.seq}])
			return
		}
	}
}

// checkHeads checks the reads of every existing volume's head (as a fresh
// attach sees it) and checkpoints.
func (s *sim) checkHeads(when string) {
	for _, v := range s.vols {
		if !v.exists() || len(v.store.snaps) == 0 && v.parent != nil {
			continue
		}
		_, cells, _, _, err := s.loadLive(v, math.MaxUint64)
		if err != nil {
			s.failf("%s: %s: %v", when, v.id, err)
			return
		}
		s.checkReads(v, when, cells)
		for _, c := range v.ckpts {
			s.checkReads(v, fmt.Sprintf("%s: checkpoint %s", when, c.label), c.snap.cells)
		}
		if s.err != nil {
			return
		}
	}
}

func (s *sim) checkInvariants(v *simVol, when string, rp *simReplay) {
	end := rp.st.Seq
	// I1 and prefix consistency: every acknowledged segment is below the
	// first gap, and each of its blocks reads its value or a newer one.
	for _, a := range v.acks {
		if a.slot > end {
			s.failf("%s: gap: w%d acknowledged segment %d at %s slot %d, but the log has a gap at %d", when, a.w, a.seg, v.id, a.slot, end+1)
			return
		}
		for _, wr := range a.writes {
			c, ok := rp.cells[wr.block]
			switch {
			case !ok || c.vol != v.idx || c.seq < a.slot:
				s.failf("%s: I1: %s block %d acknowledged by w%d segment %d at slot %d (step %d) reads %s",
					when, v.id, wr.block, a.w, a.seg, a.slot, a.step, cellString(c, ok))
				return
			case c.seq == a.slot && (c.w != a.w || c.seg != a.seg || c.val != wr.val || c.zero != wr.zero):
				s.failf("%s: I1: %s block %d acknowledged by w%d segment %d at slot %d reads %s", when, v.id, wr.block, a.w, a.seg, a.slot, cellString(c, ok))
				return
			case c.seq > a.slot && c.w == a.w && c.seg <= a.seg:
				s.failf("%s: I1: %s block %d acknowledged by w%d segment %d at slot %d is overwritten by its own older segment: %s",
					when, v.id, wr.block, a.w, a.seg, a.slot, cellString(c, ok))
				return
			}
		}
	}
	// I2: every visible value comes from an applied record (or, for a
	// clone's inherited block, from its initial map).
	for _, b := range slices.Sorted(maps.Keys(rp.cells)) {
		c := rp.cells[b]
		if c.vol != v.idx {
			if bc, ok := v.base[b]; !ok || bc != c {
				s.failf("%s: I2: %s block %d shows %s, neither its own record nor its initial map", when, v.id, b, cellString(c, true))
				return
			}
			continue
		}
		if c.seq == 0 || c.seq > end || rp.model[c.seq-1] != Apply {
			s.failf("%s: I2: %s block %d shows %s, from a record that is not applied", when, v.id, b, cellString(c, true))
			return
		}
	}
	// I3: after a fence of epoch e at f, nothing of an older epoch above f
	// was acknowledged or is applied.
	for i, r := range rp.recs {
		if rp.model[i] != Fence {
			continue
		}
		f, e := uint64(i+1), r.r.Epoch
		for _, a := range v.acks {
			if a.epoch < e && a.slot > f {
				s.failf("%s: I3: w%d (epoch %d) acknowledged segment %d at %s slot %d after w%d's fence of epoch %d at %d",
					when, a.w, a.epoch, a.seg, v.id, a.slot, r.w, e, f)
				return
			}
		}
		for j := i + 1; j < len(rp.recs); j++ {
			if o := rp.recs[j]; o.r.Epoch < e && rp.got[j] != Void {
				s.failf("%s: I3: %s record %d of w%d (epoch %d) is %v after the fence of epoch %d at %d", when, v.id, j+1, o.w, o.r.Epoch, rp.got[j], e, f)
				return
			}
		}
	}
}

// finalChecks: the world is quiet; every writer still attached must have
// had everything acknowledged, and the invariants must hold on every
// volume that exists.
func (s *sim) finalChecks() {
	if len(s.queue) != 0 {
		s.failf("final: %d requests still in flight", len(s.queue))
		return
	}
	if len(s.clones)+len(s.removes)+len(s.gcs) != 0 {
		s.failf("final: pool operations still in progress")
		return
	}
	for _, w := range s.writers {
		switch {
		case w.phase == phAttach:
			s.failf("final: w%d never attached", w.idx)
		case w.phase == phWrite && !w.fenced:
			s.failf("final: w%d is stuck: %d of %d segments sealed, %d acknowledged, durable %d, prefix %d, next %d",
				w.idx, len(w.segs), w.budget, w.ackedTo, w.w.DurableSeg(), w.w.Prefix(), w.w.Next())
		}
	}
	for _, v := range s.vols {
		if s.err != nil {
			return
		}
		if !v.exists() {
			continue
		}
		s.checkAll(v, "final")
		if s.err != nil {
			return
		}
		// I4: GC never deleted a fence of an existing volume.
		for _, seq := range slices.Sorted(maps.Keys(v.store.byGC)) {
			if r, err := decodeSim(v.store.archive[seq]); err != nil || r.r.Type == format.RecordFence {
				s.failf("final: I4: GC deleted %s record %d (%v)", v.id, seq, err)
				return
			}
		}
		full, err := s.oracle(v, math.MaxUint64)
		if err != nil {
			s.failf("final: %v", err)
			return
		}
		for _, vd := range full.model {
			if vd == Void {
				s.stats.voidRecords++
			}
		}
		// What each writer believed about its slots must be what the log
		// says: "mine" slots hold its own record, and it only skipped void
		// records.
		for _, w := range v.writers {
			if w.slots == nil {
				continue
			}
			for _, seq := range slices.Sorted(maps.Keys(w.slots)) {
				sl := w.slots[seq]
				obj, ok := v.store.get(seq, true)
				switch sl.state {
				case slotOursSim:
					if !ok || string(obj) != string(sl.obj) {
						s.failf("final: w%d believes %s slot %d holds its record, but it does not", w.idx, v.id, seq)
						return
					}
				case slotVoidSim:
					if !ok {
						s.failf("final: w%d skipped %s slot %d, which is empty", w.idx, v.id, seq)
						return
					}
					if seq <= full.st.Seq && full.model[seq-1] != Void {
						r := full.recs[seq-1]
						s.failf("final: w%d skipped %s slot %d as void, but replay gives its record (%s epoch %d of w%d) %v",
							w.idx, v.id, seq, r.r.Type, r.r.Epoch, r.w, full.model[seq-1])
						return
					}
				}
			}
		}
	}
	s.checkHeads("final")
}

func cellsEqual(a, b map[uint64]simCell) bool { return maps.Equal(a, b) }

func cellString(c simCell, ok bool) string {
	if !ok {
		return "nothing (never written)"
	}
	if c.zero {
		return fmt.Sprintf("zeros from record %d/%d (w%d segment %d)", c.vol, c.seq, c.w, c.seg)
	}
	return fmt.Sprintf("%#x from record %d/%d (w%d segment %d)", c.val, c.vol, c.seq, c.w, c.seg)
}

func cellsDiff(want, got map[uint64]simCell) string {
	keys := slices.Sorted(maps.Keys(want))
	for k := range got {
		if _, ok := want[k]; !ok {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	for _, k := range keys {
		w, wok := want[k]
		g, gok := got[k]
		if wok != gok || w != g {
			return fmt.Sprintf("block %d: from scratch %s, other %s", k, cellString(w, wok), cellString(g, gok))
		}
	}
	return "maps equal"
}
