package format

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"testing"

	"github.com/pierrec/lz4/v4"
)

// mixedData returns n bytes whose 64 KiB chunks alternate between
// compressible text-like data and random bytes, so a packed record has
// both LZ4 and raw frames.
func mixedData(rng *rand.Rand, n int) []byte {
	data := make([]byte, n)
	for i := range data {
		if (i/ChunkSize)%2 == 0 {
			data[i] = "urldisk compresses this line\n"[i%29]
		} else {
			data[i] = byte(rng.IntN(256))
		}
	}
	return data
}

// packedRecord packs data (sealed with k if not nil) as record seq of vol
// and returns the object and its decoded record.
func packedRecord(t testing.TB, data []byte, k *DataKey, vol string, seq uint64) ([]byte, *Record) {
	t.Helper()
	b := NewBuilder(len(data))
	b.Append(data)
	r := &Record{Type: RecordData, Seq: seq, Epoch: 1, Volume: vol, Extents: []Extent{{Off: 0, Len: uint64(len(data))}}}
	var ns *Nonces
	if k != nil {
		ns = NewNonces(WriterID{9})
	}
	var p Packer
	obj, err := p.Pack(b, r, k, ns)
	if err != nil {
		t.Fatal(err)
	}
	got, err := DecodeRecord(obj, int64(len(obj)))
	if err != nil {
		t.Fatalf("decode packed record: %v", err)
	}
	return obj, got
}

// openAll opens every frame of a packed record through its frame table
// and returns the logical data.
func openAll(obj []byte, r *Record, k *DataKey) ([]byte, error) {
	t := NewFrameTable(r.Frames)
	var out []byte
	buf := make([]byte, ChunkSize)
	for i := range t.Frames() {
		frame := append([]byte(nil), obj[t.Off[i]:t.Off[i+1]]...)
		d, err := OpenPacked(frame, k, r.Volume, r.Seq, uint64(i), buf)
		if err != nil {
			return nil, err
		}
		out = append(out, d...)
	}
	return out, nil
}

func TestPackedRoundTrip(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 3))
	for _, sealed := range []bool{false, true} {
		var k *DataKey
		if sealed {
			k = testDataKey(t)
		}
		for _, n := range []int{1, 4096, ChunkSize, 5*ChunkSize + 77} {
			data := mixedData(rng, n)
			obj, r := packedRecord(t, data, k, "vol1", 7)
			if r.Sealed != sealed || len(r.Frames) != (n+ChunkSize-1)/ChunkSize {
				t.Fatalf("n=%d sealed=%v: record sealed=%v frames=%d", n, sealed, r.Sealed, len(r.Frames))
			}
			got, err := openAll(obj, r, k)
			if err != nil {
				t.Fatalf("n=%d sealed=%v: %v", n, sealed, err)
			}
			if !bytes.Equal(got, data) {
				t.Fatalf("n=%d sealed=%v: data differs after round trip", n, sealed)
			}
			if n >= 2*ChunkSize {
				// Chunk 0 is text (compressed to well under a chunk), chunk
				// 1 random (stored raw, flags 0).
				if r.Frames[0] > ChunkSize/4 {
					t.Errorf("compressible chunk stored in %d bytes", r.Frames[0])
				}
				if flags := binary.LittleEndian.Uint32(obj[r.Frames[0]+4:]); flags != 0 {
					t.Errorf("random chunk flags %#x, want raw (0)", flags)
				}
			}
		}
	}
}

func TestPackedCorruptFrame(t *testing.T) {
	rng := rand.New(rand.NewPCG(2, 3))
	data := mixedData(rng, 2*ChunkSize)
	for _, sealed := range []bool{false, true} {
		var k *DataKey
		if sealed {
			k = testDataKey(t)
		}
		obj, r := packedRecord(t, data, k, "vol1", 7)
		// Every byte of the compressed frame and a sample of the raw one:
		// any flipped bit is ErrCorrupt, never data.
		step := func(pos int) int {
			if pos < int(r.Frames[0]) {
				return 1
			}
			return 997
		}
		for pos := 0; pos < int(r.DataSectionBytes()); pos += step(pos) {
			bad := append([]byte(nil), obj...)
			bad[pos] ^= 1 << (pos % 8)
			if _, err := openAll(bad, r, k); !errors.Is(err, ErrCorrupt) {
				t.Fatalf("sealed=%v: flipped bit at %d: err %v, want ErrCorrupt", sealed, pos, err)
			}
		}
		// A frame opened as another chunk or record fails (sealed: its
		// additional data; unsealed frames carry no position).
		if sealed {
			tab := NewFrameTable(r.Frames)
			frame := append([]byte(nil), obj[tab.Off[0]:tab.Off[1]]...)
			if _, err := OpenPacked(frame, k, "vol1", 8, 0, make([]byte, ChunkSize)); !errors.Is(err, ErrCorrupt) {
				t.Fatalf("frame of record 7 opened as record 8: %v", err)
			}
		}
	}
}

// TestPackedBomb: a frame whose LZ4 payload expands beyond its stated
// length, or claims more than a chunk, is ErrCorrupt; decompression never
// writes past the frame's length.
func TestPackedBomb(t *testing.T) {
	big := make([]byte, 4*ChunkSize) // zeros: a tiny LZ4 block expanding to 256 KiB
	comp := make([]byte, lz4.CompressBlockBound(len(big)))
	n, err := lz4.CompressBlock(big, comp, nil)
	if err != nil || n == 0 {
		t.Fatal(n, err)
	}
	for _, claim := range []uint32{4096, ChunkSize, ChunkSize + 1, 1 << 31} {
		frame := appendPacked(nil, claim, FrameLZ4, comp[:n])
		out := make([]byte, ChunkSize+8)
		for i := range out {
			out[i] = 0xAA
		}
		if _, err := OpenPacked(frame, nil, "v", 1, 0, out[:ChunkSize]); !errors.Is(err, ErrCorrupt) {
			t.Fatalf("claim %d: err %v, want ErrCorrupt", claim, err)
		}
		if !bytes.Equal(out[ChunkSize:], bytes.Repeat([]byte{0xAA}, 8)) {
			t.Fatalf("claim %d: decompression wrote past the buffer", claim)
		}
	}
}

func TestPackedTrailerAndSnapshot(t *testing.T) {
	rng := rand.New(rand.NewPCG(4, 3))
	obj, r := packedRecord(t, mixedData(rng, 3*ChunkSize), nil, "vol1", 9)
	if uint64(len(obj)) >= DataSectionSize(r.DataLen) {
		t.Errorf("packed record of half-compressible data is %d bytes, unpacked data section alone %d", len(obj), DataSectionSize(r.DataLen))
	}
	// A frame table that does not match the data length is refused.
	bad := *r
	bad.Frames = r.Frames[:2]
	if _, err := AppendTrailer(nil, &bad); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("short frame table: %v", err)
	}
	// Snapshots: with frame tables version 2, without version 1 (readable
	// by binaries before compression); both decode.
	h := &SnapshotHeader{Volume: "a", Seq: 9, Epoch: 1, Size: 1 << 30, Vols: []string{"a", "b"}}
	ext := func(yield func(SnapExtent) bool) { yield(SnapExtent{Start: 0, Len: 4096, Vol: 1, Seq: 9}) }
	v1 := AppendSnapshot(nil, h, ext)
	v2 := AppendSnapshotFrames(nil, h, ext, []SnapFrames{{Vol: 1, Seq: 9, Sizes: r.Frames}})
	if binary.LittleEndian.Uint16(v1[4:]) != 1 || binary.LittleEndian.Uint16(v2[4:]) != 2 {
		t.Fatalf("snapshot versions %d, %d; want 1 without frame tables, 2 with", binary.LittleEndian.Uint16(v1[4:]), binary.LittleEndian.Uint16(v2[4:]))
	}
	for _, b := range [][]byte{v1, v2} {
		var got []SnapFrames
		if _, err := DecodeSnapshotFrames(b, func(SnapExtent) error { return nil }, nil, func(f SnapFrames) error { got = append(got, f); return nil }); err != nil {
			t.Fatal(err)
		}
		if len(b) == len(v2) && (len(got) != 1 || got[0].Seq != 9 || got[0].Vol != 1 || !equalU32(got[0].Sizes, r.Frames)) {
			t.Fatalf("frame tables decoded as %+v", got)
		}
		if len(b) == len(v1) && len(got) != 0 {
			t.Fatalf("version 1 snapshot gave frame tables %+v", got)
		}
	}
	bogus := AppendSnapshotFrames(nil, h, ext, []SnapFrames{{Vol: 2, Seq: 9, Sizes: r.Frames}})
	if _, err := DecodeSnapshotFrames(bogus, func(SnapExtent) error { return nil }, nil, nil); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("frame table naming volume 2 of 2: %v", err)
	}
}

func equalU32(a, b []uint32) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
