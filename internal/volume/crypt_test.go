package volume

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/urldisk/urldisk/internal/format"
	"github.com/urldisk/urldisk/internal/objstore"
)

func kekOf(t testing.TB, seed byte) *format.KEK {
	t.Helper()
	k, err := format.ParseKEK(bytes.Repeat([]byte{seed}, format.KeySize))
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// keyedPool opens the pool in store with kek as its key (nil: no key).
func keyedPool(t testing.TB, store objstore.Store, kek *format.KEK) *Pool {
	t.Helper()
	o := PoolOptions{Logger: testLogger(t)}
	if kek != nil {
		o.Key = func(context.Context) (*format.KEK, error) { return kek, nil }
	}
	p, err := InitPool(context.Background(), store, o)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// plainPattern is a recognisable plaintext: a scan of the store for it
// finds any frame stored in clear.
func plainPattern(n int) []byte {
	return bytes.Repeat([]byte("URLDISK-PLAINTEXT-CANARY-"), n/25+1)[:n]
}

func writeAndClose(t testing.TB, p *Pool, name string, data []byte, off int64) {
	t.Helper()
	ctx := context.Background()
	v, err := p.Open(ctx, name, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := v.WriteAt(ctx, data, off); err != nil {
		t.Fatal(err)
	}
	if err := v.Close(ctx); err != nil {
		t.Fatal(err)
	}
}

func readBack(t testing.TB, p *Pool, name string, n int, off int64) ([]byte, error) {
	t.Helper()
	ctx := context.Background()
	v, err := p.Open(ctx, name, Options{ReadOnly: true})
	if err != nil {
		return nil, err
	}
	defer v.Close(ctx)
	buf := make([]byte, n)
	return buf, v.ReadAt(ctx, buf, off)
}

// scanStore fails the test if any object in store contains needle.
func scanStore(t testing.TB, store objstore.Store, needle []byte) int {
	t.Helper()
	ctx := context.Background()
	n := 0
	err := store.List(ctx, "", func(oi objstore.ObjectInfo) error {
		b, err := store.Get(ctx, oi.Key)
		if err != nil {
			return err
		}
		n++
		if bytes.Contains(b, needle) {
			t.Errorf("object %s holds plaintext", oi.Key)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestEncryptedVolume: an encrypted volume reads back with its key; no
// key or a wrong key fails open and clone with an error naming the
// fingerprints; no stored object holds the plaintext; a clone reads
// with the same key; rekey makes the new key open it and refuses the old.
func TestEncryptedVolume(t *testing.T) {
	ctx := context.Background()
	store := openStore(t, "mem://"+t.Name())
	k1, k2 := kekOf(t, 1), kekOf(t, 2)
	p := keyedPool(t, store, k1)
	if _, err := p.Create(ctx, "enc", CreateOptions{Size: 8 << 20, Encrypt: true}); err != nil {
		t.Fatal(err)
	}
	data := plainPattern(300 << 10) // several frames, one partial
	writeAndClose(t, p, "enc", data, 4096)
	if got, err := readBack(t, p, "enc", len(data), 4096); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read back: %v (equal %v)", err, bytes.Equal(got, data))
	}
	if n := scanStore(t, store, data[:64]); n < 3 {
		t.Fatalf("scanned only %d objects", n)
	}
	// info and du tell stored from logical bytes: the sealed frames cost
	// 48 bytes each over the data (trailers count as logical).
	in, err := p.Info(ctx, "enc")
	if err != nil {
		t.Fatal(err)
	}
	frames := int64(len(data)+format.ChunkSize-1) / format.ChunkSize
	if !in.Encrypted || in.KeyFingerprint != k1.Fingerprint() || in.LogicalBytes < int64(len(data)) ||
		in.StoredBytes-in.LogicalBytes < frames*(format.SealedFrameHeader+format.TagSize) {
		t.Fatalf("info: encrypted %v key %s, %d stored, %d logical for %d bytes in %d frames", in.Encrypted, in.KeyFingerprint, in.StoredBytes, in.LogicalBytes, len(data), frames)
	}
	du, err := p.DU(ctx, GCOptions{})
	if err != nil || len(du) != 1 || du[0].LogicalBytes != in.LogicalBytes {
		t.Fatalf("du: %v %+v, want logical %d", err, du, in.LogicalBytes)
	}

	for name, kp := range map[string]*Pool{"no key": keyedPool(t, store, nil), "wrong key": keyedPool(t, store, k2)} {
		_, err := kp.Open(ctx, "enc", Options{ReadOnly: true})
		_, errRW := kp.Open(ctx, "enc", Options{})
		_, errClone := kp.Clone(ctx, "enc", Point{}, "kid-"+strings.ReplaceAll(name, " ", "-"))
		for _, e := range []error{err, errRW, errClone} {
			switch {
			case name == "no key" && !errors.Is(e, format.ErrNoKey),
				name == "wrong key" && !errors.Is(e, format.ErrWrongKey):
				t.Fatalf("%s: %v", name, e)
			}
			if !strings.Contains(e.Error(), k1.Fingerprint()) {
				t.Fatalf("%s: error does not name the volume's key fingerprint: %v", name, e)
			}
		}
		if _, err := kp.Resolve(ctx, "kid-"+strings.ReplaceAll(name, " ", "-")); !errors.Is(err, ErrNotFound) {
			t.Fatalf("%s: a clone was made: %v", name, err)
		}
	}

	// A clone shares the data key: same key, same bytes; its writes are
	// sealed too.
	if _, err := p.Clone(ctx, "enc", Point{}, "kid"); err != nil {
		t.Fatal(err)
	}
	more := plainPattern(70 << 10)
	writeAndClose(t, p, "kid", more, 1<<20)
	if got, err := readBack(t, p, "kid", len(data), 4096); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("clone reads parent data: %v", err)
	}
	if got, err := readBack(t, p, "kid", len(more), 1<<20); err != nil || !bytes.Equal(got, more) {
		t.Fatalf("clone reads its own data: %v", err)
	}
	scanStore(t, store, data[:64])

	// Rekey: the new key opens it, the old one is refused.
	if _, err := p.Rekey(ctx, "enc", k2); err != nil {
		t.Fatal(err)
	}
	p2 := keyedPool(t, store, k2)
	if got, err := readBack(t, p2, "enc", len(data), 4096); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read after rekey: %v", err)
	}
	if _, err := keyedPool(t, store, k1).Open(ctx, "enc", Options{ReadOnly: true}); !errors.Is(err, format.ErrWrongKey) {
		t.Fatalf("old key after rekey: %v", err)
	}
	// The clone carries its own wrapped copy: the old key still opens it
	// until it is rekeyed as well (documented).
	if _, err := readBack(t, p, "kid", 4096, 0); err != nil {
		t.Fatalf("clone after the parent's rekey: %v", err)
	}
	if _, err := p2.Rekey(ctx, "enc", k1); err != nil {
		t.Fatalf("rekey back: %v", err)
	}
}

// TestEncryptedFlippedBit: any flipped bit in a stored sealed frame is a
// read error, never data, and never cached as data.
func TestEncryptedFlippedBit(t *testing.T) {
	ctx := context.Background()
	store := openStore(t, "mem://"+t.Name())
	p := keyedPool(t, store, kekOf(t, 1))
	if _, err := p.Create(ctx, "enc", CreateOptions{Size: 4 << 20, Encrypt: true}); err != nil {
		t.Fatal(err)
	}
	data := plainPattern(3 * format.ChunkSize)
	writeAndClose(t, p, "enc", data, 0)
	d, _ := p.Resolve(ctx, "enc")
	key := dataRecordKey(t, store, d.ID)
	orig, err := store.Get(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	// Header, nonce, ciphertext and tag of frame 1, whose chunk holds
	// volume bytes [64K, 128K).
	f1 := int(format.SealedFramePos(1))
	for _, at := range []int{f1, f1 + 5, f1 + 8, f1 + 31, f1 + format.SealedFrameHeader, f1 + format.SealedFrameHeader + 40000, f1 + format.SealedFrameSize - 1} {
		bad := append([]byte(nil), orig...)
		bad[at] ^= 0x10
		if err := store.Put(ctx, key, bad); err != nil {
			t.Fatal(err)
		}
		got, err := readBack(t, p, "enc", 4096, format.ChunkSize+8192)
		if !errors.Is(err, format.ErrCorrupt) {
			t.Fatalf("flip at +%d: read returned %v (data %q...)", at-f1, err, got[:8])
		}
		// The other chunks still read.
		if got, err := readBack(t, p, "enc", 4096, 0); err != nil || !bytes.Equal(got, data[:4096]) {
			t.Fatalf("flip at +%d: chunk 0: %v", at-f1, err)
		}
	}
	// A frame copied from another position of the record fails too.
	moved := append([]byte(nil), orig...)
	copy(moved[f1:f1+format.SealedFrameSize], orig[:format.SealedFrameSize])
	if err := store.Put(ctx, key, moved); err != nil {
		t.Fatal(err)
	}
	if _, err := readBack(t, p, "enc", 4096, format.ChunkSize); !errors.Is(err, format.ErrCorrupt) {
		t.Fatalf("frame moved within the record: %v", err)
	}
}

// dataRecordKey returns the key of the (only) sealed data record in
// volume id's log.
func dataRecordKey(t testing.TB, store objstore.Store, id string) string {
	t.Helper()
	var keys []string
	forEachSealed(t, store, format.LogPrefix(id), func(key string, _ *format.Record, _ []byte) { keys = append(keys, key) })
	if len(keys) != 1 {
		t.Fatalf("want 1 sealed data record, found %v", keys)
	}
	return keys[0]
}

// forEachSealed calls fn for every sealed data record under prefix.
func forEachSealed(t testing.TB, store objstore.Store, prefix string, fn func(key string, r *format.Record, obj []byte)) {
	t.Helper()
	ctx := context.Background()
	err := store.List(ctx, prefix, func(oi objstore.ObjectInfo) error {
		if !strings.Contains(oi.Key, "/log/") {
			return nil
		}
		b, err := store.Get(ctx, oi.Key)
		if err != nil {
			return err
		}
		r, err := format.DecodeRecord(b, int64(len(b)))
		if err != nil {
			return fmt.Errorf("%s: %w", oi.Key, err)
		}
		if r.Type == format.RecordData && r.DataLen > 0 {
			if !r.Sealed {
				t.Errorf("%s: data record not sealed in an encrypted volume", oi.Key)
			}
			fn(oi.Key, r, b)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestEncryptedFrameFromOtherVolume: a record copied whole from one
// volume's log into another's (same lineage key, so only the additional
// data tells them apart) does not open there.
func TestEncryptedFrameFromOtherVolume(t *testing.T) {
	ctx := context.Background()
	store := openStore(t, "mem://"+t.Name())
	p := keyedPool(t, store, kekOf(t, 1))
	if _, err := p.Create(ctx, "a", CreateOptions{Size: 4 << 20, Encrypt: true}); err != nil {
		t.Fatal(err)
	}
	writeAndClose(t, p, "a", plainPattern(8192), 0)
	if _, err := p.Clone(ctx, "a", Point{}, "b"); err != nil {
		t.Fatal(err)
	}
	writeAndClose(t, p, "b", bytes.Repeat([]byte{0xb}, 8192), 0)
	da, _ := p.Resolve(ctx, "a")
	db, _ := p.Resolve(ctx, "b")
	ka, kb := dataRecordKey(t, store, da.ID), dataRecordKey(t, store, db.ID)
	objA, _ := store.Get(ctx, ka)
	objB, _ := store.Get(ctx, kb)
	// b's record with a's frame in its data section (b's trailer kept).
	forged := append([]byte(nil), objB...)
	copy(forged[:format.SealedFrameHeader+8192+format.TagSize], objA)
	if err := store.Put(ctx, kb, forged); err != nil {
		t.Fatal(err)
	}
	if got, err := readBack(t, p, "b", 8192, 0); !errors.Is(err, format.ErrCorrupt) {
		t.Fatalf("a's frame read as b's: %v (%q...)", err, got[:8])
	}
}

// TestNonceUniqueness: real takeovers (each attach fences the one
// before with a new writer id) over a volume and clones made along the
// way, every one writing sealed records: every frame stored in the pool
// has a nonce no other frame has. The attaches are real volume opens, so
// 1,000 of them; TestNonceUniquenessSimulated covers 10,000.
func TestNonceUniqueness(t *testing.T) {
	ctx := context.Background()
	// file://, not mem://: memblob sorts every key of the bucket on each
	// list, which makes many attaches quadratic.
	store := openStore(t, "file://"+t.TempDir())
	p := keyedPool(t, store, kekOf(t, 1))
	if _, err := p.Create(ctx, "v0", CreateOptions{Size: 1 << 20, Encrypt: true}); err != nil {
		t.Fatal(err)
	}
	const attaches, cloneEvery = 1000, 100
	names := []string{"v0"}
	buf := bytes.Repeat([]byte{1}, 2*format.ChunkSize+100) // 3 frames per record
	for i := range attaches {
		if i > 0 && i%cloneEvery == 0 {
			kid := fmt.Sprintf("v%d", len(names))
			if _, err := p.Clone(ctx, names[len(names)-1], Point{}, kid); err != nil {
				t.Fatal(err)
			}
			names = append(names, kid)
		}
		name := names[i%len(names)]
		v, err := p.Open(ctx, name, Options{IdleFlush: -1, PolicyPoll: -1})
		if err != nil {
			t.Fatal(err)
		}
		binary.LittleEndian.PutUint64(buf, uint64(i))
		if err := v.WriteAt(ctx, buf, int64(i%4)*4096); err != nil {
			t.Fatal(err)
		}
		if err := v.Close(ctx); err != nil {
			t.Fatal(err)
		}
	}
	n := newNonceSet(t)
	forEachSealed(t, store, "", n.addRecord)
	if n.frames < 3*attaches {
		t.Fatalf("checked %d frames, want >= %d", n.frames, 3*attaches)
	}
}

// TestNonceUniquenessSimulated: 10,000 simulated takeovers, each a new
// writer as attachWriter makes one (newWriterID, format.NewNonces) sealing
// records through the real Builder, over a lineage whose clones (a new
// volume id every 500 takeovers) share the data key: no nonce repeats.
func TestNonceUniquenessSimulated(t *testing.T) {
	enc, err := format.NewEncryption(kekOf(t, 1))
	if err != nil {
		t.Fatal(err)
	}
	dk, err := enc.Unwrap(kekOf(t, 1))
	if err != nil {
		t.Fatal(err)
	}
	n := newNonceSet(t)
	vol, seq := "v0", uint64(1)
	data := bytes.Repeat([]byte{7}, 2*format.ChunkSize+1)
	for i := range 10000 {
		if i%500 == 0 {
			vol, seq = fmt.Sprintf("clone-%d", i), 1
		}
		id, err := newWriterID()
		if err != nil {
			t.Fatal(err)
		}
		ns := format.NewNonces(id)
		for range 2 { // two records per writer
			b := format.NewBuilder(len(data))
			b.Append(data)
			seq++
			r := &format.Record{Type: format.RecordData, Seq: seq, Epoch: uint64(i + 1), Writer: id, Volume: vol,
				Extents: []format.Extent{{Off: 0, Len: uint64(len(data))}}}
			obj, err := b.SealEncrypted(r, dk, ns)
			if err != nil {
				t.Fatal(err)
			}
			n.addRecord(fmt.Sprintf("%s/%d", vol, seq), r, obj)
		}
	}
	if n.frames != 10000*2*3 {
		t.Fatalf("checked %d frames", n.frames)
	}
}

// nonceSet fails the test on a nonce seen twice.
type nonceSet struct {
	t      testing.TB
	seen   map[[format.NonceSize]byte]string
	frames int
}

func newNonceSet(t testing.TB) *nonceSet {
	return &nonceSet{t: t, seen: map[[format.NonceSize]byte]string{}}
}

func (s *nonceSet) addRecord(key string, r *format.Record, obj []byte) {
	for c := uint64(0); c*format.ChunkSize < r.DataLen; c++ {
		pos := format.SealedFramePos(c)
		var n [format.NonceSize]byte
		copy(n[:], obj[pos+8:pos+format.SealedFrameHeader])
		if prev, dup := s.seen[n]; dup {
			s.t.Fatalf("nonce %x of %s chunk %d already used by %s", n, key, c, prev)
		}
		s.seen[n] = fmt.Sprintf("%s chunk %d", key, c)
		s.frames++
	}
}

// TestUnencryptedUnchanged: a volume created without encryption writes the
// format it always did (trailer version 2, plain CRC frames at FramePos),
// and opens with or without a key in the pool.
func TestUnencryptedUnchanged(t *testing.T) {
	ctx := context.Background()
	store := openStore(t, "mem://"+t.Name())
	p := keyedPool(t, store, nil)
	if _, err := p.Create(ctx, "plain", CreateOptions{Size: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	data := plainPattern(100 << 10)
	writeAndClose(t, p, "plain", data, 0)
	d, _ := p.Resolve(ctx, "plain")
	if d.Encryption != nil {
		t.Fatal("unencrypted volume has an encryption descriptor")
	}
	found := 0
	err := store.List(ctx, format.LogPrefix(d.ID), func(oi objstore.ObjectInfo) error {
		b, _ := store.Get(ctx, oi.Key)
		r, err := format.DecodeRecord(b, int64(len(b)))
		if err != nil || r.Sealed {
			return fmt.Errorf("%s: sealed %v, %w", oi.Key, r != nil && r.Sealed, err)
		}
		if r.Type == format.RecordData && r.DataLen > 0 {
			found++
			if ver := binary.LittleEndian.Uint16(b[len(b)-8-int(binary.LittleEndian.Uint32(b[len(b)-8:]))+4:]); ver != format.RecordVersion {
				return fmt.Errorf("%s: trailer version %d", oi.Key, ver)
			}
			if got, err := format.DecodeFrame(b[format.FramePos(1):], len(data)-format.ChunkSize); err != nil || !bytes.Equal(got, data[format.ChunkSize:]) {
				return fmt.Errorf("%s: plain frame 1: %v", oi.Key, err)
			}
		}
		return nil
	})
	if err != nil || found != 1 {
		t.Fatalf("records: %v (%d data records)", err, found)
	}
	if got, err := readBack(t, keyedPool(t, store, kekOf(t, 9)), "plain", len(data), 0); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read with a key in the pool: %v", err)
	}
}

// TestOldFormatVolumeOpens opens a pool written by the binary before
// encryption existed (commit 2b6d4b5: `create --size 12K`, `import` of a
// known 12 KiB image, `clone` to kid; testdata/oldformat-2b6d4b5): both
// volumes read back the image, a key in the pool changes nothing, and the
// volume takes new writes in the format it always had.
func TestOldFormatVolumeOpens(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	if err := os.CopyFS(dir, os.DirFS("testdata/oldformat-2b6d4b5")); err != nil {
		t.Fatal(err)
	}
	store := openStore(t, "file://"+dir)
	p := keyedPool(t, store, kekOf(t, 3))
	want := make([]byte, 12288)
	for i := range want {
		want[i] = byte((i*7 + i/256) % 251)
	}
	for _, name := range []string{"old", "kid"} {
		if got, err := readBack(t, p, name, len(want), 0); err != nil || !bytes.Equal(got, want) {
			t.Fatalf("%s: %v (equal %v)", name, err, bytes.Equal(got, want))
		}
	}
	writeAndClose(t, p, "old", []byte("new data"), 100)
	copy(want[100:], "new data")
	if got, err := readBack(t, p, "old", len(want), 0); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("after a write: %v", err)
	}
	if d, _ := p.Resolve(ctx, "old"); d.Encryption != nil {
		t.Fatal("old volume became encrypted")
	}
}

// TestEncryptedCompaction: compaction reads sealed records (opening their
// frames) and rewrites the live pieces as new sealed records; the volume
// reads back the same, and no stored record is unsealed.
func TestEncryptedCompaction(t *testing.T) {
	ctx := context.Background()
	store := openStore(t, "mem://"+t.Name())
	p := keyedPool(t, store, kekOf(t, 1))
	if _, err := p.Create(ctx, "enc", CreateOptions{Size: 1 << 20, Encrypt: true}); err != nil {
		t.Fatal(err)
	}
	v, err := p.Open(ctx, "enc", Options{SegmentBytes: 256 << 10, IdleFlush: -1})
	if err != nil {
		t.Fatal(err)
	}
	model := plainPattern(1 << 20)
	if err := v.WriteAt(ctx, model, 0); err != nil {
		t.Fatal(err)
	}
	if err := v.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	// Overwrite most of every record: each keeps an eighth live.
	for off := 0; off < 1<<20; off += 256 << 10 {
		over := bytes.Repeat([]byte{0x5a}, 224<<10)
		if err := v.WriteAt(ctx, over, int64(off+32<<10)); err != nil {
			t.Fatal(err)
		}
		copy(model[off+32<<10:], over)
	}
	if err := v.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	st, err := v.Compact(ctx, CompactOptions{})
	if err != nil || st.Records == 0 || st.LiveBytes == 0 {
		t.Fatalf("compact: %+v %v", st, err)
	}
	if err := v.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if got, err := readBack(t, p, "enc", len(model), 0); err != nil || !bytes.Equal(got, model) {
		t.Fatalf("after compaction: %v", err)
	}
	forEachSealed(t, store, "", func(string, *format.Record, []byte) {})
	scanStore(t, store, plainPattern(64))
}
