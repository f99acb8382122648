package format

import (
	"encoding/binary"
	"iter"
)

const (
	snapshotMagic = 0x31534455 // "UDS1"
	maxVols       = 1 << 16
)

// SnapExtent is one extent-map entry in a snapshot: Len bytes at volume
// offset Start map to data-section offset Off of record Seq in the log of
// volume Vols[Vol]. Unmapped ranges read as zeros.
type SnapExtent struct {
	Start, Len uint64
	Vol        uint32
	Seq        uint64
	Off        uint64
}

// SnapshotHeader describes the map a snapshot holds: the state after
// replaying the log up to and including Seq.
type SnapshotHeader struct {
	Volume string
	Seq    uint64
	Epoch  uint64   // current epoch after Seq
	Writer WriterID // writer that owns Epoch
	// FenceSeq is the seq of the fence record that started Epoch (0: none).
	FenceSeq uint64
	Time     int64    // time of record Seq, unix nanoseconds
	Size     uint64   // volume size, for sanity checks
	Vols     []string // volume ids referenced by extents; Vols[0] is Volume
}

// AppendSnapshot encodes a snapshot; extents must come in ascending,
// non-overlapping order.
func AppendSnapshot(dst []byte, h *SnapshotHeader, extents iter.Seq[SnapExtent]) []byte {
	start := len(dst)
	e := encoder{b: dst}
	e.u32(snapshotMagic)
	e.u16(Version)
	e.u64(h.Seq)
	e.u64(h.Epoch)
	e.b = append(e.b, h.Writer[:]...)
	e.u64(h.FenceSeq)
	e.u64(uint64(h.Time))
	e.u64(h.Size)
	e.str(h.Volume)
	e.uvarint(uint64(len(h.Vols)))
	for _, v := range h.Vols {
		e.str(v)
	}
	countPos := len(e.b)
	e.u64(0) // extent count, patched below
	var n, prevEnd uint64
	for x := range extents {
		e.uvarint(x.Start - prevEnd)
		e.uvarint(x.Len)
		e.uvarint(uint64(x.Vol))
		e.uvarint(x.Seq)
		e.uvarint(x.Off)
		prevEnd = x.Start + x.Len
		n++
	}
	binary.LittleEndian.PutUint64(e.b[countPos:], n)
	e.u32(Checksum(e.b[start:]))
	return e.b
}

// PeekSnapshotHeader parses the fixed header fields (seq, epoch, writer,
// fence seq, time, size) from the first bytes of a snapshot WITHOUT
// verifying its checksum: for choosing among snapshots only; load the
// chosen one with DecodeSnapshot.
func PeekSnapshotHeader(prefix []byte) (*SnapshotHeader, error) {
	d := decoder{b: prefix}
	h, err := d.snapshotHeader()
	if err != nil {
		return nil, err
	}
	if d.err != nil {
		return nil, d.err
	}
	return h, nil
}

// snapshotHeader reads the magic, version and fixed header fields, the
// part of a snapshot PeekSnapshotHeader and DecodeSnapshot both read. A
// short input is left in d.err for the caller, which may read on.
func (d *decoder) snapshotHeader() (*SnapshotHeader, error) {
	if d.u32("magic") != snapshotMagic {
		return nil, corruptf("snapshot magic mismatch")
	}
	if v := d.u16("version"); v != Version && d.err == nil {
		return nil, corruptf("snapshot format version %d not supported", v)
	}
	h := &SnapshotHeader{}
	h.Seq = d.u64("seq")
	h.Epoch = d.u64("epoch")
	copy(h.Writer[:], d.bytes(16, "writer"))
	h.FenceSeq = d.u64("fence seq")
	h.Time = int64(d.u64("time"))
	h.Size = d.u64("size")
	return h, nil
}

// DecodeSnapshot verifies b, calls onHeader (if not nil) with the header and
// then fn for every extent in order.
func DecodeSnapshot(b []byte, fn func(SnapExtent) error, onHeader func(*SnapshotHeader)) (*SnapshotHeader, error) {
	if len(b) < 4 {
		return nil, corruptf("snapshot truncated")
	}
	body := b[:len(b)-4]
	if Checksum(body) != binary.LittleEndian.Uint32(b[len(b)-4:]) {
		return nil, corruptf("snapshot checksum mismatch")
	}
	d := decoder{b: body}
	h, err := d.snapshotHeader()
	if err != nil {
		return nil, err
	}
	h.Volume = d.str(maxIDLen, "volume id")
	nv := d.uvarint("volume count")
	if nv == 0 || nv > maxVols || nv > uint64(len(d.b)) {
		d.fail("volume count")
	}
	for i := uint64(0); i < nv && d.err == nil; i++ {
		h.Vols = append(h.Vols, d.str(maxIDLen, "volume id"))
	}
	n := d.u64("extent count")
	if d.err != nil {
		return nil, d.err
	}
	if h.Vols[0] != h.Volume {
		return nil, corruptf("snapshot volume table does not start with its volume")
	}
	if n > uint64(len(d.b))/5 {
		return nil, corruptf("snapshot extent count %d too large", n)
	}
	if onHeader != nil {
		onHeader(h)
	}
	var prevEnd uint64
	for i := uint64(0); i < n; i++ {
		var x SnapExtent
		gap := d.uvarint("extent gap")
		x.Start = prevEnd + gap
		x.Len = d.uvarint("extent length")
		vol := d.uvarint("extent volume")
		x.Seq = d.uvarint("extent seq")
		x.Off = d.uvarint("extent offset")
		if d.err != nil {
			return nil, d.err
		}
		x.Vol = uint32(vol)
		if x.Start < prevEnd || x.Len == 0 || x.Start+x.Len < x.Start || x.Start+x.Len > h.Size || vol >= nv {
			return nil, corruptf("snapshot extent %d invalid", i)
		}
		prevEnd = x.Start + x.Len
		if err := fn(x); err != nil {
			return nil, err
		}
	}
	if len(d.b) != 0 {
		return nil, corruptf("snapshot has %d trailing bytes", len(d.b))
	}
	return h, nil
}
