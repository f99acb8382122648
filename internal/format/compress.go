package format

import (
	"encoding/binary"
	"hash/crc32"

	"github.com/pierrec/lz4/v4"
)

// Compression at rest (FORMAT.md "Compression"): a volume created with a
// compression setting writes "packed" records (trailer version 4). Each
// chunk is one frame compressed on its own (LZ4 block format), or stored
// raw when compression saves less than an eighth, so frames have variable
// sizes; the trailer's frame table gives each frame's stored size, and a
// reader that knows the table (from replay, a snapshot, or the trailer)
// still fetches any chunk with one ranged GET.
const (
	// CompressLZ4 is the only compression a descriptor may name.
	CompressLZ4 = "lz4"

	// PackedHeader is the header of an unsealed packed frame:
	// u32 logical length | u32 flags | u32 stored payload length |
	// u32 CRC-32C of the first 12 header bytes and the payload.
	PackedHeader = 16
	// SealedPackedHeader is the header of a sealed packed frame:
	// u32 logical length | u32 flags | u32 stored payload length | [24] nonce,
	// followed by the payload's ciphertext and tag. Every header field is
	// in the additional data.
	SealedPackedHeader = 12 + NonceSize

	// FrameLZ4 (frame flag bit 0): the payload is one LZ4 block that
	// decompresses to exactly the frame's logical length. Without it the
	// payload is the chunk's bytes as they are (raw).
	FrameLZ4 = 1

	// MaxPackedFrame bounds a packed frame's stored size: a raw full
	// chunk, sealed.
	MaxPackedFrame = SealedPackedHeader + ChunkSize + TagSize

	packedFrameLabel = "urldisk packed frame v1"
)

// packedAD is the additional data of a sealed packed frame: like frameAD,
// under its own label, with the stored payload length too.
func packedAD(buf *[80 + maxIDLen]byte, vol string, seq, chunk uint64, n, flags, m uint32) []byte {
	ad := append(buf[:0], packedFrameLabel...)
	ad = binary.LittleEndian.AppendUint32(ad, n)
	ad = binary.LittleEndian.AppendUint32(ad, flags)
	ad = binary.LittleEndian.AppendUint32(ad, m)
	ad = binary.LittleEndian.AppendUint64(ad, seq)
	ad = binary.LittleEndian.AppendUint64(ad, chunk)
	return append(ad, vol...)
}

// Packer compresses chunks into packed frames. Not safe for concurrent use;
// it keeps its compressor's tables and scratch buffer between records.
// It uses the reference implementation's fast algorithm (CCompat): on
// 64 KiB chunks it is as good as lz4.Compressor on real data and gives up
// on incompressible data about ten times sooner (BENCHMARKS.md).
type Packer struct {
	c   lz4.CompressorCCompat
	tmp []byte
}

// compress returns the stored payload of plain and its flags: the LZ4
// block if it saves at least an eighth, plain itself otherwise.
func (p *Packer) compress(plain []byte) ([]byte, uint32) {
	if bound := lz4.CompressBlockBound(ChunkSize); len(p.tmp) < bound {
		p.tmp = make([]byte, bound)
	}
	limit := len(plain) - len(plain)/8
	n, err := p.c.CompressBlock(plain, p.tmp)
	if err != nil || n == 0 || n > limit {
		return plain, 0
	}
	return p.tmp[:n], FrameLZ4
}

// Pack returns the record object of the builder's data as packed frames
// (compressed, and sealed with k when k is not nil, nonces from ns),
// followed by r's trailer; r.DataLen, r.Frames and r.Sealed are set. The
// builder is not modified, so a record moved to another slot is packed
// again from it.
func (p *Packer) Pack(b *Builder, r *Record, k *DataKey, ns *Nonces) ([]byte, error) {
	r.DataLen, r.Sealed = b.dataLen, k != nil
	chunks := (b.dataLen + ChunkSize - 1) / ChunkSize
	r.Frames = make([]uint32, chunks)
	// Room for every frame stored raw and sealed, and a trailer: the
	// object is never copied to grow.
	obj := make([]byte, 0, b.dataLen+chunks*(SealedPackedHeader+TagSize)+4096)
	for i := range chunks {
		start := len(obj)
		plain := b.Chunk(i)
		payload, flags := p.compress(plain)
		if k != nil {
			obj = k.sealPacked(obj, ns.Next(), r.Volume, r.Seq, i, uint32(len(plain)), flags, payload)
		} else {
			obj = appendPacked(obj, uint32(len(plain)), flags, payload)
		}
		r.Frames[i] = uint32(len(obj) - start)
	}
	return AppendTrailer(obj, r)
}

func appendPacked(dst []byte, n, flags uint32, payload []byte) []byte {
	start := len(dst)
	dst = binary.LittleEndian.AppendUint32(dst, n)
	dst = binary.LittleEndian.AppendUint32(dst, flags)
	dst = binary.LittleEndian.AppendUint32(dst, uint32(len(payload)))
	sum := crc32.Update(Checksum(dst[start:]), castagnoli, payload)
	dst = binary.LittleEndian.AppendUint32(dst, sum)
	return append(dst, payload...)
}

func (k *DataKey) sealPacked(dst []byte, nonce [NonceSize]byte, vol string, seq, chunk uint64, n, flags uint32, payload []byte) []byte {
	var adBuf [80 + maxIDLen]byte
	ad := packedAD(&adBuf, vol, seq, chunk, n, flags, uint32(len(payload)))
	dst = binary.LittleEndian.AppendUint32(dst, n)
	dst = binary.LittleEndian.AppendUint32(dst, flags)
	dst = binary.LittleEndian.AppendUint32(dst, uint32(len(payload)))
	dst = append(dst, nonce[:]...)
	return k.aead.Seal(dst, nonce[:], payload, ad)
}

// OpenPacked verifies (k nil: CRC-32C; else authenticates and decrypts in
// place) the packed frame of chunk of record seq of volume vol, which is
// exactly frame (its stored size from the frame table), and returns its
// logical bytes: a slice of frame if stored raw, else decompressed into
// out, which must have room for ChunkSize bytes. A frame whose header,
// checksum or tag is wrong, or whose payload does not decompress to
// exactly its logical length, is ErrCorrupt; decompression never writes
// past out[:length].
func OpenPacked(frame []byte, k *DataKey, vol string, seq, chunk uint64, out []byte) ([]byte, error) {
	hdr, tag := PackedHeader, 0
	if k != nil {
		hdr, tag = SealedPackedHeader, TagSize
	}
	if len(frame) < hdr+tag {
		return nil, corruptf("packed frame truncated: %d bytes", len(frame))
	}
	n := binary.LittleEndian.Uint32(frame)
	flags := binary.LittleEndian.Uint32(frame[4:])
	m := binary.LittleEndian.Uint32(frame[8:])
	switch {
	case n == 0 || n > ChunkSize:
		return nil, corruptf("packed frame length %d invalid", n)
	case flags&^FrameLZ4 != 0:
		return nil, corruptf("packed frame flags %#x not supported", flags)
	case uint64(m)+uint64(hdr+tag) != uint64(len(frame)):
		return nil, corruptf("packed frame payload length %d does not fit its %d stored bytes", m, len(frame))
	case flags == 0 && m != n:
		return nil, corruptf("raw packed frame stores %d bytes for length %d", m, n)
	case flags == FrameLZ4 && m >= n:
		return nil, corruptf("compressed frame of %d bytes for length %d", m, n)
	}
	var payload []byte
	if k == nil {
		payload = frame[PackedHeader:]
		sum := crc32.Update(Checksum(frame[:12]), castagnoli, payload)
		if sum != binary.LittleEndian.Uint32(frame[12:]) {
			return nil, corruptf("packed frame checksum mismatch (chunk %d of record %d)", chunk, seq)
		}
	} else {
		if len(vol) > maxIDLen {
			return nil, corruptf("bad volume id length")
		}
		var adBuf [80 + maxIDLen]byte
		ad := packedAD(&adBuf, vol, seq, chunk, n, flags, m)
		ct := frame[SealedPackedHeader:]
		var err error
		if payload, err = k.aead.Open(ct[:0], frame[12:SealedPackedHeader], ct, ad); err != nil {
			return nil, corruptf("sealed frame of chunk %d of record %d of volume %s does not authenticate (altered, or not this volume's frame at this position)", chunk, seq, vol)
		}
	}
	if flags == 0 {
		return payload, nil
	}
	if len(out) < int(n) {
		return nil, corruptf("packed frame length %d exceeds the %d-byte buffer", n, len(out))
	}
	got, err := lz4.UncompressBlock(payload, out[:n])
	if err != nil || got != int(n) {
		return nil, corruptf("compressed frame of chunk %d of record %d does not decompress to its length %d", chunk, seq, n)
	}
	return out[:n], nil
}

// FrameTable locates a packed record's frames: Off[i] is frame i's byte
// position in the record object and Off[i+1]-Off[i] its stored size.
type FrameTable struct{ Off []uint32 }

// NewFrameTable builds the table of frames of the given stored sizes (a
// record's Frames).
func NewFrameTable(sizes []uint32) FrameTable {
	off := make([]uint32, len(sizes)+1)
	for i, s := range sizes {
		off[i+1] = off[i] + s
	}
	return FrameTable{Off: off}
}

// Frames returns the number of frames.
func (t FrameTable) Frames() int { return max(0, len(t.Off)-1) }

// Sizes returns the stored size of each frame.
func (t FrameTable) Sizes() []uint32 {
	s := make([]uint32, t.Frames())
	for i := range s {
		s[i] = t.Off[i+1] - t.Off[i]
	}
	return s
}

// validFrames checks a packed record's frame table against its data
// length: one frame per chunk, each between the smallest and largest frame
// a chunk can take, the data section under 4 GiB (offsets are 32-bit).
func validFrames(frames []uint32, dataLen uint64, sealed bool) error {
	chunks := dataLen / ChunkSize
	if dataLen%ChunkSize != 0 {
		chunks++
	}
	if uint64(len(frames)) != chunks {
		return corruptf("frame table has %d frames for %d data bytes", len(frames), dataLen)
	}
	lo, hi := uint32(PackedHeader+1), uint32(PackedHeader+ChunkSize)
	if sealed {
		lo, hi = SealedPackedHeader+TagSize+1, MaxPackedFrame
	}
	var total uint64
	for i, s := range frames {
		if s < lo || s > hi {
			return corruptf("frame table: frame %d stored size %d out of range", i, s)
		}
		total += uint64(s)
	}
	if total >= 1<<32 {
		return corruptf("frame table: data section of %d bytes too large", total)
	}
	return nil
}

// frameSizes decodes a frame table: a count, then each frame's stored
// size, as uvarints. The count is bounded by the bytes left (each size
// takes at least one), so hostile input cannot make it allocate more than
// its own length in entries.
func (d *decoder) frameSizes() []uint32 {
	n := d.uvarint("frame count")
	if d.err != nil || n > uint64(len(d.b)) {
		d.fail("frame count")
		return nil
	}
	s := make([]uint32, n)
	var total uint64
	for i := range s {
		v := d.uvarint("frame size")
		total += v
		if v > MaxPackedFrame || total >= 1<<32 {
			d.fail("frame size")
			return nil
		}
		s[i] = uint32(v)
	}
	return s
}
