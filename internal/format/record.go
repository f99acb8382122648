package format

import (
	"encoding/binary"
	"fmt"
)

// Record data sections are split into frames of at most ChunkSize data bytes,
// each preceded by its length and CRC-32C, so any chunk can be fetched with
// one ranged GET at a position computed from its index and verified alone.
const (
	ChunkSize   = 64 << 10 // data bytes per full frame
	FrameHeader = 8        // u32 length, u32 crc32c
	FrameSize   = ChunkSize + FrameHeader
	footerSize  = 8 // u32 trailer length, u32 footer magic

	recordMagic       = 0x31524455 // "UDR1"
	recordFooterMagic = 0x45524455 // "UDRE"

	// RecordVersion is the trailer version this code writes. Version 2
	// added the durable watermark (Record.Durable); version 1 trailers
	// (without it) still decode, with Durable 0 ("unknown"), so volumes
	// written before it open unchanged.
	RecordVersion  = 2
	recordVersion1 = 1
	// RecordVersionSealed is the trailer version of a record whose frames
	// are sealed (encrypted volumes): its flags byte says so (bit 0), and
	// binaries that know only versions 1 and 2 refuse it instead of
	// misreading its frames. Unencrypted volumes keep writing version 2.
	RecordVersionSealed = 3
	flagSealed          = 1
	// RecordVersionPacked is the trailer version of a packed record
	// (compressed volumes, FORMAT.md "Compression"): flags bit 1 says so,
	// bit 0 still says sealed, and a frame table follows the meta.
	RecordVersionPacked = 4
	flagPacked          = 2

	// MaxTrailer bounds a record trailer so a decoder never allocates
	// unboundedly on hostile input.
	MaxTrailer = 64 << 20
	maxMeta    = 64 << 10
	maxIDLen   = 128
)

// RecordType says what a log record does to the volume when replayed.
type RecordType uint8

const (
	// RecordData carries extents (data or zero) to apply to the map.
	RecordData RecordType = 1
	// RecordFence claims a new epoch for a writer.
	RecordFence RecordType = 2
	// RecordRestore resets the map to a snapshot of RestoreVol at RestoreSeq.
	RecordRestore RecordType = 3
	// RecordResize grows the volume to NewSize bytes from its seq on.
	RecordResize RecordType = 4
)

func (t RecordType) String() string {
	switch t {
	case RecordData:
		return "data"
	case RecordFence:
		return "fence"
	case RecordRestore:
		return "restore"
	case RecordResize:
		return "resize"
	}
	return fmt.Sprintf("type(%d)", uint8(t))
}

// WriterID identifies one read-write attach; random per attach.
type WriterID [16]byte

// String returns the ID in hex.
func (w WriterID) String() string { return fmt.Sprintf("%x", w[:]) }

// Extent is one write inside a data record: Len bytes at volume offset Off,
// either zeros (no bytes stored) or the data-section bytes at DataOff.
type Extent struct {
	Off     uint64
	Len     uint64
	Zero    bool
	DataOff uint64
}

// Record is the decoded trailer of a log record.
type Record struct {
	Type    RecordType
	Seq     uint64
	Epoch   uint64
	Writer  WriterID
	Time    int64  // writer's clock, unix nanoseconds
	Volume  string // id of the volume whose log holds the record
	DataLen uint64 // logical bytes in the data section
	// Durable is the writer's durable watermark when it sealed the record:
	// every record at or below it existed then (a data, restore or filler
	// record: the journal's resolved prefix; a fence: the head it replayed
	// to). A missing seq at or below some later record's Durable was
	// therefore deleted, not left behind by a crash (journal.Gaps). 0 means
	// unknown (a version 1 trailer, or nothing before it).
	Durable uint64
	Extents []Extent
	// RestoreVol and RestoreSeq name the snapshot a restore record resets to.
	RestoreVol string
	RestoreSeq uint64
	// NewSize is a resize record's new volume size in bytes (encoded after
	// Meta, only in resize records).
	NewSize uint64
	// Meta is opaque JSON (fence: who attached; restore: the label).
	Meta []byte
	// Sealed: the data section's frames are sealed (encrypted), see
	// SealedFrameSize. Written as trailer version 3.
	Sealed bool
	// Frames, if not nil, makes the record packed (trailer version 4): its
	// data section is one packed frame per chunk (OpenPacked), Frames[i]
	// being frame i's stored size.
	Frames []uint32
}

// DataSectionBytes returns the encoded size of r's data section.
func (r *Record) DataSectionBytes() uint64 {
	if r.Frames != nil {
		var n uint64
		for _, s := range r.Frames {
			n += uint64(s)
		}
		return n
	}
	if r.Sealed {
		return SealedDataSectionSize(r.DataLen)
	}
	return DataSectionSize(r.DataLen)
}

// DataSectionSize returns the encoded size of n logical data bytes.
func DataSectionSize(n uint64) uint64 {
	return n + (n+ChunkSize-1)/ChunkSize*FrameHeader
}

// FramePos returns the byte position of chunk i's frame in a record object.
func FramePos(chunk uint64) int64 { return int64(chunk) * FrameSize }

// DecodeFrame verifies one frame (as fetched from FramePos) and returns its
// data. frame may extend beyond the frame's end (the trailer follows the
// last frame); want is the expected data length if known, or -1.
func DecodeFrame(frame []byte, want int) ([]byte, error) {
	if len(frame) < FrameHeader {
		return nil, corruptf("chunk frame truncated: %d bytes", len(frame))
	}
	n := binary.LittleEndian.Uint32(frame)
	sum := binary.LittleEndian.Uint32(frame[4:])
	if n == 0 || n > ChunkSize || int(n) > len(frame)-FrameHeader {
		return nil, corruptf("chunk frame length %d invalid (have %d bytes)", n, len(frame)-FrameHeader)
	}
	if want >= 0 && int(n) != want {
		return nil, corruptf("chunk frame length %d, expected %d", n, want)
	}
	data := frame[FrameHeader : FrameHeader+int(n)]
	if Checksum(data) != sum {
		return nil, corruptf("chunk checksum mismatch")
	}
	return data, nil
}

// ChunkLen returns the data length of chunk i of a data section holding
// dataLen logical bytes.
func ChunkLen(dataLen, chunk uint64) int {
	start := chunk * ChunkSize
	if start >= dataLen {
		return 0
	}
	return int(min(ChunkSize, dataLen-start))
}

// Builder accumulates the data section of a record in its framed layout, so
// sealing needs no copy. It is not safe for concurrent use.
type Builder struct {
	buf     []byte // framed data section; frame headers filled by Seal
	dataLen uint64
}

// NewBuilder returns a builder with room for capHint data bytes.
func NewBuilder(capHint int) *Builder {
	return &Builder{buf: make([]byte, 0, DataSectionSize(uint64(capHint))+4096)}
}

// Reset empties the builder for another record, keeping its buffer (no
// new allocation, no zeroing: Append and Seal overwrite every byte they
// return). The caller must be done with every slice Seal and Chunk
// returned before.
func (b *Builder) Reset() {
	b.buf, b.dataLen = b.buf[:0], 0
}

// DataLen returns the logical bytes appended so far.
func (b *Builder) DataLen() uint64 { return b.dataLen }

// Append adds p to the data section and returns its logical offset.
func (b *Builder) Append(p []byte) uint64 {
	off := b.dataLen
	for len(p) > 0 {
		within := b.dataLen % ChunkSize
		if within == 0 {
			b.buf = append(b.buf, make([]byte, FrameHeader)...)
		}
		n := min(uint64(len(p)), ChunkSize-within)
		b.buf = append(b.buf, p[:n]...)
		b.dataLen += n
		p = p[n:]
	}
	return off
}

// ReadData copies logical bytes [off, off+len(p)) of the data section into p.
func (b *Builder) ReadData(p []byte, off uint64) {
	for len(p) > 0 {
		chunk, within := off/ChunkSize, off%ChunkSize
		pos := FramePos(chunk) + FrameHeader + int64(within)
		n := copy(p, b.buf[pos:pos+int64(min(uint64(len(p)), ChunkSize-within))])
		p = p[n:]
		off += uint64(n)
	}
}

// Chunk returns the data of chunk i (valid until the builder is reused).
func (b *Builder) Chunk(i uint64) []byte {
	n := ChunkLen(b.dataLen, i)
	pos := FramePos(i) + FrameHeader
	return b.buf[pos : pos+int64(n)]
}

// Seal fills in the frame headers and returns the complete record object:
// the data section followed by r's trailer. r.DataLen is set. The returned
// slice shares the builder's buffer; call Seal again (with a new r.Seq) only
// on a fresh copy (see Reseal).
func (b *Builder) Seal(r *Record) ([]byte, error) {
	return b.SealSummed(r, func(i uint64) uint32 { return Checksum(b.Chunk(i)) })
}

// SealSummed is Seal with frame i's CRC-32C given by sum(i) instead of
// computed here, for a caller that checksums the chunks for other uses too
// (the cache's sub-block sums, the upload's whole-object CRC-32C) and
// derives all of them from one pass over the bytes.
func (b *Builder) SealSummed(r *Record, sum func(chunk uint64) uint32) ([]byte, error) {
	for i := uint64(0); i*ChunkSize < b.dataLen; i++ {
		n := ChunkLen(b.dataLen, i)
		pos := FramePos(i)
		binary.LittleEndian.PutUint32(b.buf[pos:], uint32(n))
		binary.LittleEndian.PutUint32(b.buf[pos+4:], sum(i))
	}
	r.DataLen = b.dataLen
	// The trailer goes into the builder's spare capacity (NewBuilder leaves
	// room for a typical one) rather than into a copy of the whole object;
	// the data section before it is not touched.
	return AppendTrailer(b.buf, r)
}

// Reseal returns a new object holding obj's data section (of dataLen logical
// bytes) with r's trailer; obj is not modified (an upload may still read it).
func Reseal(obj []byte, dataLen uint64, r *Record) ([]byte, error) {
	n := DataSectionSize(dataLen)
	if uint64(len(obj)) < n {
		return nil, fmt.Errorf("reseal: object shorter than its data section")
	}
	body := make([]byte, n, n+1024)
	copy(body, obj)
	r.DataLen = dataLen
	return AppendTrailer(body, r)
}

// AppendTrailer encodes r's trailer and footer after dst.
func AppendTrailer(dst []byte, r *Record) ([]byte, error) {
	return appendTrailer(dst, r, RecordVersion)
}

// appendTrailer encodes r's trailer in trailer version ver (tests write
// version 1 to check that old volumes still decode).
func appendTrailer(dst []byte, r *Record, ver uint16) ([]byte, error) {
	if r.Sealed {
		ver = RecordVersionSealed
	}
	if r.Frames != nil {
		ver = RecordVersionPacked
	}
	if ver == recordVersion1 && r.Durable != 0 {
		return nil, fmt.Errorf("encode record %d: version 1 trailers have no durable watermark", r.Seq)
	}
	if err := r.validate(); err != nil {
		return nil, fmt.Errorf("encode record %d: %w", r.Seq, err)
	}
	start := len(dst)
	e := encoder{b: dst}
	e.u32(recordMagic)
	e.u16(ver)
	e.u8(uint8(r.Type))
	var flags uint8
	if r.Sealed {
		flags |= flagSealed
	}
	if r.Frames != nil {
		flags |= flagPacked
	}
	e.u8(flags)
	e.u64(r.Seq)
	e.u64(r.Epoch)
	e.b = append(e.b, r.Writer[:]...)
	e.u64(uint64(r.Time))
	e.u64(r.DataLen)
	if ver >= RecordVersion {
		e.u64(r.Durable)
	}
	e.str(r.Volume)
	e.uvarint(uint64(len(r.Extents)))
	for _, x := range r.Extents {
		e.uvarint(x.Off)
		e.uvarint(x.Len)
		if x.Zero {
			e.u8(1)
		} else {
			e.u8(0)
			e.uvarint(x.DataOff)
		}
	}
	e.str(r.RestoreVol)
	e.uvarint(r.RestoreSeq)
	e.uvarint(uint64(len(r.Meta)))
	e.b = append(e.b, r.Meta...)
	if r.Type == RecordResize {
		e.u64(r.NewSize)
	}
	if r.Frames != nil {
		e.uvarint(uint64(len(r.Frames)))
		for _, s := range r.Frames {
			e.uvarint(uint64(s))
		}
	}
	e.u32(Checksum(e.b[start:]))
	trailerLen := len(e.b) - start
	e.u32(uint32(trailerLen))
	e.u32(recordFooterMagic)
	return e.b, nil
}

func (r *Record) validate() error {
	switch r.Type {
	case RecordData, RecordFence, RecordRestore, RecordResize:
	default:
		return corruptf("unknown record type %d", r.Type)
	}
	if r.Type != RecordData && (len(r.Extents) > 0 || r.DataLen > 0) {
		return corruptf("%s record with data", r.Type)
	}
	if (r.Type == RecordResize) != (r.NewSize != 0) {
		return corruptf("%s record with new size %d", r.Type, r.NewSize)
	}
	if r.Epoch == 0 {
		return corruptf("record epoch 0")
	}
	if r.Durable != 0 && r.Durable >= r.Seq {
		// A writer only knows seqs below the slot it writes to be durable.
		return corruptf("record %d: durable watermark %d not below its own seq", r.Seq, r.Durable)
	}
	if len(r.Volume) == 0 || len(r.Volume) > maxIDLen || len(r.RestoreVol) > maxIDLen {
		return corruptf("bad volume id length")
	}
	if len(r.Meta) > maxMeta {
		return corruptf("meta too large: %d bytes", len(r.Meta))
	}
	if r.Frames != nil {
		if err := validFrames(r.Frames, r.DataLen, r.Sealed); err != nil {
			return err
		}
	}
	for i, x := range r.Extents {
		if x.Len == 0 || x.Off+x.Len < x.Off {
			return corruptf("extent %d: bad range off=%d len=%d", i, x.Off, x.Len)
		}
		if !x.Zero && (x.DataOff+x.Len < x.DataOff || x.DataOff+x.Len > r.DataLen) {
			return corruptf("extent %d: data [%d,+%d) outside data section of %d bytes", i, x.DataOff, x.Len, r.DataLen)
		}
	}
	return nil
}

// TrailerLen parses the footer at the end of tail (the last bytes of a
// record object) and returns how many bytes before the footer the trailer
// occupies, so the caller can fetch exactly TrailerLen+8 bytes from the end.
func TrailerLen(tail []byte) (int, error) {
	if len(tail) < footerSize {
		return 0, corruptf("record shorter than its footer")
	}
	f := tail[len(tail)-footerSize:]
	if binary.LittleEndian.Uint32(f[4:]) != recordFooterMagic {
		return 0, corruptf("record footer magic mismatch")
	}
	n := binary.LittleEndian.Uint32(f)
	if n < 4 || n > MaxTrailer {
		return 0, corruptf("record trailer length %d out of range", n)
	}
	return int(n), nil
}

// DecodeRecord decodes the trailer from tail, which must hold the last
// bytes of the record object (at least the trailer and footer). objSize is
// the whole object's size, checked against the data section length, or -1
// if unknown.
func DecodeRecord(tail []byte, objSize int64) (*Record, error) {
	n, err := TrailerLen(tail)
	if err != nil {
		return nil, err
	}
	if len(tail) < n+footerSize {
		return nil, corruptf("record trailer truncated: need %d bytes, have %d", n+footerSize, len(tail))
	}
	t := tail[len(tail)-footerSize-n : len(tail)-footerSize]
	if Checksum(t[:n-4]) != binary.LittleEndian.Uint32(t[n-4:]) {
		return nil, corruptf("record trailer checksum mismatch")
	}
	d := decoder{b: t[:n-4]}
	if d.u32("magic") != recordMagic {
		return nil, corruptf("record magic mismatch")
	}
	ver := d.u16("version")
	if (ver < recordVersion1 || ver > RecordVersionPacked) && d.err == nil {
		return nil, corruptf("record format version %d not supported (this urldisk reads versions %d to %d)", ver, recordVersion1, RecordVersionPacked)
	}
	r := &Record{Type: RecordType(d.u8("type"))}
	flags := d.u8("flags")
	switch {
	case d.err != nil:
	case ver < RecordVersionSealed && flags != 0, ver == RecordVersionSealed && flags != flagSealed,
		ver == RecordVersionPacked && flags&^flagSealed != flagPacked:
		return nil, corruptf("record trailer version %d with flags %#x", ver, flags)
	}
	r.Sealed = flags&flagSealed != 0
	packed := ver == RecordVersionPacked
	r.Seq = d.u64("seq")
	r.Epoch = d.u64("epoch")
	copy(r.Writer[:], d.bytes(16, "writer"))
	r.Time = int64(d.u64("time"))
	r.DataLen = d.u64("data length")
	if ver >= RecordVersion {
		r.Durable = d.u64("durable watermark")
	}
	r.Volume = d.str(maxIDLen, "volume id")
	cnt := d.uvarint("extent count")
	if cnt > uint64(len(d.b))/3 {
		d.fail("extent count")
	}
	if d.err == nil && cnt > 0 {
		r.Extents = make([]Extent, cnt)
		for i := range r.Extents {
			x := &r.Extents[i]
			x.Off = d.uvarint("extent offset")
			x.Len = d.uvarint("extent length")
			switch d.u8("extent kind") {
			case 0:
				x.DataOff = d.uvarint("extent data offset")
			case 1:
				x.Zero = true
			default:
				d.fail("extent kind")
			}
		}
	}
	r.RestoreVol = d.str(maxIDLen, "restore volume")
	r.RestoreSeq = d.uvarint("restore seq")
	if m := d.uvarint("meta length"); m > maxMeta {
		d.fail("meta length")
	} else if m > 0 {
		r.Meta = append([]byte(nil), d.bytes(m, "meta")...)
	}
	if r.Type == RecordResize {
		r.NewSize = d.u64("new size")
	}
	if packed {
		r.Frames = d.frameSizes()
	}
	if d.err != nil {
		return nil, d.err
	}
	if len(d.b) != 0 {
		return nil, corruptf("record trailer has %d trailing bytes", len(d.b))
	}
	if err := r.validate(); err != nil {
		return nil, err
	}
	if objSize >= 0 && uint64(objSize) != r.DataSectionBytes()+uint64(n)+footerSize {
		return nil, corruptf("record size %d does not match data length %d", objSize, r.DataLen)
	}
	return r, nil
}

// EncodeRecord returns a whole record object without data (fence, restore)
// or with a data section taken from b (nil for none).
func EncodeRecord(r *Record, b *Builder) ([]byte, error) {
	if b == nil {
		return AppendTrailer(nil, r)
	}
	return b.Seal(r)
}
