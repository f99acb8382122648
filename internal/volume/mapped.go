package volume

import "iter"

// Range is a byte range [Off, Off+Len) of a volume.
type Range struct {
	Off, Len int64
}

// End returns the first byte after the range.
func (r Range) End() int64 { return r.Off + r.Len }

// MappedRanges yields, in ascending order, the ranges of the volume that
// hold written data: everything outside them reads as zeros without a GET
// (never written, trimmed, or written as zeros, which the map stores as
// unmapped). Adjacent extents are merged, so a range may span several
// records. A reader such as export can therefore skip unmapped space
// without reading it and leave exact holes.
//
// The ranges are those of one instant: the map is cloned (O(1),
// copy-on-write) under the volume lock when iteration starts, and writes
// made while the caller iterates do not change what it sees, nor does the
// iteration hold the lock while the caller works.
func (v *Volume) MappedRanges() iter.Seq[Range] {
	return func(yield func(Range) bool) {
		v.mu.Lock()
		m := v.m.Clone()
		v.mu.Unlock()
		var cur Range
		for e := range m.All() {
			off, n := int64(e.Start), int64(e.Len)
			if cur.Len > 0 && cur.End() == off {
				cur.Len += n
				continue
			}
			if cur.Len > 0 && !yield(cur) {
				return
			}
			cur = Range{Off: off, Len: n}
		}
		if cur.Len > 0 {
			yield(cur)
		}
	}
}
