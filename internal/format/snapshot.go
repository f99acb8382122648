package format

import (
	"encoding/binary"
	"iter"
)

const (
	snapshotMagic = 0x31534455 // "UDS1"
	maxVols       = 1 << 16
	// snapshotVersionFrames is the snapshot version that carries the frame
	// tables of the packed records its extents reference (after the
	// extents), so a volume attached from it reads any chunk of them with
	// one GET. Snapshots without packed records stay version 1.
	snapshotVersionFrames = 2
)

// SnapFrames is a packed record's frame table in a snapshot: record Seq of
// volume Vols[Vol], Sizes as in Record.Frames.
type SnapFrames struct {
	Vol   uint32
	Seq   uint64
	Sizes []uint32
}

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
	frames   bool     // version 2: frame tables follow the extents
}

// AppendSnapshot encodes a snapshot; extents must come in ascending,
// non-overlapping order.
func AppendSnapshot(dst []byte, h *SnapshotHeader, extents iter.Seq[SnapExtent]) []byte {
	return AppendSnapshotFrames(dst, h, extents, nil)
}

// AppendSnapshotFrames is AppendSnapshot with the frame tables of packed
// records (version 2 if there are any).
func AppendSnapshotFrames(dst []byte, h *SnapshotHeader, extents iter.Seq[SnapExtent], frames []SnapFrames) []byte {
	start := len(dst)
	e := encoder{b: dst}
	e.u32(snapshotMagic)
	if len(frames) > 0 {
		e.u16(snapshotVersionFrames)
	} else {
		e.u16(Version)
	}
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
	if len(frames) > 0 {
		e.uvarint(uint64(len(frames)))
		for _, f := range frames {
			e.uvarint(uint64(f.Vol))
			e.uvarint(f.Seq)
			e.uvarint(uint64(len(f.Sizes)))
			for _, s := range f.Sizes {
				e.uvarint(uint64(s))
			}
		}
	}
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
	v := d.u16("version")
	if v != Version && v != snapshotVersionFrames && d.err == nil {
		return nil, corruptf("snapshot format version %d not supported", v)
	}
	h := &SnapshotHeader{frames: v == snapshotVersionFrames}
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
	return DecodeSnapshotFrames(b, fn, onHeader, nil)
}

// DecodeSnapshotFrames is DecodeSnapshot that also calls onFrames (if not
// nil) with every frame table a version 2 snapshot holds, after the
// extents. Each table is checked for shape (its sizes within what a
// packed frame can take, Vol within the volume table); that it matches its
// record is checked where the record's frames are opened.
func DecodeSnapshotFrames(b []byte, fn func(SnapExtent) error, onHeader func(*SnapshotHeader), onFrames func(SnapFrames) error) (*SnapshotHeader, error) {
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
	if h.frames {
		nt := d.uvarint("frame table count")
		if d.err == nil && nt > uint64(len(d.b))/3 {
			d.fail("frame table count")
		}
		for i := uint64(0); i < nt && d.err == nil; i++ {
			var f SnapFrames
			vol := d.uvarint("frame table volume")
			f.Seq = d.uvarint("frame table seq")
			f.Sizes = d.frameSizes()
			if d.err != nil {
				return nil, d.err
			}
			if vol >= nv {
				return nil, corruptf("snapshot frame table %d names volume %d of %d", i, vol, nv)
			}
			f.Vol = uint32(vol)
			for _, s := range f.Sizes {
				if s < PackedHeader+1 {
					return nil, corruptf("snapshot frame table %d: stored size %d too small", i, s)
				}
			}
			if onFrames != nil {
				if err := onFrames(f); err != nil {
					return nil, err
				}
			}
		}
		if d.err != nil {
			return nil, d.err
		}
	}
	if len(d.b) != 0 {
		return nil, corruptf("snapshot has %d trailing bytes", len(d.b))
	}
	return h, nil
}
