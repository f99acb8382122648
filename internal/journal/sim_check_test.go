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

// simReplay is a replay of the store from scratch.
type simReplay struct {
	st    State
	cells map[uint64]simCell
	recs  []*simRec // recs[seq-1]
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

func applyCells(cells map[uint64]simCell, seq uint64, r *simRec) {
	for _, wr := range r.writes {
		cells[wr.block] = simCell{val: wr.val, seq: seq, w: r.w, seg: r.seg, zero: wr.zero}
	}
}

// oracle replays everything ever written (live records and those GC
// deleted) from seq 1 to the first gap or limit, with journal.Replay, and
// checks each verdict against the model.
func (s *sim) oracle(limit uint64) (*simReplay, error) {
	rp := &simReplay{cells: map[uint64]simCell{}}
	var m simModel
	for seq := uint64(1); seq <= limit; seq++ {
		obj, ok := s.store.get(seq, true)
		if !ok {
			break
		}
		r, err := s.decoded(seq, obj)
		if err != nil {
			return nil, fmt.Errorf("record %d: %w", seq, err)
		}
		var v Verdict
		rp.st, v, err = Replay(rp.st, r.r)
		if err != nil {
			return nil, fmt.Errorf("replay never errors on a well-formed log, but: %w", err)
		}
		mv := m.step(r.r)
		rp.recs = append(rp.recs, r)
		rp.model = append(rp.model, mv)
		rp.got = append(rp.got, v)
		if v != mv {
			what := "replay rules"
			switch {
			case v == Apply:
				what = "I2 (void record applied)"
			case mv == Apply:
				what = "I1 (valid record skipped)"
			}
			return nil, fmt.Errorf("%s: journal.Replay says %v for record %d (%s epoch %d of w%d), DESIGN.md §5 says %v",
				what, v, seq, r.r.Type, r.r.Epoch, r.w, mv)
		}
		if v == Apply {
			applyCells(rp.cells, seq, r)
		}
	}
	if rp.st.Epoch != m.epoch || rp.st.Writer != m.owner {
		return nil, fmt.Errorf("replay state epoch %d writer %x, model epoch %d writer %x", rp.st.Epoch, rp.st.Writer[:1], m.epoch, m.owner[:1])
	}
	return rp, nil
}

// replayLive replays the live store from a snapshot's state, as an attach does.
func (s *sim) replayLive(st State, cells map[uint64]simCell) (State, map[uint64]simCell, error) {
	for {
		seq := st.Seq + 1
		obj, ok := s.store.get(seq, false)
		if !ok {
			return st, cells, nil
		}
		r, err := s.decoded(seq, obj)
		if err != nil {
			return st, cells, err
		}
		var v Verdict
		st, v, err = Replay(st, r.r)
		if err != nil {
			return st, cells, err
		}
		if v == Apply {
			applyCells(cells, seq, r)
		}
	}
}

// checkAll replays the store from scratch and from the newest snapshot,
// requires both to agree, and checks the invariants on the result.
func (s *sim) checkAll(when string) {
	full, err := s.oracle(math.MaxUint64)
	if err != nil {
		s.failf("%s: %v", when, err)
		return
	}
	if sn := s.store.newest(); sn != nil {
		st, cells, err := s.replayLive(sn.st, maps.Clone(sn.cells))
		if err != nil {
			s.failf("%s: replay from snapshot %d: %v", when, sn.seq, err)
			return
		}
		if st != full.st || !cellsEqual(cells, full.cells) {
			s.failf("%s: replay from snapshot %d (to %d) disagrees with replay from scratch (to %d): %s",
				when, sn.seq, st.Seq, full.st.Seq, cellsDiff(full.cells, cells))
			return
		}
	}
	s.checkInvariants(when, full)
}

func (s *sim) checkInvariants(when string, rp *simReplay) {
	end := rp.st.Seq
	// I1 and prefix consistency: every acknowledged segment is below the
	// first gap, and each of its blocks reads its value or a newer one.
	for _, a := range s.acks {
		if a.slot > end {
			s.failf("%s: gap: w%d acknowledged segment %d at slot %d, but the log has a gap at %d", when, a.w, a.seg, a.slot, end+1)
			return
		}
		for _, wr := range a.writes {
			c, ok := rp.cells[wr.block]
			switch {
			case !ok || c.seq < a.slot:
				s.failf("%s: I1: block %d acknowledged by w%d segment %d at slot %d (step %d) reads %s",
					when, wr.block, a.w, a.seg, a.slot, a.step, cellString(c, ok))
				return
			case c.seq == a.slot && (c.w != a.w || c.seg != a.seg || c.val != wr.val || c.zero != wr.zero):
				s.failf("%s: I1: block %d acknowledged by w%d segment %d at slot %d reads %s", when, wr.block, a.w, a.seg, a.slot, cellString(c, ok))
				return
			case c.seq > a.slot && c.w == a.w && c.seg <= a.seg:
				s.failf("%s: I1: block %d acknowledged by w%d segment %d at slot %d is overwritten by its own older segment: %s",
					when, wr.block, a.w, a.seg, a.slot, cellString(c, ok))
				return
			}
		}
	}
	// I2: every visible value comes from an applied record.
	for _, b := range slices.Sorted(maps.Keys(rp.cells)) {
		c := rp.cells[b]
		if c.seq == 0 || c.seq > end || rp.model[c.seq-1] != Apply {
			s.failf("%s: I2: block %d shows %s, from a record that is not applied", when, b, cellString(c, true))
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
		for _, a := range s.acks {
			if a.epoch < e && a.slot > f {
				s.failf("%s: I3: w%d (epoch %d) acknowledged segment %d at slot %d after w%d's fence of epoch %d at %d",
					when, a.w, a.epoch, a.seg, a.slot, r.w, e, f)
				return
			}
		}
		for j := i + 1; j < len(rp.recs); j++ {
			if o := rp.recs[j]; o.r.Epoch < e && rp.got[j] != Void {
				s.failf("%s: I3: record %d of w%d (epoch %d) is %v after the fence of epoch %d at %d", when, j+1, o.w, o.r.Epoch, rp.got[j], e, f)
				return
			}
		}
	}
}

// finalChecks: the world is quiet; every writer still attached must have
// had everything acknowledged, and the invariants must hold.
func (s *sim) finalChecks() {
	if len(s.queue) != 0 {
		s.failf("final: %d requests still in flight", len(s.queue))
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
	if s.err != nil {
		return
	}
	s.checkAll("final")
	if s.err != nil {
		return
	}
	// I4: GC never deleted a fence.
	for _, seq := range slices.Sorted(maps.Keys(s.store.archive)) {
		if r, err := decodeSim(s.store.archive[seq]); err != nil || r.r.Type == format.RecordFence {
			s.failf("final: I4: GC deleted record %d (%v)", seq, err)
			return
		}
	}
	full, err := s.oracle(math.MaxUint64)
	if err != nil {
		s.failf("final: %v", err)
		return
	}
	for _, v := range full.model {
		if v == Void {
			s.stats.voidRecords++
		}
	}
	// What each writer believed about its slots must be what the log says:
	// "mine" slots hold its own record, and it only skipped void records.
	for _, w := range s.writers {
		if w.slots == nil {
			continue
		}
		for _, seq := range slices.Sorted(maps.Keys(w.slots)) {
			sl := w.slots[seq]
			obj, ok := s.store.get(seq, true)
			switch sl.state {
			case slotOursSim:
				if !ok || string(obj) != string(sl.obj) {
					s.failf("final: w%d believes slot %d holds its record, but it does not", w.idx, seq)
					return
				}
			case slotVoidSim:
				if !ok {
					s.failf("final: w%d skipped slot %d, which is empty", w.idx, seq)
					return
				}
				if seq <= full.st.Seq && full.model[seq-1] != Void {
					r := full.recs[seq-1]
					s.failf("final: w%d skipped slot %d as void, but replay gives its record (%s epoch %d of w%d) %v",
						w.idx, seq, r.r.Type, r.r.Epoch, r.w, full.model[seq-1])
					return
				}
			}
		}
	}
}

func cellsEqual(a, b map[uint64]simCell) bool { return maps.Equal(a, b) }

func cellString(c simCell, ok bool) string {
	if !ok {
		return "nothing (never written)"
	}
	if c.zero {
		return fmt.Sprintf("zeros from record %d (w%d segment %d)", c.seq, c.w, c.seg)
	}
	return fmt.Sprintf("%#x from record %d (w%d segment %d)", c.val, c.seq, c.w, c.seg)
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
