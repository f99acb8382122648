package format

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

func sampleData(t *testing.T, rng *rand.Rand, n int) ([]byte, *Record, []byte) {
	t.Helper()
	b := NewBuilder(n)
	data := make([]byte, n)
	for i := range data {
		data[i] = byte(rng.IntN(256))
	}
	// Append in uneven pieces so frames straddle appends.
	var exts []Extent
	for off := 0; off < n; {
		k := min(n-off, 1+rng.IntN(100000))
		d := b.Append(data[off : off+k])
		exts = append(exts, Extent{Off: uint64(off) * 3, Len: uint64(k), DataOff: d})
		off += k
	}
	exts = append(exts, Extent{Off: 1 << 40, Len: 4096, Zero: true})
	r := &Record{Type: RecordData, Seq: 7, Epoch: 3, Writer: WriterID{1, 2, 3}, Time: 12345, Volume: "vol1", Extents: exts}
	obj, err := b.Seal(r)
	if err != nil {
		t.Fatal(err)
	}
	return data, r, obj
}

func TestRecordRoundTrip(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for _, n := range []int{1, 4096, ChunkSize - 1, ChunkSize, ChunkSize + 1, 3*ChunkSize + 17, 1 << 20} {
		data, r, obj := sampleData(t, rng, n)
		if uint64(len(obj)) < DataSectionSize(uint64(n)) {
			t.Fatalf("object too small")
		}
		got, err := DecodeRecord(obj, int64(len(obj)))
		if err != nil {
			t.Fatalf("n=%d: %v", n, err)
		}
		if got.Seq != r.Seq || got.Epoch != r.Epoch || got.Writer != r.Writer || got.DataLen != uint64(n) || !slices.Equal(got.Extents, r.Extents) {
			t.Fatalf("n=%d: decoded %+v, want %+v", n, got, r)
		}
		// Every chunk decodes from its frame position and matches the data.
		for c := uint64(0); c*ChunkSize < uint64(n); c++ {
			pos := FramePos(c)
			end := min(int64(len(obj)), pos+FrameSize)
			chunk, err := DecodeFrame(obj[pos:end], ChunkLen(uint64(n), c))
			if err != nil {
				t.Fatalf("chunk %d: %v", c, err)
			}
			if !bytes.Equal(chunk, data[c*ChunkSize:c*ChunkSize+uint64(len(chunk))]) {
				t.Fatalf("chunk %d data mismatch", c)
			}
		}
		// Decoding from just the tail works too.
		tl, _ := TrailerLen(obj)
		if _, err := DecodeRecord(obj[len(obj)-tl-8:], -1); err != nil {
			t.Fatal(err)
		}
		// Reseal at another seq keeps the data and changes the trailer.
		r2 := *r
		r2.Seq = 99
		obj2, err := Reseal(obj, uint64(n), &r2)
		if err != nil {
			t.Fatal(err)
		}
		got2, err := DecodeRecord(obj2, int64(len(obj2)))
		if err != nil || got2.Seq != 99 {
			t.Fatalf("reseal: %v %+v", err, got2)
		}
	}
}

func TestRecordCorruptionDetected(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	_, _, obj := sampleData(t, rng, 3*ChunkSize+5)
	for i := 0; i < 500; i++ {
		c := bytes.Clone(obj)
		pos := rng.IntN(len(c))
		c[pos] ^= byte(1 + rng.IntN(255))
		_, errRec := DecodeRecord(c, int64(len(c)))
		bad := errRec != nil
		for ch := uint64(0); ch < 4 && !bad; ch++ {
			p := FramePos(ch)
			_, err := DecodeFrame(c[p:min(int64(len(c)), p+FrameSize)], ChunkLen(3*ChunkSize+5, ch))
			bad = err != nil
		}
		if !bad {
			t.Fatalf("flip at %d went undetected", pos)
		}
		if errRec != nil && !errors.Is(errRec, ErrCorrupt) {
			t.Fatalf("error does not wrap ErrCorrupt: %v", errRec)
		}
	}
	if _, err := DecodeRecord(obj, int64(len(obj)+1)); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("size mismatch not detected: %v", err)
	}
}

func TestFenceAndRestoreRecords(t *testing.T) {
	for _, r := range []*Record{
		{Type: RecordFence, Seq: 1, Epoch: 1, Volume: "v", Meta: []byte(`{"host":"h"}`)},
		{Type: RecordRestore, Seq: 9, Epoch: 2, Volume: "v", RestoreVol: "v", RestoreSeq: 4},
	} {
		obj, err := EncodeRecord(r, nil)
		if err != nil {
			t.Fatal(err)
		}
		got, err := DecodeRecord(obj, int64(len(obj)))
		if err != nil {
			t.Fatal(err)
		}
		if got.Type != r.Type || got.RestoreSeq != r.RestoreSeq || !bytes.Equal(got.Meta, r.Meta) {
			t.Fatalf("got %+v want %+v", got, r)
		}
	}
	if _, err := EncodeRecord(&Record{Type: RecordFence, Seq: 1, Epoch: 0, Volume: "v"}, nil); err == nil {
		t.Fatal("epoch 0 accepted")
	}
	if _, err := EncodeRecord(&Record{Type: 9, Seq: 1, Epoch: 1, Volume: "v"}, nil); err == nil {
		t.Fatal("unknown type accepted")
	}
}

func TestSnapshotRoundTrip(t *testing.T) {
	exts := []SnapExtent{{0, 4096, 0, 1, 0}, {8192, 100, 1, 5, 77}, {1 << 30, 1 << 20, 0, 9, 12345}}
	h := &SnapshotHeader{Volume: "a", Seq: 9, Epoch: 2, Writer: WriterID{9}, Time: 1, Size: 2 << 30, Vols: []string{"a", "parent"}}
	b := AppendSnapshot(nil, h, slices.Values(exts))
	var got []SnapExtent
	gh, err := DecodeSnapshot(b, func(x SnapExtent) error { got = append(got, x); return nil }, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, exts) || gh.Seq != 9 || gh.Epoch != 2 || !slices.Equal(gh.Vols, h.Vols) {
		t.Fatalf("got %+v %+v", gh, got)
	}
	for i := range b {
		c := bytes.Clone(b)
		c[i] ^= 0x40
		if _, err := DecodeSnapshot(c, func(SnapExtent) error { return nil }, nil); !errors.Is(err, ErrCorrupt) {
			t.Fatalf("flip at %d: %v", i, err)
		}
	}
	// Extent beyond the volume size is rejected even with a valid checksum.
	h.Size = 4096
	b = AppendSnapshot(nil, h, slices.Values(exts))
	if _, err := DecodeSnapshot(b, func(SnapExtent) error { return nil }, nil); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("out-of-range extent accepted: %v", err)
	}
}

func TestDocRoundTrip(t *testing.T) {
	v := VolumeDesc{ID: "abc", Name: "web", Size: 1 << 30, BlockSize: 4096, Created: time.Unix(5, 0).UTC()}
	b, err := EncodeDoc(KindVolume, &v)
	if err != nil {
		t.Fatal(err)
	}
	var got VolumeDesc
	if err := DecodeDoc(KindVolume, b, &got); err != nil || got != v {
		t.Fatalf("%v %+v", err, got)
	}
	if err := DecodeDoc(KindPool, b, &got); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("wrong kind accepted: %v", err)
	}
	c := bytes.Replace(b, []byte(`"web"`), []byte(`"wex"`), 1)
	if err := DecodeDoc(KindVolume, c, &got); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("tampered body accepted: %v", err)
	}
	bad := VolumeDesc{ID: "x", Size: 1000, BlockSize: 4096}
	if bad.Validate() == nil {
		t.Fatal("unaligned size accepted")
	}
}

func TestParseSeqKey(t *testing.T) {
	if s, err := ParseSeqKey(LogKey("v", 0xabc)); err != nil || s != 0xabc {
		t.Fatal(s, err)
	}
	for _, k := range []string{"vols/v/log/xyz", "vols/v/log/000000000000000g", ""} {
		if _, err := ParseSeqKey(k); err == nil {
			t.Fatalf("%q accepted", k)
		}
	}
}

func TestRecordDurableWatermark(t *testing.T) {
	r := &Record{Type: RecordData, Seq: 9, Epoch: 2, Volume: "v", Durable: 7}
	obj, err := EncodeRecord(r, nil)
	if err != nil {
		t.Fatal(err)
	}
	got, err := DecodeRecord(obj, int64(len(obj)))
	if err != nil || got.Durable != 7 {
		t.Fatalf("durable watermark did not round-trip: %v %+v", err, got)
	}
	// Reseal (a moved segment) keeps the watermark: it is still true at the new slot.
	obj2, err := Reseal(obj, 0, &Record{Type: RecordData, Seq: 12, Epoch: 2, Volume: "v", Durable: got.Durable})
	if err != nil {
		t.Fatal(err)
	}
	if got2, err := DecodeRecord(obj2, int64(len(obj2))); err != nil || got2.Durable != 7 || got2.Seq != 12 {
		t.Fatalf("resealed: %v %+v", err, got2)
	}

	// A version 1 trailer (written before the watermark existed) still
	// decodes, with the watermark unknown.
	old := &Record{Type: RecordFence, Seq: 3, Epoch: 1, Volume: "v", Meta: []byte(`{}`)}
	v1, err := appendTrailer(nil, old, recordVersion1)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := DecodeRecord(v1, int64(len(v1))); err != nil || got.Durable != 0 || got.Type != RecordFence {
		t.Fatalf("version 1 record: %v %+v", err, got)
	}
	if _, err := appendTrailer(nil, r, recordVersion1); err == nil {
		t.Fatal("version 1 encoder silently dropped a watermark")
	}
	// A future version is refused with a clear error.
	v4, _ := appendTrailer(nil, old, RecordVersionSealed+1)
	if _, err := DecodeRecord(v4, int64(len(v4))); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("version %d accepted: %v", RecordVersionSealed+1, err)
	}

	// A watermark at or above the record's own seq is impossible.
	for _, d := range []uint64{9, 10} {
		if _, err := EncodeRecord(&Record{Type: RecordData, Seq: 9, Epoch: 2, Volume: "v", Durable: d}, nil); !errors.Is(err, ErrCorrupt) {
			t.Fatalf("durable %d at seq 9 accepted: %v", d, err)
		}
	}
}

func TestResizeRecordRoundTrip(t *testing.T) {
	r := &Record{Type: RecordResize, Seq: 9, Epoch: 2, Volume: "v", Durable: 8, NewSize: 3 << 30, Meta: []byte(`{}`)}
	obj, err := EncodeRecord(r, nil)
	if err != nil {
		t.Fatal(err)
	}
	got, err := DecodeRecord(obj, int64(len(obj)))
	if err != nil {
		t.Fatal(err)
	}
	if got.Type != RecordResize || got.NewSize != 3<<30 || got.Seq != 9 {
		t.Fatalf("decoded %+v", got)
	}
	for _, bad := range []*Record{
		{Type: RecordResize, Seq: 1, Epoch: 1, Volume: "v"},                 // no size
		{Type: RecordData, Seq: 1, Epoch: 1, Volume: "v", NewSize: 1 << 20}, // size on data
	} {
		if _, err := EncodeRecord(bad, nil); !errors.Is(err, ErrCorrupt) {
			t.Errorf("%s record with new size %d: err %v, want ErrCorrupt", bad.Type, bad.NewSize, err)
		}
	}
}
