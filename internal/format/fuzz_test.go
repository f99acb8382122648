package format

import (
	"errors"
	"fmt"
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
	sealed, _ := EncodeRecord(&Record{Type: RecordFence, Seq: 6, Epoch: 1, Volume: "v", Sealed: true}, nil)
	f.Add(sealed, int64(len(sealed)))
	resize, _ := EncodeRecord(&Record{Type: RecordResize, Seq: 7, Epoch: 1, Volume: "v", Durable: 6, NewSize: 20 << 30}, nil)
	f.Add(resize, int64(len(resize)))
	f.Add([]byte{}, int64(0))
	for _, dk := range []*DataKey{nil, testDataKey(f)} {
		packed, _ := packedRecord(f, mixedData(rng, 2*ChunkSize+5), dk, "v", 4)
		f.Add(packed, int64(len(packed)))
	}
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

// FuzzOpenFrame: any input to OpenFrame (a tampered sealed frame, or
// anything at all) is refused or opens to exactly the data sealed; it
// never panics.
func FuzzOpenFrame(f *testing.F) {
	dk := fuzzDataKey(f)
	_, obj := sealedRecord(f, dk, "v", 3, 2000)
	f.Add(obj[:SealedFrameHeader+2000+TagSize], uint64(3), uint64(0))
	f.Add(obj, uint64(3), uint64(1))
	f.Add([]byte{}, uint64(0), uint64(0))
	f.Fuzz(func(t *testing.T, b []byte, seq, chunk uint64) {
		in := append([]byte(nil), b...)
		got, err := dk.OpenFrame(in, "v", seq, chunk, -1)
		if err == nil && !(seq == 3 && chunk == 0 && len(got) == 2000) {
			t.Fatalf("forged frame opened: seq %d chunk %d, %d bytes", seq, chunk, len(got))
		}
	})
}

func fuzzDataKey(f *testing.F) *DataKey {
	k, err := ParseKEK(make([]byte, KeySize))
	if err != nil {
		f.Fatal(err)
	}
	enc, err := NewEncryption(k)
	if err != nil {
		f.Fatal(err)
	}
	dk, err := enc.Unwrap(k)
	if err != nil {
		f.Fatal(err)
	}
	return dk
}

// FuzzParseKEK: key parsing never panics, accepts only 32-byte keys, and
// its errors never echo the input.
func FuzzParseKEK(f *testing.F) {
	f.Add([]byte("000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"))
	f.Add([]byte("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="))
	f.Add(make([]byte, 32))
	f.Fuzz(func(t *testing.T, b []byte) {
		k, err := ParseKEK(b)
		if err == nil && len(k.Fingerprint()) != 16 {
			t.Fatal("bad fingerprint")
		}
		// The error is the same sentence for every input of a length: it
		// cannot carry any of the material.
		if want := fmt.Sprintf("%v: want 32 bytes: raw, 64 hex digits or base64 (got %d bytes that are none of these)", ErrBadKey, len(b)); err != nil && err.Error() != want {
			t.Fatalf("error %q, want %q", err, want)
		}
	})
}

// FuzzDecodeVolumeEncryption: a descriptor's encryption object decodes,
// validates and unwraps (with some key) without panicking.
func FuzzDecodeVolumeEncryption(f *testing.F) {
	k, _ := ParseKEK(make([]byte, KeySize))
	enc, _ := NewEncryption(k)
	b, _ := EncodeDoc(KindVolume, &VolumeDesc{ID: "a", Size: 4096, BlockSize: 4096, Encryption: enc})
	f.Add(b)
	f.Fuzz(func(t *testing.T, b []byte) {
		var v VolumeDesc
		if DecodeDoc(KindVolume, b, &v) == nil && v.Validate() == nil && v.Encryption != nil {
			_, _ = v.Encryption.Unwrap(k)
		}
	})
}

// FuzzOpenPacked: any bytes opened as a packed frame (unsealed and sealed)
// either fail with ErrCorrupt or give at most a chunk, and never write
// past the output buffer.
func FuzzOpenPacked(f *testing.F) {
	rng := rand.New(rand.NewPCG(7, 8))
	k := testDataKey(f)
	for _, dk := range []*DataKey{nil, k} {
		obj, r := packedRecord(f, mixedData(rng, 2*ChunkSize), dk, "v", 3)
		tab := NewFrameTable(r.Frames)
		for i := range tab.Frames() {
			f.Add(obj[tab.Off[i]:tab.Off[i+1]], dk != nil)
		}
	}
	f.Add([]byte{}, false)
	f.Fuzz(func(t *testing.T, frame []byte, sealed bool) {
		var dk *DataKey
		if sealed {
			dk = k
		}
		out := make([]byte, ChunkSize+1)
		out[ChunkSize] = 0x5A
		d, err := OpenPacked(frame, dk, "v", 3, 0, out[:ChunkSize])
		if err != nil && !errors.Is(err, ErrCorrupt) {
			t.Fatalf("error not ErrCorrupt: %v", err)
		}
		if err == nil && (len(d) == 0 || len(d) > ChunkSize) {
			t.Fatalf("opened %d bytes", len(d))
		}
		if out[ChunkSize] != 0x5A {
			t.Fatal("wrote past the output buffer")
		}
	})
}

// FuzzDecodeSnapshotFrames: frame tables of version 2 snapshots.
func FuzzDecodeSnapshotFrames(f *testing.F) {
	h := &SnapshotHeader{Volume: "a", Seq: 1, Epoch: 1, Size: 1 << 20, Vols: []string{"a"}}
	ext := func(yield func(SnapExtent) bool) { yield(SnapExtent{0, 10, 0, 1, 0}) }
	f.Add(AppendSnapshotFrames(nil, h, ext, []SnapFrames{{Vol: 0, Seq: 1, Sizes: []uint32{100, 65552}}}))
	f.Fuzz(func(t *testing.T, b []byte) {
		_, _ = DecodeSnapshotFrames(b, func(SnapExtent) error { return nil }, nil, func(fr SnapFrames) error {
			tab := NewFrameTable(fr.Sizes)
			if tab.Frames() != len(fr.Sizes) || tab.Off[len(fr.Sizes)] < tab.Off[0] {
				t.Fatalf("frame table offsets wrapped")
			}
			return nil
		})
	})
}
