// Package extmap is the in-memory extent map of a volume: byte ranges of the
// volume mapped to byte ranges of log records. Unmapped ranges read as zeros,
// so zero writes and trims are just deletions. Clone is O(1) (copy-on-write
// B-tree), which makes snapshots and checkpoints cheap.
//
// A Map is not safe for concurrent use; the volume serialises access.
package extmap

import (
	"iter"

	"github.com/google/btree"
)

// Loc is a position in a record's data section: volume table index, record
// sequence number and logical offset within the record's data section.
type Loc struct {
	Vol uint32
	Seq uint64
	Off uint64
}

// Extent maps [Start, Start+Len) of the volume to Loc onwards.
type Extent struct {
	Start, Len uint64
	Loc        Loc
}

// End returns the first byte after the extent.
func (e Extent) End() uint64 { return e.Start + e.Len }

// clip returns the part of e inside [start, end); the caller ensures overlap.
func (e Extent) clip(start, end uint64) Extent {
	if start > e.Start {
		d := start - e.Start
		e.Start, e.Len, e.Loc.Off = start, e.Len-d, e.Loc.Off+d
	}
	if end < e.End() {
		e.Len = end - e.Start
	}
	return e
}

// Map is a set of non-overlapping extents ordered by Start.
// Invariant: no two extents overlap; no extent has Len 0; adjacent extents
// that continue each other (same record, contiguous offsets) are merged.
type Map struct {
	t *btree.BTreeG[Extent]
}

func less(a, b Extent) bool { return a.Start < b.Start }

// New returns an empty map.
func New() *Map { return &Map{t: btree.NewG(32, less)} }

// Clone returns a copy that shares structure with m until either changes.
func (m *Map) Clone() *Map { return &Map{t: m.t.Clone()} }

// Len returns the number of extents.
func (m *Map) Len() int { return m.t.Len() }

// MappedBytes returns the sum of extent lengths (O(n)).
func (m *Map) MappedBytes() uint64 {
	var n uint64
	m.t.Ascend(func(e Extent) bool { n += e.Len; return true })
	return n
}

// All yields every extent in ascending order.
func (m *Map) All() iter.Seq[Extent] {
	return func(yield func(Extent) bool) { m.t.Ascend(yield) }
}

// Lookup calls fn with the mapped pieces of [start, start+n), clipped to the
// range, in ascending order; gaps between pieces read as zeros. fn returns
// false to stop.
func (m *Map) Lookup(start, n uint64, fn func(Extent) bool) {
	end := start + n
	if n == 0 {
		return
	}
	cont := true
	m.t.DescendLessOrEqual(Extent{Start: start}, func(e Extent) bool {
		if e.Start < start && e.End() > start {
			cont = fn(e.clip(start, end))
		}
		return false
	})
	if !cont {
		return
	}
	m.t.AscendRange(Extent{Start: start}, Extent{Start: end}, func(e Extent) bool {
		return fn(e.clip(start, end))
	})
}

// Clear unmaps [start, start+n).
func (m *Map) Clear(start, n uint64) {
	if n == 0 {
		return
	}
	end := start + n
	var hit []Extent
	m.t.DescendLessOrEqual(Extent{Start: start}, func(e Extent) bool {
		if e.Start < start && e.End() > start {
			hit = append(hit, e)
		}
		return false
	})
	m.t.AscendRange(Extent{Start: start}, Extent{Start: end}, func(e Extent) bool {
		hit = append(hit, e)
		return true
	})
	for _, e := range hit {
		m.t.Delete(e)
		if e.Start < start {
			m.t.ReplaceOrInsert(e.clip(e.Start, start))
		}
		if e.End() > end {
			m.t.ReplaceOrInsert(e.clip(end, e.End()))
		}
	}
}

// Set maps [start, start+n) to loc, loc.Off+1, ... replacing what was there.
func (m *Map) Set(start, n uint64, loc Loc) {
	if n == 0 {
		return
	}
	m.Clear(start, n)
	e := Extent{Start: start, Len: n, Loc: loc}
	// Merge with a predecessor that this extent continues.
	m.t.DescendLessOrEqual(Extent{Start: start}, func(p Extent) bool {
		if p.End() == start && p.Loc.Vol == loc.Vol && p.Loc.Seq == loc.Seq && p.Loc.Off+p.Len == loc.Off {
			m.t.Delete(p)
			e = Extent{Start: p.Start, Len: p.Len + n, Loc: p.Loc}
		}
		return false
	})
	// And with a successor that continues it.
	if s, ok := m.t.Get(Extent{Start: e.End()}); ok {
		if s.Loc.Vol == loc.Vol && s.Loc.Seq == loc.Seq && e.Loc.Off+e.Len == s.Loc.Off {
			m.t.Delete(s)
			e.Len += s.Len
		}
	}
	m.t.ReplaceOrInsert(e)
}

// Relocate rewrites the pieces of [start, start+n) that point into record
// (vol, oldSeq) to point into (vol, newSeq) at the same offsets. Used when a
// pending record had to be written at another sequence number.
func (m *Map) Relocate(start, n uint64, vol uint32, oldSeq, newSeq uint64) {
	var hit []Extent
	m.Lookup(start, n, func(e Extent) bool {
		if e.Loc.Vol == vol && e.Loc.Seq == oldSeq {
			hit = append(hit, e)
		}
		return true
	})
	for _, e := range hit {
		e.Loc.Seq = newSeq
		m.Set(e.Start, e.Len, e.Loc)
	}
}
