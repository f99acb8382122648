package extmap

import (
	"math/rand/v2"
	"testing"
)

// model is a per-byte reference: 0 = unmapped, else an encoding of loc.
type cell struct {
	ok  bool
	loc Loc
}

func check(t *testing.T, m *Map, model []cell) {
	t.Helper()
	got := make([]cell, len(model))
	var prevEnd uint64
	var prev *Extent
	for e := range m.All() {
		if e.Len == 0 || e.Start < prevEnd {
			t.Fatalf("bad extent %+v after end %d", e, prevEnd)
		}
		if prev != nil && prev.End() == e.Start && prev.Loc.Vol == e.Loc.Vol && prev.Loc.Seq == e.Loc.Seq && prev.Loc.Off+prev.Len == e.Loc.Off {
			t.Fatalf("unmerged neighbours %+v %+v", *prev, e)
		}
		for i := uint64(0); i < e.Len; i++ {
			got[e.Start+i] = cell{true, Loc{e.Loc.Vol, e.Loc.Seq, e.Loc.Off + i}}
		}
		prevEnd = e.End()
		ec := e
		prev = &ec
	}
	for i := range model {
		if got[i] != model[i] {
			t.Fatalf("byte %d: map %+v model %+v", i, got[i], model[i])
		}
	}
}

func TestMapAgainstModel(t *testing.T) {
	for seed := uint64(0); seed < 30; seed++ {
		rng := rand.New(rand.NewPCG(seed, 1))
		const size = 2000
		m := New()
		model := make([]cell, size)
		var snaps []*Map
		var snapModels [][]cell
		for op := 0; op < 400; op++ {
			start := uint64(rng.IntN(size))
			n := uint64(rng.IntN(size-int(start)) + 1)
			if rng.IntN(4) == 0 {
				n = uint64(rng.IntN(min(8, size-int(start))) + 1)
			}
			switch rng.IntN(6) {
			case 0:
				m.Clear(start, n)
				for i := start; i < start+n; i++ {
					model[i] = cell{}
				}
			case 1:
				oldSeq := uint64(rng.IntN(5))
				newSeq := uint64(10 + rng.IntN(5))
				m.Relocate(start, n, 0, oldSeq, newSeq)
				for i := start; i < start+n; i++ {
					if model[i].ok && model[i].loc.Vol == 0 && model[i].loc.Seq == oldSeq {
						model[i].loc.Seq = newSeq
					}
				}
			case 2:
				snaps = append(snaps, m.Clone())
				snapModels = append(snapModels, append([]cell(nil), model...))
			default:
				// Sequential-looking writes sometimes, to exercise merging.
				loc := Loc{Vol: uint32(rng.IntN(2)), Seq: uint64(rng.IntN(5)), Off: uint64(rng.IntN(3)) * 100}
				if rng.IntN(2) == 0 && start > 0 && model[start-1].ok {
					loc = model[start-1].loc
					loc.Off++
				}
				m.Set(start, n, loc)
				for i := uint64(0); i < n; i++ {
					model[start+i] = cell{true, Loc{loc.Vol, loc.Seq, loc.Off + i}}
				}
			}
			check(t, m, model)
			// Lookup of a random window agrees with the model.
			ls := uint64(rng.IntN(size))
			ln := uint64(rng.IntN(size-int(ls)) + 1)
			covered := make([]cell, size)
			m.Lookup(ls, ln, func(e Extent) bool {
				if e.Start < ls || e.End() > ls+ln {
					t.Fatalf("lookup piece %+v outside [%d,+%d)", e, ls, ln)
				}
				for i := uint64(0); i < e.Len; i++ {
					covered[e.Start+i] = cell{true, Loc{e.Loc.Vol, e.Loc.Seq, e.Loc.Off + i}}
				}
				return true
			})
			for i := ls; i < ls+ln; i++ {
				if covered[i] != model[i] {
					t.Fatalf("seed %d op %d: lookup byte %d: %+v vs %+v", seed, op, i, covered[i], model[i])
				}
			}
		}
		for i, s := range snaps {
			check(t, s, snapModels[i])
		}
	}
}

func BenchmarkLookup(b *testing.B) {
	m := New()
	rng := rand.New(rand.NewPCG(1, 1))
	for i := 0; i < 100000; i++ {
		m.Set(uint64(rng.IntN(1<<20))*4096, 4096, Loc{Seq: uint64(i), Off: 0})
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		off := uint64(rng.IntN(1<<20)) * 4096
		m.Lookup(off, 4096, func(Extent) bool { return true })
	}
}
