package volume

import (
	"bytes"
	"context"
	"math/rand/v2"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/urldisk/urldisk/internal/cache"
	"github.com/urldisk/urldisk/internal/format"
)

// TestModel runs random writes, zero writes, trims, flushes, reads and
// reattaches of random sizes and alignments against a plain byte slice, on
// every store backend; every read must match the model.
func TestModel(t *testing.T) {
	ops := 3000
	if s := os.Getenv("URLDISK_MODEL_OPS"); s != "" {
		ops, _ = strconv.Atoi(s)
	}
	for name, url := range backends(t) {
		t.Run(name, func(t *testing.T) {
			n := ops
			if name == "s3" {
				n = ops / 3
			}
			seed := uint64(time.Now().UnixNano())
			if s := os.Getenv("URLDISK_MODEL_SEED"); s != "" {
				seed, _ = strconv.ParseUint(s, 10, 64)
			}
			t.Logf("seed %d (replay with URLDISK_MODEL_SEED=%d)", seed, seed)
			runModel(t, url, seed, n)
		})
	}
}

func runModel(t *testing.T, url string, seed uint64, nops int) {
	runModelWith(t, url, seed, nops, CreateOptions{}, nil)
}

// runModelWith is runModel on a volume created with co, in a pool with
// key kek (nil: none). On a compressed volume some writes are
// compressible (text-like) data, so records hold LZ4 and raw frames.
func runModelWith(t *testing.T, url string, seed uint64, nops int, co CreateOptions, kek *format.KEK) {
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	store := openStore(t, url)
	var pool *Pool
	if kek != nil {
		pool = keyedPool(t, store, kek)
	} else {
		pool = initPool(t, store)
	}
	const size = 8 << 20
	co.Size = size
	if _, err := pool.Create(ctx, "model", co); err != nil {
		t.Fatal(err)
	}
	model := make([]byte, size)
	cacheDir := t.TempDir()
	opts := func(c *cache.Cache) Options {
		o := Options{SegmentBytes: 64 << 10, BufferBytes: 512 << 10, Uploads: 4, SnapshotEvery: 8, IdleFlush: 5 * time.Millisecond, Logger: testLogger(t)}
		if c != nil {
			o.Cache = c
		}
		return o
	}
	var c *cache.Cache
	attach := func() *Volume {
		if c != nil {
			c.Close()
			c = nil
		}
		if rng.IntN(3) > 0 {
			if rng.IntN(2) == 0 {
				os.RemoveAll(cacheDir)
			}
			c = openCache(t, cacheDir, 1<<20) // small: forces eviction
		}
		v, err := pool.Open(ctx, "model", opts(c))
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	v := attach()
	defer func() {
		if c != nil {
			c.Close()
		}
	}()
	randRange := func() (int64, int) {
		var n int
		switch rng.IntN(4) {
		case 0:
			n = 1 + rng.IntN(16)
		case 1:
			n = 4096 * (1 + rng.IntN(4))
		case 2:
			n = 1 + rng.IntN(70000)
		default:
			n = 1 + rng.IntN(300000)
		}
		off := int64(rng.IntN(size - n + 1))
		if rng.IntN(2) == 0 {
			off &^= 4095
		}
		return off, n
	}
	buf := make([]byte, 300000)
	for i := 0; i < nops; i++ {
		switch op := rng.IntN(20); {
		case op < 8:
			off, n := randRange()
			p := make([]byte, n)
			switch k := rng.IntN(6); {
			case k > 0 && co.Compression != "" && k < 4:
				word := []byte(strconv.Itoa(rng.IntN(1000)) + " compressible words ")
				for j := range p {
					p[j] = word[j%len(word)]
				}
			case k > 0:
				for j := range p {
					p[j] = byte(rng.Uint32())
				}
			}
			if err := v.WriteAt(ctx, p, off); err != nil {
				t.Fatalf("op %d write: %v", i, err)
			}
			copy(model[off:], p)
		case op < 10:
			off, n := randRange()
			var err error
			if op == 8 {
				err = v.Trim(ctx, off, int64(n))
			} else {
				err = v.WriteZeroes(ctx, off, int64(n))
			}
			if err != nil {
				t.Fatalf("op %d zero: %v", i, err)
			}
			clear(model[off : off+int64(n)])
		case op < 11:
			if err := v.Flush(ctx); err != nil {
				t.Fatalf("op %d flush: %v", i, err)
			}
		case op < 12 && rng.IntN(8) == 0:
			if err := v.Close(ctx); err != nil {
				t.Fatalf("op %d close: %v", i, err)
			}
			v = attach()
			checkAll(t, ctx, v, model)
		default:
			off, n := randRange()
			p := buf[:n]
			if err := v.ReadAt(ctx, p, off); err != nil {
				t.Fatalf("op %d read: %v", i, err)
			}
			if !bytes.Equal(p, model[off:off+int64(n)]) {
				t.Fatalf("op %d: read [%d,+%d) differs from model at byte %d", i, off, n, firstDiff(p, model[off:]))
			}
		}
	}
	if err := v.Close(ctx); err != nil {
		t.Fatal(err)
	}
	// A fresh attach with no cache at all sees everything.
	v2, err := pool.Open(ctx, "model", Options{ReadOnly: true, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	checkAll(t, ctx, v2, model)
	v2.Close(ctx)
}

func checkAll(t *testing.T, ctx context.Context, v *Volume, model []byte) {
	t.Helper()
	got := make([]byte, len(model))
	if err := v.ReadAt(ctx, got, 0); err != nil {
		t.Fatalf("read all: %v", err)
	}
	if !bytes.Equal(got, model) {
		t.Fatalf("volume differs from model at byte %d", firstDiff(got, model))
	}
}

func firstDiff(a, b []byte) int {
	for i := range a {
		if i >= len(b) || a[i] != b[i] {
			return i
		}
	}
	return -1
}
