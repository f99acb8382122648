package format

import (
	"math/rand/v2"
	"testing"
)

func FuzzDecodeRecord(f *testing.F) {
	rng := rand.New(rand.NewPCG(5, 6))
	t := &testing.T{}
	_, _, obj := sampleData(t, rng, 5000)
	f.Add(obj, int64(len(obj)))
	fence, _ := EncodeRecord(&Record{Type: RecordFence, Seq: 1, Epoch: 1, Volume: "v"}, nil)
	f.Add(fence, int64(-1))
	fenceV1, _ := appendTrailer(nil, &Record{Type: RecordFence, Seq: 2, Epoch: 1, Volume: "v"}, recordVersion1)
	f.Add(fenceV1, int64(len(fenceV1)))
	marked, _ := EncodeRecord(&Record{Type: RecordData, Seq: 5, Epoch: 1, Volume: "v", Durable: 4}, nil)
	f.Add(marked, int64(len(marked)))
	f.Add([]byte{}, int64(0))
	f.Fuzz(func(t *testing.T, b []byte, size int64) {
		r, err := DecodeRecord(b, size)
		if err == nil {
			// Anything accepted must re-encode to an equivalent record.
			enc, err := AppendTrailer(nil, r)
			if err != nil {
				t.Fatalf("accepted record does not re-encode: %v", err)
			}
			if _, err := DecodeRecord(enc, -1); err != nil {
				t.Fatalf("re-encoded record does not decode: %v", err)
			}
		}
		for p := int64(0); p < int64(len(b)); p += FrameSize {
			_, _ = DecodeFrame(b[p:], -1)
		}
	})
}

func FuzzDecodeSnapshot(f *testing.F) {
	h := &SnapshotHeader{Volume: "a", Seq: 1, Epoch: 1, Size: 1 << 20, Vols: []string{"a"}}
	f.Add(AppendSnapshot(nil, h, func(yield func(SnapExtent) bool) { yield(SnapExtent{0, 10, 0, 1, 0}) }))
	f.Add([]byte("UDS1"))
	f.Fuzz(func(t *testing.T, b []byte) {
		var prev uint64
		_, _ = DecodeSnapshot(b, func(x SnapExtent) error {
			if x.Start < prev {
				t.Fatalf("extents out of order")
			}
			prev = x.Start + x.Len
			return nil
		}, nil)
	})
}

func FuzzDecodeDoc(f *testing.F) {
	b, _ := EncodeDoc(KindVolume, &VolumeDesc{ID: "a", Size: 4096, BlockSize: 4096})
	f.Add(b)
	f.Add([]byte("urldisk-volume v1 crc32c=00000000\n{}"))
	f.Fuzz(func(t *testing.T, b []byte) {
		var v VolumeDesc
		if DecodeDoc(KindVolume, b, &v) == nil {
			_ = v.Validate()
		}
	})
}
