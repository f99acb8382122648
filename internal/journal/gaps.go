package journal

import (
	"cmp"
	"fmt"
	"slices"
)

// Mark is what gap analysis needs of a record present in the log: its seq
// and the durable watermark it was sealed with (format.Record.Durable).
type Mark struct {
	Seq     uint64
	Durable uint64
}

// Gap is a run of missing sequence numbers First..Last in a log.
//
// Not every gap is loss. A writer that crashes with pipelined uploads in
// flight leaves seq s+2 present while s+1 never landed; nothing at or
// after s+1 was acknowledged (acknowledgements follow the prefix), replay
// stops there and the next fence voids the leftovers. A gap is Lost only
// when something present proves the missing records once existed: a later
// record whose writer knew every seq up to its watermark to be durable
// (watermark >= First), or a snapshot at or after First (snapshots are
// written only once their prefix is durable). Such a gap means records
// were deleted (or the store lost them), and replaying past it would
// silently roll the volume back.
type Gap struct {
	First, Last uint64
	Lost        bool
	// Proof, when Lost: the record at ProofSeq carries watermark
	// ProofDurable >= First, or (ProofSeq 0) a snapshot at ProofSnap exists.
	ProofSeq, ProofDurable, ProofSnap uint64
}

// String describes the gap and, when lost, what proves it.
func (g Gap) String() string {
	seqs := fmt.Sprintf("seq %d", g.First)
	if g.Last != g.First {
		seqs = fmt.Sprintf("seqs %d-%d", g.First, g.Last)
	}
	switch {
	case !g.Lost:
		return fmt.Sprintf("log %s missing after a crash (never acknowledged: no later record or snapshot vouches for them)", seqs)
	case g.ProofSeq != 0:
		return fmt.Sprintf("log %s missing, but record %d was written after seq %d was durable: acknowledged records were deleted", seqs, g.ProofSeq, g.ProofDurable)
	default:
		return fmt.Sprintf("log %s missing, but snapshot %d was written after them: acknowledged records were deleted", seqs, g.ProofSnap)
	}
}

// Gaps finds the missing sequence numbers in a log after base (the seq
// replay starts from: records at or below it are covered by a snapshot and
// may have been collected) and up to limit, and judges each run. present
// lists the records found after base (any order); snaps the snapshot seqs
// that exist (any order; those at or below base are ignored). The log is
// taken to extend to the highest present record or snapshot, so records
// missing below a newer snapshot count too. Gaps are returned in order.
func Gaps(base, limit uint64, present []Mark, snaps []uint64) []Gap {
	recs := slices.Clone(present)
	slices.SortFunc(recs, func(a, b Mark) int { return cmp.Compare(a.Seq, b.Seq) })
	recs = slices.CompactFunc(recs, func(a, b Mark) bool { return a.Seq == b.Seq })
	recs = slices.DeleteFunc(recs, func(m Mark) bool { return m.Seq <= base || m.Seq > limit })
	var sn []uint64
	for _, s := range snaps {
		if s > base && s <= limit {
			sn = append(sn, s)
		}
	}
	slices.Sort(sn)
	end := base
	if len(recs) > 0 {
		end = recs[len(recs)-1].Seq
	}
	if len(sn) > 0 {
		end = max(end, sn[len(sn)-1])
	}
	// best[i]: the record at or after recs[i] with the highest watermark.
	best := make([]int, len(recs))
	for i := len(recs) - 1; i >= 0; i-- {
		best[i] = i
		if i+1 < len(recs) && recs[best[i+1]].Durable > recs[i].Durable {
			best[i] = best[i+1]
		}
	}
	var gaps []Gap
	next := base + 1
	for i := 0; next <= end; i++ {
		var at uint64 // seq of the next present record, or end+1
		if i < len(recs) {
			at = recs[i].Seq
		} else {
			at = end + 1
		}
		if at > next {
			g := Gap{First: next, Last: at - 1}
			if i < len(recs) && recs[best[i]].Durable >= g.First {
				g.Lost, g.ProofSeq, g.ProofDurable = true, recs[best[i]].Seq, recs[best[i]].Durable
			} else if j, _ := slices.BinarySearch(sn, g.First); j < len(sn) {
				g.Lost, g.ProofSnap = true, sn[j]
			}
			gaps = append(gaps, g)
		}
		if i >= len(recs) {
			break
		}
		next = at + 1
	}
	return gaps
}

// FirstLoss returns the first lost gap of gaps, if any.
func FirstLoss(gaps []Gap) (Gap, bool) {
	for _, g := range gaps {
		if g.Lost {
			return g, true
		}
	}
	return Gap{}, false
}
