package format

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
)

func testKEK(t testing.TB, seed byte) *KEK {
	t.Helper()
	raw := bytes.Repeat([]byte{seed}, KeySize)
	k, err := ParseKEK(raw)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func testDataKey(t testing.TB) *DataKey {
	t.Helper()
	enc, err := NewEncryption(testKEK(t, 1))
	if err != nil {
		t.Fatal(err)
	}
	dk, err := enc.Unwrap(testKEK(t, 1))
	if err != nil {
		t.Fatal(err)
	}
	return dk
}

// sealedRecord builds a sealed record of n random bytes.
func sealedRecord(t testing.TB, dk *DataKey, vol string, seq uint64, n int) ([]byte, []byte) {
	t.Helper()
	rng := rand.New(rand.NewPCG(uint64(n), seq))
	data := make([]byte, n)
	for i := range data {
		data[i] = byte(rng.Uint32())
	}
	b := NewBuilder(n)
	off := b.Append(data)
	r := &Record{Type: RecordData, Seq: seq, Epoch: 1, Volume: vol, Extents: []Extent{{Off: 0, Len: uint64(n), DataOff: off}}}
	obj, err := b.SealEncrypted(r, dk, NewNonces(WriterID{7}))
	if err != nil {
		t.Fatal(err)
	}
	return data, obj
}

func TestParseKEK(t *testing.T) {
	raw := make([]byte, KeySize)
	for i := range raw {
		raw[i] = byte(i * 7)
	}
	want := testKEKFrom(t, raw).Fingerprint()
	for name, in := range map[string][]byte{
		"raw":       raw,
		"hex":       []byte(hex.EncodeToString(raw) + "\n"),
		"base64":    []byte(base64.StdEncoding.EncodeToString(raw)),
		"base64url": []byte(base64.RawURLEncoding.EncodeToString(raw) + "\r\n"),
	} {
		k, err := ParseKEK(in)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if k.Fingerprint() != want {
			t.Fatalf("%s: fingerprint %s, want %s", name, k.Fingerprint(), want)
		}
		// Formatting a key never prints its material.
		for _, s := range []string{k.String(), fmt.Sprintf("%v %+v %#v %s", k, k, k, k)} {
			if strings.Contains(s, hex.EncodeToString(raw)) || strings.Contains(s, base64.StdEncoding.EncodeToString(raw)) {
				t.Fatalf("%s: key material in %q", name, s)
			}
		}
	}
	for _, bad := range []string{"", "short", strings.Repeat("z", 64), hex.EncodeToString(raw[:31])} {
		if _, err := ParseKEK([]byte(bad)); !errors.Is(err, ErrBadKey) {
			t.Fatalf("%q accepted: %v", bad, err)
		}
	}
}

func testKEKFrom(t *testing.T, raw []byte) *KEK {
	k, err := ParseKEK(raw)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// TestWrapUnwrap: the right key opens the data key; another key is
// reported as the wrong key, naming both fingerprints and no material;
// a rewrap opens with the new key only, to the same data key.
func TestWrapUnwrap(t *testing.T) {
	k1, k2 := testKEK(t, 1), testKEK(t, 2)
	enc, err := NewEncryption(k1)
	if err != nil {
		t.Fatal(err)
	}
	if enc.KeyFingerprint != k1.Fingerprint() {
		t.Fatalf("fingerprint %s, want %s", enc.KeyFingerprint, k1.Fingerprint())
	}
	dk1, err := enc.Unwrap(k1)
	if err != nil {
		t.Fatal(err)
	}
	_, err = enc.Unwrap(k2)
	var wk *WrongKeyError
	if !errors.Is(err, ErrWrongKey) || !errors.As(err, &wk) || wk.Want != k1.Fingerprint() || wk.Got != k2.Fingerprint() {
		t.Fatalf("wrong key: %v", err)
	}
	if strings.Contains(err.Error(), enc.WrappedKey) || strings.Contains(err.Error(), hex.EncodeToString(bytes.Repeat([]byte{2}, KeySize))) {
		t.Fatalf("key material in %q", err)
	}
	if _, err := enc.Unwrap(nil); !errors.Is(err, ErrNoKey) {
		t.Fatalf("no key: %v", err)
	}
	// A descriptor whose wrapped key was altered is corrupt, not "wrong key".
	bad := *enc
	b, _ := base64.StdEncoding.DecodeString(bad.WrappedKey)
	b[30] ^= 1
	bad.WrappedKey = base64.StdEncoding.EncodeToString(b)
	if _, err := bad.Unwrap(k1); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("altered wrapped key: %v", err)
	}

	re, err := enc.Rewrap(k1, k2)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := re.Unwrap(k1); !errors.Is(err, ErrWrongKey) {
		t.Fatalf("old key opens the rewrapped key: %v", err)
	}
	dk2, err := re.Unwrap(k2)
	if err != nil {
		t.Fatal(err)
	}
	// Same data key: a frame sealed before the rewrap opens after it.
	_, obj := sealedRecord(t, dk1, "v", 3, 1000)
	if _, err := dk2.OpenFrame(obj, "v", 3, 0, 1000); err != nil {
		t.Fatalf("frame sealed before rekey: %v", err)
	}
	if _, err := enc.Rewrap(k2, k1); !errors.Is(err, ErrWrongKey) {
		t.Fatalf("rewrap with the wrong old key: %v", err)
	}
}

// TestSealedRecord: a sealed record decodes (trailer version 3, size
// checked against sealed frames) and every chunk opens at its computed
// position to the data written.
func TestSealedRecord(t *testing.T) {
	dk := testDataKey(t)
	n := 3*ChunkSize + 777
	data, obj := sealedRecord(t, dk, "vol-a", 9, n)
	r, err := DecodeRecord(obj, int64(len(obj)))
	if err != nil {
		t.Fatal(err)
	}
	if !r.Sealed || r.DataLen != uint64(n) {
		t.Fatalf("decoded %+v", r)
	}
	for c := uint64(0); c*ChunkSize < uint64(n); c++ {
		pos := SealedFramePos(c)
		got, err := dk.OpenFrame(append([]byte(nil), obj[pos:min(int64(len(obj)), pos+SealedFrameSize)]...), "vol-a", 9, c, ChunkLen(uint64(n), c))
		if err != nil {
			t.Fatalf("chunk %d: %v", c, err)
		}
		if !bytes.Equal(got, data[c*ChunkSize:c*ChunkSize+uint64(len(got))]) {
			t.Fatalf("chunk %d: wrong data", c)
		}
	}
	if bytes.Contains(obj, data[ChunkSize:ChunkSize+64]) {
		t.Fatal("plaintext in the sealed record")
	}
	// The size check knows sealed frames: a plain-size object is refused.
	if _, err := DecodeRecord(obj, int64(DataSectionSize(uint64(n)))+int64(len(obj))-int64(SealedDataSectionSize(uint64(n)))); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("wrong size accepted: %v", err)
	}
}

// TestSealedFrameTamper: flipping any bit of a sealed frame (header,
// nonce, ciphertext, tag) fails to open; it never returns data.
func TestSealedFrameTamper(t *testing.T) {
	dk := testDataKey(t)
	const n = 1500
	_, obj := sealedRecord(t, dk, "v", 4, n)
	frameLen := SealedFrameHeader + n + TagSize
	for i := 0; i < frameLen; i++ {
		for bit := 0; bit < 8; bit++ {
			f := append([]byte(nil), obj[:frameLen]...)
			f[i] ^= 1 << bit
			if got, err := dk.OpenFrame(f, "v", 4, 0, -1); !errors.Is(err, ErrCorrupt) || got != nil {
				t.Fatalf("byte %d bit %d flipped: %d bytes, err %v", i, bit, len(got), err)
			}
		}
	}
	// A full-size frame: sample bits across it.
	_, big := sealedRecord(t, dk, "v", 5, ChunkSize)
	rng := rand.New(rand.NewPCG(1, 2))
	for range 300 {
		i := rng.IntN(SealedFrameSize)
		f := append([]byte(nil), big[:SealedFrameSize]...)
		f[i] ^= 1 << rng.IntN(8)
		if _, err := dk.OpenFrame(f, "v", 5, 0, ChunkSize); !errors.Is(err, ErrCorrupt) {
			t.Fatalf("byte %d flipped: %v", i, err)
		}
	}
}

// TestSealedFrameMoved: a frame opens only as the chunk of the record of
// the volume it was sealed for; copied to another volume, record or
// chunk, or opened with another lineage's key, it fails.
func TestSealedFrameMoved(t *testing.T) {
	dk := testDataKey(t)
	_, obj := sealedRecord(t, dk, "vol-a", 4, 2*ChunkSize)
	frame1 := obj[SealedFramePos(1) : SealedFramePos(1)+SealedFrameSize]
	open := func(k *DataKey, vol string, seq, chunk uint64) error {
		_, err := k.OpenFrame(append([]byte(nil), frame1...), vol, seq, chunk, -1)
		return err
	}
	if err := open(dk, "vol-a", 4, 1); err != nil {
		t.Fatalf("in place: %v", err)
	}
	for name, err := range map[string]error{
		"other volume":  open(dk, "vol-b", 4, 1),
		"other record":  open(dk, "vol-a", 5, 1),
		"other chunk":   open(dk, "vol-a", 4, 0),
		"other lineage": open(testDataKey(t), "vol-a", 4, 1),
	} {
		if !errors.Is(err, ErrCorrupt) {
			t.Fatalf("%s: %v", name, err)
		}
	}
}

// TestSealedTrailerVersion: a version 3 trailer must say "sealed" and only
// version 3 may; binaries before it refuse version 3 (checked by the
// version test in format_test.go for version 4 now).
func TestSealedTrailerVersion(t *testing.T) {
	r := &Record{Type: RecordFence, Seq: 3, Epoch: 1, Volume: "v"}
	v3, err := appendTrailer(nil, r, RecordVersionSealed)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := DecodeRecord(v3, int64(len(v3))); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("version 3 without the sealed flag accepted: %v", err)
	}
	r.Sealed = true
	ok, err := AppendTrailer(nil, r)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := DecodeRecord(ok, int64(len(ok))); err != nil || !got.Sealed {
		t.Fatalf("sealed trailer: %v %+v", err, got)
	}
}
