package volume

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/urldisk/urldisk/internal/format"
	"github.com/urldisk/urldisk/internal/objstore"
	"github.com/urldisk/urldisk/internal/objstore/faultstore"
)

// compressibleData returns n bytes of text-like data with random bytes
// sprinkled in, so packed frames compress to varying sizes, and every
// 5th 64 KiB chunk random (stored raw).
func compressibleData(rng *rand.Rand, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		switch {
		case (i/format.ChunkSize)%5 == 4, rng.IntN(40) == 0:
			b[i] = byte(rng.Uint32())
		default:
			b[i] = "the quick brown fox jumps over the lazy dog "[i%44]
		}
	}
	return b
}

// compressedModes are the volume kinds compression is tested on.
var compressedModes = []struct {
	name    string
	encrypt bool
}{{"lz4", false}, {"lz4+encrypted", true}}

// TestModelCompressed: the model run (random writes, zero writes, trims,
// reads, reattaches against a byte slice) on compressed and compressed +
// encrypted volumes, on file:// and a real versitygw.
func TestModelCompressed(t *testing.T) {
	for name, url := range backends(t) {
		if name == "mem" {
			continue
		}
		for _, m := range compressedModes {
			t.Run(name+"/"+m.name, func(t *testing.T) {
				seed := uint64(rand.Int64())
				t.Logf("seed %d", seed)
				dir := strings.ReplaceAll(m.name, "+", "-")
				if name == "file" {
					url += "/" + dir
				} else {
					url = strings.Replace(url, "?", "/"+dir+"?", 1) // a pool per mode under one bucket
				}
				var kek *format.KEK
				if m.encrypt {
					kek = kekOf(t, 7)
				}
				runModelWith(t, url, seed, 400, CreateOptions{Compression: format.CompressLZ4, Encrypt: m.encrypt}, kek)
			})
		}
	}
}

// countLogGets wraps store so that every ranged or whole GET of a log
// record is counted.
func countLogGets(store objstore.Store, n *atomic.Int64) objstore.Store {
	return faultstore.New(store, faultstore.Hooks{Before: func(op faultstore.Op, key string) error {
		if (op == faultstore.OpGetRange || op == faultstore.OpGet) && isLogKey(key) {
			n.Add(1)
		}
		return nil
	}})
}

// TestCompressedColdRandomReadOneGET: after an attach from a snapshot (a
// new process: no frame table in memory), a cold random 4 KiB read of a
// compressed volume is one ranged GET: the snapshot carries the frame
// tables of the packed records it references. Same for a clone (its
// initial snapshot carries its parent's tables).
func TestCompressedColdRandomReadOneGET(t *testing.T) {
	for _, m := range compressedModes {
		t.Run(m.name, func(t *testing.T) {
			ctx := context.Background()
			var gets atomic.Int64
			inner := openStore(t, "mem://"+strings.ReplaceAll(t.Name(), "/", "-"))
			store := countLogGets(inner, &gets)
			kek := kekOf(t, 2)
			p := keyedPool(t, store, kek)
			const size = 8 << 20
			if _, err := p.Create(ctx, "c", CreateOptions{Size: size, Compression: format.CompressLZ4, Encrypt: m.encrypt}); err != nil {
				t.Fatal(err)
			}
			rng := rand.New(rand.NewPCG(1, 2))
			data := compressibleData(rng, size)
			v, err := p.Open(ctx, "c", Options{IdleFlush: -1, Logger: testLogger(t)})
			if err != nil {
				t.Fatal(err)
			}
			if err := v.WriteAt(ctx, data, 0); err != nil {
				t.Fatal(err)
			}
			if _, err := v.Checkpoint(ctx, "all"); err != nil {
				t.Fatal(err)
			}
			if err := v.Close(ctx); err != nil {
				t.Fatal(err)
			}
			if _, err := p.Clone(ctx, "c", Point{Label: "all"}, "kid"); err != nil {
				t.Fatal(err)
			}
			for _, name := range []string{"c", "kid"} {
				fresh := keyedPool(t, store, kek) // no frame tables in memory
				r, err := fresh.Open(ctx, name, Options{ReadOnly: true, Logger: testLogger(t)})
				if err != nil {
					t.Fatal(err)
				}
				if len(fresh.frames.m) == 0 {
					t.Fatalf("%s: attach learnt no frame table (snapshot without them?)", name)
				}
				buf := make([]byte, 4096)
				for i := 0; i < 40; i++ {
					off := int64(rng.IntN(size/4096)) * 4096
					before := gets.Load()
					if err := r.ReadAt(ctx, buf, off); err != nil {
						t.Fatal(err)
					}
					if n := gets.Load() - before; n != 1 {
						t.Fatalf("%s: cold random 4 KiB read at %d made %d GETs, want 1", name, off, n)
					}
					if !bytes.Equal(buf, data[off:off+4096]) {
						t.Fatalf("%s: read at %d differs", name, off)
					}
				}
				r.Close(ctx)
			}
			// The stored records are smaller than the data: compression
			// happened (and, encrypted, no plaintext is stored).
			in, err := p.Info(ctx, "c")
			if err != nil {
				t.Fatal(err)
			}
			if in.LogicalBytes < size || in.StoredBytes >= in.LogicalBytes/2 {
				t.Fatalf("info: logical %d, stored %d: want logical >= %d and stored under half", in.LogicalBytes, in.StoredBytes, size)
			}
			du, err := p.DU(ctx, GCOptions{})
			if err != nil {
				t.Fatal(err)
			}
			var found bool
			for _, e := range du {
				if e.Name == "c" {
					found = true
					if e.LogicalBytes < size || e.StoredBytes >= e.LogicalBytes/2 {
						t.Fatalf("du: logical %d, stored %d: want logical >= %d and stored under half", e.LogicalBytes, e.StoredBytes, size)
					}
				}
			}
			if !found {
				t.Fatalf("du has no entry for c: %+v", du)
			}
			if m.encrypt {
				scanStore(t, inner, []byte("the quick brown fox jumps over"))
			}
		})
	}
}

// TestCompressedCorruptFrame: a flipped bit in a packed frame (CRC or
// AEAD) is an I/O error naming the corruption, never data; verify --deep
// reports the record.
func TestCompressedCorruptFrame(t *testing.T) {
	for _, m := range compressedModes {
		t.Run(m.name, func(t *testing.T) {
			ctx := context.Background()
			dir := t.TempDir()
			store := openStore(t, "file://"+dir)
			kek := kekOf(t, 4)
			p := keyedPool(t, store, kek)
			if _, err := p.Create(ctx, "c", CreateOptions{Size: 1 << 20, Compression: format.CompressLZ4, Encrypt: m.encrypt}); err != nil {
				t.Fatal(err)
			}
			data := compressibleData(rand.New(rand.NewPCG(3, 4)), 256<<10)
			writeAndClose(t, p, "c", data, 0)
			var key string
			var rec *format.Record
			forEachLog(t, store, func(k string, r *format.Record, _ []byte) {
				if r.Frames != nil && r.DataLen > 0 {
					key, rec = k, r
				}
			})
			if rec == nil {
				t.Fatal("no packed record in the store")
			}
			obj, err := store.Get(ctx, key)
			if err != nil {
				t.Fatal(err)
			}
			obj[rec.Frames[0]/2] ^= 0x10 // inside frame 0's payload
			if err := store.Put(ctx, key, obj); err != nil {
				t.Fatal(err)
			}
			fresh := keyedPool(t, store, kek)
			_, err = readBack(t, fresh, "c", 4096, 0)
			if !errors.Is(err, format.ErrCorrupt) {
				t.Fatalf("read of a corrupt packed frame: %v, want ErrCorrupt", err)
			}
			rep, err := fresh.Verify(ctx, "c", VerifyOptions{Deep: true})
			if err != nil {
				t.Fatal(err)
			}
			if rep.OK() || !strings.Contains(fmt.Sprint(rep.Problems), "chunk 0") {
				t.Fatalf("verify --deep: %+v, want chunk 0 of %s reported", rep.Problems, key)
			}
		})
	}
}

// forEachLog calls fn with every log record in store, decoded.
func forEachLog(t testing.TB, store objstore.Store, fn func(key string, r *format.Record, obj []byte)) {
	t.Helper()
	ctx := context.Background()
	err := store.List(ctx, "", func(oi objstore.ObjectInfo) error {
		if !isLogKey(oi.Key) {
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
		fn(oi.Key, r, b)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestCompressedCompactionCloneCheckpoint: compaction reads packed records
// and rewrites the live pieces packed; a checkpoint and a clone of it read
// back the same from a fresh pool; verify --deep finds nothing wrong; the
// clone inherits the compression; every data record stored is packed.
func TestCompressedCompactionCloneCheckpoint(t *testing.T) {
	for _, m := range compressedModes {
		t.Run(m.name, func(t *testing.T) {
			ctx := context.Background()
			store := openStore(t, "file://"+t.TempDir())
			kek := kekOf(t, 6)
			p := keyedPool(t, store, kek)
			if _, err := p.Create(ctx, "c", CreateOptions{Size: 1 << 20, Compression: format.CompressLZ4, Encrypt: m.encrypt}); err != nil {
				t.Fatal(err)
			}
			v, err := p.Open(ctx, "c", Options{SegmentBytes: 256 << 10, IdleFlush: -1, Logger: testLogger(t)})
			if err != nil {
				t.Fatal(err)
			}
			model := compressibleData(rand.New(rand.NewPCG(5, 6)), 1<<20)
			if err := v.WriteAt(ctx, model, 0); err != nil {
				t.Fatal(err)
			}
			if err := v.Flush(ctx); err != nil {
				t.Fatal(err)
			}
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
			if _, err := v.Checkpoint(ctx, "after"); err != nil {
				t.Fatal(err)
			}
			if err := v.Close(ctx); err != nil {
				t.Fatal(err)
			}
			kid, err := p.Clone(ctx, "c", Point{Label: "after"}, "kid")
			if err != nil {
				t.Fatal(err)
			}
			if kid.Compression != format.CompressLZ4 {
				t.Fatalf("clone compression %q, want inherited %q", kid.Compression, format.CompressLZ4)
			}
			fresh := keyedPool(t, store, kek)
			for _, name := range []string{"c", "c@after", "kid"} {
				vol, pt, _ := strings.Cut(name, "@")
				var pnt Point
				if pt != "" {
					pnt = Point{Label: pt}
				}
				r, err := fresh.OpenAt(ctx, vol, pnt, Options{ReadOnly: true, Logger: testLogger(t)})
				if err != nil {
					t.Fatal(err)
				}
				if got := readAll(t, r); !bytes.Equal(got, model) {
					t.Fatalf("%s differs from the model at byte %d", name, firstDiff(got, model))
				}
				r.Close(ctx)
			}
			// The clone takes writes, packed too.
			writeAndClose(t, fresh, "kid", []byte("kid data"), 100)
			for _, name := range []string{"c", "kid"} {
				rep, err := fresh.Verify(ctx, name, VerifyOptions{Deep: true})
				if err != nil || !rep.OK() || rep.ChunksChecked == 0 {
					t.Fatalf("verify --deep %s: %+v %v", name, rep, err)
				}
			}
			forEachLog(t, store, func(key string, r *format.Record, _ []byte) {
				if r.DataLen > 0 && (r.Frames == nil || r.Sealed != m.encrypt) {
					t.Errorf("%s: data record packed=%v sealed=%v, want packed, sealed=%v", key, r.Frames != nil, r.Sealed, m.encrypt)
				}
			})
		})
	}
}

// TestCompressedCreateOptions: "none" is no compression, an unknown name
// is refused naming it.
func TestCompressedCreateOptions(t *testing.T) {
	ctx := context.Background()
	p := initPool(t, openStore(t, "mem://"+t.Name()))
	d, err := p.Create(ctx, "n", CreateOptions{Size: 1 << 20, Compression: "none"})
	if err != nil || d.Compression != "" {
		t.Fatalf("create --compress=none: %+v %v", d, err)
	}
	if _, err := p.Create(ctx, "z", CreateOptions{Size: 1 << 20, Compression: "zip"}); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), `"zip"`) {
		t.Fatalf("create with compression zip: %v, want ErrInvalid naming it", err)
	}
}
